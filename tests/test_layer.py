"""The DiLQR layer: input validation, unconverged handling, receding horizon, devices/dtypes."""

import math
import warnings

import pytest
import torch

import dilqr_rl as dl

from .problems import task_problem

F64 = torch.float64
PENDULUM = dl.tasks.get("pendulum")


@pytest.fixture
def ctrl():
    dyn, cost = task_problem("pendulum")
    return dl.DiLQR(dyn, cost, horizon=10, config=dl.ILQRConfig(max_iter=100, tol=1e-9))


def x0s(B=2):
    th = torch.linspace(0.3, 1.0, B, dtype=F64)
    return torch.stack([th.cos(), th.sin(), torch.zeros(B, dtype=F64)], -1)


def test_shapes_and_defaults(ctrl):
    sol = ctrl(x0s(4))
    assert sol.x.shape == (4, 11, 3) and sol.u.shape == (4, 10, 1)
    assert sol.cost.shape == (4,) and sol.converged.shape == (4,)
    assert sol.iterations.dtype == torch.long and sol.converged.all()
    assert (sol.u.abs() <= PENDULUM.u_upper).all()  # the model's default bound
    one = ctrl(x0s(1)[0])
    assert one.u.shape == (1, 10, 1)


@pytest.mark.parametrize("bad,exc,match", [
    (torch.zeros(2, 4, dtype=F64), ValueError, "x0"),
    (torch.zeros(2, 3, 1, dtype=F64), ValueError, "x0"),
    (torch.zeros(2, 3, dtype=torch.long), TypeError, "x0"),
    ([1.0, 0.0, 0.0], TypeError, "x0"),
    (torch.tensor([[1.0, 0.0, math.nan]], dtype=F64), ValueError, "x0"),
    (torch.tensor([[1.0, 0.0, math.inf]], dtype=F64), ValueError, "x0"),
])
def test_bad_x0(ctrl, bad, exc, match):
    with pytest.raises(exc, match=match):
        ctrl(bad)


def test_bad_params_and_overrides(ctrl):
    x0 = x0s(2)
    with pytest.raises(ValueError, match="params"):
        ctrl(x0, params=torch.ones(2, 4, dtype=F64))
    with pytest.raises(ValueError, match="params"):
        ctrl(x0, params=torch.ones(5, 3, dtype=F64))
    with pytest.raises(ValueError, match="params"):
        ctrl(x0, params=torch.tensor([10.0, math.nan, 1.0], dtype=F64))
    with pytest.raises(TypeError, match="params"):
        ctrl(x0, params=torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="goal"):
        ctrl(x0, goal=torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match="weights"):
        ctrl(x0, weights=torch.tensor([1.0, math.inf, 1.0, 1.0], dtype=F64))
    with pytest.raises(TypeError, match="unknown cost parameter"):
        ctrl(x0, wieghts=torch.ones(4, dtype=F64))
    with pytest.raises(ValueError, match="positive definite"):
        ctrl(x0, weights=torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="u_init"):
        ctrl(x0, u_init=torch.zeros(2, 9, 1, dtype=F64))
    with pytest.raises(ValueError, match="dynamics parameters"):
        with torch.no_grad():
            ctrl.dynamics.g.fill_(math.nan)
        ctrl(x0)


def test_bad_construction():
    dyn, cost = PENDULUM.dynamics(), PENDULUM.make_cost()
    with pytest.raises(ValueError, match="horizon"):
        dl.DiLQR(dyn, cost, horizon=0)
    with pytest.raises(ValueError, match="horizon"):
        dl.DiLQR(dyn, cost, horizon=2.5)
    with pytest.raises(ValueError, match="u_lower must be <= u_upper"):
        dl.DiLQR(dyn, cost, horizon=5, u_lower=1.0, u_upper=-1.0)
    with pytest.raises(ValueError, match="u_lower"):
        dl.DiLQR(dyn, cost, horizon=5, u_lower=torch.zeros(3))
    with pytest.raises(ValueError, match="grad"):
        dl.DiLQR(dyn, cost, horizon=5, grad="exact")
    with pytest.raises(ValueError, match="cost is for"):
        dl.DiLQR(dl.CartPole(), cost, horizon=5)
    with pytest.raises(TypeError, match="dynamics"):
        dl.DiLQR(lambda x, u: x, cost, horizon=5)
    with pytest.raises(ValueError, match="max_iter"):
        dl.ILQRConfig(max_iter=0)
    with pytest.raises(ValueError, match="on_unconverged"):
        dl.ILQRConfig(on_unconverged="ignore")
    with pytest.raises(ValueError, match="weights and goal"):
        dl.QuadraticCost.tracking([1.0, 1.0], [0.0, 0.0], n_state=3)


