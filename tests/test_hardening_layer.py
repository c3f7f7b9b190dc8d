"""Hardening of the layer (the hardening issue, items 1-6), and a seeded property test: no
NaN reaches the caller without an error, and every converged sample is a verified local
minimum (tests/oracles.py)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import dilqr_rl as dl

from .oracles import LinearModel, verify_local_min
from .problems import task_problem

F64 = torch.float64
PENDULUM = dl.tasks.get("pendulum")


def pendulum_ctrl(horizon=10, **params):
    dyn = dl.Pendulum().double()
    with torch.no_grad():  # set in float64 (the constructor rounds to the default dtype)
        for k, v in params.items():
            getattr(dyn, k).fill_(v)
    cost = PENDULUM.make_cost().double()
    return dl.DiLQR(dyn, cost, horizon=horizon, config=dl.ILQRConfig(max_iter=50))


def x0_pendulum(B=2):
    th = torch.linspace(0.5, 2.5, B, dtype=F64)
    return torch.stack([th.cos(), th.sin(), torch.zeros(B, dtype=F64)], -1)


# ------------------------------------------------------------------ 1. non-finite results
@pytest.mark.parametrize("params", [{"m": 0.0}, {"l": 0.0}, {"g": 1e300}, {"m": 1e-300}])
def test_nonfinite_pendulum_parameters_raise(params):
    with pytest.raises(dl.NonFiniteError, match="not finite"):
        pendulum_ctrl(**params)(x0_pendulum())


def test_pendulum_state_off_the_circle_raises():
    with pytest.raises(dl.NonFiniteError, match="not finite"):
        pendulum_ctrl()(torch.zeros(1, 3, dtype=F64))


def test_rocket_zero_inertia_raises():
    dyn = dl.Rocket(Jx=0.0).double()
    w = torch.ones(16, dtype=F64)
    goal = torch.zeros(16, dtype=F64)
    goal[6] = 1.0
    ctrl = dl.DiLQR(dyn, dl.QuadraticCost.tracking(w, goal, n_state=13).double(), horizon=5)
    x0 = torch.tensor([[3.0, -2, 1, -0.1, 0, 0, 1, 0, 0, 0, 0.2, 0.1, 0.3]], dtype=F64)
    with pytest.raises(dl.NonFiniteError, match="not finite"):
        ctrl(x0)


def test_cartpole_huge_state_raises():
    dyn, cost = task_problem("cartpole")
    ctrl = dl.DiLQR(dyn, cost, horizon=10)
    x0 = torch.tensor([[0.0, 0.0, 1.0, 0.0, 1e6]], dtype=F64)
    with pytest.raises(dl.NonFiniteError, match="not finite"):
        ctrl(x0)


@pytest.mark.parametrize("lo,hi,name", [(math.inf, math.inf, "u_lower"),
                                        (-math.inf, -math.inf, "u_upper")])
def test_infinite_bound_on_its_finite_side_is_rejected(lo, hi, name):
    dyn, cost = task_problem("pendulum")
    with pytest.raises(ValueError, match=name):
        dl.DiLQR(dyn, cost, horizon=5, u_lower=lo, u_upper=hi)


class _NaNModel(dl.Dynamics):
    """A user model that returns NaN from the start (``when="start"``) or only for large
    controls (``when="late"``: the solver must steer around it or raise, never pass NaN on)."""

    n_state, n_ctrl = 2, 1

    def __init__(self, when: str):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(1.0, dtype=F64))
        self.when = when

    def forward(self, x, u):
        nxt = torch.stack([x[..., 0] + 0.1 * x[..., 1], x[..., 1] + 0.1 * self.a * u[..., 0]], -1)
        if self.when == "start":
            return nxt * torch.nan
        return torch.where(u.abs() > 0.5, torch.nan, nxt)


def test_user_model_nan_along_the_initial_rollout_raises():
    cost = dl.QuadraticCost.tracking([1.0, 1.0, 0.1], [0.0, 0, 0], n_state=2).double()
    ctrl = dl.DiLQR(_NaNModel("start"), cost, horizon=5)
    with pytest.raises(dl.NonFiniteError, match="initial rollout"):
        ctrl(torch.tensor([[1.0, 0.0]], dtype=F64))


def test_user_model_nan_later_never_reaches_the_caller():
    cost = dl.QuadraticCost.tracking([1.0, 1.0, 0.01], [0.0, 0, 0], n_state=2).double()
    ctrl = dl.DiLQR(_NaNModel("late"), cost, horizon=8,
                    config=dl.ILQRConfig(max_iter=30, on_unconverged="warn"))
    x0 = torch.tensor([[3.0, 0.0], [-2.0, 1.0]], dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.UnconvergedWarning)
        sol = ctrl(x0)
    for v in (sol.x, sol.u, sol.cost):
        assert bool(torch.isfinite(v).all())
    (g,) = torch.autograd.grad(sol.cost.sum(), [ctrl.dynamics.a])
    assert bool(torch.isfinite(g).all())


# --------------------------------------------------------- 2. second derivatives raise
def test_double_backward_through_the_layer_raises():
    ctrl = pendulum_ctrl()
    x0 = x0_pendulum().requires_grad_(True)
    sol = ctrl(x0)
    with pytest.raises(RuntimeError, match="once differentiable"):
        torch.autograd.grad(sol.x.square().sum(), x0, create_graph=True)


def test_functional_hessian_through_the_layer_raises_instead_of_zeros():
    ctrl = pendulum_ctrl()

    def f(x0):
        return ctrl(x0).x.square().sum()

    with pytest.raises(RuntimeError, match="once differentiable"):
        torch.autograd.functional.hessian(f, x0_pendulum(1))


# ------------------------------------------------------------- 3. detach detaches
@pytest.mark.parametrize("grad", ["implicit", "last_lqr", "unroll"])
def test_detach_gives_unconverged_samples_no_gradient_in_every_mode(grad):
    dyn, cost = task_problem("pendulum")
    ctrl = dl.DiLQR(dyn, cost, horizon=15, grad=grad,
                    config=dl.ILQRConfig(max_iter=6, on_unconverged="detach"))
    th = torch.tensor([0.05, 3.1], dtype=F64)  # near upright converges in 5; hanging does not
    x0 = torch.stack([th.cos(), th.sin(), torch.zeros(2, dtype=F64)], -1)
    with pytest.warns(dl.UnconvergedWarning):
        sol = ctrl(x0)
    assert bool(sol.converged[0]) and not bool(sol.converged[1])
    params = [dyn.g, dyn.m, dyn.l, cost.weights, cost.goal]
    for out in (sol.x[1].sum(), sol.u[1].sum(), sol.cost[1]):
        grads = torch.autograd.grad(out, params, allow_unused=True, retain_graph=True)
        assert all(g is None or bool((g == 0).all()) for g in grads)
    grads = torch.autograd.grad(sol.cost[0], params, allow_unused=True)
    assert any(g is not None and bool((g != 0).any()) for g in grads)


# ---------------------------------------------------------- 4. per-sample bounds work
def test_per_sample_bounds_work_with_gradients():
    dyn, cost = task_problem("pendulum")
    B, T = 3, 10
    hi = torch.tensor([0.5, 1.0, 2.0], dtype=F64)[:, None, None].expand(B, T, 1).clone()
    ctrl = dl.DiLQR(dyn, cost, horizon=T, u_lower=-hi, u_upper=hi)
    x0 = x0_pendulum(B)
    sol = ctrl(x0)
    assert bool((sol.u.abs() <= hi + 1e-12).all())
    (g,) = torch.autograd.grad(sol.u.sum() + sol.x.square().sum(), [dyn.m])
    # each sample alone with its scalar bound gives the same solution and gradient
    total = torch.zeros((), dtype=F64)
    for b in range(B):
        one = dl.DiLQR(dyn, cost, horizon=T, u_lower=-float(hi[b, 0, 0]),
                       u_upper=float(hi[b, 0, 0]))
        s = one(x0[b:b + 1])
        torch.testing.assert_close(s.u, sol.u[b:b + 1], rtol=1e-8, atol=1e-10)
        total = total + torch.autograd.grad(s.u.sum() + s.x.square().sum(), [dyn.m])[0]
    torch.testing.assert_close(g, total, rtol=1e-7, atol=1e-10)
    with pytest.raises(ValueError, match="u_lower.*3 samples"):
        ctrl(x0_pendulum(2))


# ------------------------------------------------------------ 5. config validation
@pytest.mark.parametrize("field,value", [("mu_factor", math.nan), ("armijo", math.nan),
                                         ("newton_tol", math.nan), ("tol", math.inf),
                                         ("max_iter", 2.5), ("max_iter", True),
                                         ("n_alpha", 3.0), ("qp_iters", "5"),
                                         ("armijo", 1.5), ("mu_min", math.nan)])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dl.ILQRConfig(**{field: value})


# ------------------------------------------------------------------ 6. batch size 0
def test_empty_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="x0 has no samples"):
        pendulum_ctrl()(torch.zeros(0, 3, dtype=F64))


# ------------------------------------------------------------------ property test
def _random_problem(gen: torch.Generator):
    """A random problem: a linear user model (n, m random, open-loop unstable at times,
    bounds tight or loose) or a pendulum with random parameters."""
    if bool(torch.rand((), generator=gen) < 0.5):
        n = int(torch.randint(2, 6, (), generator=gen))
        m = int(torch.randint(1, 4, (), generator=gen))
        A = torch.eye(n, dtype=F64) + 0.3 * torch.randn(n, n, generator=gen, dtype=F64)
        dyn = LinearModel(A, torch.randn(n, m, generator=gen, dtype=F64),
                          0.3 * torch.randn(n, generator=gen, dtype=F64))
        w = 0.2 + torch.rand(n + m, generator=gen, dtype=F64)
        cost = dl.QuadraticCost.tracking(w, torch.zeros(n + m, dtype=F64), n_state=n).double()
        with torch.no_grad():
            cost.weights.copy_(w)
            cost.terminal_weights.copy_(w[:n])
        bound = float(0.1 + 2 * torch.rand((), generator=gen))
        x0 = torch.randn(6, n, generator=gen, dtype=F64)
    else:
        g, m_, l_ = (float(v) for v in 0.5 + 1.5 * torch.rand(3, generator=gen, dtype=F64))
        dyn = PENDULUM.dynamics(dtype=F64, g=10 * g, m=m_, l=l_)
        cost = PENDULUM.make_cost().double()
        bound = float(0.5 + 2 * torch.rand((), generator=gen))
        th = (2 * torch.rand(6, generator=gen, dtype=F64) - 1) * math.pi
        x0 = torch.stack([th.cos(), th.sin(), torch.randn(6, generator=gen, dtype=F64)], -1)
    T = int(torch.randint(3, 9, (), generator=gen))
    return dyn, cost, x0, T, bound


def _corrupt(gen: torch.Generator, x0: torch.Tensor, bound: float):
    """A random bad input, or none: ``(x0, u_lower, u_upper, params)``."""
    kind = int(torch.randint(0, 6, (), generator=gen))
    x0 = x0.clone()
    lo, hi = -bound, bound
    if kind == 1:
        x0[0, 0] = math.nan
    elif kind == 2:
        x0[-1, -1] = math.inf
    elif kind == 3:
        lo, hi = bound, -bound
    elif kind == 4:
        lo, hi = math.inf, math.inf
    elif kind == 5:
        lo = math.nan
    return kind, x0, lo, hi


def test_property_no_silent_nan_and_converged_means_verified_minimum():
    gen = torch.Generator().manual_seed(2024)
    n_ok = n_conv = n_err = 0
    for _ in range(24):
        dyn, cost, x0, T, bound = _random_problem(gen)
        kind, x0b, lo, hi = _corrupt(gen, x0, bound)
        try:
            ctrl = dl.DiLQR(dyn, cost, horizon=T, u_lower=lo, u_upper=hi,
                            config=dl.ILQRConfig(max_iter=60))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dl.UnconvergedWarning)
                sol = ctrl(x0b)
        except (ValueError, TypeError) as e:
            assert kind != 0, f"a valid problem raised: {e}"
            n_err += 1
            continue
        assert kind == 0, f"bad input kind {kind} was accepted"
        n_ok += 1
        for v in (sol.x, sol.u, sol.cost):
            assert bool(torch.isfinite(v).all())
        loss = sol.x.square().sum() + sol.u.sum()
        grads = torch.autograd.grad(loss, list(dyn.parameters()) + list(cost.parameters()),
                                    allow_unused=True)
        assert all(g is None or bool(torch.isfinite(g).all()) for g in grads)
        conv = sol.converged
        if bool(conv.any()):
            rep = verify_local_min(ctrl, x0b[conv], sol.u[conv])
            assert bool(rep.ok.all()), [rep.describe(i) for i in range(int(conv.sum()))
                                        if not bool(rep.ok[i])]
            n_conv += int(conv.sum())
    assert n_ok >= 3 and n_err >= 3 and n_conv >= 10  # both branches were exercised
