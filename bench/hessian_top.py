"""Top Hessian eigenvalue: our Lanczos on HVPOperator vs PyHessian's power iteration vs hessian-eigenthings.

Same model, same batch (512 synthetic samples, 10 classes, cross-entropy, float32), the model
trained 30 Adam steps first. Each method runs with its own stopping rule at a few settings; we
report Hessian-vector products (counted by wrapping each library's HVP function), wall time
(including building the HVP graph), and the relative error against a tightly converged
reference (our Lanczos at tol 1e-8). Methods are interleaved within each repeat and every
repeat uses a different start vector (seed = repeat index); medians of HVPs and time, the
worst error over repeats. The "oracle" section shows how many HVPs each algorithm needs before
its estimate first lies within 1e-3 of the reference (no stopping rule can do better).

Run: .venv/bin/python bench/hessian_top.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import functools

import torch
import torch.nn.functional as F
from torch.func import functional_call

import _common as C  # noqa: E402  (adds the repo root to sys.path)
from forensics.math.hvp import HVPOperator  # noqa: E402
from forensics.math.lanczos import lanczos  # noqa: E402

TARGET = 1e-3


# ---------------------------------------------------------------- the three contenders

def _pyhessian_module():
    """The module pyhessian.hessian (the package re-exports a class of the same name over it)."""
    import importlib

    return importlib.import_module("pyhessian.hessian")


def _loss_fn(model, x, y):
    return lambda p: F.cross_entropy(functional_call(model, p, (x,)), y)


def run_ours(model, x, y, *, k, tol, seed, max_iter=300):
    """Our engine as the analyzer calls it: HVPOperator (double backward) + Lanczos."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    with C.Timer() as t:
        op = HVPOperator(_loss_fn(model, x, y), params)
        res = lanczos(op, k=k, tol=tol, max_iter=max_iter, seed=seed)
    return {"values": res.eigenvalues.tolist(), "hvps": op.num_matvecs, "s": t.s,
            "capped": not res.converged}


def run_pyhessian(model, x, y, *, k, tol, seed, max_iter=100):
    """pyhessian.hessian(...).eigenvalues(maxIter, tol, top_n): power iteration with deflation."""
    ph = _pyhessian_module()

    counter = {"n": 0}
    original = ph.hessian_vector_product

    def counted(gradsH, params, v):
        counter["n"] += 1
        return original(gradsH, params, v)

    model.zero_grad(set_to_none=True)  # PyHessian reads p.grad after its own backward
    torch.manual_seed(seed)  # its start vectors come from the global generator
    ph.hessian_vector_product = counted
    try:
        with C.Timer() as t:
            h = ph.hessian(model, F.cross_entropy, data=(x, y), cuda=False)
            vals, _ = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
    finally:
        ph.hessian_vector_product = original
        model.zero_grad(set_to_none=True)  # drop the create_graph grads it left behind
    return {"values": sorted(vals, reverse=True), "hvps": counter["n"], "s": t.s,
            "capped": counter["n"] >= k * max_iter}


def _eigenthings_op(model, x, y):
    import hessian_eigenthings as he

    op = he.HessianOperator(model, [(x, y)], he.supervised_loss(F.cross_entropy))
    counter = {"n": 0}
    matvec = op.matvec

    def counted(v):
        counter["n"] += 1
        return matvec(v)

    op.matvec = counted
    return op, counter


def run_eigenthings_lanczos(model, x, y, *, k, max_iter, seed):
    """hessian_eigenthings.lanczos: a fixed number of Lanczos steps (default 2k), no early stop."""
    import hessian_eigenthings as he

    with C.Timer() as t:
        op, counter = _eigenthings_op(model, x, y)
        res = he.lanczos(op, k=k, max_iter=max_iter, which="LA", seed=seed)
    return {"values": sorted(res.eigenvalues.tolist(), reverse=True), "hvps": counter["n"],
            "s": t.s, "capped": False}


