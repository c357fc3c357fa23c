"""Which recording mode a run uses — the dense ring (every step's full state, the last ring_size steps) or
keyframes (a full state every keyframe_every steps, the steps in between rebuilt by replay) — and the
rings that implement it. Memory of each mode: docs/format.md, "Recording modes"."""

from __future__ import annotations

from dataclasses import replace

from forensics.record.keyframe import KeyframeRing
from forensics.record.ring import Ring, local


def state_bytes(params: list, kinds: list[str], shard: bool = False) -> int:
    """Bytes of one full state: weights, gradients and each optimizer state kind (16 B/param for Adam fp32);
    `shard`: of this rank's shards only (FSDP2), else of the whole (global) parameters."""
    per = sum((local(p) if shard else p).numel() * p.element_size() for p in params)
    return (2 + len(kinds)) * per


def choose_mode(cfg, params: list, kinds: list[str], distributed: bool = False) -> tuple:
    """(config with `mode` and `sync_every` resolved, dense ring bytes, message or None). `auto` picks
    keyframes when the dense ring ((ring_size + sync_every - 1) full states) exceeds `memory_budget`.
    Under torch.distributed only the dense ring is implemented: ValueError for mode="keyframe"."""
    if distributed and cfg.mode == "keyframe":
        raise ValueError("mode='keyframe' records a single process in this version; under torch.distributed "
                         "use mode='dense' (or 'auto')")
    sync_every = cfg.lag_for(params[0].device if params else None)
    dense = (cfg.ring_size + sync_every - 1) * state_bytes(params, kinds, shard=True)
    mode, message = cfg.mode, None
    if mode == "auto":
        mode = "keyframe" if dense > cfg.memory_budget and not distributed else "dense"
        if dense > cfg.memory_budget and distributed:
            message = (f"the dense ring ({dense / 2**20:.0f} MiB) exceeds memory_budget "
                       f"({cfg.memory_budget / 2**20:.0f} MiB), but keyframe mode is single-process: dense")
        elif mode == "keyframe":
            states = cfg.ring_size + sync_every - 1
            message = (f"the dense ring ({states} full states, {dense / 2**20:.0f} MiB) "
                       f"exceeds memory_budget ({cfg.memory_budget / 2**20:.0f} MiB): recording in keyframe "
                       f"mode (a full state every {cfg.keyframe_every} steps, the steps in between replayed "
                       "when a snapshot is written)")
    return replace(cfg, mode=mode, sync_every=sync_every), dense, message


def build_rings(cfg, names: list[str], params: list, kinds: list[str], *, model, optimizer, loss_fn, keys,
                group_names, warn) -> tuple:
    """(ring, context ring) for `cfg.mode` (resolved by `choose_mode`); (None, None) without parameters."""
    if not params:
        return None, None
    lag = cfg.sync_every - 1
    if cfg.mode == "keyframe":
        ring = KeyframeRing(names, params, kinds, window=cfg.ring_size + lag, every=cfg.keyframe_every,
                            model=model, loss_fn=loss_fn, keys=keys, optimizer=optimizer,
                            group_names=group_names, warn=warn)
    else:
        ring = Ring(names, params, kinds, ring_size=cfg.ring_size + lag)
    context = (Ring(names, params, kinds, ring_size=cfg.context_slots + -(-lag // cfg.context_every))
               if cfg.context_slots else None)
    return ring, context


__all__ = ["build_rings", "choose_mode", "state_bytes"]
