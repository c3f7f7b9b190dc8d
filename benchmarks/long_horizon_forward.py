"""The forward half of benchmarks/long_horizon.py: the forward solver's Riccati pass and one
iLQR iteration, sequential against the scan (dilqr_rl/lqr_scan.py); and the long swing-up.

- ``pass``: :func:`dilqr_rl.lqr_scan.riccati_pass` forced sequential / scan on random projected
  problems of the forward shape (``mu`` in [1e-9, 1e-3], ~20 % of the controls on a bound, the
  held set found from the costates; the problem of benchmarks/long_horizon.py ``problem()``).
- ``iteration``: one full iteration of :func:`dilqr_rl.ilqr.ilqr_solve` (``max_iter=1``,
  ``tol=0``): derivatives, Riccati pass, line search through the true dynamics, on the pendulum
  task without bounds from a random start (the scan applies at every pass there).

Timing: median of repeats after a warm-up call, as in long_horizon.py.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from dilqr_rl import lqr_scan, tasks
from dilqr_rl.derivatives import derivatives
from dilqr_rl.ilqr import ILQRConfig, ilqr_solve, rollout
from dilqr_rl.lqr import lqr_backward


def _timed(fn, device: str, sync) -> tuple[float, int]:
    def once() -> float:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    first = once()
    reps = 1 if first > 2.0 else (3 if first > 0.3 else 5)
    return statistics.median(once() for _ in range(reps)), reps


def _forced(on: bool, fn):
    def call():
        old = lqr_scan.FORWARD_SCAN
        lqr_scan.FORWARD_SCAN = on
        try:
            return fn()
        finally:
            lqr_scan.FORWARD_SCAN = old
    return call


def pass_cell(B: int, T: int, n: int, m: int, device: str, problem, sync) -> dict:
    """Time the forward Riccati pass both ways; largest gain difference (with ``mu = 0``,
    where both passes solve the same problem)."""
    (F, C, c, CT, cT, _), _ = problem(B, T, n, m, device)
    g = torch.Generator().manual_seed(T)
    r = torch.rand(B, T, m, generator=g, dtype=F.dtype).to(device)
    mu = (10.0 ** (-9 + 6 * torch.rand(B, generator=g, dtype=F.dtype))).to(device)
    kw = dict(at_lower=r < 0.1, at_upper=r > 0.9)
    row = {"part": "pass", "B": B, "T": T, "n": n, "m": m, "device": device}
    for name, on in (("sequential", False), ("scan", True)):
        row[f"{name}_s"], row[f"{name}_repeats"] = _timed(
            _forced(on, lambda: lqr_scan.riccati_pass(F, C, c, CT, cT, mu=mu, **kw)), device,
            sync)
    a = _forced(False, lambda: lqr_scan.riccati_pass(F, C, c, CT, cT, **kw))()
    b = _forced(True, lambda: lqr_scan.riccati_pass(F, C, c, CT, cT, **kw))()
    row["max_rel_diff_k"] = float((a.k - b.k).abs().max()) / max(1.0, float(a.k.abs().max()))
    row["speedup"] = row["sequential_s"] / row["scan_s"]
    return row


def iteration_cell(B: int, T: int, device: str, sync) -> dict:
    """Time one iLQR iteration of the unbounded pendulum both ways."""
    task = tasks.get("pendulum")
    ctrl = task.controller(horizon=T).to(device)
    g = torch.Generator().manual_seed(B + T)
    x0 = task.sample_demo_start(g, B).to(torch.float64).to(device)
    with torch.no_grad():
        theta, P = ctrl._params(B, x0, None, {})
    u0 = 0.1 * torch.randn(B, T, 1, generator=g, dtype=torch.float64).to(device)
    cfg = ILQRConfig(max_iter=1, tol=0.0, on_unconverged="detach")

    def solve():
        with torch.no_grad():
            return ilqr_solve(ctrl.dynamics, ctrl.cost, x0, theta, P, u0, None, None, cfg)

    row = {"part": "iteration", "B": B, "T": T, "n": 3, "m": 1, "device": device}
    for name, on in (("sequential", False), ("scan", True)):
        row[f"{name}_s"], row[f"{name}_repeats"] = _timed(_forced(on, solve), device, sync)
    row["speedup"] = row["sequential_s"] / row["scan_s"]
    return row


def _mpc_plan(task, dynamics, x: torch.Tensor, theta: torch.Tensor, steps: int
              ) -> torch.Tensor:
    """The task's receding-horizon MPC (its own horizon) run for ``steps`` steps from ``x``
    on the model: its controls ``(1, steps, 1)``."""
    mpc = task.controller().to(x.device)
    us = []
    for _ in range(steps):
        u = mpc.act(x)
        us.append(u)
        x = dynamics.step(x, u, theta)
    return torch.stack(us, 1)


def _lqr_hold(task, ctrl, x: torch.Tensor, theta: torch.Tensor, P: dict, steps: int,
              lo: float, hi: float) -> torch.Tensor:
    """Hold the pendulum upright from ``x`` (near it) for ``steps`` steps with the LQR gain of
    the linearization at the goal (the first gain of a 400-step Riccati pass: stationary),
    clamped to the box: its controls ``(1, steps, 1)``. A plain open-loop ``u = 0`` falls
    (growth ~1.21 per step)."""
    n = x.shape[-1]
    goal = torch.tensor(task.cost.goal[:n], dtype=x.dtype, device=x.device)[None]
    H = 400
    d = derivatives(ctrl.dynamics, ctrl.cost, goal[:, None].expand(1, H + 1, n).contiguous(),
                    torch.zeros(1, H, 1, dtype=x.dtype, device=x.device), theta, P)
    K = lqr_backward(d.F, d.C, d.c, d.CT, d.cT).K[:, 0]  # (1, 1, n)
    us = []
    for _ in range(steps):
        u = ((K @ (x - goal)[..., None])[..., 0]).clamp(lo, hi)
        us.append(u)
        x = ctrl.dynamics.step(x, u, theta)
    return torch.stack(us, 1)


def swing_up(T: int, max_iter: int, device: str = "cpu", warm: str = "staged",
             short: int = 400, keep: int = 300) -> dict:
    """The pendulum swing-up and hold, ``B = 1``, ``|u| <= 2``, from 0.1 rad off hanging,
    horizon ``T``, with the solver's default rules (closed-loop gradients from
    ``CLOSED_LOOP_MIN_T``, the forward scan where :func:`use_scan_forward` picks it).

    Initialization (``warm``): ``"zeros"``; ``"mpc"``, the task's receding-horizon MPC rollout
    (horizon 20) for all ``T`` steps; ``"staged"`` (a shorter-horizon solve): the ``short``-step
    problem solved from its MPC rollout, its first ``keep`` controls (the swing-up, before the
    end effects of the short horizon), then an LQR hold for the remaining steps
    (:func:`_lqr_hold`). The forward time counts the whole initialization."""
    task = tasks.get("pendulum")
    ctrl = task.controller(horizon=T).to(device)
    dyn = ctrl.dynamics
    th0 = math.pi - 0.1
    x0 = torch.tensor([[math.cos(th0), math.sin(th0), 0.0]], dtype=torch.float64,
                      device=device)
    info: dict = {}
    with torch.no_grad():
        theta, P = ctrl._params(1, x0, None, {})
        lo, hi = ctrl._bounds(1, x0.dtype, x0.device)
        t0 = time.perf_counter()
        if warm == "zeros":
            u_init = torch.zeros(1, T, 1, dtype=torch.float64, device=device)
        elif warm == "mpc" or T <= short:
            u_init = _mpc_plan(task, dyn, x0, theta, T)
        elif warm == "staged":
            u1 = _mpc_plan(task, dyn, x0, theta, short)
            t1 = time.perf_counter()
            s1 = ilqr_solve(dyn, ctrl.cost, x0, theta, P, u1, lo[:, :short], hi[:, :short],
                            ILQRConfig(max_iter=max_iter, on_unconverged="detach"))
            t2 = time.perf_counter()
            hold = _lqr_hold(task, ctrl, s1.x[:, keep], theta, P, T - keep, float(lo.min()),
                             float(hi.max()))
            u_init = torch.cat([s1.u[:, :keep], hold], 1)
            info = {"short_T": short, "short_converged": bool(s1.converged[0]),
                    "short_iterations": int(s1.iterations[0]), "mpc_s": t1 - t0,
                    "short_solve_s": t2 - t1, "hold_s": time.perf_counter() - t2}
        else:
            raise ValueError(f"warm must be 'zeros', 'mpc' or 'staged', got {warm!r}")
        t_warm = time.perf_counter() - t0
        sol = ilqr_solve(dyn, ctrl.cost, x0, theta, P, u_init, lo, hi,
                         ILQRConfig(max_iter=max_iter, on_unconverged="detach"))
        t_all = time.perf_counter() - t0
        J0 = float(ctrl.cost.total(rollout(dyn, x0, u_init, theta), u_init, P)[0])
    return {"T": T, "B": 1, "max_iter": max_iter, "warm_start": warm, "device": device,
            "threads": torch.get_num_threads(), **info,
            "warm_start_s": t_warm, "solve_s": t_all - t_warm, "forward_s": t_all,
            "cost_warm_start": J0,
            "cost": float(sol.cost[0]), "converged": bool(sol.converged[0]),
            "iterations": int(sol.iterations[0]), "kkt": float(sol.kkt[0]),
            "pivot": float(sol.pivot[0]), "final_cos": float(sol.x[0, -1, 0])}