def test_unconverged_warn_and_raise():
    dyn, cost = task_problem("pendulum")
    x0 = x0s(2) * torch.tensor([-1.0, 1.0, 1.0], dtype=F64)
    warn = dl.DiLQR(dyn, cost, horizon=20, config=dl.ILQRConfig(max_iter=2))
    with pytest.warns(dl.UnconvergedWarning, match="did not converge"):
        sol = warn(x0)
    assert not sol.converged.all()
    strict = dl.DiLQR(dyn, cost, horizon=20,
                      config=dl.ILQRConfig(max_iter=2, on_unconverged="raise"))
    with pytest.raises(dl.NotConvergedError):
        strict(x0)
    fixed = dl.DiLQR(dyn, cost, horizon=20, config=dl.ILQRConfig(max_iter=3, tol=0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = fixed(x0)  # tol = 0 asks for exactly max_iter iterations: no warning
    assert (sol.iterations == 3).all()


def test_act_warm_starts_from_shifted_solution(ctrl):
    x0 = x0s(3)
    u0 = ctrl.act(x0)
    assert u0.shape == (3, 1)
    sol = ctrl(x0)
    torch.testing.assert_close(u0, sol.u[:, 0])
    # step the true system and act again: the warm start cuts the iteration count
    x1 = ctrl.dynamics(x0, u0)
    warm = ctrl.warm_start
    torch.testing.assert_close(warm[:, :-1], sol.u[:, 1:].detach())
    ctrl.act(x1)
    cold = ctrl(x1)
    warm_sol = ctrl(x1, u_init=warm)
    assert (warm_sol.iterations <= cold.iterations).all()
    assert warm_sol.iterations.sum() < cold.iterations.sum()
    ctrl.reset()
    assert ctrl.warm_start is None


def test_unbounded_and_tensor_bounds():
    dyn, cost = task_problem("pendulum")
    x0 = x0s(2)
    free = dl.DiLQR(dyn, cost, horizon=10, u_lower=-math.inf, u_upper=math.inf)(x0)
    assert free.u.abs().max() > PENDULUM.u_upper
    lo = torch.full((10, 1), -1.0, dtype=F64)
    lo[5:] = -0.5
    sol = dl.DiLQR(dyn, cost, horizon=10, u_lower=lo, u_upper=-lo)(x0)
    assert (sol.u[:, 5:].abs() <= 0.5 + 1e-12).all() and (sol.u.abs() <= 1.0 + 1e-12).all()


def test_follows_x0_dtype():
    dyn, cost = PENDULUM.dynamics(), PENDULUM.make_cost()  # float32 parameters
    ctrl = dl.DiLQR(dyn, cost, horizon=8)
    sol = ctrl(x0s(2))
    assert sol.u.dtype == F64 and sol.x.dtype == F64
    sol.u.sum().backward()
    assert dyn.g.grad is not None and dyn.g.grad.dtype == torch.float32


def test_function_cost_matches_quadratic():
    """The task's tracking cost written as a FunctionCost of its weights ``w`` and goal:
    ``sum w (z - goal)^2`` (the task's convention; the QuadraticCost holds ``2 w``)."""
    dyn, quad = task_problem("pendulum")
    tracking = PENDULUM.cost
    goal = torch.tensor(tracking.goal, dtype=F64)

    def stage(x, u, w):
        return (w * (torch.cat([x, u], -1) - goal) ** 2).sum(-1)

    def terminal(x, w):
        return (w[..., :3] * (x - goal[:3]) ** 2).sum(-1)

    fc = dl.FunctionCost(stage, terminal, {"w": torch.tensor(tracking.weights)},
                         n_state=3, n_ctrl=1).double()
    x0 = x0s(2)
    a = dl.DiLQR(dyn, quad, horizon=10, config=dl.ILQRConfig(tol=1e-12))(x0)
    b = dl.DiLQR(dyn, fc, horizon=10, config=dl.ILQRConfig(tol=1e-12))(x0)
    torch.testing.assert_close(a.u, b.u, rtol=1e-8, atol=1e-9)
    ga, gt = torch.autograd.grad(a.u.sum(), [quad.weights, quad.terminal_weights])
    gb = torch.autograd.grad(b.u.sum(), fc.w)[0]
    # FunctionCost shares one w between stage and terminal, and weights = 2 w:
    # d/dw = 2 (d/dweights + d/dterminal_weights)
    torch.testing.assert_close(gb, 2 * (ga + torch.cat([gt, torch.zeros(1, dtype=F64)])),
                               rtol=1e-6, atol=1e-9)


def test_sequential_line_search_matches_batched():
    """The ablation's one-step-size-at-a-time line search picks the same steps."""
    dyn, cost = task_problem("pendulum")
    th = torch.linspace(-3, 3, 6, dtype=F64)
    x0 = torch.stack([th.cos(), th.sin(), 0 * th], -1)
    sols = [dl.DiLQR(dyn, cost, horizon=25, config=dl.ILQRConfig(
        tol=1e-10, max_iter=200, batched_line_search=b, record_history=True))(x0)
        for b in (True, False)]
    assert torch.equal(sols[0].iterations, sols[1].iterations)
    torch.testing.assert_close(sols[0].u, sols[1].u)
    torch.testing.assert_close(sols[0].history, sols[1].history, equal_nan=True)


@pytest.mark.parametrize("backward", [False, True])
def test_a_dropped_solve_is_freed(ctrl, backward):
    """Once the caller drops a differentiable solve's outputs, its plan and autograd graph are
    freed by reference counting, without a garbage collection: no reference cycle runs through
    the autograd node (which Python's collector cannot follow), so a training loop does not
    leak a solve per step."""
    import gc
    import weakref

    theta = torch.tensor([10.0, 1.0, 1.0], dtype=F64, requires_grad=True)
    gc.collect()
    gc.disable()
    try:
        sol = ctrl(x0s(), params=theta)
        refs = [weakref.ref(sol.x), weakref.ref(sol.u), weakref.ref(sol)]
        if backward:
            sol.u.sum().backward()
            assert theta.grad is not None and bool(torch.isfinite(theta.grad).all())
        del sol
        assert [r() for r in refs] == [None, None, None]
    finally:
        gc.enable()
