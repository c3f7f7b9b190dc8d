"""Ways to get a user model's per-pair derivatives, timed side by side.

For ``N = B*T`` pairs ``z = [x; u]`` (T = 20, B in {32, 256}: N in {640, 5120}) of a user model
with n = 8, m = 4, the quantities iLQR and its implicit gradient need:

- the Jacobians ``F = df/dz`` ``(N, n, n+m)``;
- the weighted Hessian ``sum_i lam_i d^2 f_i / dz^2`` ``(N, n+m, n+m)`` (multipliers
  ``lam (N, n)``).

Routes:

- ``rows``: ``dilqr_rl.models.jacobian_rows`` / ``hessian_rows``, one batched reverse pass per
  output row over all pairs at once (``hessian_rows``: one gradient with graph, then one
  reverse pass per coordinate);
- ``library``: ``Dynamics.jacobians`` / ``Dynamics.weighted_hessian`` as they are in the
  measured code (the calls DiLQR's derivatives make with the given ``theta``; at the time of
  writing they are ``rows`` through ``Dynamics.step``);
- ``vmap_jacrev``, ``vmap_jacfwd``: ``torch.func.vmap(jacrev(f))`` / ``vmap(jacfwd(f))``;
- Hessian: ``vmap_hessian`` (``torch.func.hessian`` = ``jacfwd(jacrev)``),
  ``vmap_jacrev_jacrev``, ``vmap_jacfwd_jacfwd``.

Each route runs with the parameters passed two ways:

- ``shared``: one parameter vector ``theta (p,)``: ``Dynamics.step`` is a plain batched call
  of ``forward`` through ``torch.func.functional_call``;
- ``per_sample``: ``theta (N, p)`` (per-sample parameters ``(B, p)`` expanded to the
  ``B*T`` pairs; before commit ac0bf6e DiLQR passed this even for shared parameters):
  ``Dynamics.step`` then runs ``vmap(functional_call)`` per sample; the ``torch.func``
  routes vmap over ``(z, theta)``.

Also timed: the plain evaluation ``f(x, u)`` (module call, ``step`` shared, ``step``
per-sample). Every route's result is checked against ``rows``/shared (max abs difference).
Models: linear ``A x + Bm u + c`` (its Hessian is zero) and ``x + dt tanh(A x + Bm u + c)``.

Usage::

    python benchmarks/derivative_routes.py [--quick] [--threads 1]

Writes ``benchmarks/results/derivative_routes.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import hessian, jacfwd, jacrev, vmap

import dilqr_rl as dl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from general_models_problems import LinearModel  # noqa: E402
from general_models_report import code_version, finite_json  # noqa: E402

try:  # the batched reverse-pass helpers (absent if the solver core drops them)
    from dilqr_rl.models import hessian_rows, jacobian_rows
except ImportError:  # pragma: no cover
    jacobian_rows = hessian_rows = None

DT = torch.float64
T = 20


class TanhModel(dl.Dynamics):
    """User-defined mildly nonlinear model ``x' = x + dt tanh(A x + Bm u + c)``."""

    def __init__(self, n: int, m: int, seed: int, dt: float = 0.1):
        super().__init__()
        self.n_state, self.n_ctrl = n, m
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(0.5 * torch.randn(n, n, generator=g, dtype=DT))
        self.Bm = nn.Parameter(torch.randn(n, m, generator=g, dtype=DT))
        self.c = nn.Parameter(0.1 * torch.randn(n, generator=g, dtype=DT))
        self.dt = float(dt)

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return x + self.dt * torch.tanh(x @ self.A.T + u @ self.Bm.T + self.c)


def time_round_robin(fns: dict, repeats: int, budget_s: float, warmup: int = 2):
    """``{key: (median s, min s, runs, result) or exception}`` of every callable in ``fns``.

    ``warmup`` calls each first (the first ``torch.func`` calls trace), then rounds that call
    every route once, so that load from other processes spreads over all routes alike; a route
    drops out of later rounds once it has used ``budget_s`` (after at least 3 runs)."""
    out, ts, used = {}, {}, {}
    for k, fn in fns.items():
        try:
            for _ in range(warmup):
                res = fn()
            out[k] = res.detach()
            ts[k], used[k] = [], 0.0
        except Exception as e:  # a route that does not run is reported, not fatal
            out[k] = e
    for _ in range(repeats):
        for k in ts:
            if len(ts[k]) >= 3 and used[k] > budget_s:
                continue
            t0 = time.perf_counter()
            fns[k]()
            dt = time.perf_counter() - t0
            ts[k].append(dt)
            used[k] += dt
    return {k: (statistics.median(ts[k]), min(ts[k]), len(ts[k]), out[k]) if k in ts else out[k]
            for k in fns}


