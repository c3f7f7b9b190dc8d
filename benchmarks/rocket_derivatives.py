"""The rocket's closed-form derivatives against the generic autograd route, and what that
does to a rocket imitation step.

Timed, single-threaded by default, float64:

- ``Rocket.jacobians`` and ``Rocket.weighted_hessian`` (closed form,
  ``dilqr_rl/models/rocket_derivatives.py``) against ``Dynamics.jacobians`` /
  ``Dynamics.weighted_hessian`` (one batched reverse pass per output row: 13 for ``F``, 16
  double-backward passes for the Hessian) on ``N = B * 40`` pairs, ``B`` in {5, 32}, shared
  parameters ``(5,)`` and per-sample ``(N, 5)``; each result is checked against the generic one;
- one optimizer step of ``dilqr-rl imitate --env rocket --mode dx`` (5 expert trajectories,
  ``|u| <= 100``, the CLI's settings): forward solve (warm-started from the previous step's
  plan, as in training) and implicit backward, with either route (the model class's two
  methods swapped for the generic ones). Both routes start from the same parameters and the
  same plans and take the same steps (their parameters are compared at the end).

Usage::

    python benchmarks/rocket_derivatives.py [--quick] [--threads 1]

Writes ``benchmarks/results/rocket_derivatives.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

import dilqr_rl as dl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from general_models_report import code_version  # noqa: E402

F64 = torch.float64


@contextlib.contextmanager
def generic_route(enabled: bool):
    """While enabled, ``Rocket`` uses the base class's autograd derivatives."""
    saved = dl.Rocket.jacobians, dl.Rocket.weighted_hessian
    if enabled:
        dl.Rocket.jacobians = dl.Dynamics.jacobians
        dl.Rocket.weighted_hessian = dl.Dynamics.weighted_hessian
    try:
        yield
    finally:
        dl.Rocket.jacobians, dl.Rocket.weighted_hessian = saved


def _time(fn, repeats: int) -> tuple[float, float]:
    fn()
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def _last(out):
    return out[1] if isinstance(out, tuple) else out


def derivative_rows(repeats: int) -> list[dict]:
    """Median / min ms of each derivative call, closed form vs generic."""
    dyn = dl.Rocket().double()
    rows = []
    for B in (5, 32):
        N = B * 40
        g = torch.Generator().manual_seed(B)
        x = torch.randn(N, 13, generator=g, dtype=F64)
        u = 8 * torch.randn(N, 3, generator=g, dtype=F64)
        lam = torch.randn(N, 13, generator=g, dtype=F64)
        for params in ("shared", "per_sample"):
            th = dyn.theta().detach()
            th = th if params == "shared" else th.expand(N, 5).contiguous()
            J, H = dyn.jacobians, dyn.weighted_hessian
            Jg, Hg = dl.Dynamics.jacobians, dl.Dynamics.weighted_hessian
            calls = {"jacobian": (partial(J, x, u, th), partial(Jg, dyn, x, u, th)),
                     "hessian": (partial(H, x, u, th, lam), partial(Hg, dyn, x, u, th, lam))}
            for q, (closed, generic) in calls.items():
                diff = float((_last(closed()) - _last(generic())).abs().max())
                (mc, nc), (mg, ng) = _time(closed, repeats), _time(generic, repeats)
                rows.append(dict(quantity=q, N=N, params=params, closed_ms=mc * 1e3,
                                 closed_min_ms=nc * 1e3, generic_ms=mg * 1e3,
                                 generic_min_ms=ng * 1e3, speedup=mg / mc,
                                 max_abs_diff=diff))
                print(f"{q:8} N={N:<5} {params:10} closed {mc * 1e3:7.2f} ms  generic "
                      f"{mg * 1e3:8.2f} ms  x{mg / mc:5.1f}  |diff| {diff:.0e}", flush=True)
    return rows


def imitation_steps(steps: int) -> dict:
    """Wall and CPU seconds per ``dilqr.dx`` training step, each route, same data."""
    from agents.data import make_expert_data
    from agents.imitation_args import Args
    from agents.learners import make_learner

    data = make_expert_data("rocket", 5, 1, 1, seed=0, u_bound=100.0)
    x, u = data.split("train", 5)
    out = {}
    for route in ("generic", "closed"):
        with generic_route(route == "generic"):
            args = Args(env="rocket", learner="dilqr.dx", n_train=5, lr=0.1, u_bound=100.0)
            torch.manual_seed(0)
            learner = make_learner(args)
            opt = learner.optimizer()
            cache = torch.zeros_like(u)
            walls, cpus = [], []
            for k in range(steps + 2):  # the first two from zeros, not counted
                t0, c0 = time.perf_counter(), time.process_time()
                loss, pred = learner.train_loss(x, u, cache)
                opt.zero_grad()
                loss.backward()
                opt.step()
                cache.copy_(pred.detach())
                if k >= 2:
                    walls.append(time.perf_counter() - t0)
                    cpus.append(time.process_time() - c0)
            out[route] = dict(wall_s=statistics.median(walls), cpu_s=statistics.median(cpus),
                              params=learner.learned().detach().tolist(),
                              loss=float(loss.detach()))
            print(f"imitation step ({route}): {out[route]['wall_s']:.3f} s wall, "
                  f"{out[route]['cpu_s']:.3f} s CPU (median of {steps})", flush=True)
    out["speedup_wall"] = out["generic"]["wall_s"] / out["closed"]["wall_s"]
    out["speedup_cpu"] = out["generic"]["cpu_s"] / out["closed"]["cpu_s"]
    out["max_param_diff"] = max(abs(a - b) for a, b in zip(
        out["generic"]["params"], out["closed"]["params"], strict=True))
    return out


def plot(rows: list[dict], steps: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['quantity']}\nN={r['N']} {r['params']}" for r in rows]
    idx = range(len(rows))
    a.bar([i - 0.2 for i in idx], [r["generic_ms"] for r in rows], 0.4, label="generic autograd")
    a.bar([i + 0.2 for i in idx], [r["closed_ms"] for r in rows], 0.4, label="closed form")
    a.set_xticks(list(idx), labels, fontsize=7)
    a.set_yscale("log")
    a.set_ylabel("ms per call (median)")
    a.set_title("rocket derivatives, float64")
    a.legend()
    b.bar(["generic", "closed"], [steps["generic"]["wall_s"], steps["closed"]["wall_s"]])
    b.set_ylabel("s per training step (median wall)")
    b.set_title(f"rocket imitation dilqr.dx step: x{steps['speedup_wall']:.1f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()
    rows = derivative_rows(5 if a.quick else 20)
    steps = imitation_steps(3 if a.quick else 8)
    meta = dict(date=datetime.datetime.now().isoformat(timespec="seconds"),
                torch=torch.__version__, threads=torch.get_num_threads(), quick=a.quick,
                load_average_at_start=load0, load_average_at_end=os.getloadavg(),
                **code_version())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rocket_derivatives.json").write_text(json.dumps(
        dict(meta=meta, derivatives=rows, imitation_step=steps), indent=1))
    plot(rows, steps, out / "rocket_derivatives.png")
    print(f"wrote {out / 'rocket_derivatives.json'} and .png")


if __name__ == "__main__":
    main()
