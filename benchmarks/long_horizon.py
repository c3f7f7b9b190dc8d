"""Long horizons: the sequential LQR pass against the parallel-in-time scan (dilqr_rl/scan.py).

The implicit backward's core is one LQR solve with a fixed active set
(``lqr_solve(F, H, gz, CT, gT, zeros, free=free)`` in ``dilqr_rl.grad.fixed_point_vjp``). This
times that solve, sequential (:func:`dilqr_rl.lqr.lqr_solve`: ``O(T)`` Python steps) against
:func:`dilqr_rl.scan.lqr_solve_scan` (associative scans, ``O(log T)`` levels; Särkkä &
García-Fernández, IEEE TAC 2023), on random well-conditioned time-varying LQRs of pendulum size
(``n = 3, m = 1``) and cart-pole size (``n = 5, m = 1``), shaped like the adjoint LQR: no affine
term, ``x0 = 0``, about 10 % of the controls held.

Grid: ``T`` in {50, 100, 200, 500, 1000, 2000, 5000}, ``B`` in {1, 32}, float64, one thread by
default (``--threads``). Per cell: a warm-up call of each method, then the median of repeats
(5, or 3 where one call takes over 0.5 s); the largest difference between the two results
(``x``, ``u``, ``lam``, each relative to its scale) and each result's largest residual of the
optimality conditions, equation by equation (:func:`kkt_residual`): on long horizons with an
unstable open loop the sequential multipliers (the costate recursion ``lam_t = ... + F_x^T
lam_{t+1}``, run backward through the open loop) lose accuracy, the scan's ``lam_t = S_t x_t +
s_t`` do not, so ``lam`` can differ while ``x`` and ``u`` agree.
Reported: the measured crossover ``T*`` per ``(B, n)`` (the smallest timed ``T`` from which on
the scan is faster, with a log-log interpolated estimate; ``T`` in {2, 5, 10, 20} are timed as
well to find it where the scan already wins at 50), and for ``B = 1`` the ratio
``time(T=2000) / time(T=100)`` of each method (the issue's target: the scan within 5x, while
the sequential pass grows about 20x). With a CUDA device (``--device cuda``, or ``auto`` when
one is present) the same sweep runs there too.

The forward half (benchmarks/long_horizon_forward.py), on the same grid at pendulum size: the
forward solver's Riccati pass and one whole iLQR iteration, sequential against the scan; and
the pendulum swing-up and hold at ``T = 2000`` (``--converge``), its forward time.

Usage::

    python benchmarks/long_horizon.py            # full grid, a few minutes on 2 CPU cores
    python benchmarks/long_horizon.py --quick    # T in {50, 200, 1000}, n = 3
    python benchmarks/long_horizon.py --converge 2000   # also the T = 2000 swing-up

Writes ``benchmarks/results/long_horizon.json`` and ``long_horizon.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from dilqr_rl import tasks
from dilqr_rl.lqr import lqr_solve
from dilqr_rl.scan import lqr_solve_scan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backward import sync  # noqa: E402  (device synchronisation for the timers)
from long_horizon_forward import iteration_cell, pass_cell, swing_up  # noqa: E402

METHODS = {"sequential": lqr_solve, "scan": lqr_solve_scan}
TS = (50, 100, 200, 500, 1000, 2000, 5000)
#: short horizons timed as well, to locate a crossover below the grid's 50 (cheap)
PROBE_TS = (2, 5, 10, 20)
BS = (1, 32)
#: (n, m) of the pendulum and the cart-pole tasks
SIZES = tuple((t.n_state, t.n_ctrl) for t in map(tasks.get, ("pendulum", "cartpole")))
#: time step of the random LQRs: the pendulum task's
DT = tasks.get("pendulum").dt
RATIO_T = (100, 2000)


def problem(B: int, T: int, n: int, m: int, device: str, kind: str = "stable",
            dtype=torch.float64, seed: int = 0):
    """A random, well-conditioned, time-varying LQR like the adjoint LQR of a swing-up.

    ``F_x = I + dt A_t``, ``dt = DT``, ``A_t = A + 0.2 N_t`` with ``A`` a random oscillation
    (skew-symmetric, frequencies of a few rad/s) with damping 0.2 (``kind="stable"``: the open
    loop decays slowly) or, for ``kind="unstable"``, plus a rank-one part ``3 v v^T`` (one mode
    grows at about 3/s, as a pendulum near upright); ``F_u = dt (G + 0.1 N_t)`` with a random
    ``G (n, m)``. ``C`` positive definite: state weights in [0.5, 1.5], control weights in
    [0.1, 1], small cross terms; random linear terms ``c`` (the incoming gradients); terminal
    weight 10; ``f = None``; ``x0 = 0``; ~10 % of the controls held.

    :return: ``[F (B, T, n, n+m), C (B, T, n+m, n+m), c (B, T, n+m), CT (B, n, n), cT (B, n),
        x0 (B, n)]`` and ``free (B, T, m)`` bool, on ``device``
    """
    g = torch.Generator().manual_seed(seed)
    dt = DT
    nz = n + m

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    W = r(B, 1, n, n)
    A = 2.0 * (W - W.transpose(-1, -2)) / math.sqrt(n) - 0.2 * torch.eye(n, dtype=dtype)
    if kind == "unstable":
        v = r(B, 1, n, 1)
        A = A + 3.0 * (v @ v.transpose(-1, -2)) / (v.transpose(-1, -2) @ v)
    elif kind != "stable":
        raise ValueError(f"kind must be 'stable' or 'unstable', got {kind!r}")
    Fx = torch.eye(n, dtype=dtype) + dt * (A + 0.2 * r(B, T, n, n))
    Fu = dt * (r(B, 1, n, m) + 0.1 * r(B, T, n, m))
    F = torch.cat([Fx, Fu], -1)
    w = torch.cat([0.5 + torch.rand(B, T, n, generator=g, dtype=dtype),
                   0.1 + 0.9 * torch.rand(B, T, m, generator=g, dtype=dtype)], -1)
    L = 0.05 * r(B, T, nz, nz)
    C = torch.diag_embed(w) + L @ L.transpose(-1, -2)
    c = r(B, T, nz)
    CT = 10.0 * torch.eye(n, dtype=dtype).expand(B, n, n).clone()
    cT = r(B, n)
    x0 = torch.zeros(B, n, dtype=dtype)
    free = torch.rand(B, T, m, generator=g) > 0.1
    return [t.to(device) for t in (F, C, c, CT, cT, x0)], free.to(device)


def time_call(fn, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def kkt_residual(args: list[torch.Tensor], free: torch.Tensor, x, u, lam) -> float:
    """Largest residual of the LQR's optimality conditions, each equation on its own (not by
    a recursion): dynamics ``F z_t - x_{t+1}``, stationarity in ``x_t``
    (``[C z + c]_x + F_x^T lam_{t+1} - lam_t``) and in the free ``u_t``
    (``[C z + c]_u + F_u^T lam_{t+1}``), terminal ``C_T x_T + c_T - lam_T``, ``x_0 - x0``."""
    F, C, c, CT, cT, x0 = args
    n = x.shape[-1]
    z = torch.cat([x[:, :-1], u], -1)
    g = (C @ z[..., None])[..., 0] + c + (F.transpose(-1, -2) @ lam[:, 1:, :, None])[..., 0]
    parts = [(F @ z[..., None])[..., 0] - x[:, 1:], g[..., :n] - lam[:, :-1],
             g[..., n:] * free, (CT @ x[:, -1, :, None])[..., 0] + cT - lam[:, -1],
             x[:, 0] - x0]
    return max(float(p.abs().max()) for p in parts)


def run_cell(B: int, T: int, n: int, m: int, device: str) -> dict:
    args, free = problem(B, T, n, m, device)
    out, row = {}, {"B": B, "T": T, "n": n, "m": m, "device": device}
    for name, solve in METHODS.items():
        def call(solve=solve):
            return solve(*args, free=free)

        first = time_call(call, device)  # warm-up (allocations, first-call dispatch)
        out[name] = call()
        reps = 3 if first > 0.5 else 5
        times = [time_call(call, device) for _ in range(reps)]
        row[f"{name}_s"] = statistics.median(times)
        row[f"{name}_repeats"] = reps
    row["speedup"] = row["sequential_s"] / row["scan_s"]
    rel = [float((a - b).abs().max()) / max(1.0, float(b.abs().max()))
           for a, b in zip(out["scan"], out["sequential"], strict=True)]
    row["max_rel_diff_x"], row["max_rel_diff_u"], row["max_rel_diff_lam"] = rel
    for name in METHODS:
        row[f"kkt_residual_{name}"] = kkt_residual(args, free, *out[name])
    row["finite"] = all(bool(torch.isfinite(t).all()) for t in out["scan"])
    return row


def accuracy_sweep(device: str, Ts: tuple[int, ...]) -> list[dict]:
    """KKT residuals of both methods (one call each) on the open-loop unstable problem,
    ``B = 1``, pendulum size, and on the stable one for comparison."""
    rows = []
    for kind in ("stable", "unstable"):
        for T in Ts:
            args, free = problem(1, T, 3, 1, device, kind=kind)
            res = {name: kkt_residual(args, free, *solve(*args, free=free))
                   for name, solve in METHODS.items()}
            rows.append({"kind": kind, "B": 1, "n": 3, "m": 1, "T": T, "device": device,
                         **{f"kkt_residual_{k}": v for k, v in res.items()}})
    return rows


def crossover(rows: list[dict]) -> dict:
    """Smallest timed T from which on the scan is faster (None if never at the largest T);
    plus a log-log interpolation of the crossing between the two timed T around it."""
    pts = sorted((r["T"], r["sequential_s"] / r["scan_s"]) for r in rows)
    t_star = None
    for i in range(len(pts) - 1, -1, -1):
        if pts[i][1] > 1.0:
            t_star = pts[i][0]
        else:
            break
    est = None
    if t_star is not None:
        i = [p[0] for p in pts].index(t_star)
        if i == 0:
            est = f"<= {t_star}"
        else:
            (t0, s0), (t1, s1) = pts[i - 1], pts[i]
            a = math.log(s0) / (math.log(s0) - math.log(s1))
            est = round(math.exp(math.log(t0) + a * (math.log(t1) - math.log(t0))))
    return {"T_star_measured": t_star, "T_star_interpolated": est,
            "scan_faster_at_all_T": t_star == pts[0][0],
            "scan_never_faster": t_star is None}


def summarize(rows: list[dict]) -> dict:
    out = {"crossover": [], "ratio_2000_over_100": []}
    for dev in sorted({r["device"] for r in rows}):
        for B in sorted({r["B"] for r in rows}):
            for n, m in sorted({(r["n"], r["m"]) for r in rows}):
                cell = [r for r in rows if (r["device"], r["B"], r["n"], r["m"]) == (dev, B, n, m)]
                if not cell:
                    continue
                out["crossover"].append({"device": dev, "B": B, "n": n, "m": m,
                                         **crossover(cell)})
                by_t = {r["T"]: r for r in cell}
                lo, hi = RATIO_T
                if B == 1 and lo in by_t and hi in by_t:
                    rs = {k: by_t[hi][f"{k}_s"] / by_t[lo][f"{k}_s"] for k in METHODS}
                    out["ratio_2000_over_100"].append(
                        {"device": dev, "B": B, "n": n, "m": m, "sequential": rs["sequential"],
                         "scan": rs["scan"], "target": "scan <= 5",
                         "holds": rs["scan"] <= 5.0})
    return out


def plot(rows: list[dict], path: Path, fwd: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devs = sorted({r["device"] for r in rows})
    Bs = sorted({r["B"] for r in rows})
    sizes = sorted({(r["n"], r["m"]) for r in rows})
    fdevs = sorted({r["device"] for r in fwd or []})
    nrow = len(devs) + len(fdevs)
    fig, axes = plt.subplots(nrow, len(Bs), figsize=(5.5 * len(Bs), 4.2 * nrow), squeeze=False)
    colors = plt.cm.tab10.colors
    for i, dev in enumerate(devs):
        for j, B in enumerate(Bs):
            ax = axes[i][j]
            for k, (n, m) in enumerate(sizes):
                cell = sorted((r for r in rows if (r["device"], r["B"], r["n"], r["m"]) ==
                               (dev, B, n, m)), key=lambda r: r["T"])
                if not cell:
                    continue
                T = [r["T"] for r in cell]
                ax.plot(T, [r["sequential_s"] for r in cell], "--o", ms=3, color=colors[k],
                        label=f"sequential n={n}, m={m}")
                ax.plot(T, [r["scan_s"] for r in cell], "-s", ms=3, color=colors[k],
                        label=f"scan n={n}, m={m}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("horizon T")
            ax.set_ylabel("LQR solve time [s] (median)")
            ax.set_title(f"{dev}, batch {B}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    for i, dev in enumerate(fdevs, len(devs)):
        for j, B in enumerate(Bs):
            ax = axes[i][j]
            for k, part in enumerate(("pass", "iteration")):
                cell = sorted((r for r in fwd if (r["device"], r["B"], r["part"]) ==
                               (dev, B, part)), key=lambda r: r["T"])
                T = [r["T"] for r in cell]
                ax.plot(T, [r["sequential_s"] for r in cell], "--o", ms=3, color=colors[k + 2],
                        label=f"{part}, sequential")
                ax.plot(T, [r["scan_s"] for r in cell], "-s", ms=3, color=colors[k + 2],
                        label=f"{part}, scan")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("horizon T")
            ax.set_ylabel("time [s] (median)")
            ax.set_title(f"forward (pendulum size): {dev}, batch {B}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("Sequential (dashed) vs associative scan (solid), float64: implicit "
                 "backward's LQR, forward Riccati pass, one iLQR iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _backward_sweep(args, devices, sizes, Ts, meta, out) -> tuple[list, list, dict]:
    """The implicit backward's LQR solve over the grid (or, with ``--skip-backward``, the rows
    of the existing JSON)."""
    if args.skip_backward:
        old = json.loads((out / "long_horizon.json").read_text())
        meta["backward_from"] = old["meta"]["date"]
        return old["rows"], old["accuracy"], summarize(old["rows"])
    for dev in devices:  # warm-up of each code path
        for n, m in sizes:
            run_cell(2, 8, n, m, dev)
    rows = []
    t_start = time.perf_counter()
    for dev in devices:
        for n, m in sizes:
            for B in BS:
                for T in PROBE_TS + Ts:
                    row = run_cell(B, T, n, m, dev)
                    row["probe"] = T in PROBE_TS
                    rows.append(row)
                    print(f"{dev:5} B={B:>3} n={n} m={m} T={T:>5}  "
                          f"sequential {row['sequential_s'] * 1e3:9.2f} ms  "
                          f"scan {row['scan_s'] * 1e3:9.2f} ms  "
                          f"speedup {row['speedup']:6.2f}  diff x,u "
                          f"{max(row['max_rel_diff_x'], row['max_rel_diff_u']):.0e} "
                          f"lam {row['max_rel_diff_lam']:.0e}", flush=True)
    meta["wall_s"] = time.perf_counter() - t_start  # of the timed sweep
    summary = summarize(rows)
    summary["sequential_kkt_residual_above_1e-6"] = [
        {k: r[k] for k in ("device", "B", "n", "T", "kkt_residual_sequential",
                           "kkt_residual_scan")}
        for r in rows if not r["kkt_residual_sequential"] <= 1e-6]
    acc = [a for dev in devices for a in accuracy_sweep(dev, (100, 500, 2000) if not args.quick
                                                          else (100, 500))]
    for a in acc:
        print(f"accuracy {a['device']:5} {a['kind']:8} T={a['T']:>5}  KKT residual sequential "
              f"{a['kkt_residual_sequential']:.1e}  scan {a['kkt_residual_scan']:.1e}")
    return rows, acc, summary


def forward_sweep(devices: list[str], Ts: tuple[int, ...]) -> list[dict]:
    """The forward Riccati pass and one iLQR iteration, both ways, pendulum size."""
    rows = []
    for dev in devices:
        pass_cell(2, 8, 3, 1, dev, problem, sync)  # warm-up
        for B in BS:
            for T in PROBE_TS[2:] + Ts:
                for row in (pass_cell(B, T, 3, 1, dev, problem, sync),
                            iteration_cell(B, T, dev, sync)):
                    rows.append(row)
                    print(f"forward {row['part']:9} {dev:5} B={B:>3} T={T:>5}  sequential "
                          f"{row['sequential_s'] * 1e3:9.2f} ms  scan "
                          f"{row['scan_s'] * 1e3:9.2f} ms  speedup {row['speedup']:5.2f}",
                          flush=True)
    return rows


def forward_crossover(rows: list[dict]) -> list[dict]:
    """:func:`crossover` of the forward rows per (part, device, B)."""
    keys = sorted({(r["part"], r["device"], r["B"]) for r in rows})
    return [{"part": p, "device": d, "B": B, **crossover(
        [r for r in rows if (r["part"], r["device"], r["B"]) == (p, d, B)])}
        for p, d, B in keys]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="T in {50, 200, 1000}, n = 3 only")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--device", default="auto",
                    help="'cpu', 'cuda' or 'auto' (the CPU, and CUDA as well when present)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--converge", type=int, default=0, metavar="T",
                    help="also the pendulum swing-up and hold at this horizon (0: skip)")
    ap.add_argument("--skip-backward", action="store_true",
                    help="keep the backward rows of an existing JSON, time the forward only")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    Ts = (50, 200, 1000) if args.quick else TS
    sizes = SIZES[:1] if args.quick else SIZES
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "devices": devices, "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "loadavg_at_start": os.getloadavg(),
            "cuda": torch.cuda.get_device_name(0) if "cuda" in devices else None,
            "dtype": "float64", "quick": args.quick,
            "timing": "median of 5 repeats (3 where one call takes > 0.5 s) after one warm-up "
                      "call per method and cell",
            "problem": "random well-conditioned time-varying LQR (benchmarks/long_horizon.py "
                       "problem()), f = None, x0 = 0, ~10% controls held: the adjoint LQR"}
    rows, acc, summary = _backward_sweep(args, devices, sizes, Ts, meta, out)
    fwd = forward_sweep(devices, Ts)
    summary["forward_crossover"] = forward_crossover(fwd)
    converge = [swing_up(args.converge, 200)] if args.converge else []
    for c in converge:
        print(f"swing-up T={c['T']}: converged {c['converged']} in {c['iterations']} "
              f"iterations, forward {c['forward_s']:.0f} s (warm start {c['warm_start_s']:.0f} "
              f"s), cost {c['cost']:.2f} (warm start {c['cost_warm_start']:.2f}), kkt "
              f"{c['kkt']:.1e}, pivot {c['pivot']:.2e}", flush=True)
    (out / "long_horizon.json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "accuracy": acc, "forward_rows": fwd,
         "convergence": converge, "summary": summary}, indent=1))
    plot(rows, out / "long_horizon.png", fwd)
    print(f"threads={meta['threads']} devices={devices} wall={meta['wall_s']:.0f} s")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
