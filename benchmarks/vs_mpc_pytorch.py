"""DiLQR versus ``mpc.pytorch`` (DiffMPC) on the same problems, side by side in one run.

Same model (``mpc.pytorch``'s ``PendulumDx`` / ``CartpoleDx`` equations, which ours copy), both
with the parameters, ``dt`` and bounds of the task (:mod:`dilqr_rl.tasks`); same quadratic cost
``1/2 tau^T C tau + c^T tau`` over ``T`` steps: the task's stage cost ``sum_i w_i (z_i - g_i)^2``
is ``C = diag(2 w)``, ``c = -2 w g`` (plus a constant) in that convention (our terminal cost set
to zero so the problems coincide); same initial states, iteration cap and no early exit
(``mpc.pytorch``: ``eps=0`` and ``not_improved_lim`` infinite; ours: ``tol=0``).
``mpc.pytorch``'s models ship no analytic derivatives, so it runs with
``GradMethods.AUTO_DIFF``; it uses the model's own line-search settings.

1. Speed: forward time per iteration, backward time, memory the tape holds for the backward,
   for batch in {1, 32, 256}, T in {10, 20, 50, 100}, float32 and float64; ratios per row.
2. Exactness: each library's gradient against central finite differences of the converged
   solution (float64), relative error and cosine, with and without active bounds.

Usage::

    pip install -e ".[bench]"
    python benchmarks/vs_mpc_pytorch.py [--quick] [--iters 10] [--threads 1]

Writes ``benchmarks/results/vs_mpc_pytorch.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

import dilqr_rl as dl
from dilqr_rl import tasks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backward import SavedBytes, angle_starts  # noqa: E402  (the backward benchmark's helpers)

#: per task: ``mpc.pytorch``'s line-search decay and maximum line-search iterations
ENVS = {"pendulum": (0.2, 5), "cartpole": (0.5, 2)}
#: the order of the physical parameters in ``mpc.pytorch``'s ``params`` vector
MPC_PARAMS = {"pendulum": ("g", "m", "l"), "cartpole": ("g", "m_cart", "m_pole", "l")}


def quad_cost(env: str, dtype) -> tuple[Tensor, Tensor]:
    """The task's stage cost as ``1/2 z^T diag(q) z + c^T z`` (+ const) over ``z = [x; u]``:
    its :class:`dilqr_rl.tasks.Tracking` cost ``sum w (z - g)^2`` has ``q = 2 w``,
    ``c = -2 w g``. :return: ``q (n+m,)``, ``c (n+m,)``"""
    track = tasks.get(env).cost
    q = 2.0 * torch.tensor(track.weights, dtype=dtype)
    return q, -q * torch.tensor(track.goal, dtype=dtype)


def initial_states(env: str, B: int, dtype, seed: int = 0) -> torch.Tensor:
    """At rest, angles ``th ~ U(-pi, pi)`` (drawn in float64)."""
    g = torch.Generator().manual_seed(seed)
    th = (torch.rand(B, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    return angle_starts(tasks.get(env), th).to(dtype)


def ours(env: str, B: int, T: int, dtype, iters: int, tol: float, bound: float):
    task = tasks.get(env)
    n = task.n_state
    q, c = quad_cost(env, dtype)
    cost = dl.QuadraticCost(n, torch.diag(q), c, torch.zeros(n, n, dtype=dtype),
                            torch.zeros(n, dtype=dtype)).to(dtype)
    ctrl = dl.DiLQR(task.dynamics().to(dtype), cost, horizon=T, u_lower=-bound, u_upper=bound,
                    config=dl.ILQRConfig(max_iter=iters, tol=tol, on_unconverged="warn"))
    return ctrl


def _patch_mpc() -> None:
    """``mpc`` 0.0.6's ``util.bdiag`` indexes with a uint8 mask, which current torch rejects
    for the bool active-set masks of its box-constrained LQR (``RuntimeError: masked_fill_
    only supports boolean masks``). Replace it with the equivalent ``torch.diag_embed``; nothing
    else of the library is changed."""
    from mpc import util

    util.bdiag = torch.diag_embed


def theirs(env: str, B: int, T: int, dtype, iters: int, eps: float, bound: float):
    from mpc import mpc
    from mpc.env_dx import cartpole, pendulum
    from mpc.mpc import GradMethods, QuadCost

    _patch_mpc()
    task = tasks.get(env)
    decay, ls = ENVS[env]
    # the task's true parameters in mpc's order (also ours: the gradients are compared)
    assert tuple(task.params) == MPC_PARAMS[env], (tuple(task.params), MPC_PARAMS[env])
    params = task.theta(dtype).requires_grad_(True)
    if env == "pendulum":
        dx = pendulum.PendulumDx(params=params, simple=True)
        dx.max_torque = bound
    else:
        dx = cartpole.CartpoleDx(params=params)
        dx.force_mag = bound
    dx.dt = task.dt
    q, cq = quad_cost(env, dtype)
    nz = q.shape[0]
    C = torch.diag(q).expand(T, B, nz, nz).clone().requires_grad_(True)
    c = cq.expand(T, B, nz).clone().requires_grad_(True)
    m = task.n_ctrl
    ctrl = mpc.MPC(nz - m, m, T, u_lower=-bound * torch.ones(T, B, m, dtype=dtype),
                   u_upper=bound * torch.ones(T, B, m, dtype=dtype), lqr_iter=iters,
                   verbose=-1, exit_unconverged=False, detach_unconverged=False,
                   linesearch_decay=decay, max_linesearch_iter=ls,
                   grad_method=GradMethods.AUTO_DIFF, eps=eps, n_batch=B,
                   not_improved_lim=10**9, best_cost_eps=1e-4)
    return ctrl, dx, QuadCost(C, c), C, c


def _timed(solve, params, x0, repeats):
    """Best forward / backward time over ``repeats`` and the tape's bytes for one library.

    ``solve(x0) -> (x (B, T, n) states x_0..x_{T-1}, u (B, T, m))`` in either layout."""
    best = (math.inf, math.inf, 0)
    for _ in range(repeats):
        x0r = x0.clone().requires_grad_(True)
        tape = SavedBytes()
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(tape.pack, lambda t: t):
            x, u = solve(x0r)
            loss = u.sum() + x.sum()
        t1 = time.perf_counter()
        mem = tape.total
        torch.autograd.grad(loss, [x0r, *params], allow_unused=True)
        t2 = time.perf_counter()
        best = (min(best[0], t1 - t0), min(best[1], t2 - t1), mem)
        if t2 - t0 > 10:
            break
    return best


def time_ours(env, B, T, dtype, iters, repeats):
    ctrl = ours(env, B, T, dtype, iters, 0.0, tasks.get(env).u_upper)

    def solve(x0):
        sol = ctrl(x0)
        return sol.x[:, :-1], sol.u

    return _timed(solve, list(ctrl.parameters()), initial_states(env, B, dtype), repeats)


def time_theirs(env, B, T, dtype, iters, repeats):
    ctrl, dx, qc, C, c = theirs(env, B, T, dtype, iters, 0.0, tasks.get(env).u_upper)

    def solve(x0):
        x, u, _ = ctrl(x0, qc, dx)
        return x, u

    return _timed(solve, [dx.params, C, c], initial_states(env, B, dtype), repeats)


def accuracy(env: str, bounded: bool, T: int = 20, B: int = 4) -> dict:
    """Gradients w.r.t. the dynamics parameters and x0 of a random linear loss, each library
    against 4th-order central differences of the converged solution (our solver, warm-started
    from the nominal solution, active set checked unchanged)."""
    dt = torch.float64
    bound = tasks.get(env).u_upper if bounded else 1e6
    if env == "cartpole" and bounded:
        bound = 3.0  # the task's bound is never reached in these swing-ups
    x0 = initial_states(env, B, dt, seed=1)
    ctrl = ours(env, B, T, dt, 1000, 1e-13, bound)
    g = torch.Generator().manual_seed(3)
    wu = torch.randn(B, T, 1, generator=g, dtype=dt)
    wx = torch.randn(B, T, x0.shape[1], generator=g, dtype=dt)

    def loss_of(x, u):
        return (wu * u).sum() + (wx * x[:, :T]).sum()

    x0r = x0.clone().requires_grad_(True)
    sol = ctrl(x0r)
    params = list(ctrl.dynamics.parameters())
    gs = torch.autograd.grad(loss_of(sol.x, sol.u), params + [x0r])
    ours_g = torch.cat([torch.stack(gs[:-1]), gs[-1].reshape(-1)])
    # mpc.pytorch, run to convergence on the same problem
    mctrl, dx, qc, C, c = theirs(env, B, T, dt, 1000, 1e-10, bound)
    x0m = x0.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xm, um, _ = mctrl(x0m, qc, dx)
    lm = (wu.transpose(0, 1) * um).sum() + (wx.transpose(0, 1) * xm).sum()
    gp, gx = torch.autograd.grad(lm, [dx.params, x0m])
    theirs_g = torch.cat([gp, gx.reshape(-1)])
    u_gap = (um.transpose(0, 1) - sol.u).abs().max().item()
    # finite differences of the converged solution
    h = 1e-5
    nominal = sol.u.detach()

    def solve_loss(x0p):
        r = ctrl(x0p, u_init=nominal)
        assert torch.equal(r.free, sol.free), "active set changed under perturbation"
        return loss_of(r.x, r.u).item()

    def central(vals):
        return (8 * (vals[1.0] - vals[-1.0]) - (vals[2.0] - vals[-2.0])) / (12 * h)

    fd = []
    steps = (2.0, 1.0, -1.0, -2.0)
    with torch.no_grad():
        for p in params:
            vals = {}
            for k in steps:
                p.add_(k * h)
                vals[k] = solve_loss(x0)
                p.sub_(k * h)
            fd.append(central(vals))
        for i in range(x0.numel()):
            e = torch.zeros(x0.numel(), dtype=dt)
            e[i] = h
            fd.append(central({k: solve_loss(x0 + k * e.view_as(x0)) for k in steps}))
    fd = torch.tensor(fd, dtype=dt)

    def stats(gv):
        return {"rel_error": ((gv - fd).norm() / fd.norm()).item(),
                "cosine": torch.nn.functional.cosine_similarity(gv, fd, dim=0).item()}

    return {"env": env, "bounded": bounded, "T": T, "B": B,
            "active_fraction": float((~sol.free).float().mean()),
            "converged": bool(sol.converged.all()),
            "max_u_gap_between_libraries": u_gap,
            "dilqr_implicit": stats(ours_g), "mpc_pytorch": stats(theirs_g)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="B in {1, 32}, T in {10, 50}")
    ap.add_argument("--iters", type=int, default=10, help="iLQR iterations (both libraries)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning, module="mpc")
    Bs = (1, 32) if args.quick else (1, 32, 256)
    Ts = (10, 50) if args.quick else (10, 20, 50, 100)
    dtypes = (torch.float64,) if args.quick else (torch.float32, torch.float64)
    rows = []
    for env in ENVS:  # warm-up (first calls)
        time_ours(env, 2, 5, torch.float64, 2, 1)
        time_theirs(env, 2, 5, torch.float64, 2, 1)
    cells = [(e, B, T, d) for e in ENVS for d in dtypes for T in Ts for B in Bs]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    partial = Path(args.out) / "vs_mpc_pytorch.partial.json"
    for env, B, T, d in tqdm(cells, desc="speed"):
        f1, b1, m1 = time_ours(env, B, T, d, args.iters, 3)
        f2, b2, m2 = time_theirs(env, B, T, d, args.iters, 2)
        rows.append({"env": env, "B": B, "T": T, "dtype": str(d).split(".")[-1],
                     "iters": args.iters,
                     "dilqr_forward_s": f1, "dilqr_backward_s": b1, "dilqr_tape_bytes": m1,
                     "mpc_forward_s": f2, "mpc_backward_s": b2, "mpc_tape_bytes": m2,
                     "forward_ratio": f1 / f2, "backward_ratio": b1 / b2})
        partial.write_text(json.dumps({"speed": rows}, indent=1))
    acc = [accuracy(e, b) for e in tqdm(ENVS, desc="accuracy") for b in (False, True)]
    # scale: batch 1024, T = 50 pendulum, forward + implicit backward in one call
    ctrl = ours("pendulum", 1024, 50, torch.float64, 100, 1e-7, tasks.get("pendulum").u_upper)
    x0 = initial_states("pendulum", 1024, torch.float64).requires_grad_(True)
    t0 = time.perf_counter()
    sol = ctrl(x0)
    t1 = time.perf_counter()
    sol.u.sum().backward()
    t2 = time.perf_counter()
    scale = {"B": 1024, "T": 50, "max_iter": 100, "forward_s": t1 - t0, "backward_s": t2 - t1,
             "per_sample_ms": (t2 - t0) / 1024 * 1e3,
             "converged_fraction": float(sol.converged.float().mean())}
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "mpc_grad_method": "AUTO_DIFF",
            "timing": "best of 3 (ours) / 2 (mpc.pytorch) runs"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vs_mpc_pytorch.json").write_text(json.dumps(
        {"meta": meta, "speed": rows, "accuracy": acc, "scale": scale}, indent=1))
    plot(rows, out / "vs_mpc_pytorch.png")
    partial.unlink(missing_ok=True)
    print(f"threads={meta['threads']}, iterations={args.iters}")
    print(f"{'env':9} {'dtype':8} {'B':>4} {'T':>4} {'ours ms/it':>10} {'mpc ms/it':>10} "
          f"{'fwd ratio':>9} {'ours bwd':>9} {'mpc bwd':>9} {'bwd ratio':>9} {'tape MB':>15}")
    for r in rows:
        print(f"{r['env']:9} {r['dtype']:8} {r['B']:>4} {r['T']:>4} "
              f"{r['dilqr_forward_s'] / r['iters'] * 1e3:>10.2f} "
              f"{r['mpc_forward_s'] / r['iters'] * 1e3:>10.2f} {r['forward_ratio']:>9.3f} "
              f"{r['dilqr_backward_s'] * 1e3:>9.2f} {r['mpc_backward_s'] * 1e3:>9.2f} "
              f"{r['backward_ratio']:>9.3f} "
              f"{r['dilqr_tape_bytes'] / 1e6:>6.2f}/{r['mpc_tape_bytes'] / 1e6:>7.2f}")
    for a in acc:
        print(f"accuracy {a['env']:9} bounded={a['bounded']!s:5} active={a['active_fraction']:.2f}"
              f" u-gap={a['max_u_gap_between_libraries']:.1e} | DiLQR rel.err "
              f"{a['dilqr_implicit']['rel_error']:.1e} cos {a['dilqr_implicit']['cosine']:.6f}"
              f" | mpc.pytorch rel.err {a['mpc_pytorch']['rel_error']:.1e} "
              f"cos {a['mpc_pytorch']['cosine']:.4f}")
    print("scale:", json.dumps(scale))


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "forward_ratio", "forward time ratio (ours / mpc.pytorch)"),
                           (axes[1], "backward_ratio", "backward time ratio (ours / mpc.pytorch)")):
        labels = [f"{r['env'][:4]} {r['dtype'][-2:]} B{r['B']} T{r['T']}" for r in rows]
        vals = [r[key] for r in rows]
        ax.barh(range(len(vals)), vals, color=["C0" if r["env"] == "pendulum" else "C1"
                                               for r in rows])
        ax.set_yticks(range(len(vals)), labels, fontsize=6)
        ax.axvline(0.2 if key == "forward_ratio" else 1.0, color="r", ls="--", label="target")
        ax.set_xscale("log")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
