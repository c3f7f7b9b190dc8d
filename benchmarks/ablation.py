"""Ablation (the paper's section 5.3): what each vectorization buys, time per component.

Variants, each on the same pendulum swing-ups (batch 32, fixed 20 iterations, ``tol=0``),
across horizons T in {10, 20, 50, 100}:

- ``full``: the default solver: analytic Jacobians for all ``B*T`` pairs in one call, all
  line-search step sizes rolled out at once;
- ``autograd_jac``: Jacobians from batched autograd (the generic path every user model gets)
  instead of the pendulum's closed form;
- ``per_step_linearization``: one Jacobian call per time step (not vectorized over ``T``);
- ``sequential_line_search``: step sizes rolled out one after the other until every sample
  accepted one.
- ``implicit_backward`` timing is reported for the full solver.

The problem is the ``pendulum`` task of :mod:`dilqr_rl.tasks` (its model, parameters, ``dt``,
bounds and cost; the variants swap in a subclass of its model), from spread initial angles.

Component times come from wrapping the functions the solver calls (the Jacobians in
:mod:`dilqr_rl.derivatives`, the cost's quadratization, the Riccati pass in :mod:`dilqr_rl.qp`);
"line search + rest" is the remainder.

Usage: ``python benchmarks/ablation.py [--threads 1] [--batch 32] [--iters 20]``; writes
``benchmarks/results/ablation.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import torch

import dilqr_rl as dl
import dilqr_rl.derivatives as derivatives_mod
import dilqr_rl.qp as qp_mod
from dilqr_rl import tasks

PENDULUM = tasks.get("pendulum")

VARIANTS = ("full", "autograd_jac", "per_step_linearization", "sequential_line_search")


class AutogradPendulum(dl.Pendulum):
    """The pendulum with its analytic Jacobian switched off (the generic autograd path)."""

    def jacobians(self, x, u, theta):
        return dl.Dynamics.jacobians(self, x, u, theta)


class PerStepPendulum(dl.Pendulum):
    """Linearizes one time step at a time (a loop over T instead of one batched call)."""

    horizon = 1

    def jacobians(self, x, u, theta):
        B = x.shape[0] // self.horizon

        def th(t):  # shared (p,) or per pair (B*T, p)
            return theta if theta.dim() == 1 else theta.view(B, self.horizon, -1)[:, t]

        parts = [super(PerStepPendulum, self).jacobians(
            x.view(B, self.horizon, -1)[:, t], u.view(B, self.horizon, -1)[:, t], th(t))
            for t in range(self.horizon)]
        xn = torch.stack([p[0] for p in parts], 1).reshape(x.shape[0], -1)
        F = torch.stack([p[1] for p in parts], 1).reshape(x.shape[0], *parts[0][1].shape[1:])
        return xn, F


class Timers:
    def __init__(self):
        self.t = defaultdict(float)

    def wrap(self, name, fn):
        def inner(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            self.t[name] += time.perf_counter() - t0
            return out
        return inner


MODELS = {"autograd_jac": AutogradPendulum, "per_step_linearization": PerStepPendulum}


def run(variant: str, T: int, B: int, iters: int) -> dict:
    dt = torch.float64
    cfg = dl.ILQRConfig(max_iter=iters, tol=0.0,
                        batched_line_search=variant != "sequential_line_search")
    # the pendulum task with the variant's model class (same parameters, dt, bounds, cost)
    task = dataclasses.replace(PENDULUM, model=MODELS.get(variant, PENDULUM.model))
    ctrl = task.controller(T, dtype=dt, config=cfg)
    if variant == "per_step_linearization":
        ctrl.dynamics.horizon = T
    th = torch.linspace(-0.95 * math.pi, 0.95 * math.pi, B, dtype=dt)
    x0 = torch.stack([th.cos(), th.sin(), torch.zeros_like(th)], -1)
    ctrl(x0)  # warm-up
    timers = Timers()
    orig = (derivatives_mod.linearize, qp_mod.lqr_backward, type(ctrl.cost).quadratize)
    derivatives_mod.linearize = timers.wrap("linearize", orig[0])
    qp_mod.lqr_backward = timers.wrap("riccati", orig[1])
    type(ctrl.cost).quadratize = timers.wrap("quadratize", orig[2])
    try:
        x0r = x0.clone().requires_grad_(True)
        t0 = time.perf_counter()
        sol = ctrl(x0r)
        t1 = time.perf_counter()
    finally:
        derivatives_mod.linearize, qp_mod.lqr_backward, type(ctrl.cost).quadratize = orig
    comps = dict(timers.t)
    t2 = time.perf_counter()
    sol.u.sum().backward()
    t3 = time.perf_counter()
    total = t1 - t0
    comps["line_search_and_rest"] = total - sum(comps.values())
    return {"variant": variant, "T": T, "B": B, "iters": iters, "forward_s": total,
            "components_s": comps, "implicit_backward_s": t3 - t2}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [run(v, T, args.batch, args.iters) for T in (10, 20, 50, 100) for v in VARIANTS]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": "float64"}
    (out / "ablation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"threads={meta['threads']} batch={args.batch} iterations={args.iters}")
    print(f"{'T':>4} {'variant':24} {'fwd ms':>8} {'x full':>7} {'linearize':>9} "
          f"{'quadratize':>10} {'riccati':>8} {'ls+rest':>8} {'bwd ms':>7}")
    for r in rows:
        full = next(x for x in rows if x["T"] == r["T"] and x["variant"] == "full")
        c = r["components_s"]
        print(f"{r['T']:>4} {r['variant']:24} {r['forward_s'] * 1e3:>8.1f} "
              f"{r['forward_s'] / full['forward_s']:>7.2f} {c.get('linearize', 0) * 1e3:>9.1f} "
              f"{c.get('quadratize', 0) * 1e3:>10.1f} {c.get('riccati', 0) * 1e3:>8.1f} "
              f"{c['line_search_and_rest'] * 1e3:>8.1f} {r['implicit_backward_s'] * 1e3:>7.1f}")
    plot(rows, out / "ablation.png")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ts = sorted({r["T"] for r in rows})
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.2
    comps = ("linearize", "quadratize", "riccati", "line_search_and_rest")
    colors = dict(zip(comps, ("C0", "C1", "C2", "C3"), strict=True))
    for i, v in enumerate(VARIANTS):
        for k, T in enumerate(Ts):
            r = next(x for x in rows if x["T"] == T and x["variant"] == v)
            bottom = 0.0
            for c in comps:
                val = r["components_s"].get(c, 0.0) * 1e3
                ax.bar(k + (i - 1.5) * width, val, width, bottom=bottom, color=colors[c],
                       edgecolor="k", linewidth=0.3, label=c if (i == 0 and k == 0) else None)
                bottom += val
            if k == 0:
                ax.text(k + (i - 1.5) * width, bottom, v.replace("_", "\n"), fontsize=5,
                        ha="center", va="bottom")
    ax.set_xticks(range(len(Ts)), [f"T={T}" for T in Ts])
    ax.set_ylabel("forward time [ms]")
    ax.set_title("Ablation: full | autograd Jacobians | per-step linearization | "
                 "sequential line search")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