def run_eigenthings_power(model, x, y, *, k, tol, seed, max_iter=100):
    """hessian_eigenthings power iteration (k = 1) or deflated power iteration (k > 1)."""
    import hessian_eigenthings as he

    with C.Timer() as t:
        op, counter = _eigenthings_op(model, x, y)
        if k == 1:
            lam, _, _, iters, conv = he.power_iteration_one(op, max_iter=max_iter, tol=tol, seed=seed)
            values, capped = [lam], not conv
        else:
            res = he.deflated_power_iteration(op, k=k, max_iter=max_iter, tol=tol, seed=seed)
            values, capped = sorted(res.eigenvalues.tolist(), reverse=True), not bool(res.converged.all())
    return {"values": values, "hvps": counter["n"], "s": t.s, "capped": capped}


def configs(k: int):
    """(library, setting, runner(model, x, y, seed)) for top-k."""
    p = functools.partial
    out = [
        ("ours", "Lanczos tol=1e-2", p(run_ours, k=k, tol=1e-2)),
        ("ours", "Lanczos tol=1e-3 (analyzer default)", p(run_ours, k=k, tol=1e-3)),
        ("PyHessian 0.1", "power tol=1e-3, maxIter=100 (default)", p(run_pyhessian, k=k, tol=1e-3)),
        ("PyHessian 0.1", "power tol=1e-4, maxIter=100", p(run_pyhessian, k=k, tol=1e-4)),
        ("PyHessian 0.1", "power tol=1e-5, maxIter=1000", p(run_pyhessian, k=k, tol=1e-5, max_iter=1000)),
        ("hessian-eigenthings", f"Lanczos max_iter={2 * k} (default 2k)",
         p(run_eigenthings_lanczos, k=k, max_iter=2 * k)),
    ]
    for m in ([10, 20, 40] if k == 1 else [4 * k, 6 * k]):
        out.append(("hessian-eigenthings", f"Lanczos max_iter={m}", p(run_eigenthings_lanczos, k=k, max_iter=m)))
    name = "power" if k == 1 else "deflated power"
    out.append(("hessian-eigenthings", f"{name} tol=1e-4, max_iter=100 (default)",
                p(run_eigenthings_power, k=k, tol=1e-4)))
    return out


# ---------------------------------------------------------------- reference and comparison

