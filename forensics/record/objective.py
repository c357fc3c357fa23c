"""The recorder's view of the objective: the probe the detector watches in minibatch training, drawn
automatically from the first batches (`probe="auto"`), given as a batch, or absent."""

from __future__ import annotations

from pathlib import Path

from forensics.record.inputs import flatten_batch
from forensics.record.probe import AutoProbe, Probe, load_probe, save_probe


class Objective:
    """`tensor(t)`: the probe loss at step t (None when there is no probe yet, or t is not a
    multiple of `probe_every`); `offer(t, batch)`: hand it step t's batch while an auto probe is
    being drawn; returns the `probe` event announcing its decision, once. While an auto probe is
    drawn (after a second, different batch), the first batch is the probe; `set_id` names the set
    `tensor` used ("first", "drawn", "given", or "off"/None) for the detector's `probe_set`."""

    def __init__(self, model, cfg, batch_keys: dict, loss_spec: str, run_dir: Path):
        self.model, self.keys, self.loss_spec, self.run_dir = model, batch_keys, loss_spec, run_dir
        self.every = cfg.probe_every
        self._loss_fn = None if isinstance(cfg.loss, str) else cfg.loss
        self.probe: Probe | None = None
        self.auto: AutoProbe | None = None
        self.failure: str | None = None
        self.set_id: str | None = None
        self._first: Probe | None = None  # the interim probe (the first batch) of an auto probe
        if isinstance(cfg.probe, str):  # "auto"
            self.kind = "auto"
            self.auto = AutoProbe(batch_keys, size=cfg.probe_size, batches=cfg.probe_batches,
                                  terms=cfg.probe_terms)
        elif cfg.probe is None:
            self.kind = "none"
        else:
            self.kind, self.set_id = "batch", "given"
            self.probe = self._make(flatten_batch(cfg.probe)[0])

    def _make(self, batch: dict) -> Probe:
        return Probe(self.model, batch, self.keys, self.loss_spec, self._loss_fn)

    def tensor(self, t: int):
        """The probe loss at the current weights as a 0-d device tensor (no host-device sync: fetched
        with the step's other scalars), every `probe_every` steps once a probe exists; None otherwise.
        A probe that fails is switched off (`failure` says why; the detector then watches the loss)."""
        probe = self.probe or self._first
        if probe is None or t % self.every:
            return None
        try:
            return probe.loss_tensor()
        except Exception as e:  # noqa: BLE001 - the probe must never cost a step's row
            self.probe, self._first, self.set_id = None, None, "off"
            self.failure = f"the probe failed ({type(e).__name__}: {e}) and is off"
            return None

    def offer(self, t: int, batch: dict) -> dict | None:
        """Feed the auto probe; the `probe` event (step, active, samples, reason) when it decides."""
        if self.auto is None or self.auto.done:
            return None
        decision = self.auto.offer(batch)
        if decision is None:
            if self._first is None and self.auto.first is not None:
                self._first, self.set_id = self._make(self.auto.first), "first"
            return None
        what, detail = decision
        self._first, self.set_id = None, ("drawn" if what == "probe" else "off")
        if what == "probe":
            save_probe(self.run_dir, detail)
            self.probe = self._make(detail)
            n = int(next(iter(detail.values())).shape[0])
            return {"type": "probe", "step": t, "active": True, "samples": n,
                    "message": f"probe set of {n} samples drawn from the first batches; "
                               "the detector watches it"}
        return {"type": "probe", "step": t, "active": False, "samples": 0,
                "message": f"no probe: {detail}; the detector watches the training loss"}

    def restore(self) -> None:
        """A resumed run: reuse the probe set the run drew before (probe.safetensors), if any."""
        if self.kind != "auto":
            return
        device = next(self.model.parameters()).device if any(True for _ in self.model.parameters()) else "cpu"
        batch = load_probe(self.run_dir, device)
        if batch is not None:
            self.probe, self.auto, self.set_id = self._make(batch), None, "drawn"


__all__ = ["Objective"]
