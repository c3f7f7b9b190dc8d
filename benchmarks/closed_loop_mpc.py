"""Closed-loop MPC with the true model on every env, from 100 starts each (JSON + PNG).

Each env's task controller replans every step from the true state (``agents/mpc.py``: the
task's horizon, shrinking to a fixed landing time for the rocket), all starts in one batched
solve per step. An episode succeeds by its task's rule: pendulum and cart-pole upright (within
0.1 rad) and nearly at rest at the end; the rocket touched down within 0.5 m of the pad, under
10 degrees of tilt and under 1 m/s. On the MuJoCo envs the analytic model is only
approximately the true system. Reports success rates, returns, the rocket's landing errors and
the time per batched step (1 thread).

    python benchmarks/closed_loop_mpc.py                 # 100 starts per env
    python benchmarks/closed_loop_mpc.py --episodes 8    # quick
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import torch

from dilqr_rl.agents.mpc import run_mpc
from dilqr_rl.envs import ENV_IDS

HERE = os.path.dirname(os.path.abspath(__file__))


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    ok = np.array([s is True for s in r["success"]])
    out = {"episodes": len(ok), "success_rate": float(ok.mean()),
           "return_mean": float(np.mean(r["returns"])), "return_std": float(np.std(r["returns"])),
           "returns": r["returns"], "success": ok.tolist(), "wall_s": r["wall_s"],
           "s_per_batched_step": r["s_per_step"], "mean_iterations": r["mean_iterations"]}
    if any("distance" in i for i in r["infos"]):  # the rocket's touchdowns
        for k in ("distance", "tilt_deg", "speed"):
            v = np.array([i.get(k, np.nan) for i in r["infos"]])
            out[k] = v.tolist()
            out[f"{k}_quantiles"] = np.nanquantile(v, [0.5, 0.95, 1.0]).tolist()
    return out


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(report["envs"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    rates = [100 * report["envs"][e]["success_rate"] for e in envs]
    names = [e.split("/")[-1] for e in envs]
    axes[0].bar(names, rates, color="C2")
    axes[0].axhline(95, color="k", ls="--", lw=1, label="target 95 %")
    axes[0].set(ylabel="success (%)", title=f"closed-loop MPC, true model, "
                f"{report['episodes']} starts each", ylim=(0, 105))
    axes[0].tick_params(axis="x", rotation=20)
    axes[0].legend()
    axes[1].boxplot([report["envs"][e]["returns"] for e in envs], tick_labels=names)
    axes[1].set(yscale="symlog", ylabel="episode return", title="returns")
    axes[1].tick_params(axis="x", rotation=20)
    rocket = next((report["envs"][e] for e in envs if "distance" in report["envs"][e]), None)
    if rocket is not None:
        ax = axes[2]
        sc = ax.scatter(rocket["distance"], rocket["speed"], c=rocket["tilt_deg"], cmap="viridis")
        ax.axvline(0.5, color="k", ls="--", lw=1)
        ax.axhline(1.0, color="k", ls="--", lw=1)
        ax.set(xlabel="touchdown distance from the pad (m)", ylabel="touchdown speed (m/s)",
               title="rocket landings (dashed: limits)")
        fig.colorbar(sc, ax=ax, label="tilt (deg)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--envs", nargs="+", default=list(ENV_IDS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(HERE, "results", "closed_loop_mpc"))
    opt = p.parse_args(argv)
    torch.set_num_threads(1)
    report: dict[str, Any] = {"episodes": opt.episodes, "seed": opt.seed, "threads": 1,
                              "envs": {}}
    t0 = time.perf_counter()
    for env in opt.envs:
        s = summarize(run_mpc(env, opt.episodes, opt.seed))
        report["envs"][env] = s
        extra = "".join(f", {k} median/95%/max {np.round(s[k + '_quantiles'], 3).tolist()}"
                        for k in ("distance", "tilt_deg", "speed") if k in s)
        print(f"{env}: success {100 * s['success_rate']:.0f} %, return {s['return_mean']:.1f} "
              f"+- {s['return_std']:.1f}, {s['wall_s']:.0f} s "
              f"({1e3 * s['s_per_batched_step']:.0f} ms per batched step){extra}", flush=True)
    report["wall_s"] = time.perf_counter() - t0
    os.makedirs(os.path.dirname(opt.out), exist_ok=True)
    with open(opt.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    plot(report, opt.out + ".png")
    print(f"wrote {opt.out}.json, .png ({report['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
