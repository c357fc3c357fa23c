"""Keyframe mode: a full state every `every` steps, and per step only what a replay needs (batch, loss,
hyperparameters, RNG state); the states in between are recomputed by replaying the recorded steps from
the keyframe with `forensics.replay`, whose losses are checked against the recorded ones.

`KeyframeRing` has the interface `SnapshotPolicy` and the recorder use on the dense `Ring` (`capture`,
`attach`, `find`, `info`, `batches`, `slots_newest_first`, `export`, `nbytes_per_slot`, `banks`): an
exported slot is a full state, reconstructed, so snapshot files look exactly like a dense ring's.
Memory: ceil((window + every) / every) + 1 full states (16 B/param for Adam: weights, gradient, two
moments; in pinned host memory, copied asynchronously, when training on CUDA), one replica of the
model for the replays, and `window + every` batches (docs/format.md, "Recording modes").
"""

from __future__ import annotations

import copy
import math

import torch

from forensics.record.ring import Layout, Ring, SlotIndex, SlotInfo, fill_batch
from forensics.replay import StepInput, build_optimizer, load_params, replay_steps
from forensics.rundir.format import REPLAY_RTOL



def _rng_state(device) -> tuple:
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return cpu, cuda


def _set_rng(state, device) -> None:
    if state is None:
        return
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class KeyframeRing(SlotIndex):
    """The last `window + every` steps' inputs and the keyframes needed to rebuild any of them.

    model: the live model (a replica is deep-copied now, before the recorder's hooks exist).
    loss_fn(output, target) or the run's loss spec (resolved at the first replay), keys (input key,
        target key): how a step's loss is computed, as in replay.
    optimizer: the live optimizer (its class rebuilds the replay optimizer); group_names: parameter
        names per param group. warn(key, message): the recorder's warn-once.
    """

    def __init__(self, names, params, kinds, *, window: int, every: int, model, loss_fn, keys,
                 optimizer, group_names, warn):
        if every < 1:
            raise ValueError(f"keyframe_every must be >= 1, got {every}")
        self.names, self.params, self.every = names, params, every
        self.size = window + every
        self.device = params[0].device
        pinned = self.device.type == "cuda"
        self.frames = Ring(names, params, kinds, ring_size=(window + every - 1) // every + 2,
                           device="cpu" if pinned else None, pin=pinned)
        self.layout: Layout = self.frames.layout
        self.batches: list[dict] = [{} for _ in range(self.size)]
        self.info = [SlotInfo() for _ in range(self.size)]
        self.rng: list = [None] * self.size
        self.head = -1
        self.loss_fn, self.keys = loss_fn, keys
        self.opt_class, self.group_names = type(optimizer), group_names
        self.warn = warn
        self.replica = copy.deepcopy(model)
        self._at = None  # (step the replica holds, its optimizer, largest loss error since the keyframe)
        self.next_rng = None  # RNG state before the coming step's first forward (set by a forward pre-hook)
        self._hook = model.register_forward_pre_hook(self._before_forward)
        self._armed = True

    # ------------------------------------------------------------ what the recorder calls

    @property
    def banks(self) -> dict:
        """The full-state banks of the keyframes (kinds recorded; new kinds added there)."""
        return self.frames.banks

    def add_kind(self, kind: str) -> None:
        """A state kind discovered after the first step (unknown optimizers)."""
        self.frames.add_kind(kind)

    @property
    def nbytes_per_slot(self) -> int:
        """Bytes of one exported (full) state: what a snapshot costs on disk."""
        return self.frames.nbytes_per_slot

    def _before_forward(self, module, args) -> None:
        if self._armed and module.training:
            self.next_rng, self._armed = _rng_state(self.device), False

    def capture(self, step: int, grads: list, states: dict, batch: dict, meta: dict, *,
                optional: bool = False) -> int:
        """Record step t's inputs; a full state too when t is a keyframe step. Returns the step slot."""
        k = (self.head + 1) % self.size
        newest = max((self.frames.info[j].step for j in self.frames.slots_newest_first()), default=None)
        if newest is None or step - newest >= self.every or step % self.every == 0:
            self.frames.capture(step, grads, states, {}, meta)
        fill_batch(self.batches[k], batch)
        self.info[k] = SlotInfo(step=step, meta=meta, batch_keys=list(batch), optional=optional)
        self.rng[k], self.next_rng, self._armed = self.next_rng, None, True
        self.head = k
        return k

    def remove(self) -> None:
        """Detach the forward pre-hook."""
        self._hook.remove()

    # ------------------------------------------------------------ reconstruction

    def export(self, slot: int) -> dict:
        """Step `info[slot].step`'s full state as a CPU export (like `Ring.export`): the keyframe itself,
        or the keyframe replayed up to that step. Adds `reconstructed` and `replay_loss_rel_error` to the
        slot's metadata. Raises RuntimeError when no keyframe or step input covers the step."""
        live_rng = _rng_state(self.device)  # the replay sets each step's RNG state: training's is put back
        try:
            return self._export(slot)
        finally:
            _set_rng(live_rng, self.device)

    def _export(self, slot: int) -> dict:
        t = self.info[slot].step
        batch = {key: v.to("cpu", copy=True) for key, v in self.batches[slot].items()}
        frame = self._frame_for(t)
        if frame is None:
            raise RuntimeError(f"no keyframe at or before step {t} is kept (keyframe_every={self.every})")
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the async keyframe copies have landed
        if self.frames.info[frame].step == t:
            out = {kind: (bank.layout, {dt: f.clone() for dt, f in bank.flats(frame).items()})
                   for kind, bank in self.frames.banks.items()}
            self.info[slot].meta["reconstructed"] = False
            return {"banks": out, "batch": batch}
        opt, err = self._replay_to(t, frame)
        grads = self._grad_at(slot, opt)
        named = dict(self.replica.named_parameters())
        tensors = {"param": [named[n] for n in self.names], "grad": grads}
        for kind in self.frames.banks:
            if kind not in tensors:
                tensors[kind] = [opt.state.get(named[n], {}).get(kind) for n in self.names]
        out = {}
        for kind, bank in self.frames.banks.items():
            flats = {dt: torch.zeros(n, dtype=dt) for dt, n in bank.layout.totals.items()}
            for view, src in zip(bank.layout.views(flats).values(), tensors[kind], strict=True):
                if src is not None:
                    view.copy_(src.detach())
            out[kind] = (bank.layout, flats)
        self.info[slot].meta.update(reconstructed=True, replay_loss_rel_error=err)
        return {"banks": out, "batch": batch}

    def _loss(self):
        if isinstance(self.loss_fn, str):
            from forensics.losses import resolve_loss

            self.loss_fn = resolve_loss(self.loss_fn, allow_import=True)
        return self.loss_fn

    def _frame_for(self, t: int):
        frames = [j for j in self.frames.slots_newest_first() if self.frames.info[j].step <= t]
        return max(frames, key=lambda j: self.frames.info[j].step, default=None)

    def _inputs(self, start: int, stop: int) -> list:
        steps = []
        for s in range(start, stop):
            k = self.find(s)
            if k is None:
                raise RuntimeError(f"the inputs of step {s} are no longer kept (replay {start}..{stop - 1})")
            steps.append((s, k))
        return steps

    def _replay_to(self, t: int, frame: int):
        """Bring the replica to θ_t (and its optimizer to the state before update t); returns (optimizer,
        largest relative difference between recomputed and recorded losses of the replayed steps)."""
        k0 = self.frames.info[frame].step
        if self._at is not None and k0 <= self._at[0] <= t and self.find(self._at[0]) is not None:
            start, opt, err = self._at  # continue where the last reconstruction stopped (and its error)
        else:
            start, opt, err = k0, self._load_frame(frame), 0.0
        todo = self._inputs(start, t)
        inputs = [StepInput(s, self.batches[k], self.info[k].meta["groups"]) for s, k in todo]
        rng = {s: self.rng[k] for s, k in todo}
        outs = replay_steps(self.replica, opt, self._loss(), self.keys, inputs,
                            before=lambda inp, m, o: _set_rng(rng[inp.step], self.device))
        for (_, k), o in zip(todo, outs, strict=True):
            rec = self.info[k].meta.get("loss")
            if isinstance(rec, float) and math.isfinite(rec) and math.isfinite(o.loss):
                err = max(err, abs(o.loss - rec) / max(abs(rec), 1e-30))
            elif isinstance(rec, float) and math.isfinite(rec) != math.isfinite(o.loss):
                err = math.inf
        if err > REPLAY_RTOL:
            self.warn("keyframe-replay", f"keyframe replay to step {t}: recomputed losses differ from the "
                      f"recorded ones by up to {err:.3g} (relative); the reconstructed snapshots are marked "
                      "(replay_loss_rel_error). Clipping, AMP and nondeterministic kernels are not replayed")
        self._at = (t, opt, err)
        return opt, err

    def _load_frame(self, frame: int):
        info, bank = self.frames.info[frame], self.frames.banks
        params = bank["param"].layout.views(bank["param"].flats(frame))
        named = load_params(self.replica, {n: params[n] for n in self.names})
        state = {kind: b.layout.views(b.flats(frame)) for kind, b in bank.items()
                 if kind not in ("param", "grad")}
        groups = [{**g, "params": names}
                  for g, names in zip(info.meta["groups"], self.group_names, strict=True)]
        return build_optimizer(self.opt_class, named, groups, {k: {n: v.clone() for n, v in s.items()}
                                                               for k, s in state.items()},
                               info.meta.get("optimizer_step"))

    def _grad_at(self, slot: int, opt) -> list:
        """g_t: the gradient of batch t's loss at θ_t (the replica's weights), with step t's RNG state."""
        named = dict(self.replica.named_parameters())
        x_key, y_key = self.keys
        batch = self.batches[slot]
        opt.zero_grad(set_to_none=True)
        self.replica.train()
        _set_rng(self.rng[slot], self.device)
        self._loss()(self.replica(batch[x_key]), batch[y_key]).backward()
        if self.info[slot].meta.get("grad_clipped"):
            self.warn("keyframe-clip", "keyframe mode cannot replay gradient clipping (its max norm is not "
                      "recorded): reconstructed gradients of clipped steps are the unclipped ones")
        return [named[n].grad for n in self.names]


__all__ = ["KeyframeRing", "REPLAY_RTOL"]
