"""GPU benchmark, self-contained: needs only torch, numpy and this package's core.

Runs on CUDA when available, with CPU numbers from the same machine beside it, and prints one
table (also written to ``benchmarks/results/gpu.json``):

1. Batch scaling: pendulum swing-ups (the ``pendulum`` task of :mod:`dilqr_rl.tasks`), ``B``
   up to 4096, ``T`` up to 100, a fixed number of iLQR iterations (``tol=0``), forward time
   and implicit backward time, per sample.
2. Backward cost vs iterations: implicit vs unrolled autodiff at ``T = 10``, ``B = 1``.
3. Long horizons (CUDA only, or ``--long-horizon`` to force it): the sweep of
   benchmarks/long_horizon.py on the device, sequential against the associative scan for the
   implicit backward's LQR solve, the forward solver's Riccati pass and one iLQR iteration,
   ``T`` in {50, ..., 5000}, ``B`` in {1, 32}, float64 (``--quick``: ``T`` in {8, 16}, ``B = 1``,
   which is how tests/test_lqr_scan.py smoke-tests it on the CPU).

Designed to finish in under 5 minutes on one GPU. ``--quick`` shrinks the grid (for a CPU-only
smoke run). Usage: ``python benchmarks/gpu.py [--quick] [--threads N]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dilqr_rl as dl  # noqa: E402  (after the path fix, so a plain checkout works)
from dilqr_rl import tasks  # noqa: E402


def make(B: int, T: int, iters: int, device: str, grad: str = "implicit"):
    """The pendulum task's controller (model, cost, bounds) and ``B`` spread start angles."""
    dt = torch.float64 if device == "cpu" else torch.float32
    ctrl = tasks.get("pendulum").controller(
        T, dtype=dt, config=dl.ILQRConfig(max_iter=iters, tol=0.0), grad=grad).to(device)
    th = torch.linspace(-math.pi * 0.95, math.pi * 0.95, B, dtype=dt, device=device)
    x0 = torch.stack([th.cos(), th.sin(), torch.zeros_like(th)], -1)
    return ctrl, x0


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(ctrl, x0, device: str, repeats: int = 2) -> tuple[float, float, float | None]:
    best_f = best_b = math.inf
    peak = None
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        x0r = x0.clone().requires_grad_(True)
        sync(device)
        t0 = time.perf_counter()
        sol = ctrl(x0r)
        loss = sol.u.sum() + sol.x.sum()
        sync(device)
        t1 = time.perf_counter()
        torch.autograd.grad(loss, [x0r, *ctrl.parameters()], allow_unused=True)
        sync(device)
        t2 = time.perf_counter()
        best_f, best_b = min(best_f, t1 - t0), min(best_b, t2 - t1)
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() / 1e6
        if t2 - t0 > 10:
            break
    return best_f, best_b, peak


def long_horizon_sweep(devices: list[str], quick: bool) -> list[dict]:
    """Section 3: sequential against scan per device (rows of benchmarks/long_horizon.py,
    with ``part`` "backward", "pass" or "iteration")."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import long_horizon as lh
    from long_horizon_forward import iteration_cell, pass_cell

    Ts, Bs = ((8, 16), (1,)) if quick else (lh.TS, lh.BS)
    rows = []
    for dev in devices:
        lh.run_cell(2, 8, 3, 1, dev)  # warm-up
        for B in Bs:
            for T in Ts:
                back = {"part": "backward", **lh.run_cell(B, T, 3, 1, dev)}
                for r in (back, pass_cell(B, T, 3, 1, dev, lh.problem, sync),
                          iteration_cell(B, T, dev, sync)):
                    rows.append({"kind": "long_horizon", **r})
                    print(f"long_horizon {r['part']:9} {dev:4} B={B:<3} T={T:<5} sequential "
                          f"{r['sequential_s'] * 1e3:9.2f} ms  scan {r['scan_s'] * 1e3:9.2f} ms",
                          flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default: torch's default for large batches)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--long-horizon", action="store_true",
                    help="run section 3 on the CPU too (by default it runs on CUDA only)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    Bs = (1, 256) if args.quick else (1, 64, 256, 1024, 4096)
    Ts = (10,) if args.quick else (10, 50, 100)
    rows = []
    for dev in devices:  # warm-up
        timed(*make(4, 5, 2, dev), dev, 1)
        timed(*make(4, 5, 2, dev, "unroll"), dev, 1)
    for T in Ts:
        for B in Bs:
            for dev in devices:
                if dev == "cpu" and B * T > 256 * 100 and not args.quick:
                    reps = 1
                else:
                    reps = 2
                f, b, peak = timed(*make(B, T, args.iters, dev), dev, reps)
                rows.append({"kind": "scaling", "device": dev, "B": B, "T": T,
                             "iters": args.iters, "forward_s": f, "backward_s": b,
                             "per_sample_ms": (f + b) / B * 1e3, "peak_MB": peak})
                print(f"scaling {dev:4} B={B:<5} T={T:<4} fwd {f * 1e3:9.1f} ms "
                      f"bwd {b * 1e3:8.1f} ms  per sample {(f + b) / B * 1e3:8.3f} ms"
                      + (f"  peak {peak:.0f} MB" if peak else ""), flush=True)
    its = (10, 50) if args.quick else (10, 100, 300)
    for dev in devices:
        for it in its:
            for mode in ("implicit", "unroll"):
                f, b, peak = timed(*make(1, 10, it, dev, mode), dev, 1)
                rows.append({"kind": "backward", "device": dev, "B": 1, "T": 10, "iters": it,
                             "mode": mode, "forward_s": f, "backward_s": b, "peak_MB": peak})
                print(f"backward {dev:4} iters={it:<4} {mode:9} bwd {b * 1e3:9.1f} ms",
                      flush=True)
    lh_devices = [d for d in devices if d == "cuda" or args.long_horizon]
    if lh_devices:
        rows += long_horizon_sweep(lh_devices, args.quick)
    else:
        print("long_horizon: skipped (no CUDA device; --long-horizon runs it on the CPU)")
    meta = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "dtype": "float32 on cuda, float64 on cpu"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("\n", json.dumps(meta))
    print(f"{'kind':9} {'dev':5} {'B':>5} {'T':>4} {'iters':>5} {'mode':9} {'fwd ms':>9} "
          f"{'bwd ms':>9} {'ms/sample':>9} {'peak MB':>8}")
    for r in rows:
        if r["kind"] == "long_horizon":
            continue  # printed above
        print(f"{r['kind']:9} {r['device']:5} {r['B']:>5} {r['T']:>4} {r['iters']:>5} "
              f"{r.get('mode', 'implicit'):9} {r['forward_s'] * 1e3:>9.1f} "
              f"{r['backward_s'] * 1e3:>9.2f} {r.get('per_sample_ms', float('nan')):>9.3f} "
              f"{r['peak_MB'] or float('nan'):>8.0f}")


if __name__ == "__main__":
    main()
