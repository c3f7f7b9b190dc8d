"""Plots of imitation runs (:func:`plot_run`) and of the imitation study (:func:`plot_study`).
matplotlib is imported only here, when a plot is made."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .plotting import pyplot, save_figure

__all__ = ["plot_run", "plot_study"]


def plot_run(record: dict[str, Any], path: str | Path, others: list[dict] | None = None) -> Path:
    """Imitation losses and learned parameters (relative to the truth) over the epochs."""
    plt = pyplot()

    runs = [record, *(others or [])]
    ident = any(r.get("identifiable_truth") for r in runs)
    fig, axes = plt.subplots(1, 3 if ident else 2, figsize=(16 if ident else 11, 4))
    for i, r in enumerate(runs):
        h = r["history"]
        ep = [e["epoch"] for e in h]
        c = f"C{i}"
        name = r["args"]["learner"]
        axes[0].semilogy(ep, [e["train_im"] for e in h], c, label=f"{name} train")
        axes[0].semilogy(ep, [e["test_im"] for e in h], c, ls="--", label=f"{name} test")
        if r["truth"] is not None and h and h[0]["params"] is not None:
            truth = r["truth"]
            names = r["param_names"] if len(truth) == len(r["param_names"]) else \
                [f"c{j}" for j in range(len(truth))]
            for j, tv in enumerate(truth):
                if tv == 0:
                    continue
                axes[1].plot(ep, [e["params"][j] / tv for e in h], c,
                             ls=["-", "--", ":", "-."][j % 4],
                             label=f"{name} {names[j]}" if len(truth) <= 5 else None)
        if ident and r.get("identifiable_truth") and h and h[0].get("identifiable"):
            for j, (nm, tv) in enumerate(r["identifiable_truth"].items()):
                axes[2].plot(ep, [e["identifiable"][nm] / tv for e in h], c,
                             ls=["-", "--", ":", "-."][j % 4], label=f"{name} {nm}")
    for ax in axes[1:]:
        ax.axhline(1.0, color="k", lw=0.8, label="truth")
    axes[0].set(xlabel="epoch", ylabel="imitation loss", title="imitation loss")
    axes[1].set(xlabel="epoch", ylabel="learned / true", title="learned parameters")
    if ident:
        axes[2].set(xlabel="epoch", ylabel="learned / true",
                    title="identifiable combinations (all the dynamics see)")
        axes[2].legend(fontsize=7)
    axes[0].legend(fontsize=7)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=7)
    a = record["args"]
    fig.suptitle(f"{a['env']}, train={a['n_train']}, seed={a['seed']}")
    return save_figure(fig, path, dpi=110)


def plot_study(result: dict[str, Any], path: Path) -> Path:
    """Per env: test imitation loss per learner; dx and cost model loss over epochs, and the
    identifiable losses (dx where the task declares combinations; cost) where recorded. The
    curves are geometric means over seeds, shaded by one geometric std (a log axis: an
    arithmetic mean - std would dive below zero)."""
    plt = pyplot()

    runs = result["runs"]
    envs = sorted({r["args"]["env"] for r in runs})
    sizes = sorted({r["args"]["n_train"] for r in runs})
    learners = list(dict.fromkeys(r["args"]["learner"] for r in runs))
    # an identifiable-loss panel per mode that recorded one (dx: tasks with combinations)
    def recorded(mode: str) -> bool:
        return any(np.isfinite(e.get("ident_loss", math.nan)) for r in runs for e in r["history"]
                   if r["args"]["learner"].endswith(mode))

    panels = [("dx", "model_loss"), ("cost", "model_loss")] + [
        (mode, "ident_loss") for mode in ("dx", "cost") if recorded(mode)]
    fig, axes = plt.subplots(len(envs), 1 + len(panels), figsize=(5 * (1 + len(panels)),
                                                                  4 * len(envs)), squeeze=False)
    rows = {(r["env"], r["n_train"], r["learner"]): r for r in result["summary"]["rows"]}
    for i, env in enumerate(envs):
        ax = axes[i, 0]
        w = 0.8 / len(sizes)
        for j, n in enumerate(sizes):
            ms = [rows.get((env, n, ln), {}).get("test_im", (math.nan, 0, 0)) for ln in learners]
            ax.bar(np.arange(len(learners)) + j * w, [m[0] for m in ms], w,
                   yerr=[m[1] for m in ms], label=f"train={n}", capsize=2)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(learners)) + w * (len(sizes) - 1) / 2)
        ax.set_xticklabels(learners, rotation=30, fontsize=8)
        ax.set_title(f"{env}: test imitation loss")
        ax.legend(fontsize=8)
        for k, (mode, key) in enumerate(panels):
            ax = axes[i, 1 + k]
            for ln in learners:
                if not ln.endswith(mode) and not (mode == "dx" and ln == "sysid"):
                    continue
                for j, n in enumerate(sizes):
                    hs = [r["history"] for r in runs if r["args"]["env"] == env and
                          r["args"]["learner"] == ln and r["args"]["n_train"] == n]
                    if not hs:
                        continue
                    L = min(len(h) for h in hs)
                    if L == 0:
                        continue
                    ep = [e["epoch"] for e in hs[0][:L]]
                    v = np.array([[e.get(key, math.nan) for e in h[:L]] for h in hs])
                    if not np.isfinite(v).any():
                        continue
                    lv = np.log(np.maximum(v, 1e-300))
                    mu, sd = np.exp(lv.mean(0)), lv.std(0)
                    line, = ax.semilogy(ep, mu, ls=["-", "--", ":"][j % 3], label=f"{ln} n={n}")
                    ax.fill_between(ep, mu * np.exp(-sd), mu * np.exp(sd), alpha=0.15,
                                    color=line.get_color())
            what = "model loss" if key == "model_loss" else "identifiable loss"
            ax.set(title=f"{env}: {mode} {what}", xlabel="epoch")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            else:  # nothing recorded here (a task whose parameters are all identifiable)
                ax.axis("off")
                ax.text(0.5, 0.5, f"{env}: no {mode} {what} recorded" + (
                    "\n(its parameters are identifiable:\nsee the model loss)"
                    if key == "ident_loss" else ""), ha="center", va="center",
                    transform=ax.transAxes, fontsize=9)
    return save_figure(fig, path, dpi=100)
