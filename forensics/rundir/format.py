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

# Tensor-name prefixes inside a snapshot file.
PARAM = "param/"
GRAD = "grad/"
BATCH = "batch/"
STATE = "state/"  # generic optimizer state: state/<key>/<name>
KNOWN_STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")

ROLES = ("pre", "onset", "during", "post", "baseline")

# Snapshot metadata keys (all values are strings).
META_FORMAT_VERSION = "format_version"
META_RUN_ID = "run_id"
META_STEP = "step"
META_LOSS = "loss"
META_ROLE = "role"
META_SPIKE_ID = "spike_id"
META_OPTIMIZER = "optimizer"
META_OPTIMIZER_STEP = "optimizer_step"
META_BETAS = "betas"
META_DECOUPLED = "decoupled_weight_decay"
META_PARAM_GROUPS = "param_groups"
META_GRAD_CLIPPED = "grad_clipped"
META_BATCH_KEYS = "batch_keys"
META_SCALAR_HPARAMS = ("lr", "eps", "weight_decay", "momentum", "dampening")

# Columns of steps/*.parquet, in order.
STEP_COLUMNS = (
    "step", "wall_time", "loss", "probe_loss", "lr", "grad_norm", "param_norm",
    "update_norm", "optimizer_step", "adam_ratio_median", "adam_ratio_frac_small", "spike_id",
)


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
        super().__init__(f"{self.path}: {message}")


class MissingFileError(RunFormatError):
    """A file the contract requires is absent."""


class CorruptFileError(RunFormatError):
    """A file is truncated, unparseable or otherwise damaged."""


class UnsupportedVersionError(RunFormatError):
    """The run was written by a newer format version than this reader supports."""
