"""`RecorderConfig`: every setting of the Recorder (and the Lightning/HF adapters) in one typed,
checked object. Keyword arguments of `Recorder(...)` override its fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from forensics.record.detector_config import DetectorConfig
from forensics.record.inputs import check_counts
from forensics.record.sink import MAX_PENDING_ROWS


@dataclass
class RecorderConfig:
    """What the recorder keeps, when, and within which budgets. Raises ValueError on a bad value.

    Fields (steps are optimizer steps; bytes are bytes):
        loss: the loss as the analyzer rebuilds it: "mse", "cross_entropy", an import path, or a callable.
        batch_keys: (input key, target key) of the batch dict, or a dict {"input": ..., "target": ...}.
        detector: a preset name, dict or `DetectorConfig` (docs/format.md, detector).
        ring_size: dense ring: the last ring_size full states (weights, grads, moments, batch), kept
            in memory and written as `pre` snapshots when a spike opens.
        stride: keep every stride-th step as a `pre` snapshot (every step is captured, since whether it
            opens a spike is known only after its capture; a spike's own steps are always written).
        tail: `post` snapshots written after an episode recovers.
        baseline_every: a `baseline` snapshot every this many steps (0: none).
        context_every, context_span: sparse context: a full state every context_every steps over the
            last context_span steps (context_span // context_every slots in memory), written as
            `context` snapshots when a spike opens, so rules see a limit crossed before the dense
            ring (0 for either: none).
        max_spikes: spike episodes whose snapshots are written (later episodes: events and scalars only).
        max_bytes: bound on the bytes of all snapshots.
        probe: the objective the detector watches in minibatch training: "auto" (a probe set drawn
            from the first `probe_batches` batches, at most `probe_size` samples and `probe_terms`
            target elements (tokens, for a language model's (batch, seq) targets); off when those
            batches are all the same batch, i.e. full-batch training), a batch dict (a fixed probe
            batch), or None (no probe: the detector watches the training loss).
        probe_every: evaluate the probe every this many steps.
        probe_size, probe_batches, probe_terms: see probe. `probe_terms` (4096) bounds the probe's
            cost where a sample is a sequence: 256 sequences of 64 tokens made a small GPT's
            training 8x slower (a forward over 16x the batch every step); 4096 tokens is 64 such
            sequences, 4 of 1024. A sample of one target element (regression, classification)
            keeps `probe_size`; so does a one-hot or soft-label target (a floating target's last
            dimension counts one term: `forensics.record.probe.terms_per_sample`).
        model_factory, model_kwargs: how the analyzer rebuilds the model ("package.module:factory").
        task, seed: free-form description of the run and its seed (run.json).
        hf_config: file name (beside run.json) of a Hugging Face model config (the HF callback's).
        run_id: the run's id (default: the folder's name).
        strict: raise recorder errors into the training loop instead of warning.
        steps_chunk: step rows per Parquet chunk (a crash loses at most one chunk).
        overwrite: replace a run already in the folder.
        resume: append to the run already in the folder (detector state restored from
            `detector.json`, step and chunk numbering continued); a new run if there is none.
        start_step: with resume, the step index the resumed training starts at (default: one past
            the last recorded step).
        max_pending_rows: step rows kept in memory while the disk fails.
        sync_every: fetch the losses and per-step scalars from the device every this many steps (one
            host-device sync per sync_every steps, none in between); detection lags by up to that many
            steps and the dense ring holds sync_every - 1 slots more to cover the lag. None (default):
            1 on CPU (no device to wait for), 8 on an accelerator.
        mode: "dense" (the ring holds every step's full state), "keyframe" (a full state every
            keyframe_every steps plus every step's batch, loss, hyperparameters and RNG state; the
            states in between are replayed when a snapshot is written) or "auto" (keyframe when the
            dense ring would exceed memory_budget; said in a warning and in run.json).
        keyframe_every: steps between two keyframes.
        memory_budget: bytes the dense ring may take before "auto" switches to keyframes.
    """

    loss: object = "mse"
    batch_keys: object = ("x", "y")
    detector: object = "robust"
    ring_size: int = 8
    stride: int = 1
    tail: int = 16
    baseline_every: int = 500
    context_every: int = 16
    context_span: int = 128
    max_spikes: int = 20
    max_bytes: int = 2 * 1024**3
    probe: object = "auto"
    probe_every: int = 1
    probe_size: int = 256
    probe_batches: int = 64
    probe_terms: int = 4096
    model_factory: str | None = None
    model_kwargs: dict | None = None
    task: dict | None = None
    seed: int | None = None
    hf_config: str | None = None
    run_id: str | None = None
    strict: bool = False
    steps_chunk: int = 256
    overwrite: bool = False
    resume: bool = False
    start_step: int | None = None
    max_pending_rows: int = MAX_PENDING_ROWS
    sync_every: int | None = None
    mode: str = "auto"
    keyframe_every: int = 16
    memory_budget: int = 4 * 1024**3
    _detector: DetectorConfig = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self):
        check_counts(ring_size=(self.ring_size, 1), stride=(self.stride, 1), tail=(self.tail, 0),
                     baseline_every=(self.baseline_every, 0), context_every=(self.context_every, 0),
                     context_span=(self.context_span, 0), max_spikes=(self.max_spikes, 0),
                     max_bytes=(self.max_bytes, 0), probe_every=(self.probe_every, 1),
                     probe_size=(self.probe_size, 1), probe_batches=(self.probe_batches, 1),
                     probe_terms=(self.probe_terms, 1),
                     steps_chunk=(self.steps_chunk, 1), max_pending_rows=(self.max_pending_rows, 1))
        check_counts(keyframe_every=(self.keyframe_every, 1), memory_budget=(self.memory_budget, 0))
        if self.mode not in ("auto", "dense", "keyframe"):
            raise ValueError(f"mode must be 'auto', 'dense' or 'keyframe', got {self.mode!r}")
        if self.sync_every is not None:
            check_counts(sync_every=(self.sync_every, 1))
        if self.start_step is not None:
            check_counts(start_step=(self.start_step, 0))
        if self.overwrite and self.resume:
            raise ValueError("overwrite=True and resume=True contradict each other: choose one")
        if isinstance(self.probe, str) and self.probe != "auto":
            raise ValueError(f"probe must be 'auto', a batch dict or None, got {self.probe!r}")
        self._detector = DetectorConfig.coerce(self.detector)
        if self._detector.signal in ("probe", "both") and self.probe is None:
            raise ValueError(f"detector watches {self._detector.signal!r} but probe=None")

    @property
    def detector_config(self) -> DetectorConfig:
        """`detector` as a checked `DetectorConfig`."""
        return self._detector

    @property
    def context_slots(self) -> int:
        """Full states the sparse context keeps in memory."""
        return self.context_span // self.context_every if self.context_every and self.context_span else 0

    def lag_for(self, device) -> int:
        """`sync_every` for a model on `device` (None: 1 on CPU or without parameters, 8 elsewhere)."""
        check_counts(keyframe_every=(self.keyframe_every, 1), memory_budget=(self.memory_budget, 0))
        if self.mode not in ("auto", "dense", "keyframe"):
            raise ValueError(f"mode must be 'auto', 'dense' or 'keyframe', got {self.mode!r}")
        if self.sync_every is not None:
            return self.sync_every
        return 1 if device is None or getattr(device, "type", str(device)) == "cpu" else 8

    def with_options(self, **options) -> "RecorderConfig":
        """A copy with `options` (field names) replaced; ValueError naming an unknown one."""
        names = {f.name for f in fields(self) if f.init}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"unknown recorder option(s): {', '.join(unknown)}; see RecorderConfig")
        return replace(self, **options)

    def manifest_entry(self, probe_kind: str) -> dict:
        """run.json["recorder"]: the capture settings (JSON-able)."""
        d = {k: v for k, v in asdict(self).items()
             if k in ("ring_size", "stride", "tail", "baseline_every", "context_every", "context_span",
                      "max_spikes", "max_bytes", "probe_every", "probe_size", "probe_batches", "probe_terms",
                      "steps_chunk",
                      "sync_every", "mode", "keyframe_every", "memory_budget")}
        return {**d, "context_slots": self.context_slots, "probe": probe_kind}


__all__ = ["MAX_PENDING_ROWS", "RecorderConfig"]
