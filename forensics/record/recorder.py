"""The Recorder: rides in the training loop, keeps the last K states in a ring and writes the black box on a spike.

Example:
    >>> rec = Recorder(model, optimizer, "runs/my-run", loss="mse")   # doctest: +SKIP
    >>> for x, y in loader:                                            # doctest: +SKIP
    ...     optimizer.zero_grad(); loss = F.mse_loss(model(x), y); loss.backward()
    ...     rec.observe(loss, {"x": x, "y": y})   # after backward, before optimizer.step()
    ...     optimizer.step()
    >>> rec.close()                                                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import shutil
import time
import warnings
from pathlib import Path

import torch

from forensics.record.detector import DetectorConfig, SpikeDetector
from forensics.record.optim import (
    class_path, discover_state_kinds, group_hparams, is_adam, optimizer_step, snapshot_hparams, state_kinds,
)
from forensics.record.ring import Ring, tensors_from_export
from forensics.record.writer import BackgroundWriter
from forensics.rundir import events as events_mod
from forensics.rundir.format import (
    ANALYSIS_DIR, EVENTS_FILE, FORMAT_VERSION, MANIFEST_FILE, SNAPSHOTS_DIR, STEP_COLUMNS, STEPS_DIR,
    snapshot_name,
)
from forensics.rundir.manifest import build_manifest, param_names, write_manifest

log = logging.getLogger("forensics.record")
_SUBSAMPLE = 16384  # coordinates for the Adam ratio stats (format allows <= 65536)


class RecorderWarning(UserWarning):
    """Something the recorder could not do (budget exhausted, write error, unknown optimizer)."""


def _as_batch(batch) -> dict:
    """A batch as `{key: tensor}`: dicts keep their tensor entries, a tensor or tuple gets keys "0", "1"..."""
    if batch is None:
        return {}
    if isinstance(batch, torch.Tensor):
        return {"0": batch}
    if isinstance(batch, dict):
        return {str(k): v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if isinstance(batch, (tuple, list)):
        return {str(i): v for i, v in enumerate(batch) if isinstance(v, torch.Tensor)}
    raise ValueError(f"batch must be a dict of tensors, a tensor or a tuple of tensors, got {type(batch).__name__}")


def _sqnorm(flat: torch.Tensor) -> float:
    """||flat||^2, accumulated in at least float32."""
    if flat.dtype in (torch.float16, torch.bfloat16):
        return float(torch.linalg.vector_norm(flat, dtype=torch.float32)) ** 2
    return float(torch.linalg.vector_norm(flat)) ** 2


def _loss_spec(loss) -> str:
    if isinstance(loss, str):
        return loss
    if callable(loss) and hasattr(loss, "__module__") and hasattr(loss, "__qualname__"):
        return f"{loss.__module__}:{loss.__qualname__}"
    raise ValueError(f"loss must be 'mse', 'cross_entropy' or 'package.module:callable', got {loss!r}")


class Recorder:
    """Flight recorder for one training run; see README.md for the three-line usage.

    Hooks `optimizer` with `register_step_pre_hook` (capture state t into the ring, per-step
    scalars, detection) and `register_step_post_hook` (update count). Files are written on a
    background thread; recorder failures are logged and warned about, never raised into the
    training loop unless `strict=True`.
    """

    def __init__(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run_dir, *,
        model_factory: str | None = None, model_kwargs: dict | None = None, loss="mse",
        batch_keys=("x", "y"), detector="robust", ring_size: int = 8, stride: int = 1, tail: int = 16,
        baseline_every: int = 500, max_spikes: int = 20, max_bytes: int = 2 * 1024**3, probe=None,
        probe_every: int = 10, task: dict | None = None, seed: int | None = None, run_id: str | None = None,
        strict: bool = False, steps_chunk: int = 256, overwrite: bool = False,
    ):
        for name, v, lo in [("ring_size", ring_size, 1), ("stride", stride, 1), ("tail", tail, 0),
                            ("baseline_every", baseline_every, 0), ("max_spikes", max_spikes, 0),
                            ("max_bytes", max_bytes, 0), ("probe_every", probe_every, 1), ("steps_chunk", steps_chunk, 1)]:
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        if isinstance(batch_keys, dict):
            keys = {"input": batch_keys["input"], "target": batch_keys["target"]}
        elif isinstance(batch_keys, (tuple, list)) and len(batch_keys) == 2:
            keys = {"input": str(batch_keys[0]), "target": str(batch_keys[1])}
        else:
            raise ValueError(f"batch_keys must be (input_key, target_key), got {batch_keys!r}")
        self.model, self.optimizer, self.strict = model, optimizer, strict
        self.run_dir = Path(run_dir)
        self._prepare_dir(overwrite)
        self.run_id = run_id or self.run_dir.resolve().name
        self.loss_spec = _loss_spec(loss)
        self._loss_fn = None if isinstance(loss, str) else loss
        self.batch_keys = keys
        self.detector = SpikeDetector(DetectorConfig.coerce(detector))
        if self.detector.config.signal != "loss" and probe is None:
            raise ValueError(f"detector watches {self.detector.config.signal!r} but no probe batch was given")
        self.ring_size, self.stride, self.tail = ring_size, stride, tail
        self.baseline_every, self.max_spikes, self.max_bytes = baseline_every, max_spikes, max_bytes
        self.probe = _as_batch(probe) if probe is not None else None
        self.probe_every, self.steps_chunk = probe_every, steps_chunk

        named, _ = param_names(model)
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._name_of = {id(p): n for n, p in named}
        kinds, known = state_kinds(optimizer)
        self._known_optimizer = known
        self._opt_class = class_path(optimizer)
        self._group_names = [[self._name_of.get(id(p), f"<unnamed:{i}>") for i, p in enumerate(g["params"])]
                             for g in optimizer.param_groups]
        self._adam = is_adam(optimizer)

        self.manifest = build_manifest(
            model, optimizer, run_id=self.run_id, model_factory=model_factory, model_kwargs=model_kwargs,
            loss=self.loss_spec, batch_keys=keys, detector=self.detector.config.to_dict(),
            recorder={"ring_size": ring_size, "stride": stride, "tail": tail, "baseline_every": baseline_every,
                      "max_spikes": max_spikes, "max_bytes": max_bytes, "probe_every": probe_every,
                      "probe": self.probe is not None, "steps_chunk": steps_chunk},
            task=task, seed=seed)
        write_manifest(self.run_dir, self.manifest)
        (self.run_dir / STEPS_DIR).mkdir(exist_ok=True)
        (self.run_dir / SNAPSHOTS_DIR).mkdir(exist_ok=True)
        self._events = events_mod.EventLog(self.run_dir)

        self.ring = Ring(self._names, self._params, kinds, ring_size=ring_size) if self._params else None
        self._scratch = None  # lazily: flat buffers for update norms
        self._subsample = self._make_subsample()
        self._t0 = time.perf_counter()
        self._step = 0  # index of the next optimizer step
        self._updates = 0  # post-hook count
        self._pending = None  # (loss, batch, grad_clipped) from observe()
        self._row_slot = None  # ring slot captured for the current step
        self._rows = self._empty_rows()
        self._chunk_index = 0
        self._capture = self.ring is not None  # snapshots + ring; False once budget/error ends it
        self._scalars = True
        self._active_spike = None  # spike id whose steps are being written ("during")
        self._tail_left = 0
        self._tail_spike = None
        self._last_saved = -1
        self._spikes_captured = 0
        self._bytes = 0
        self._closed_spikes: list[dict] = []
        self._warned: set[str] = set()
        self._writer_errors: list[tuple[BaseException, str]] = []
        self._writer = BackgroundWriter(on_error=lambda e, name: self._writer_errors.append((e, name)))
        self._closed = False
        if not known:
            self._warn("unknown-optimizer", f"optimizer {self._opt_class} is not Adam/AdamW/SGD: recording "
                       "weights, grads and whatever per-parameter state tensors it holds")
        self._hooks = [optimizer.register_step_pre_hook(self._pre_hook),
                       optimizer.register_step_post_hook(self._post_hook)]

    # ----------------------------------------------------------------- public API

    def observe(self, loss, batch=None, *, grad_clipped: bool | None = None) -> None:
        """Report the loss and batch of the coming optimizer step (after backward, before step()).

        `loss` is a tensor or float; `batch` a dict of tensors (or a tensor / tuple: keys "0", "1"...).
        """
        self._raise_or_warn_writer_errors()
        try:
            value = float(loss.detach().float().item()) if isinstance(loss, torch.Tensor) else float(loss)
            self._pending = (value, _as_batch(batch), grad_clipped)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001
            self._fail("observe", e)

    @property
    def spikes(self) -> list:
        """Spikes seen so far (closed ones, plus the one still open with end=None)."""
        from forensics.rundir.reader import Spike

        out = [Spike.from_event(e) for e in self._closed_spikes]
        if self.detector.open is not None:
            sp = self.detector.open
            out.append(Spike.from_event({**sp, "end": None, "magnitude": (
                sp["peak_loss"] / sp["baseline"] if sp["baseline"] and math.isfinite(sp["baseline"]) else math.nan)}))
        return out

    @property
    def step(self) -> int:
        """Index of the next optimizer step."""
        return self._step

    def flush(self) -> None:
        """Write buffered scalar rows as a (partial) chunk and wait until queued files are on disk."""
        self._submit_chunk()
        self._writer.drain()
        self._raise_or_warn_writer_errors()

    def close(self) -> None:
        """Remove the hooks, close an open spike (end=None), write the last chunk and wait for the writer."""
        if self._closed:
            return
        self._closed = True
        for h in self._hooks:
            h.remove()
        try:
            for ev in self.detector.finish():
                self._log_event(ev)
            if self._row_slot is not None and self._capture and self._rows["step"] \
                    and self._rows["step"][-1] == self.ring.info[self._row_slot].step:
                self._rows["update_norm"][-1] = self._update_norm(self._row_slot, None)
            self._log_event({"type": "close", "step": self._step - 1, "wall_time": time.perf_counter() - self._t0})
            self._submit_chunk()
        finally:
            self._writer.close()
        self._raise_or_warn_writer_errors()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- hooks

    def _pre_hook(self, optimizer, args, kwargs) -> None:
        try:
            self._on_pre_step()
        except Exception as e:  # noqa: BLE001
            self._fail("pre-step hook", e)
        finally:
            self._step += 1
            self._pending = None

    def _post_hook(self, optimizer, args, kwargs) -> None:
        # The update norm of step t is taken at step t+1 from two consecutive ring slots
        # (theta_{t+1} is captured there anyway), so the post-hook only counts updates.
        self._updates += 1

    def _on_pre_step(self) -> None:
        t = self._step
        if self._pending is None:
            self._warn("no-observe", "optimizer.step() ran without rec.observe(loss, batch) before it; "
                       "that step's loss is recorded as missing")
            loss, batch, clipped = math.nan, {}, None
            have_loss = False
        else:
            (loss, batch, clipped), have_loss = self._pending, True
        self._raise_or_warn_writer_errors()
        probe_loss = self._eval_probe() if self.probe is not None and t % self.probe_every == 0 else None
        events = self.detector.update(t, loss if have_loss else None, probe=probe_loss)
        groups = group_hparams(self.optimizer)
        opt_step = optimizer_step(self.optimizer, self._params[0] if self._params else None, self._updates)

        opening = any(e["type"] == "spike_open" for e in events)
        must = (opening or self._active_spike is not None or self._tail_left > 0
                or any(e["type"] == "spike" for e in events)
                or (self.baseline_every and t % self.baseline_every == 0))
        slot = None
        if self._capture and (t % self.stride == 0 or must):
            if not self._known_optimizer:
                for kind in discover_state_kinds(self.optimizer, self._params):
                    self.ring.add_kind(kind)
            meta = {"loss": loss, "optimizer_step": opt_step, "groups": groups, "grad_clipped": clipped}
            try:
                slot = self.ring.capture(t, [p.grad for p in self._params], self._states(), batch, meta)
            except Exception as e:  # noqa: BLE001 - capture off, scalars go on
                self._fail("ring capture", e)
        prev, self._row_slot = self._row_slot, slot
        if self._scalars:
            if prev is not None and slot is not None and self._rows["step"] and self._rows["step"][-1] == t - 1:
                self._rows["update_norm"][-1] = self._update_norm(prev, slot)
            self._append_row(t, loss, probe_loss, groups, opt_step, slot)
        for ev in events:
            self._handle_event(t, ev, slot)
        if slot is not None and self._capture and self._last_saved < t:
            if self._active_spike is not None:
                self._save(slot, "during", self._active_spike)
            elif self._tail_left > 0:
                self._save(slot, "post", self._tail_spike)
                self._tail_left -= 1
            elif self.baseline_every and t % self.baseline_every == 0:
                self._save(slot, "baseline", None)

    # ----------------------------------------------------------------- capture and scalars

    def _states(self) -> dict:
        out = {}
        for kind in self.ring.banks:
            if kind in ("param", "grad"):
                continue
            out[kind] = [self.optimizer.state.get(p, {}).get(kind) for p in self._params]
        return out

    def _eval_probe(self) -> float:
        if self._loss_fn is None:
            from forensics.losses import resolve_loss

            self._loss_fn = resolve_loss(self.loss_spec, allow_import=True)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model(self.probe[self.batch_keys["input"]])
                return float(self._loss_fn(out, self.probe[self.batch_keys["target"]]).float().item())
        finally:
            self.model.train(was_training)

    def _norm(self, kind: str, slot: int | None, tensors: list) -> float:
        if slot is not None:
            return math.sqrt(sum(_sqnorm(f) for f in self.ring.banks[kind].flats(slot).values()))
        tensors = [t.detach() for t in tensors if t is not None]
        if not tensors:
            return math.nan
        return float(torch.linalg.vector_norm(torch.stack([n.double() for n in torch._foreach_norm(tensors)])))

    def _update_norm(self, slot: int, next_slot: int | None) -> float:
        """||theta_{t+1} - theta_t||: slot `next_slot` (or, at close, the live weights) minus `slot`.

        One vectorised subtraction per dtype into a scratch buffer allocated once.
        """
        bank = self.ring.banks["param"]
        if self._scratch is None:
            flats = {dt: torch.empty_like(b[0]) for dt, b in bank.bufs.items()}
            self._scratch = (flats, list(bank.layout.views(flats).values()))
        flats, views = self._scratch
        if next_slot is None:
            torch._foreach_copy_(views, [p.detach() for p in self._params])
        sq = 0.0
        for dt, f in flats.items():
            a = f if next_slot is None else bank.bufs[dt][next_slot]
            torch.sub(a, bank.bufs[dt][slot], out=f)
            sq += _sqnorm(f)
        return math.sqrt(sq)

    def _make_subsample(self):
        """Fixed random coordinates (<= 65536) of the largest dtype buffer, for cheap Adam ratio stats."""
        if self.ring is None or not self._adam:
            return None
        dt, n = max(self.ring.layout.totals.items(), key=lambda kv: kv[1])
        gen = torch.Generator().manual_seed(0)
        idx = torch.randperm(n, generator=gen)[:_SUBSAMPLE].sort().values
        return dt, idx.to(self.ring.device)

    def _adam_ratio(self, slot: int, opt_step: int, groups: list) -> tuple:
        if self._subsample is None or opt_step < 1 or "exp_avg_sq" not in self.ring.banks:
            return None, None
        dt, idx = self._subsample
        g = self.ring.banks["grad"].bufs[dt][slot].index_select(0, idx).float()
        v = self.ring.banks["exp_avg_sq"].bufs[dt][slot].index_select(0, idx).float()
        beta2 = float(groups[0]["betas"][1])
        rho = g.square_().div_(v.div_(1.0 - beta2 ** opt_step))  # g_t^2 / v-hat_{t-1}; 0/0 -> nan
        valid = int((~torch.isnan(rho)).sum())
        if valid == 0:
            return None, None
        return float(rho.nanmedian()), float((rho < 0.1).sum()) / valid

    def _empty_rows(self) -> dict:
        return {c: [] for c in STEP_COLUMNS}

    def _append_row(self, t, loss, probe_loss, groups, opt_step, slot) -> None:
        r = self._rows
        if len(r["step"]) >= self.steps_chunk:
            self._submit_chunk()
            r = self._rows
        lr = groups[0].get("lr") if groups else None
        median, frac = self._adam_ratio(slot, opt_step, groups) if slot is not None else (None, None)
        row = {"step": t, "wall_time": time.perf_counter() - self._t0, "loss": loss, "probe_loss": probe_loss,
               "lr": float(lr) if isinstance(lr, (int, float)) else None,
               "grad_norm": self._norm("grad", slot, [p.grad for p in self._params]),
               "param_norm": self._norm("param", slot, self._params), "update_norm": None,
               "optimizer_step": opt_step, "adam_ratio_median": median, "adam_ratio_frac_small": frac,
               "spike_id": self.detector.current_spike_id}
        for c in STEP_COLUMNS:  # append whole rows only, so the columns never differ in length
            r[c].append(row[c])

    def _submit_chunk(self) -> None:
        if not self._rows["step"]:
            return
        from forensics.rundir.steps import write_chunk

        rows, index = self._rows, self._chunk_index
        self._rows, self._chunk_index = self._empty_rows(), index + 1
        self._writer.submit(f"steps chunk {index}", lambda: write_chunk(self.run_dir, index, rows))

    # ----------------------------------------------------------------- spikes and snapshots

    def _handle_event(self, t: int, ev: dict, slot: int | None) -> None:
        self._log_event(ev)
        if ev["type"] == "spike_open":
            self._active_spike = None
            self._tail_left = 0
            if not self._capture:
                return
            if self._spikes_captured >= self.max_spikes:
                # only spike capture ends: sparse baselines go on (max_bytes still bounds them)
                self._warn("budget", f"spike budget exhausted (max_spikes={self.max_spikes}): no more spike "
                           "snapshots; baselines, per-step scalars and spike events continue")
                return
            self._spikes_captured += 1
            sid = ev["spike_id"]
            pre = [k for k in self.ring.slots_newest_first()
                   if k != slot and t - self.ring_size < self.ring.info[k].step < t
                   and self.ring.info[k].step > self._last_saved]
            for k in sorted(pre, key=lambda k: self.ring.info[k].step):
                self._save(k, "pre", sid)
            if slot is not None:
                self._save(slot, "onset", sid)
            self._active_spike = sid
        elif ev["type"] == "spike":
            self._closed_spikes.append(ev)
            if self._active_spike == ev["spike_id"]:
                self._active_spike = None
                self._tail_left, self._tail_spike = self.tail, ev["spike_id"]

    def _save(self, slot: int, role: str, spike_id) -> None:
        if not self._capture:
            return
        info = self.ring.info[slot]
        batch_bytes = sum(t.numel() * t.element_size() for t in self.ring.batches[slot].values())
        est = self.ring.nbytes_per_slot + batch_bytes + 4096
        if self._bytes + est > self.max_bytes:
            self._exhaust(f"byte budget exhausted (max_bytes={self.max_bytes}, used ~{self._bytes}): "
                          "no more snapshots; per-step scalars and spike events continue")
            return
        self._bytes += est
        self._last_saved = max(self._last_saved, info.step)
        export = self.ring.export(slot)
        meta = self._snapshot_meta(info, role, spike_id)
        step, run_dir = info.step, self.run_dir

        def job():
            from forensics.rundir.snapshots import save_snapshot

            rel = f"{SNAPSHOTS_DIR}/{snapshot_name(step)}"
            nbytes = save_snapshot(run_dir / rel, tensors_from_export(export), meta)
            self._events.append("snapshot", step=step, role=role, spike_id=spike_id, file=rel, bytes=nbytes)

        self._writer.submit(f"snapshot of step {step}", job)

    def _snapshot_meta(self, info, role: str, spike_id) -> dict:
        m = info.meta
        groups = [{**g, "params": names} for g, names in zip(m["groups"], self._group_names)]
        meta = {"format_version": FORMAT_VERSION, "run_id": self.run_id, "step": info.step,
                "loss": float(m["loss"]), "role": role, "spike_id": spike_id, "optimizer": self._opt_class,
                "optimizer_step": m["optimizer_step"], **snapshot_hparams(self.optimizer, m["groups"]),
                "param_groups": groups,
                "grad_clipped": "unknown" if m["grad_clipped"] is None else bool(m["grad_clipped"]),
                "batch_keys": info.batch_keys}
        return meta

    # ----------------------------------------------------------------- failures and warnings

    def _log_event(self, ev: dict) -> None:
        fields = {k: v for k, v in ev.items() if k != "type"}
        self._writer.submit(f"event {ev['type']}", lambda: self._events.append(ev["type"], **fields))

    def _warn(self, key: str, message: str) -> None:
        """Warn once per key, log it, and append a `warning` event."""
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning("spike forensics: %s", message)
        warnings.warn(f"spike forensics: {message}", RecorderWarning, stacklevel=4)
        try:
            self._log_event({"type": "warning", "step": self._step, "message": message})
        except Exception:  # noqa: BLE001 - the writer may be closed
            pass

    def _exhaust(self, message: str) -> None:
        self._capture = False
        self._warn("budget", message)

    def _fail(self, where: str, e: BaseException) -> None:
        if self.strict:
            raise e
        log.error("spike forensics: error in %s; capture disabled", where, exc_info=e)
        self._capture = False
        self._warn(f"error:{where}", f"recorder error in {where} ({type(e).__name__}: {e}); snapshot capture "
                   "disabled, training continues")

    def _raise_or_warn_writer_errors(self) -> None:
        while self._writer_errors:
            e, name = self._writer_errors.pop(0)
            if self.strict:
                raise RuntimeError(f"spike forensics: writing {name} failed: {e}") from e
            self._capture = False
            self._warn("writer-error", f"writing {name} failed ({type(e).__name__}: {e}); snapshot capture "
                       "disabled, training continues")

    def _prepare_dir(self, overwrite: bool) -> None:
        d = self.run_dir
        if (d / MANIFEST_FILE).exists():
            if not overwrite:
                raise ValueError(f"{d} already holds a run (run.json exists); pass overwrite=True to replace it")
            for name in (MANIFEST_FILE, EVENTS_FILE):
                (d / name).unlink(missing_ok=True)
            for name in (STEPS_DIR, SNAPSHOTS_DIR, ANALYSIS_DIR):
                shutil.rmtree(d / name, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)


__all__ = ["Recorder", "RecorderWarning"]
