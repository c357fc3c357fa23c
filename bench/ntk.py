"""Empirical NTK top-s: dense Jacobian contraction vs matrix-free Lanczos vs the structured (per-layer) kernel.

Every measurement runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is
that of one method on one batch size; a ``baseline`` subprocess that only builds the model and
the batch gives the memory every case starts from. Cases are repeated (different processes,
interleaved) and the median time is reported; time is that of ``empirical_ntk(...)`` alone.
Agreement: the largest relative difference of the top-s eigenvalues against the structured
kernel (exact eigh of the full K) for the MLP, against dense for the CNN (no structured path).

Run: .venv/bin/python bench/ntk.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import _common as C  # noqa: E402

TOP_S = 5
MLP_SIZES = [256, 1024, 768, 1]
# dense at n = 2048 on the 1M MLP: the Jacobian alone is 2048 × 1.05M × 4 B = 8.6 GB, plus jacrev's
# intermediates (DESIGN.md: 4.4 GB at n = 1024) — more than this 24 GB machine can hold next to
# other jobs, so it is skipped.
CASES = [("mlp", m, n) for n in (128, 512, 2048) for m in ("structured", "matrix_free", "dense")
         if not (m == "dense" and n == 2048)]
CASES += [("cnn", m, n) for n in (64, 256, 1024) for m in ("dense", "matrix_free")]


def _problem(model_name: str, n: int):
    import torch

    torch.manual_seed(0)
    if model_name == "mlp":
        model = C.mlp(MLP_SIZES)
        x = torch.randn(n, MLP_SIZES[0])
    else:
        model = C.small_cnn(num_classes=1)
        x = torch.randn(n, 3, 16, 16)
    params = {k: v.detach() for k, v in model.named_parameters()}
    return model, params, x


def child(model_name: str, method: str, n: int) -> dict:
    """One measurement (runs in a fresh process)."""
    from forensics.math.ntk import empirical_ntk

    model, params, x = _problem(model_name, n)
    out = {"model": model_name, "method": method, "n": n, "params": C.num_params(model)}
    if method != "baseline":
        t0 = time.perf_counter()
        res = empirical_ntk(model, params, x, k=TOP_S, method=method, max_samples=None)
        out["s"] = time.perf_counter() - t0
        out["values"] = res.eigenvalues[:TOP_S].tolist()
        out["matvecs"] = res.num_matvecs
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(model_name: str, method: str, n: int) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    p = subprocess.run([sys.executable, __file__, "--child", model_name, method, str(n)],
                       capture_output=True, text=True, env=env, timeout=600)
    if p.returncode != 0:
        return {"model": model_name, "method": method, "n": n, "error": p.stderr.strip().splitlines()[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args()
    if args.child:
        m, method, n = args.child
        print(json.dumps(child(m, method, int(n))))
        return
    base = {m: run_child(m, "baseline", 2048)["maxrss_mb"] for m in ("mlp", "cnn")}
    runs: dict[tuple, list] = {c: [] for c in CASES}
    for r in range(args.repeats):
        order = CASES if r % 2 == 0 else CASES[::-1]
        for case in order:
            out = run_child(*case)
            print(out, flush=True)
            runs[case].append(out)
    rows = []
    for case, outs in runs.items():
        ok = [o for o in outs if "error" not in o]
        if not ok:
            rows.append({"model": case[0], "n": case[2], "method": case[1], "error": outs[0]["error"]})
            continue
        ref_method = "structured" if case[0] == "mlp" else "dense"
        ref = next((o for o in runs.get((case[0], ref_method, case[2]), []) if "values" in o), None)
        vals = ok[0]["values"]
        agree = (max(abs(a - b) / abs(b) for a, b in zip(vals, ref["values"])) if ref else None)
        peak = C.median([o["maxrss_mb"] for o in ok])
        rows.append({"model": case[0], "params": ok[0]["params"], "n": case[2], "method": case[1],
                     "time s": C.median([o["s"] for o in ok]), "peak RSS MB": peak,
                     "peak − baseline MB": peak - base[case[0]],
                     "NTK products": ok[0]["matvecs"] or None, f"λ_1": vals[0],
                     f"max rel diff top-{TOP_S} vs {ref_method}": agree})
    rows.sort(key=lambda r: (r["model"], r["n"], r["method"]))
    intro = [
        f"- MLP {'-'.join(map(str, MLP_SIZES))} (tanh, scalar output, so K is n×n) and the small CNN "
        "of hessian_top (scalar output); Gaussian inputs; float32; top-s = "
        f"{TOP_S} eigenvalues; `forensics.math.ntk.empirical_ntk(model, params, x, k={TOP_S}, "
        "method=..., max_samples=None)`; matrix-free = NTK-vector products + our Lanczos at tol 1e-4",
        f"- one subprocess per measurement; peak = `ru_maxrss`; baseline process (torch imported, "
        f"model and batch built, nothing computed): MLP {base['mlp']:.0f} MB, CNN {base['cnn']:.0f} MB; "
        f"{args.repeats} repeats, interleaved (forward then reverse order), median time",
        "- dense at n = 2048 on the MLP skipped: its Jacobian alone is 2048 × 1.05M × 4 B = 8.6 GB "
        "(plus jacrev intermediates) on a 24 GB machine shared with other jobs",
        "- OPENBLAS_NUM_THREADS=1 in the children (DESIGN.md: OpenBLAS threads fight torch's)",
    ]
    cols = ["model", "params", "n", "method", "time s", "peak RSS MB", "peak − baseline MB",
            "NTK products", "λ_1"] + [c for c in rows[0] if c.startswith("max rel diff")]
    cols = list(dict.fromkeys(cols + [k for r in rows for k in r if k.startswith("max rel diff")]))
    C.write_result("ntk", "Empirical NTK top-s: dense vs matrix-free vs structured", intro,
                   [("Results", C.table(rows, cols + (["error"] if any("error" in r for r in rows) else [])))],
                   libs=("numpy", "scipy"))


if __name__ == "__main__":
    main()
