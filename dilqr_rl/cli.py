"""``dilqr-rl`` command line.

``dilqr-rl demo`` (the default): solve a batch of pendulum swing-ups and check the exact
fixed-point gradient against finite differences of the converged solution.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

__all__ = ["main", "demo"]


def demo(batch: int = 8, horizon: int = 20, seed: int = 0) -> int:
    """Pendulum swing-ups in one batched solve, then a gradient check. Returns an exit code."""
    import dilqr_rl as dl

    for name, v in (("batch", batch), ("horizon", horizon)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")

    torch.set_num_threads(1)  # tiny batched problems: one thread is ~100x faster here
    dt = torch.float64
    gen = torch.Generator().manual_seed(seed)
    th = (torch.rand(batch, generator=gen, dtype=dt) * 2 - 1) * math.pi
    x0 = torch.stack([th.cos(), th.sin(), torch.zeros(batch, dtype=dt)], -1)
    task = dl.tasks.get("pendulum")
    cfg = dl.ILQRConfig(max_iter=300, tol=1e-12)
    ctrl = task.controller(horizon, config=cfg)
    dyn = ctrl.dynamics

    t0 = time.perf_counter()
    sol = ctrl(x0)
    t_fwd = time.perf_counter() - t0
    print(f"Pendulum swing-up: batch {batch}, horizon {horizon}, |u| <= {task.u_upper:g}, "
          "float64, 1 thread")
    print(f"{'sample':>6} {'theta0':>8} {'iters':>5} {'conv':>5} {'theta_T':>8} {'cost':>9} "
          f"{'on bound':>8}")
    thT = torch.atan2(sol.x[:, -1, 1], sol.x[:, -1, 0])
    for i in range(batch):
        print(f"{i:>6} {th[i].item():>8.3f} {sol.iterations[i].item():>5} "
              f"{str(bool(sol.converged[i])):>5} {thT[i].item():>8.3f} "
              f"{sol.cost[i].item():>9.4f} {int((~sol.free[i]).sum()):>8}")
    print(f"forward solve: {t_fwd * 1e3:.1f} ms")

    # Gradient of a loss on the converged trajectory w.r.t. the physical parameters (g, m, l)
    w = torch.randn(sol.u.shape, generator=gen, dtype=dt)

    def loss(s: dl.Solution) -> torch.Tensor:
        return (w * s.u).sum() + s.x[:, -1, 2].square().sum()

    t0 = time.perf_counter()
    g_imp = torch.stack(torch.autograd.grad(loss(sol), [dyn.g, dyn.m, dyn.l]))
    t_bwd = time.perf_counter() - t0
    approx = dl.DiLQR(dyn, ctrl.cost, horizon=horizon, u_lower=task.u_lower,
                      u_upper=task.u_upper, config=cfg, grad="last_lqr")
    g_last = torch.stack(torch.autograd.grad(loss(approx(x0)), [dyn.g, dyn.m, dyn.l]))
    h = 1e-5
    fd = []
    with torch.no_grad():
        for p in (dyn.g, dyn.m, dyn.l):
            vals = {}
            for s in (2.0, 1.0, -1.0, -2.0):
                p.add_(s * h)
                vals[s] = loss(ctrl(x0, u_init=sol.u)).item()
                p.sub_(s * h)
            fd.append((8 * (vals[1.0] - vals[-1.0]) - (vals[2.0] - vals[-2.0])) / (12 * h))
    fd = torch.tensor(fd, dtype=dt)
    err_imp = ((g_imp - fd).norm() / fd.norm()).item()
    err_last = ((g_last - fd).norm() / fd.norm()).item()
    print(f"\nd loss / d(g, m, l)      implicit backward: {t_bwd * 1e3:.1f} ms")
    print(f"  finite differences : {fd.tolist()}")
    print(f"  implicit (DiLQR)   : {g_imp.tolist()}   rel. error {err_imp:.1e}")
    print(f"  last LQR (DiffMPC) : {g_last.tolist()}   rel. error {err_last:.1e}")
    ok = err_imp <= 1e-6 and bool(sol.converged.all())
    print("gradient check:", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


#: sub-commands implemented in ``dilqr_rl.agents``: name -> (module, function, help). Each
#: function takes the remaining argv and returns an exit code; imported only when used.
_AGENT_COMMANDS = {
    "imitate": ("dilqr_rl.agents.imitation_cli", "main_imitate",
                "behaviour cloning: learn the model through DiLQR from expert actions"),
    "study": ("dilqr_rl.agents.imitation_cli", "main_study",
              "run a whole comparison study (e.g. `dilqr-rl study imitation`)"),
    "train": ("dilqr_rl.agents.rl", "main_train",
              "train a DiLQR actor with Stable-Baselines3 (PPO, A2C, SAC, TD3)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _AGENT_COMMANDS:
        import importlib

        module, func, _ = _AGENT_COMMANDS[argv[0]]
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    parser = argparse.ArgumentParser(prog="dilqr-rl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    for name, (_, _, help_) in _AGENT_COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    p = sub.add_parser("demo", help="batched pendulum swing-ups and a gradient check")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--horizon", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for flag in ("batch", "horizon"):
        if getattr(args, flag, 1) < 1:
            p.error(f"--{flag} must be an integer >= 1, got {getattr(args, flag)}")
    if args.command in (None, "demo"):
        return demo(getattr(args, "batch", 8), getattr(args, "horizon", 20),
                    getattr(args, "seed", 0))
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
