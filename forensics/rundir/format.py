"""Constants and errors of the run-directory contract (docs/format.md, format version 1)."""

from __future__ import annotations

from pathlib import Path

FORMAT = "spike-forensics-run"
FORMAT_VERSION = 1

MANIFEST_FILE = "run.json"
EVENTS_FILE = "events.jsonl"
STEPS_DIR = "steps"
SNAPSHOTS_DIR = "snapshots"
ANALYSIS_DIR = "analysis"
TMP_MARK = ".tmp-"

# Tensor-name prefix of generic optimizer state inside a snapshot file: state/<key>/<name>.
STATE = "state/"

# Snapshot metadata key holding the file's own SHA-256 digest (docs/format.md, "Integrity").
DIGEST_KEY = "sha256"
# keyframe mode: a reconstructed snapshot's replayed losses may differ from the recorded ones by this much
# (relative); beyond it the snapshot is marked (replay_loss_rel_error), the recorder warns, readers note it
REPLAY_RTOL = 1e-4

# Columns of steps/*.parquet, in order.
STEP_COLUMNS = (
    "step", "wall_time", "loss", "probe_loss", "lr", "grad_norm", "param_norm",
    "update_norm", "optimizer_step", "adam_ratio_median", "adam_ratio_frac_small", "spike_id",
    "batch_rows", "micro_batches", "beta1", "beta2", "eps", "weight_decay", "momentum", "param_groups",
    "amp_skipped", "loss_scale", "logit_max", "log_z_mean", "attn_logit_max",
)
# Step columns whose type is not float64 (pyarrow type names; docs/format.md, steps/).
STEP_TYPES = {"step": "int64", "optimizer_step": "int64", "spike_id": "int32", "batch_rows": "int64",
              "micro_batches": "int32", "param_groups": "string", "amp_skipped": "bool_"}


# Columns of the analyzer's tables, analysis/<table>.parquet: (name, DuckDB type, meaning).
# The analyzer writes them (forensics.analyzer.store) and the catalog serves them
# (forensics.catalog.schema): this is the one definition. JSON columns are stored as strings.
ANALYSIS_TABLES: dict[str, list[tuple[str, str, str]]] = {
    "spikes": [
        ("run_id", "VARCHAR", "the run"),
        ("spike_id", "INTEGER", "spike id within the run"),
        ("onset_step", "BIGINT", "first step of the spike"),
        ("peak_step", "BIGINT", "step of the highest loss"),
        ("end_step", "BIGINT", "first step back to normal (NULL while open)"),
        ("peak_loss", "DOUBLE", "loss at the peak"),
        ("baseline_loss", "DOUBLE", "the loss level the detector compared against"),
        ("magnitude", "DOUBLE", "peak_loss / baseline_loss"),
        ("source", "VARCHAR", "'online' (recorder) or 'offline' (re-detected by the analyzer)"),
        ("verdict", "VARCHAR", "primary mechanism or 'unexplained'; NULL if never analyzed"),
        ("verdict_score", "DOUBLE", "score of the primary finding in [0, 1]"),
        ("verdict_message", "VARCHAR", "one-line message of the primary finding"),
        ("sub_peaks", "INTEGER", "peaks in the episode: 1 for a single spike, more when re-triggers "
                                 "(ringing, echoes) were merged into it"),
    ],
    "measurements": [
        ("run_id", "VARCHAR", "the run"),
        ("spike_id", "INTEGER", "the spike the measurement belongs to"),
        ("step", "BIGINT", "snapshot step it was measured at"),
        ("engine", "VARCHAR", "the measurement engine that wrote it (docs/analysis.md)"),
        ("metric", "VARCHAR", "metric name (docs/analysis.md), e.g. eta_lambda_max"),
        ("value", "DOUBLE", "its value"),
    ],
    "findings": [
        ("run_id", "VARCHAR", "the run"),
        ("spike_id", "INTEGER", "the spike"),
        ("rule", "VARCHAR", "the mechanism, one rule each (docs/analysis.md lists them)"),
        ("status", "VARCHAR", "fired, not_fired or inconclusive"),
        ("score", "DOUBLE", "confidence in [0, 1]"),
        ("message", "VARCHAR", "one-line message"),
        ("hint", "VARCHAR", "mitigation the literature supports"),
        ("reason", "VARCHAR", "why inconclusive, else empty"),
        ("evidence", "JSON", "the numbers behind the call"),
        ("thresholds", "JSON", "the thresholds used"),
        ("primary", "BOOLEAN", "this finding is the spike's verdict (quote it: \"primary\")"),
    ],
}


def snapshot_name(step: int) -> str:
    """File name of the snapshot of `step`, e.g. `step-00000042.safetensors`."""
    return f"step-{int(step):08d}.safetensors"


def chunk_name(index: int) -> str:
    """File name of the `index`-th scalar chunk; names sort in step order."""
    return f"chunk-{int(index):08d}.parquet"


def is_temp(path: Path | str) -> bool:
    """True for a temp file left behind by an interrupted atomic write."""
    return TMP_MARK in Path(path).name


class RunFormatError(ValueError):
    """A run directory, or one file in it, does not follow the contract; names the file."""

    def __init__(self, path: Path | str, message: str):
        self.path = Path(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


class MissingFileError(RunFormatError):
    """A file the contract requires is absent."""


class CorruptFileError(RunFormatError):
    """A file is truncated, unparseable or otherwise damaged."""


class UnsupportedVersionError(RunFormatError):
    """The run was written by a newer format version than this reader supports."""


class OutsideRunError(RunFormatError):
    """A file the run names (an events.jsonl entry, a linked folder or file) resolves outside
    the run directory: it is never opened."""


class RunFormatWarning(UserWarning):
    """One file of a run was skipped (named in the message); the rest of the run was read."""
