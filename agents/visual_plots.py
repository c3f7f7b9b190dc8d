"""Figures of ``dilqr-rl visual``: true against predicted frames over the horizon, and the
prediction error against the horizon step (mean +- std over seeds) with the closed loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .plotting import pyplot, save_figure

__all__ = ["plot_errors", "plot_strip"]

COLORS = {"dilqr": "C0", "baseline": "C3"}
LABELS = {"dilqr": "DiLQR (plans)", "baseline": "autoregressive latent (given the controls)"}


def plot_strip(rows: dict[str, np.ndarray], steps: list[int], path: str | Path,
               title: str = "") -> Path:
    """One row of frames per entry of ``rows`` (name -> ``(K, S, S)`` in ``[0, 1]``), one
    column per horizon step of ``steps`` (``K`` of them)."""
    plt = pyplot()
    K = len(steps)
    fig, axes = plt.subplots(len(rows), K, figsize=(1.1 * K, 1.25 * len(rows) + 0.4),
                             squeeze=False)
    for r, (name, frames) in enumerate(rows.items()):
        for c in range(K):
            ax = axes[r, c]
            ax.imshow(frames[c], cmap="gray_r", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t+{steps[c]}", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=90)


def plot_errors(report: dict[str, Any], path: str | Path) -> Path:
    """Prediction error per horizon step (mean +- std over seeds) for both models, the
    closed-loop success from pixels per seed, and the first seed's closed-loop angles."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), gridspec_kw={"width_ratios": [2, 1, 1.4]})
    ax = axes[0]
    for kind in ("dilqr", "baseline"):
        s = report["summary"][kind]
        m, sd = np.array(s["mse_mean"]), np.array(s["mse_std"])
        k = np.arange(m.size)
        ax.plot(k, m, color=COLORS[kind], label=LABELS[kind])
        ax.fill_between(k, m - sd, m + sd, color=COLORS[kind], alpha=0.25, lw=0)
    n = len(report["seeds"])
    ax.set(xlabel="horizon step (0.05 s each)", ylabel="pixel MSE of the predicted frame",
           title=f"prediction from one image stack, {n} seed{'s' * (n > 1)} (mean +- std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    rates = [100 * s["closed_loop"]["rate"] for s in report["seeds"]]
    ax.bar([str(s["seed"]) for s in report["seeds"]], rates, color="C2")
    starts = len(report["seeds"][0]["closed_loop"]["success"])
    ax.set(xlabel="seed", ylabel="success (%)", ylim=(0, 105),
           title=f"closed loop from pixels, {starts} hanging starts")
    ax.grid(alpha=0.3, axis="y")
    ax = axes[2]
    cl = report["seeds"][0]["closed_loop"]
    A = np.abs(np.array(cl.get("angles", [])))
    for e in range(A.shape[1] if A.ndim == 2 else 0):
        ax.plot(np.arange(A.shape[0]) * 0.05, A[:, e], lw=0.8,
                color="C2" if cl["success"][e] else "C3")
    ax.set(xlabel="time (s)", ylabel="|angle from upright| (rad)", ylim=(0, 3.3),
           title=f"seed {report['seeds'][0]['seed']}: green success, red not")
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=90)