def reference(model, x, y, k):
    """Our Lanczos at tol 1e-8 (float32): the values every method is scored against."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    op = HVPOperator(_loss_fn(model, x, y), params)
    res = lanczos(op, k=k + 2, tol=1e-8, max_iter=400, seed=12345)
    return res.eigenvalues[:k].tolist(), bool(res.converged), op.num_matvecs


def rel_error(values, ref) -> float:
    """max_i |θ_i − λ_i| / |λ_i| over the k wanted, both sorted descending."""
    return max(abs(a - b) / abs(b) for a, b in zip(values, ref))


def compare(problem: str, k: int, repeats: int, cfgs=None):
    model, x, y = C.hessian_problem(problem)
    ref, ref_ok, ref_hvps = reference(model, x, y, k)
    print(f"{problem}: {C.num_params(model):,} params; reference top-{k} {ref[:3]}… "
          f"(converged={ref_ok}, {ref_hvps} HVPs)", flush=True)
    cfgs = cfgs or configs(k)
    runs = {i: [] for i in range(len(cfgs))}
    for r in range(repeats):
        order = list(range(len(cfgs)))
        order = order[r % len(order):] + order[:r % len(order)]  # rotate who goes first
        for i in order:
            out = cfgs[i][2](model, x, y, seed=r)
            out["err"] = rel_error(out["values"], ref)
            runs[i].append(out)
    rows = []
    for i, (lib, setting, _) in enumerate(cfgs):
        rs = runs[i]
        hvps, secs = C.median([o["hvps"] for o in rs]), C.median([o["s"] for o in rs])
        worst = max(o["err"] for o in rs)
        rows.append({"model": problem.split(" (")[0], "library": lib, "setting": setting,
                     "HVPs": int(hvps), "time s": secs, "ms/HVP": 1e3 * secs / hvps,
                     "median rel err": C.median([o["err"] for o in rs]), "worst rel err": worst,
                     f"≤{TARGET:g}": worst <= TARGET,
                     "hit max_iter": any(o["capped"] for o in rs)})
    with torch.no_grad():
        loss = float(F.cross_entropy(model(x), y))
    meta = {"model": problem, "params": C.num_params(model), "loss": loss, "ref": ref, "ref_converged": ref_ok,
            "ref_hvps": ref_hvps}
    return rows, meta


def headline(rows, costs=None):
    """Per model: the cheapest setting (fewest HVPs) of each library that met the target in every repeat.

    With `costs` ({model: {library: ms per HVP}}), also the time estimated as HVPs × ms/HVP from
    the interleaved single-product timing, which is far less noisy than whole-run wall time here.
    """
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        best = {}
        for r in rows:
            if r["model"] != model or not r[f"≤{TARGET:g}"]:
                continue
            if r["library"] not in best or r["HVPs"] < best[r["library"]]["HVPs"]:
                best[r["library"]] = r
        ours = best.get("ours")
        cost = (costs or {}).get(model, {})
        est = {lib: r["HVPs"] * cost[lib] / 1e3 for lib, r in best.items() if lib in cost}
        for lib, r in best.items():
            out.append({"model": model, "library": lib, "cheapest setting at ≤1e-3": r["setting"],
                        "HVPs": r["HVPs"], "wall s (median)": r["time s"],
                        "HVPs / ours": r["HVPs"] / ours["HVPs"] if ours else None,
                        "wall / ours": r["time s"] / ours["time s"] if ours else None,
                        "ms/HVP (interleaved)": cost.get(lib),
                        "est. s = HVPs × ms/HVP": est.get(lib),
                        "est. / ours": est[lib] / est["ours"] if lib in est and "ours" in est else None})
        for lib in ("PyHessian 0.1", "hessian-eigenthings"):
            if lib not in best:
                out.append({"model": model, "library": lib,
                            "cheapest setting at ≤1e-3": "none of the settings tried"})
    return out


# ---------------------------------------------------------------- per-HVP cost, interleaved

def hvp_costs(problem: str, rounds: int = 15) -> dict:
    """Median ms of one HVP of each library, single products alternating round by round.

    On a shared machine whole-run wall times swing by 2–5×; single products taken in turn see
    the same load, so their medians compare the per-product cost fairly.
    """
    ph = _pyhessian_module()
    model, x, y = C.hessian_problem(problem)
    params = {n: p.detach() for n, p in model.named_parameters()}
    ours = HVPOperator(_loss_fn(model, x, y), params)
    model.zero_grad(set_to_none=True)
    h = ph.hessian(model, F.cross_entropy, data=(x, y), cuda=False)
    eig, _ = _eigenthings_op(model, x, y)
    v = torch.randn(ours.dim, generator=torch.Generator().manual_seed(0))
    v_list = list(ours.spec.split(v))
    v_list = [t.reshape(p.shape) for t, p in zip(v_list, h.params)]
    fns = {"ours": lambda: ours.matvec(v), "PyHessian 0.1": lambda: ph.hessian_vector_product(h.gradsH, h.params, v_list),
           "hessian-eigenthings": lambda: eig.matvec(v)}
    times = {k: [] for k in fns}
    for r in range(rounds):
        names = list(fns)
        names = names[r % 3:] + names[:r % 3]
        for name in names:
            with C.Timer() as t:
                fns[name]()
            times[name].append(t.s)
    model.zero_grad(set_to_none=True)
    return {k: 1e3 * C.median(v[1:]) for k, v in times.items()}


# ---------------------------------------------------------------- oracle: HVPs to first reach 1e-3

def oracle_counts(problem: str, max_hvps: int = 300):
    """HVPs before the estimate first lies within 1e-3: Krylov (Rayleigh-Ritz) vs power sequence."""
    ph = _pyhessian_module()

    model, x, y = C.hessian_problem(problem)
    ref = reference(model, x, y, 1)[0][0]
    params = {n: p.detach() for n, p in model.named_parameters()}
    op = HVPOperator(_loss_fn(model, x, y), params)
    qs, aqs = [], []

    def recording(v):
        qs.append(v.clone())
        out = op.matvec(v)
        aqs.append(out.clone())
        return out

    lanczos(recording, k=1, tol=0.0, max_iter=60, seed=0, dim=op.dim)
    Q, AQ = torch.stack(qs).double(), torch.stack(aqs).double()
    krylov = None
    for m in range(1, len(qs) + 1):
        T = Q[:m] @ AQ[:m].T
        theta = float(torch.linalg.eigvalsh((T + T.T) / 2)[-1])
        if abs(theta - ref) / ref <= TARGET:
            krylov = m
            break
    del Q, AQ
    qs.clear()  # free the basis; `del` of a closed-over name makes it undefined in `recording`
    aqs.clear()

    seq = []
    original = ph.hessian_vector_product

    def counted(gradsH, ps, v):
        hv = original(gradsH, ps, v)
        seq.append(float(sum((a * b).sum() for a, b in zip(hv, v))))
        return hv

    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    ph.hessian_vector_product = counted
    try:
        ph.hessian(model, F.cross_entropy, data=(x, y), cuda=False).eigenvalues(maxIter=max_hvps, tol=0.0)
    finally:
        ph.hessian_vector_product = original
        model.zero_grad(set_to_none=True)
    power = next((i + 1 for i, th in enumerate(seq) if abs(th - ref) / ref <= TARGET), None)
    return {"model": problem.split(" (")[0], "Lanczos HVPs to 1e-3": krylov,
            "power-iteration HVPs to 1e-3": power if power else f">{max_hvps}",
            "power err after 100 HVPs": abs(seq[min(99, len(seq) - 1)] - ref) / ref}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the ~100k MLP only")
    args = ap.parse_args()
    problems = list(C.PROBLEMS)[:1] if args.quick else list(C.PROBLEMS)
    rows, metas, oracle, costs = [], [], [], {}
    for prob in problems:
        big = "1M" in prob
        cfgs = [c for c in configs(1) if not (big and "max_iter=40" in c[1])]
        r, m = compare(prob, 1, args.repeats, cfgs)
        rows += r
        metas.append(m)
        print(C.table(r), flush=True)
        costs[prob.split(" (")[0]] = hvp_costs(prob)
        print(costs, flush=True)
        oracle.append(oracle_counts(prob, max_hvps=150 if big else 300))
        print(oracle[-1], flush=True)
    intro = [
        f"- problem: 512 synthetic samples, 10 classes, cross-entropy, float32; models trained 30 Adam "
        f"steps first (lr 1e-3; 1e-4 for the 1M MLP, which memorises the batch at 1e-3); {args.repeats} repeats with start-vector seed = repeat index, methods "
        "interleaved (rotated order)",
        "- HVPs counted by wrapping `pyhessian.hessian.hessian_vector_product` and "
        "`HessianOperator.matvec` (hessian-eigenthings), and `HVPOperator.num_matvecs` (ours); time "
        "includes building the graph; hessian-eigenthings recomputes forward + gradient for every "
        "HVP (its design), hence its higher ms/HVP",
        "- error: |θ − λ| / λ against our Lanczos at tol 1e-8: "
        + "; ".join(f"{m['model'].split(' (')[0]} ({m['params']:,} params) λ_max = {m['ref'][0]:.6g} "
                    f"(batch loss {m['loss']:.3g}; reference {m['ref_hvps']} HVPs, converged={m['ref_converged']})"
                    for m in metas),
        "- wall times swing 2–5× here (other jobs on the 2 cores); HVP counts are exact and "
        "deterministic per seed, so the headline also gives time estimated as HVPs × the per-HVP "
        "cost from interleaved single products",
        "- both peer libraries ran unmodified on torch 2.13 for these calls (PyHessian's `density()` "
        "would fail: it calls the removed `torch.eig`; not used here)",
    ]
    cols = ["model", "library", "setting", "HVPs", "time s", "ms/HVP", "median rel err",
            "worst rel err", f"≤{TARGET:g}", "hit max_iter"]
    C.write_result("hessian_top", "Top Hessian eigenvalue: ours vs PyHessian vs hessian-eigenthings", intro, [
        ("Headline: cheapest setting of each library that reached 1e-3 in every repeat",
         C.table(headline(rows, costs))),
        ("Per-HVP cost: one product at a time, the three libraries alternating, 15 rounds, median ms",
         C.table([{"model": m, **{k: v for k, v in c.items()}} for m, c in costs.items()])),
        ("All settings (median HVPs and time, worst error over repeats)", C.table(rows, cols)),
        ("Oracle: HVPs until the estimate first lies within 1e-3 (seed 0, no stopping rule)",
         C.table(oracle)),
    ])


if __name__ == "__main__":
    main()