def routes(dyn: dl.Dynamics, Z: Tensor, lam: Tensor):
    """``{(quantity, route, params): callable}``; quantity in ``f``, ``jacobian``, ``hessian``."""
    n = dyn.n_state
    N = Z.shape[0]
    theta = dyn.theta().detach()
    thN = theta.expand(N, -1)
    X, U = Z[:, :n], Z[:, n:]
    r = {}
    nograd = torch.no_grad()  # plain evaluations as in a rollout
    r[("f", "module_call", "shared")] = nograd(lambda: dyn(X, U))
    r[("f", "step", "shared")] = nograd(lambda: dyn.step(X, U, theta))
    r[("f", "step", "per_sample")] = nograd(lambda: dyn.step(X, U, thN))
    for params, th in (("shared", theta), ("per_sample", thN)):
        if jacobian_rows is not None:
            r[("jacobian", "rows", params)] = (
                lambda th=th: jacobian_rows(lambda zz: dyn.step(zz[..., :n], zz[..., n:], th),
                                            Z)[1])
            r[("hessian", "rows", params)] = (
                lambda th=th: hessian_rows(
                    lambda zz: (lam * dyn.step(zz[..., :n], zz[..., n:], th)).sum(), Z))
        r[("jacobian", "library", params)] = lambda th=th: dyn.jacobians(X, U, th)[1]
        r[("hessian", "library", params)] = lambda th=th: dyn.weighted_hessian(X, U, th, lam)

    # torch.func: one pair at a time, vmapped (parameters shared or mapped along with z)
    def f1(z, th):
        return dyn.step(z[:n], z[n:], th)

    def phi1(z, lm, th):
        return (lm * dyn.step(z[:n], z[n:], th)).sum()

    for params, th, th_dim in (("shared", theta, None), ("per_sample", thN, 0)):
        for name, tr in (("vmap_jacrev", jacrev), ("vmap_jacfwd", jacfwd)):
            g = vmap(tr(f1), in_dims=(0, th_dim))
            r[("jacobian", name, params)] = lambda g=g, th=th: g(Z, th)
        for name, tr in (("vmap_hessian", hessian),
                         ("vmap_jacrev_jacrev", lambda f: jacrev(jacrev(f))),
                         ("vmap_jacfwd_jacfwd", lambda f: jacfwd(jacfwd(f)))):
            h = vmap(tr(phi1), in_dims=(0, 0, th_dim))
            r[("hessian", name, params)] = lambda h=h, th=th: h(Z, lam, th)
    return r


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return ap.parse_args(argv)


def measure(mname: str, dyn: dl.Dynamics, B: int, repeats: int, budget: float) -> list[dict]:
    """Rows of one model and batch size: every route's times, or its error, and its largest
    difference from the reference (``rows``/shared; ``f``: ``module_call``/shared)."""
    n, m = dyn.n_state, dyn.n_ctrl
    N = B * T
    g = torch.Generator().manual_seed(N)
    Z = torch.randn(N, n + m, generator=g, dtype=DT)
    lam = torch.randn(N, n, generator=g, dtype=DT)
    rows, results = [], {}
    for (q, route, params), res in time_round_robin(routes(dyn, Z, lam), repeats,
                                                    budget).items():
        base = {"model": mname, "N": N, "B": B, "T": T, "quantity": q, "route": route,
                "params": params}
        if isinstance(res, Exception):
            rows.append({**base, "error": f"{type(res).__name__}: {res}"[:300]})
            print(f"{mname} N={N} {q} {route} {params}: FAILED {res}", flush=True)
            continue
        med, mn, runs, out = res
        results[(q, route, params)] = out
        rows.append({**base, "median_s": med, "min_s": mn, "runs": runs})
    for row in rows:
        if "error" in row:
            continue
        key = (row["quantity"], row["route"], row["params"])
        ref = results.get((row["quantity"], "rows" if jacobian_rows else "library",
                           "shared")) if row["quantity"] != "f" else \
            results.get(("f", "module_call", "shared"))
        if ref is not None and key in results:
            row["max_abs_diff_vs_reference"] = float((results[key] - ref).abs().max())
    return rows


