"""Snapshot I/O: MB/s of the recorder's safetensors writes and lazy reads vs raw file I/O of the same bytes.

A snapshot holds param/grad/exp_avg/exp_avg_sq of a model (4 × 4 bytes per parameter) plus a
small batch. For each size we time, interleaved and repeated:

- raw write: the same tensor bytes written to one file in the same folder, then fsync (the
  physical limit of a durable write here);
- ``save_snapshot``: what the recorder calls (safetensors ``save_file`` to a temp file, its
  SHA-256 digest sealed into the header, fsync, rename, i.e. atomic), and the same without the
  digest (``digest=False``, the plain write): their time ratio is the digest's cost;
- reads, cold (the file's pages evicted with ``posix_fadvise(DONTNEED)`` — per file, no root,
  nobody else's cache touched) and warm: a raw ``readinto`` of the whole file vs
  ``load_snapshot`` (every tensor, the digest verified first), the same with ``verify=False``
  (warm, for the verification's cost), and ``safe_open`` + ``get_tensor`` of one parameter.

Run: .venv/bin/python bench/snapshot_io.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import torch

import _common as C  # noqa: E402
from forensics.rundir.snapshots import load_snapshot, save_snapshot  # noqa: E402

SIZES = {"~10 MB (0.65M params)": 650_000, "~50 MB (3.2M params)": 3_200_000,
         "~160 MB (10M params)": 10_000_000}


def make_tensors(num_params: int) -> dict[str, torch.Tensor]:
    """param/grad/exp_avg/exp_avg_sq of an MLP-like model of ~num_params, plus a 256×512 batch."""
    g = torch.Generator().manual_seed(0)
    width = 1024
    shapes, left, i = [], num_params, 0
    while left > 0:
        rows = max(1, min(width, left // width))
        shapes.append((f"{i}.weight", (rows, width)))
        shapes.append((f"{i}.bias", (rows,)))
        left -= rows * width + rows
        i += 1
    out = {}
    for kind in ("param", "grad", "exp_avg", "exp_avg_sq"):
        for name, shape in shapes:
            out[f"{kind}/{name}"] = torch.randn(shape, generator=g)
    out["batch/x"] = torch.randn(256, 512, generator=g)
    out["batch/y"] = torch.randn(256, 1, generator=g)
    return out


META = {"step": 1234, "loss": 0.5, "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8,
        "weight_decay": 0.0, "optimizer_step": 1234, "role": "onset", "spike_id": 0}


def raw_write(path, tensors) -> None:
    with open(path, "wb") as f:
        for t in tensors.values():
            f.write(memoryview(t.numpy()).cast("B"))
        f.flush()
        os.fsync(f.fileno())


def evict(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def raw_read(path) -> int:
    size = os.path.getsize(path)
    buf = bytearray(size)
    with open(path, "rb", buffering=0) as f:
        return f.readinto(buf)


def load_all(path, verify: bool = True) -> None:
    """load_snapshot, then touch every tensor: its get_tensor maps the file lazily, so without the
    touch nothing would be read from disk."""
    snap = load_snapshot(path, verify=verify)
    for group in (snap.params, snap.grads, snap.batch, *snap.state.values()):
        for t in group.values():
            t.sum()


def save_plain(path, tensors, meta) -> None:
    """save_snapshot without the digest: temp file, fsync, rename (the write before digests)."""
    save_snapshot(path, tensors, meta, digest=False)


def save_file_only(path, tensors, meta) -> None:
    """safetensors' save_file alone: no temp file, no fsync, no rename."""
    from safetensors.torch import save_file

    from forensics.rundir.snapshots import encode_meta

    save_file(tensors, str(path), metadata=encode_meta(meta))


def read_one(path, name) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        f.get_tensor(name).sum()  # touch the data, so a lazy map is actually read


def timed(fn, *a) -> float:
    t0 = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t0


