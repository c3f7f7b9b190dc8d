"""``dilqr-rl`` command line.

``dilqr-rl demo`` (the default): solve a batch of pendulum plans at once, swing the batch up
by replanning every step, and check the exact fixed-point gradient against finite differences
of the converged solution.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings

import torch

__all__ = ["main", "demo"]


def _angle(x: torch.Tensor) -> torch.Tensor:
    """Pendulum angle from upright, ``(..., 3) -> (...)``, in ``[-pi, pi]``."""
    return torch.atan2(x[..., 1], x[..., 0])


def demo(batch: int = 8, horizon: int = 20, seed: int = 0, steps: int = 100) -> int:
    """The pendulum in three parts: one batched solve of ``horizon``-step plans, a
    receding-horizon swing-up of the same batch, and the exact gradient checked against finite
    differences. Returns an exit code (1 if a check fails)."""
    import dilqr_rl as dl

    for name, v in (("batch", batch), ("horizon", horizon), ("steps", steps)):
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
    plan_s, bound = horizon * task.dt, task.u_upper

    t0 = time.perf_counter()
    sol = ctrl(x0)
    t_fwd = time.perf_counter() - t0
    print(f"1. One batched solve: {batch} pendulums, {horizon}-step plans ({plan_s:g} s), "
          f"|u| <= {bound:g}, float64, 1 thread")
    print("   theta: angle from upright (rad); theta_T: where the plan ends; on bound: steps "
          f"of the plan whose torque sits on +-{bound:g}")
    print(f"{'sample':>6} {'theta0':>8} {'iters':>5} {'conv':>5} {'theta_T':>8} {'cost':>9} "
          f"{'on bound':>8}")
    thT = _angle(sol.x[:, -1])
    for i in range(batch):
        print(f"{i:>6} {th[i].item():>8.3f} {sol.iterations[i].item():>5} "
              f"{str(bool(sol.converged[i])):>5} {thT[i].item():>8.3f} "
              f"{sol.cost[i].item():>9.4f} {int((~sol.free[i]).sum()):>5}/{horizon}")
    print(f"   forward solve: {t_fwd * 1e3:.1f} ms. A {plan_s:g} s plan cannot bring a "
          "hanging pendulum up with this torque; replanning every step does:")

    swing = task.controller(horizon, config=dl.ILQRConfig(max_iter=20, tol=1e-6,
                                                          on_unconverged="detach"))
    x = x0.clone()
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.UnconvergedWarning)  # capped replans: expected
        for _ in range(steps):
            x = swing.dynamics(x, swing.act(x))
    up = _angle(x).abs() < 0.1
    print(f"\n2. Receding horizon, {steps} steps ({steps * task.dt:g} s), the whole batch at "
          f"once: {int(up.sum())}/{batch} upright (|theta| < 0.1) at the end, "
          f"{(time.perf_counter() - t0):.1f} s")
    print("   final theta:", " ".join(f"{v:.3f}" for v in _angle(x).tolist()))
    return _gradient_check(dl, task, ctrl, sol, x0, gen) or (0 if bool(up.all()) else 1)


def _gradient_check(dl, task, ctrl, sol, x0, gen) -> int:
    """Part 3 of the demo: d loss / d(g, m, l) by the implicit gradient, DiffMPC's and central
    differences of the converged solution. Returns 1 if the implicit one is off."""
    dt, dyn, horizon = torch.float64, ctrl.dynamics, ctrl.horizon
    w = torch.randn(sol.u.shape, generator=gen, dtype=dt)

    def loss(s: dl.Solution) -> torch.Tensor:
        return (w * s.u).sum() + s.x[:, -1, 2].square().sum()

    params = [getattr(dyn, k) for k in task.params]
    t0 = time.perf_counter()
    g_imp = torch.stack(torch.autograd.grad(loss(sol), params))
    t_bwd = time.perf_counter() - t0
    approx = dl.DiLQR(dyn, ctrl.cost, horizon=horizon, u_lower=task.u_lower,
                      u_upper=task.u_upper, config=ctrl.config, grad="last_lqr")
    g_last = torch.stack(torch.autograd.grad(loss(approx(x0)), params))
    h = 1e-5
    fd = []
    with torch.no_grad():
        for p in params:
            vals = {}
            for s in (2.0, 1.0, -1.0, -2.0):
                p.add_(s * h)
                vals[s] = loss(ctrl(x0, u_init=sol.u)).item()
                p.sub_(s * h)
            fd.append((8 * (vals[1.0] - vals[-1.0]) - (vals[2.0] - vals[-2.0])) / (12 * h))
    fd = torch.tensor(fd, dtype=dt)
    err_imp = ((g_imp - fd).norm() / fd.norm()).item()
    err_last = ((g_last - fd).norm() / fd.norm()).item()
    print(f"\n3. d loss / d(g, m, l) of the batch of part 1, implicit backward: "
          f"{t_bwd * 1e3:.1f} ms")
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
    "mpc": ("dilqr_rl.agents.mpc", "main_mpc",
            "closed-loop MPC with a task's own controller: success rate, plot, GIF"),
    "train": ("dilqr_rl.agents.rl", "main_train",
              "train a DiLQR actor with Stable-Baselines3 (PPO, A2C, SAC, TD3)"),
    "visual": ("dilqr_rl.agents.visual_cli", "main_visual",
               "the pendulum from pixels: encoder -> DiLQR -> decoder, end to end (paper 5.4)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _AGENT_COMMANDS:
        import importlib

        module, func, _ = _AGENT_COMMANDS[argv[0]]
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    parser = argparse.ArgumentParser(
        prog="dilqr-rl", description="Differentiable iLQR (DiLQR): a demo, imitation, RL. "
        "Without a command: the demo.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{demo,imitate,study,mpc,train,visual}")
    p = sub.add_parser("demo", help="the pendulum: a batched solve, a receding-horizon "
                       "swing-up and the exact gradient checked (~5 s)",
                       description="Solve a batch of pendulum plans at once, swing the batch "
                       "up by replanning every step, and check the exact fixed-point gradient "
                       "against finite differences of the converged solution.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=8, help="pendulums solved at once")
    p.add_argument("--horizon", type=int, default=20, help="MPC horizon T (steps of 0.05 s)")
    p.add_argument("--steps", type=int, default=100, help="receding-horizon steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the start angles")
    for name, (_, _, help_) in _AGENT_COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    args = parser.parse_args(argv)
    for flag in ("batch", "horizon", "steps"):
        if getattr(args, flag, 1) < 1:
            p.error(f"--{flag} must be an integer >= 1, got {getattr(args, flag)}")
    if args.command in (None, "demo"):
        return demo(getattr(args, "batch", 8), getattr(args, "horizon", 20),
                    getattr(args, "seed", 0), getattr(args, "steps", 100))
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
