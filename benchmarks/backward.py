"""Backward-pass cost of the three gradient modes against the number of iLQR iterations.

The paper's claim (section 5.1): the implicit (fixed-point) backward costs the same whatever
the number of forward iterations, while differentiating the unrolled solver grows with it.

Grid: the pendulum and cart-pole tasks of :mod:`dilqr_rl.tasks` (model, cost, bounds; the
cart-pole's box tightened to 20, ``BOUNDS``), horizon T in {10, 20, 50, 100}, iterations in
{10, 50, 100, 300} (``tol=0`` so exactly that many run), batch in {1, 64}; per cell the
forward time, the backward time of each mode (``implicit``, ``last_lqr``, ``unroll``) and the
bytes autograd keeps for the backward (sum of the unique storages saved on the tape: the
unrolled graph's memory; on CUDA also the allocator's peak). All modes of a cell run side by
side in one process, float64.

Usage::

    python benchmarks/backward.py            # full grid (about 15 min on 2 CPU cores)
    python benchmarks/backward.py --quick    # T in {10, 50}, iterations in {10, 300}

Unrolled cells whose tape would exceed ``--max-tape-gb`` (extrapolated from the same problem
at fewer iterations) are skipped and listed under ``skipped`` in the JSON.

Writes ``benchmarks/results/backward.json`` and ``backward.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
import weakref
from pathlib import Path

import torch

import dilqr_rl as dl
from dilqr_rl import tasks

MODES = ("implicit", "last_lqr", "unroll")
#: control bounds that replace the task's: the cart-pole's box is tightened so that controls
#: sit on it in these swing-ups (the pendulum's own box already binds)
BOUNDS = {"cartpole": 20.0}


def angle_starts(task: tasks.Task, th: torch.Tensor) -> torch.Tensor:
    """Start states ``(B, n)`` at rest with the angles ``th (B,)`` in the task's
    ``(cos th, sin th)`` block (its first unit block), every other coordinate zero."""
    lo = task.unit_blocks[0][0]
    x0 = torch.zeros(th.shape[0], task.n_state, dtype=th.dtype)
    x0[:, lo], x0[:, lo + 1] = th.cos(), th.sin()
    return x0


def problem(env: str, B: int, T: int, iters: int, mode: str, dtype: torch.dtype, device: str):
    """The task ``env``'s controller (its model, parameters, cost and bounds, except
    ``BOUNDS``) with ``iters`` iterations, and swing-ups from spread initial angles (so some
    controls sit on the bounds)."""
    task = tasks.get(env)
    box = {} if env not in BOUNDS else {"u_lower": -BOUNDS[env], "u_upper": BOUNDS[env]}
    ctrl = task.controller(T, dtype=dtype, config=dl.ILQRConfig(max_iter=iters, tol=0.0),
                           grad=mode, **box).to(device)
    th = torch.linspace(-2.8, 2.8, B, dtype=dtype) if B > 1 else torch.tensor([2.5], dtype=dtype)
    return ctrl, angle_starts(task, th).to(device)


class SavedBytes:
    """Bytes of the unique storages that the tape still holds for the backward.

    Tensors saved by transient graphs (e.g. the per-iteration linearization, which is freed
    at once) are not counted: only those alive when :attr:`total` is read.
    """

    def __init__(self):
        self.refs: list[weakref.ref] = []

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        self.refs.append(weakref.ref(t))
        return t

    @property
    def total(self) -> int:
        seen = {}
        for r in self.refs:
            t = r()
            if t is not None:
                s = t.untyped_storage()
                seen[s.data_ptr()] = s.nbytes()
        return sum(seen.values())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_cell(env: str, T: int, iters: int, B: int, mode: str, device: str,
             repeats: int) -> dict:
    ctrl, x0 = problem(env, B, T, iters, mode, torch.float64, device)
    gen = torch.Generator().manual_seed(0)
    wu = torch.randn(B, T, ctrl.n_ctrl, generator=gen, dtype=torch.float64).to(device)
    wx = torch.randn(B, T + 1, ctrl.n_state, generator=gen, dtype=torch.float64).to(device)
    params = list(ctrl.parameters())
    best_f = best_b = math.inf
    saved = 0
    peak = None
    for _ in range(repeats):
        x0r = x0.clone().requires_grad_(True)
        meter = SavedBytes()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
            sol = ctrl(x0r)
            loss = (wu * sol.u).sum() + (wx * sol.x).sum()
        sync(device)
        t1 = time.perf_counter()
        saved = meter.total
        torch.autograd.grad(loss, [x0r, *params], allow_unused=True)
        sync(device)
        t2 = time.perf_counter()
        best_f, best_b = min(best_f, t1 - t0), min(best_b, t2 - t1)
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated()
        if t2 - t0 > 5.0:  # expensive cells: one timed run is enough
            break
    return {"env": env, "T": T, "iters": iters, "B": B, "mode": mode,
            "forward_s": best_f, "backward_s": best_b, "saved_bytes": saved,
            "cuda_peak_bytes": peak}


def summarize(rows: list[dict]) -> dict:
    def get(env, T, it, B, mode, key="backward_s"):
        for r in rows:
            if (r["env"], r["T"], r["iters"], r["B"], r["mode"]) == (env, T, it, B, mode):
                return r[key]
        return None

    out = {"constant_backward": [], "backward_vs_forward_iters": [], "unroll_ratio": []}
    envs = sorted({r["env"] for r in rows})
    Ts = sorted({r["T"] for r in rows})
    Bs = sorted({r["B"] for r in rows})
    its = sorted({r["iters"] for r in rows})
    for env in envs:
        for T in Ts:
            for B in Bs:
                lo, hi = get(env, T, its[0], B, "implicit"), get(env, T, its[-1], B, "implicit")
                if lo and hi:
                    out["constant_backward"].append(
                        {"env": env, "T": T, "B": B, "ratio_maxit_over_minit": hi / lo,
                         "target": "<= 1.3", "holds": hi / lo <= 1.3})
                fwd = get(env, T, its[-1], B, "implicit", "forward_s")
                if fwd and hi:
                    per_iter = fwd / its[-1]
                    out["backward_vs_forward_iters"].append(
                        {"env": env, "T": T, "B": B,
                         "implicit_backward_in_forward_iterations": hi / per_iter,
                         "target": "<= 3", "holds": hi / per_iter <= 3})
                un, im = get(env, T, its[-1], B, "unroll"), hi
                if un and im:
                    out["unroll_ratio"].append({"env": env, "T": T, "B": B, "iters": its[-1],
                                                "unroll_over_implicit": un / im})
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({r["env"] for r in rows})
    Bs = sorted({r["B"] for r in rows})
    Ts = sorted({r["T"] for r in rows})
    styles = {"implicit": "-", "last_lqr": "--", "unroll": ":"}
    colors = plt.cm.viridis([i / max(1, len(Ts) - 1) for i in range(len(Ts))])
    fig, axes = plt.subplots(len(envs), len(Bs), figsize=(5.5 * len(Bs), 4.2 * len(envs)),
                             squeeze=False)
    for i, env in enumerate(envs):
        for j, B in enumerate(Bs):
            ax = axes[i][j]
            for mode in MODES:
                for T, col in zip(Ts, colors, strict=True):
                    pts = sorted((r["iters"], r["backward_s"]) for r in rows
                                 if (r["env"], r["B"], r["T"], r["mode"]) == (env, B, T, mode))
                    if pts:
                        ax.plot(*zip(*pts, strict=True), styles[mode], color=col, marker="o",
                                ms=3, label=f"{mode} T={T}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("iLQR iterations")
            ax.set_ylabel("backward time [s]")
            ax.set_title(f"{env}, batch {B}")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=3, loc="upper left")
    fig.suptitle("Backward time vs iterations: implicit (solid), last LQR (dashed), "
                 "unrolled (dotted)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="T in {10, 50}, iters in {10, 300}")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--envs", nargs="+", default=["pendulum", "cartpole"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--max-tape-gb", type=float, default=3.0,
                    help="skip unrolled cells whose extrapolated tape exceeds this (the machine "
                         "has 24 GiB; a cart-pole cell at T=20, B=64, 300 iterations filled it)")
    args = ap.parse_args(argv)
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    Ts = (10, 50) if args.quick else (10, 20, 50, 100)
    its = (10, 300) if args.quick else (10, 50, 100, 300)
    Bs = (1, 64)
    cells = [(e, T, it, B, mode) for e in args.envs for T in Ts for B in Bs for it in its
             for mode in MODES]
    rows = []
    # warm-up: first calls trace/allocate (docs/pitfalls.md, "First call")
    for e in args.envs:
        for mode in MODES:
            run_cell(e, 5, 3, 2, mode, args.device, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": args.device, "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "dtype": "float64",
            "timing": "best of up to 3 runs (1 if a run takes > 5 s)",
            "max_tape_gb": args.max_tape_gb}
    skipped = []
    for cell in tqdm(cells, desc="backward benchmark"):
        env, T, it, B, mode = cell
        if mode == "unroll":
            # The unrolled tape grows linearly with the iterations; skip a cell whose tape,
            # extrapolated from the same problem at fewer iterations, would not fit in memory.
            prev = [r for r in rows if (r["env"], r["T"], r["B"], r["mode"]) ==
                    (env, T, B, "unroll")]
            if prev:
                est = prev[-1]["saved_bytes"] * it / prev[-1]["iters"] / 1e9
                if est > args.max_tape_gb:
                    skipped.append({"env": env, "T": T, "iters": it, "B": B, "mode": mode,
                                    "estimated_tape_gb": est})
                    continue
        rows.append(run_cell(*cell, device=args.device, repeats=3))
        (out / "backward.partial.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                              indent=1))
    summary = summarize(rows)
    (out / "backward.json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                   "skipped": skipped, "summary": summary},
                                                  indent=1))
    (out / "backward.partial.json").unlink(missing_ok=True)
    plot(rows, out / "backward.png")
    print(f"threads={meta['threads']} device={args.device}")
    print(f"{'env':9} {'T':>4} {'B':>3} {'iters':>5} {'fwd/it ms':>9} {'impl ms':>8} "
          f"{'last ms':>8} {'unroll ms':>10} {'unroll/impl':>11} {'saved MB (impl/unroll)':>22}")
    for e in args.envs:
        for T in Ts:
            for B in Bs:
                for it in its:
                    r = {m: next((x for x in rows if (x["env"], x["T"], x["B"], x["iters"],
                                                      x["mode"]) == (e, T, B, it, m)), None)
                         for m in MODES}
                    if r["unroll"] is None:
                        r["unroll"] = {"backward_s": math.nan, "saved_bytes": math.nan}
                    print(f"{e:9} {T:>4} {B:>3} {it:>5} "
                          f"{r['implicit']['forward_s'] / it * 1e3:>9.2f} "
                          f"{r['implicit']['backward_s'] * 1e3:>8.2f} "
                          f"{r['last_lqr']['backward_s'] * 1e3:>8.2f} "
                          f"{r['unroll']['backward_s'] * 1e3:>10.1f} "
                          f"{r['unroll']['backward_s'] / r['implicit']['backward_s']:>11.0f} "
                          f"{r['implicit']['saved_bytes'] / 1e6:>10.3f} / "
                          f"{r['unroll']['saved_bytes'] / 1e6:>9.1f}")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