def measure(label, num_params, folder, repeats):
    tensors = make_tensors(num_params)
    raw_path, snap_path = os.path.join(folder, "raw.bin"), os.path.join(folder, "snap.safetensors")
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    one = next(k for k in tensors if k.startswith("param/"))
    plain_path = os.path.join(folder, "plain.safetensors")
    nodig_path = os.path.join(folder, "nodigest.safetensors")
    t = {k: [] for k in ("raw_w", "snap_w", "nodig_w", "plain_w", "raw_rc", "snap_rc", "raw_rw", "snap_rw",
                         "noverify_rw", "lazy_c", "one_c", "one_w")}
    for r in range(repeats):
        writes = [("raw_w", raw_write, raw_path, tensors),
                  ("snap_w", save_snapshot, snap_path, tensors, META),
                  ("nodig_w", save_plain, nodig_path, tensors, META),
                  ("plain_w", save_file_only, plain_path, tensors, META)]
        for key, fn, *a in (writes if r % 2 == 0 else writes[::-1]):
            t[key].append(timed(fn, *a))
            if key == "plain_w":  # flush its dirty pages now, untimed, so they don't slow the next write
                fd = os.open(plain_path, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        reads = [("raw", raw_read, raw_path), ("snap", load_all, snap_path)]
        for key, fn, path in (reads if r % 2 == 0 else reads[::-1]):
            evict(path)
            t[key + "_rc"].append(timed(fn, path))
            t[key + "_rw"].append(timed(fn, path))
        t["noverify_rw"].append(timed(load_all, snap_path, False))
        evict(snap_path)
        t["lazy_c"].append(timed(load_snapshot, snap_path))
        evict(snap_path)
        t["one_c"].append(timed(read_one, snap_path, one))
        t["one_w"].append(timed(read_one, snap_path, one))
    fsize = os.path.getsize(snap_path)
    mb = fsize / 1e6
    med = {k: C.median(v) for k, v in t.items()}
    return {"snapshot": label, "tensors": len(tensors), "file MB": mb,
            "raw write+fsync MB/s": nbytes / 1e6 / med["raw_w"],
            "save_snapshot MB/s": mb / med["snap_w"], "save_file, no fsync MB/s": mb / med["plain_w"],
            "no digest MB/s": mb / med["nodig_w"], "digest write ratio": med["snap_w"] / med["nodig_w"],
            "verify ms": 1e3 * (med["snap_rw"] - med["noverify_rw"]),
            "verify load ratio warm": med["snap_rw"] / med["noverify_rw"],
            "write % of raw": 100 * (mb / med["snap_w"]) /
            (nbytes / 1e6 / med["raw_w"]),
            "load_snapshot lazy cold ms": 1e3 * med["lazy_c"],
            "raw read cold MB/s": mb / med["raw_rc"], "load_snapshot cold MB/s": mb / med["snap_rc"],
            "read cold % of raw": 100 * med["raw_rc"] / med["snap_rc"],
            "raw read warm MB/s": mb / med["raw_rw"], "load_snapshot warm MB/s": mb / med["snap_rw"],
            "one tensor cold ms": 1e3 * med["one_c"], "one tensor warm ms": 1e3 * med["one_w"],
            "one tensor MB": tensors[one].numel() * 4 / 1e6}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    base = C.ROOT / "tmp"  # gitignored, on the repo's filesystem
    base.mkdir(exist_ok=True)
    folder = tempfile.mkdtemp(prefix="bench-snapshot-io-", dir=base)
    try:
        df = shutil.disk_usage(folder)
        dev_same = os.stat(folder).st_dev == os.stat(C.ROOT).st_dev
        rows = [measure(label, n, folder, args.repeats) for label, n in SIZES.items()]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for r in rows:
        print(r)
    for r in rows:
        print(f"digest cost, {r['snapshot']}: write {r['digest write ratio']:.2f}x the plain write "
              f"(save_snapshot without digest), warm load {r['verify load ratio warm']:.2f}x")
    intro = [
        f"- folder: a temp dir under the repo's gitignored `tmp/` (same filesystem as the repo: "
        f"{dev_same}; {df.free / 1e9:.0f} GB free); {args.repeats} repeats, raw and safetensors "
        "interleaved (order alternating), medians",
        "- write = data + fsync (save_snapshot also renames the temp file into place and fsyncs the "
        "folder); 'save_file, no fsync' = safetensors alone, to show what durability costs; reads: cold = "
        "the file's page-cache pages evicted first with posix_fadvise(DONTNEED), warm = read again",
        "- `load_snapshot` maps the file lazily (its own cost is the 'lazy' column); the MB/s columns "
        "time `load_snapshot` + a sum over every tensor, so every byte is read; one tensor = safe_open + "
        "get_tensor + sum of the first parameter",
        "- digest: `save_snapshot` seals the file's SHA-256 into its header (hashing the file it just "
        "wrote, from the page cache) on the recorder's writer thread; 'digest write ratio' = its time / "
        "the same write with `digest=False` (the plain write); 'verify' = warm `load_snapshot` (every "
        "tensor touched) minus the same with `verify=False`; hashlib releases the GIL while hashing",
        "- MB = 10^6 bytes",
    ]
    w_cols = ["snapshot", "tensors", "file MB", "raw write+fsync MB/s", "save_snapshot MB/s",
              "write % of raw", "no digest MB/s", "digest write ratio", "save_file, no fsync MB/s"]
    r_cols = ["snapshot", "load_snapshot lazy cold ms", "raw read cold MB/s", "load_snapshot cold MB/s",
              "read cold % of raw",
              "raw read warm MB/s", "load_snapshot warm MB/s", "one tensor MB", "one tensor cold ms",
              "one tensor warm ms", "verify ms", "verify load ratio warm"]
    C.write_result("snapshot_io", "Snapshot I/O: recorder writes and lazy reads vs raw file I/O", intro,
                   [("Writes", C.table(rows, w_cols)), ("Reads", C.table(rows, r_cols))],
                   libs=("safetensors", "numpy"))


if __name__ == "__main__":
    main()
