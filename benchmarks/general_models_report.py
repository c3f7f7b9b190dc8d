"""Reporting of benchmarks/general_models.py: the targets, the run's metadata helpers, the
printed tables and the figure. (``code_version`` and ``finite_json`` serve the other
benchmarks' JSON too.)"""

from __future__ import annotations

import datetime
import math
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import dilqr_rl as dl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from general_models_problems import ARM_BOUND, ARM_GOAL, ARM_W, ARM_WT  # noqa: E402

FWD_TARGET, BWD_TARGET = 0.2, 0.5


def code_version() -> dict:
    """The git commit of the ``dilqr_rl`` being measured and whether its files (``dilqr_rl/``,
    ``envs/``) differ from it (the solver core changes between runs)."""
    root = Path(dl.__file__).resolve().parent.parent

    def git(*a):
        r = subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,
                           timeout=30)
        return r.stdout.strip() if r.returncode == 0 else None

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no", "--", "dilqr_rl", "envs")
    except (OSError, subprocess.SubprocessError):
        commit = status = None
    return {"dilqr_rl_commit": commit,
            "dilqr_rl_uncommitted_changes": None if status is None else bool(status)}


def finite_json(v):
    """``v`` with non-finite floats as the strings ``"inf"``, ``"-inf"``, ``"nan"`` (strict
    JSON has no such numbers)."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: finite_json(w) for k, w in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite_json(w) for w in v]
    return v


def solver_diagnostics(sol) -> dict:
    """Stats of the solver's own certificates where the ``Solution`` has them (``kkt``: first-
    order residual, ``pivot``: smallest reduced-Hessian pivot; absent before commit ac0bf6e)."""
    out = {}
    for name, fns in (("kkt", ("median", "max")), ("pivot", ("min",))):
        v = getattr(sol, name, None)
        if isinstance(v, Tensor) and v.numel():
            v = v.detach().double()
            for fn in fns:
                out[f"{name}_{fn}"] = float(getattr(v, fn)() if fn != "median" else v.median())
    return out


def run_meta(args, repeats: int, budget: float, load0, t_start: float) -> dict:
    """The JSON's ``meta``: versions, machine, settings, load, total time."""
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch": torch.__version__, "mpc_pytorch": version("mpc"),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "dtype": "float64", "quick": args.quick,
            **code_version(),
            "iters": args.iters,
            "timing": f"median of up to {repeats} runs per library, the two libraries "
                      f"alternating, after one warm-up run each; at most {budget} s of repeats "
                      "per row",
            "load_average_at_start": load0, "load_average_at_end": os.getloadavg(),
            "mpc_settings": "lqr_iter=K, eps=1e-300, not_improved_lim=1e9, exit_unconverged="
                            "False, detach_unconverged=False, GradMethods.AUTO_DIFF (LinDx for"
                            " the linear model), default line search, T_mpc = T + 1",
            "dilqr_settings": "ILQRConfig(max_iter=K, tol=0), grad='implicit'",
            "targets": {"forward_per_iter_ratio": FWD_TARGET, "backward_ratio": BWD_TARGET},
            "arm": {"goal": ARM_GOAL, "weights": ARM_W, "terminal_weights": ARM_WT,
                    "bound": ARM_BOUND},
            "total_s": time.perf_counter() - t_start}