def fastest(rows: list[dict]) -> list[dict]:
    """Per quantity of one model and batch size (``rows`` of :func:`measure`): the fastest
    route by median (and by min time), the runner-up, and the library's routes against it."""
    best = []
    for q in ("f", "jacobian", "hessian"):
        cand = sorted((r for r in rows if r["quantity"] == q and "median_s" in r),
                      key=lambda r: r["median_s"])
        libs = {p: next((r for r in cand if r["route"] in ("library", "step") and
                         r["params"] == p), None) for p in ("shared", "per_sample")}
        top = cand[0]
        by_min = min(cand, key=lambda r: r["min_s"])
        best.append({
            "model": top["model"], "N": top["N"], "quantity": q,
            "fastest": f"{top['route']}/{top['params']}",
            "fastest_ms": top["median_s"] * 1e3,
            "fastest_by_min_time": f"{by_min['route']}/{by_min['params']}",
            "runner_up": f"{cand[1]['route']}/{cand[1]['params']}" if len(cand) > 1
            else None,
            "speedup_vs_runner_up": cand[1]["median_s"] / top["median_s"]
            if len(cand) > 1 else None,
            **{f"library_{p}_ms": None if r is None else r["median_s"] * 1e3
               for p, r in libs.items()},
            **{f"library_{p}_over_fastest": None if r is None else
               r["median_s"] / top["median_s"] for p, r in libs.items()}})
    return best


def print_timings(rows: list[dict]) -> None:
    """Per model and quantity, every route's median / min ms per ``N`` (and its difference
    from the reference), routes sorted by their first median."""
    for mname in ("linear", "tanh"):
        for q in ("f", "jacobian", "hessian"):
            sel = [r for r in rows if r["model"] == mname and r["quantity"] == q]
            keys = sorted({(r["route"], r["params"]) for r in sel},
                          key=lambda k: next(r.get("median_s", 1e9) for r in sel
                                             if (r["route"], r["params"]) == k))
            Ns = sorted({r["N"] for r in sel})
            print(f"-- {mname} {q}".ljust(33) + "  ".join(f"{'N=' + str(N):>26}" for N in Ns))
            for k in keys:
                cells = []
                for N in Ns:
                    r = next((r for r in sel if r["N"] == N and (r["route"], r["params"]) == k),
                             None)
                    if r is None or "error" in r:
                        cells.append(f"{'failed':>26}")
                    else:
                        d = r.get("max_abs_diff_vs_reference")
                        dd = "-" if d is None else f"{d:.0e}"
                        cells.append(f"{r['median_s'] * 1e3:8.2f} {r['min_s'] * 1e3:7.2f} "
                                     f"({dd:>6})".rjust(26))
                print(f"   {k[0] + '/' + k[1]:30}" + "  ".join(cells))


def print_fastest(best: list[dict]) -> None:
    print("\nfastest:")
    for b in best:
        cur = "".join(f"; library/{p} {b[f'library_{p}_over_fastest']:.1f}x"
                      for p in ("shared", "per_sample")
                      if b[f"library_{p}_over_fastest"] is not None)
        ru = "" if b["runner_up"] is None else \
            f", {b['speedup_vs_runner_up']:.2f}x ahead of {b['runner_up']}"
        alt = "" if b["fastest_by_min_time"] == b["fastest"] else \
            f" [by min time: {b['fastest_by_min_time']}]"
        print(f"  {b['model']:6} N={b['N']:<5} {b['quantity']:8} {b['fastest']:28} "
              f"{b['fastest_ms']:.2f} ms{ru}{cur}{alt}")


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 5 if args.quick else 15
    budget = 2.0 if args.quick else 6.0
    n, m = 8, 4
    load0 = os.getloadavg()
    rows, best = [], []
    for mname, dyn in (("linear", LinearModel(n, m, 0)), ("tanh", TanhModel(n, m, 0))):
        for B in (32, 256):
            cell = measure(mname, dyn, B, repeats, budget)
            rows += cell
            best += fastest(cell)
            print(f"{mname} N={B * T} done", flush=True)

    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "dtype": "float64",
            "n": n, "m": m, "T": T, "quick": args.quick, **code_version(),
            "timing": f"median (and min) of up to {repeats} calls after 2 warm-up calls; the "
                      "routes called in turn (rounds), a route stops after 3 calls once it has "
                      f"used {budget} s; fastest = lowest median",
            "reference": "rows/shared (f: module_call/shared)",
            "library": "Dynamics.jacobians / weighted_hessian (f: Dynamics.step) of the "
                       "measured code, with theta (p,) (shared) or (N, p) (per_sample)",
            "load_average_at_start": load0, "load_average_at_end": os.getloadavg()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "derivative_routes.json").write_text(json.dumps(
        finite_json({"meta": meta, "timings": rows, "fastest": best}), indent=1,
        allow_nan=False))

    print(f"\nthreads={meta['threads']}, float64, n={n}, m={m}; per cell: median ms, min ms "
          "(max |diff| vs the reference)")
    print_timings(rows)
    print_fastest(best)


if __name__ == "__main__":
    main()
