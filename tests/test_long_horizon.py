"""Long horizons (docs/solver.md, "Long horizons"): the pendulum swing-up and hold through its
unstable upright equilibrium, where the open-loop costates are useless in float64."""

import math

import pytest
import torch

from dilqr_rl import tasks
from dilqr_rl.derivatives import derivatives
from dilqr_rl.ilqr import ILQRConfig, ilqr_solve
from dilqr_rl.ilqr_newton import CLOSED_LOOP_MIN_T, use_closed_loop
from dilqr_rl.lqr import costates, lqr_backward

F64 = torch.float64


@pytest.mark.slow
def test_swing_up_and_hold_T400_converges_with_closed_loop_gradients():
    """T = 400 from the task's receding-horizon MPC rollout: certified (exact Hessian, pivot >
    0) with a small projected gradient, upright at the end. At that start the open-loop
    costates are orders of magnitude above the closed loop's (the reason for the closed-loop
    mode); at the solution both agree."""
    T = 400
    assert use_closed_loop(T) and not use_closed_loop(CLOSED_LOOP_MIN_T - 1)
    task = tasks.get("pendulum")
    ctrl, mpc = task.controller(horizon=T), task.controller()
    th0 = math.pi - 0.1
    x0 = torch.tensor([[math.cos(th0), math.sin(th0), 0.0]], dtype=F64)
    with torch.no_grad():
        theta, P = ctrl._params(1, x0, None, {})
        lo, hi = ctrl._bounds(1, F64, x0.device)
        xs, us = [x0], []
        for _ in range(T):
            us.append(mpc.act(xs[-1]))
            xs.append(ctrl.dynamics.step(xs[-1], us[-1], theta))
        start = (torch.stack(xs, 1), torch.stack(us, 1))
        sol = ilqr_solve(ctrl.dynamics, ctrl.cost, x0, theta, P, start[1], lo, hi,
                         ILQRConfig(max_iter=200))
        assert bool(sol.converged[0]) and float(sol.pivot[0]) > 0
        assert float(sol.kkt[0]) < 1e-8
        assert float(sol.x[0, -1, 0]) > 0.999  # upright
        both = []
        for x, u, free in (start + (None,), (sol.x, sol.u, sol.free)):
            d = derivatives(ctrl.dynamics, ctrl.cost, x, u, theta, P)
            both.append((costates(d.F, d.c, d.cT), lqr_backward(
                d.F, d.C, d.c, d.CT, d.cT, free=free, costates=True, closed_loop=True).lam))
    (lam0, v0), (lam, v) = both
    assert float(lam0.abs().max()) > 1e4 * float(v0.abs().max())  # measured: 1.5e7 vs 25
    assert float((lam - v).abs().max()) <= 1e-6 * float(v.abs().max())