def print_summary(meta: dict, T: int, rows: list, agree: list, lq: list, cp_rows: list) -> None:
    """The tables of speed rows, agreement, and iteration counts."""

    print(f"\nthreads={meta['threads']}, float64, K={meta['iters']} iterations, T={T}, "
          f"total {meta['total_s']:.0f} s")
    print(f"{'model':7} {'B':>4} {'ours ms/it':>10} {'mpc ms/it':>10} {'fwd ratio':>9} "
          f"{'<=0.2':>5} {'ours bwd ms':>11} {'mpc bwd ms':>10} {'bwd ratio':>9} {'<=0.5':>5}")
    for r in rows:
        print(f"{r['model']:7} {r['B']:>4} {r['dilqr_forward_per_iter_s'] * 1e3:>10.2f} "
              f"{r['mpc_forward_per_iter_s'] * 1e3:>10.2f} {r['forward_per_iter_ratio']:>9.3f} "
              f"{'yes' if r['meets_forward_target'] else 'no':>5} "
              f"{r['dilqr_backward_s'] * 1e3:>11.2f} {r['mpc_backward_s'] * 1e3:>10.2f} "
              f"{r['backward_ratio']:>9.3f} {'yes' if r['meets_backward_target'] else 'no':>5}")
    for a in agree:
        print(f"agreement {a['model']:6} B={a['B']}: converged DiLQR {a['dilqr_converged']}, "
              f"mpc {a['mpc_converged_by_projected_gradient']}, both {a['both_converged']}; "
              f"max |du| over both {a['max_u_diff_both_converged']}, max |dx| "
              f"{a['max_x_diff_both_converged']}; max |du| over all {a['max_u_diff_all']:.2e}; "
              f"cost higher than the other's on DiLQR "
              f"{a['samples_where_dilqr_cost_higher_by_1e-6']}"
              f", mpc {a['samples_where_mpc_cost_higher_by_1e-6']}")
    print(f"{'problem':42} {'it med':>6} {'it max':>6} {'conv':>5} {'max |rel dJ| vs QP':>18}")
    for r in lq:
        d = r["rel_cost_diff_to_qp_converged"]["max_abs"]
        fc = r["converged_but_cost_above_qp_by_1e-6"]
        print(f"{r['problem']:42} {r['iterations_median']:>6.1f} {r['iterations_max']:>6} "
              f"{r['converged_fraction']:>5.2f} {'-' if d is None else f'{d:.1e}':>18}"
              + (f"  ({len(fc)} converged but > 1e-6 above the QP optimum)" if fc else ""))
    for r in cp_rows:
        print(f"{r['problem']:42} {r['iterations_median']:>6.1f} {r['iterations_max']:>6} "
              f"{r['converged_fraction']:>5.2f}  (within 100: "
              f"{r['converged_within_100_fraction']:.2f})")


def plot(rows, lq, cp_rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    labels = [f"{r['model']} B{r['B']}" for r in rows]
    colors = ["C0" if r["model"] == "linear" else "C1" for r in rows]
    for ax, key, target, title in (
            (axes[0, 0], "forward_per_iter_ratio", FWD_TARGET,
             "forward time / iteration, DiLQR / mpc.pytorch"),
            (axes[0, 1], "backward_ratio", BWD_TARGET, "backward time, DiLQR / mpc.pytorch")):
        vals = [r[key] for r in rows]
        ax.barh(range(len(vals)), vals, color=colors)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
        ax.set_yticks(range(len(vals)), labels)
        ax.invert_yaxis()
        ax.axvline(target, color="r", ls="--", label=f"target {target}x")
        ax.axvline(1.0, color="gray", ls=":", lw=1)
        ax.set_xscale("log")
        lo, hi = min(vals + [target]) / 1.5, max(vals + [1.0]) * 1.5
        ax.set_xlim(lo, hi)
        ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20) if lo <= t <= hi]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    top = max(max(r["iterations"]) for r in lq)
    _iteration_hist(axes[1, 0], lq, np.arange(0.5, top + 1.5, 1 if top <= 40 else
                                                max(1, top // 40)),
                    lambda r: f"{r['problem']} (conv {r['converged_fraction']:.2f})",
                    "iterations to convergence (default tol)",
                    "DiLQR iterations, random box-constrained LQ (T=20)", 7)
    top = max(max(r["iterations"]) for r in cp_rows)
    _iteration_hist(axes[1, 1], cp_rows, np.linspace(0, top + 1, 31),
                    lambda r: f"max_iter={r['max_iter']} (conv {r['converged_fraction']:.2f})",
                    "iterations", "DiLQR iterations, cart-pole swing-up (B=32, T=30)", 8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _iteration_hist(ax, rows, bins, label, xlabel: str, title: str, fontsize: int) -> None:
    """One panel of iteration-count histograms, a step outline per row."""
    for r in rows:
        ax.hist(r["iterations"], bins=bins, histtype="step", lw=1.5, label=label(r))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=fontsize)
