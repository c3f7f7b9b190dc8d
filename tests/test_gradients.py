"""Fixed-point gradients against finite differences of the converged solution (float64)."""

import math

import pytest
import torch

import dilqr_rl as dl

from .problems import CFG, F64, cartpole, fd_check, pendulum, rocket

KINDS_PENDULUM = ["x0", "g", "m", "l", "weights", "goal", "terminal_weights"]


@pytest.mark.slow
@pytest.mark.parametrize("bounded", [False, True])
def test_implicit_pendulum(bounded):
    errors, sol = fd_check(*pendulum(bounded=bounded))
    free = sol.free
    if bounded:
        assert (~free).any() and free.any(), "problem must have both active and free controls"
    else:
        assert free.all()
    assert set(KINDS_PENDULUM) <= set(errors)
    for k, e in errors.items():
        assert e <= 1e-6, (k, e)


@pytest.mark.slow
@pytest.mark.parametrize("bounded", [False, True])
def test_implicit_cartpole(bounded):
    errors, sol = fd_check(*cartpole(bounded=bounded), directions=("weights", "goal"))
    if bounded:
        assert (~sol.free).any() and sol.free.any()
    for k, e in errors.items():
        assert e <= 1e-6, (k, e)


@pytest.mark.slow
@pytest.mark.parametrize("bounded", [False, True])
def test_implicit_rocket(bounded):
    errors, sol = fd_check(*rocket(bounded=bounded),
                           directions=("x0", "weights", "goal", "terminal_weights"))
    if bounded:
        assert (~sol.free).any() and sol.free.any()
    assert {"Jx", "Jy", "Jz", "m", "l"} <= set(errors)
    for k, e in errors.items():
        assert e <= 1e-6, (k, e)


@pytest.mark.slow
def test_last_lqr_differs_measurably():
    """DiffMPC's gradient drops the second-order dynamics term: on the (nonlinear) pendulum
    swing-up its error against finite differences is orders of magnitude above ours."""
    prob = pendulum(bounded=False)
    exact, _ = fd_check(*prob)
    approx, _ = fd_check(*prob, grad="last_lqr")
    for k in ("x0", "g", "m", "l", "weights", "goal"):
        assert approx[k] > 1e-4, (k, approx[k])  # measured ~1e-3 .. 1e-2
        assert approx[k] > 100 * exact[k], (k, approx[k], exact[k])


def _grads(grad, max_iter, prob):
    dyn, cost, x0, T, lo, hi = prob
    cfg = dl.ILQRConfig(max_iter=max_iter, tol=0.0)
    ctrl = dl.DiLQR(dyn, cost, horizon=T, u_lower=lo, u_upper=hi, config=cfg, grad=grad)
    sol = ctrl(x0)
    gen = torch.Generator().manual_seed(3)
    loss = (torch.randn(sol.u.shape, generator=gen, dtype=F64) * sol.u).sum()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, dyn.parameters())])


def test_unroll_approaches_implicit():
    prob = pendulum(T=10, bounded=False, angles=(1.0, 0.5))
    implicit = _grads("implicit", 300, prob)
    errs = [((_grads("unroll", k, prob) - implicit).norm() / implicit.norm()).item()
            for k in (2, 5, 40)]
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[0] > 1e-3 and errs[2] < 1e-8, errs


def test_batch_one_and_per_sample_params():
    dyn, cost, x0, T, lo, hi = pendulum(bounded=False)
    ctrl = dl.DiLQR(dyn, cost, horizon=T, u_lower=lo, u_upper=hi, config=CFG)
    theta = torch.tensor([[10.0, 1.0, 1.0], [9.0, 1.5, 0.8], [11.0, 0.7, 1.2]], dtype=F64,
                         requires_grad=True)
    sol = ctrl(x0, params=theta)
    assert sol.converged.all()
    g = torch.autograd.grad(sol.u.square().sum(), theta)[0]
    # each row equals the batch-of-one solve with that sample's parameters
    for i in range(3):
        th = theta[i].detach().clone().requires_grad_(True)
        s1 = ctrl(x0[i : i + 1], params=th)
        assert s1.u.shape == (1, T, 1)
        torch.testing.assert_close(s1.u[0], sol.u[i], rtol=1e-9, atol=1e-10)
        g1 = torch.autograd.grad(s1.u.square().sum(), th)[0]
        torch.testing.assert_close(g1, g[i], rtol=1e-7, atol=1e-9)


def test_per_sample_cost_overrides_match_fd():
    dyn, cost, x0, T, lo, hi = pendulum(bounded=False)
    ctrl = dl.DiLQR(dyn, cost, horizon=T, u_lower=lo, u_upper=hi, config=CFG)
    goal = cost.goal.detach().expand(3, 4).clone()
    goal[:, 2] = torch.tensor([0.0, 0.3, -0.2])
    goal.requires_grad_(True)
    sol = ctrl(x0, goal=goal)
    g = torch.autograd.grad(sol.u.sum(), goal)[0]
    h = 1e-6
    for i in range(3):
        e = torch.zeros_like(goal)
        e[i, 2] = h
        with torch.no_grad():
            up = ctrl(x0, goal=goal + e, u_init=sol.u).u.sum()
            dn = ctrl(x0, goal=goal - e, u_init=sol.u).u.sum()
        assert abs((up - dn) / (2 * h) - g[i, 2]) <= 1e-6 * abs(g[i, 2]) + 1e-9


def test_float32_matches_float64():
    dyn, cost, x0, T, lo, hi = pendulum(T=10, bounded=False, angles=(0.8, 0.4))
    grads = {}
    for dt in (torch.float32, torch.float64):
        d = dl.Pendulum().to(dt)
        ctrl = dl.DiLQR(d, cost, horizon=T, u_lower=lo, u_upper=hi,
                        config=dl.ILQRConfig(max_iter=100, tol=1e-5 if dt == torch.float32
                                             else 1e-12))
        sol = ctrl(x0.to(dt))
        assert sol.converged.all(), dt
        assert sol.u.dtype == dt
        loss = sol.u.square().sum()
        grads[dt] = torch.autograd.grad(loss, list(d.parameters()))
    for a, b in zip(grads[torch.float32], grads[torch.float64], strict=True):
        assert abs(a.double() - b).item() <= 1e-3 * max(1.0, abs(b).item()), (a, b)


def test_detach_mode_gives_no_gradient_to_unconverged():
    dyn, cost, x0, T, lo, hi = pendulum(bounded=True)
    ctrl = dl.DiLQR(dyn, cost, horizon=T, u_lower=lo, u_upper=hi,
                    config=dl.ILQRConfig(max_iter=2, tol=1e-12, on_unconverged="detach"))
    x0 = x0.clone().requires_grad_(True)
    with pytest.warns(RuntimeWarning, match="no gradient"):
        sol = ctrl(x0)
    assert not sol.converged.any()
    (g,) = torch.autograd.grad(sol.u.sum(), x0)
    assert torch.count_nonzero(g) == 0


def test_clamped_controls_get_exactly_zero_gradient():
    dyn, cost, x0, T, lo, hi = pendulum(bounded=True)
    ctrl = dl.DiLQR(dyn, cost, horizon=T, u_lower=lo, u_upper=hi, config=CFG)
    x0 = x0.clone().requires_grad_(True)
    sol = ctrl(x0)
    clamped = ~sol.free
    assert clamped.any()
    w = torch.randn(sol.u.shape, dtype=F64, generator=torch.Generator().manual_seed(0))
    loss = (w * sol.u * clamped).sum()
    grads = torch.autograd.grad(loss, [x0, *dyn.parameters(), *cost.parameters()],
                                allow_unused=True, retain_graph=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    # while the free controls do move with the parameters
    loss_free = (w * sol.u * sol.free).sum()
    g_free = torch.autograd.grad(loss_free, list(dyn.parameters()))
    assert any(torch.count_nonzero(g) > 0 for g in g_free)


def test_gradcheck_tiny_problem():
    """torch.autograd.gradcheck (its own finite differences, re-solving from scratch) on a
    small problem near upright where the solution is unique."""
    dyn = dl.Pendulum().double()
    cost = dl.QuadraticCost.tracking([1.0, 1.0, 0.1, 0.01], [1.0, 0, 0, 0], n_state=3).double()
    ctrl = dl.DiLQR(dyn, cost, horizon=5, u_lower=-math.inf, u_upper=math.inf,
                    config=dl.ILQRConfig(max_iter=200, tol=1e-14))

    def f(x0, theta, goal):
        return ctrl(x0, params=theta, goal=goal).u

    x0 = torch.tensor([[math.cos(0.4), math.sin(0.4), 0.1]], dtype=F64, requires_grad=True)
    theta = torch.tensor([10.0, 1.0, 1.0], dtype=F64, requires_grad=True)
    goal = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x0, theta, goal), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_implicit_gradient_by_scan_equals_sequential(monkeypatch):
    """Long horizons take the adjoint LQR by the associative scan (dilqr_rl.grad.use_scan); the
    gradient equals the sequential pass's to rounding, on a bounded pendulum (held controls)."""
    from dilqr_rl import grad as grad_mod

    dyn, cost, x0, _, lo, hi = pendulum(T=40, angles=(2.5,))
    assert grad_mod.use_scan(1, 40, 3, x0.device)
    grads = []
    for scan in (True, False):
        monkeypatch.setattr(grad_mod, "use_scan", lambda *a, scan=scan: scan)
        ctrl = dl.DiLQR(dyn, cost, horizon=40, u_lower=lo, u_upper=hi, config=CFG)
        xr = x0.clone().requires_grad_(True)
        sol = ctrl(xr)
        assert bool(sol.converged.all()) and not bool(sol.free.all())
        w = torch.linspace(-1, 1, sol.u.numel(), dtype=torch.float64).reshape(sol.u.shape)
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            (w * sol.u).sum() + sol.x.square().sum(), [xr, *dyn.parameters(),
                                                      *cost.parameters()])]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-11)


def test_unconverged_samples_with_a_nonfinite_gradient_are_left_out() -> None:
    """An unconverged sample whose implicit gradient is not finite (a singular reduced Hessian
    at its last iterate: seen on a tumbling rocket) gets no gradient, with a warning, and the
    others get exactly the gradient of the batch without it; a converged sample's non-finite
    gradient is left for the caller to raise."""
    from dilqr_rl.grad import (
        UnconvergedGradientWarning,
        _Spec,
        _without_unconverged_failures,
        fixed_point_vjp,
    )

    task = dl.tasks.get("pendulum")
    ctrl = task.controller(horizon=10, dtype=F64)
    x0 = torch.tensor([[0.9, 0.43589, 0.5], [-1.0, 0.0, 0.0], [0.5, -0.8660254, 1.0]], dtype=F64)
    with torch.no_grad():
        sol = ctrl(x0)
    theta = ctrl.dynamics.theta().detach()
    P = {k: v.detach().expand(3, *v.shape) for k, v in ctrl.cost.params().items()}
    gx, gu = torch.ones_like(sol.x), torch.ones_like(sol.u)
    g0, gth, gP = fixed_point_vjp(ctrl.dynamics, ctrl.cost, x0, theta, P, sol.x, sol.u,
                                  sol.free, gx, gu)
    g0[1] = math.nan  # as if sample 1's adjoint solve had failed
    gth = gth + math.nan
    spec = _Spec(ctrl.dynamics, ctrl.cost, list(P), sol.u, None, None, ctrl.config, True)
    conv = torch.tensor([True, False, True])
    with pytest.warns(UnconvergedGradientWarning, match="1 unconverged"):
        h0, hth, hP = _without_unconverged_failures(spec, x0, theta, P, sol.x, sol.u, sol.free,
                                                    conv, torch.zeros(3, dtype=torch.bool), gx, gu,
                                                    g0, gth, gP)
    keep = [0, 2]
    r0, rth, rP = fixed_point_vjp(ctrl.dynamics, ctrl.cost, x0[keep], theta,
                                  {k: v[keep] for k, v in P.items()}, sol.x[keep], sol.u[keep],
                                  sol.free[keep], gx[keep], gu[keep])
    torch.testing.assert_close(h0[keep], r0)
    assert h0[1].abs().sum() == 0
    torch.testing.assert_close(hth, rth)
    for k in P:
        torch.testing.assert_close(hP[k][keep], rP[k])
        assert hP[k][1].abs().sum() == 0
    # a converged sample with a non-finite gradient: nothing is left out
    same = _without_unconverged_failures(spec, x0, theta, P, sol.x, sol.u, sol.free,
                                         torch.ones(3, dtype=torch.bool),
                                         torch.zeros(3, dtype=torch.bool), gx, gu, g0, gth, gP)
    assert same[0] is g0 and same[1] is gth
    # ... unless the caller asked to isolate non-finite samples (on_nonfinite="isolate": an RL
    # update needs the healthy samples' gradient): then a converged one is left out too
    with pytest.warns(UnconvergedGradientWarning, match=r"1 sample\(s\) \(1 converged"):
        i0, ith, _ = _without_unconverged_failures(
            spec, x0, theta, P, sol.x, sol.u, sol.free, torch.ones(3, dtype=torch.bool),
            torch.zeros(3, dtype=torch.bool), gx, gu, g0, gth, gP, isolate=True)
    torch.testing.assert_close(i0[keep], r0)
    assert i0[1].abs().sum() == 0
    torch.testing.assert_close(ith, rth)
    # without isolate, when every sample not set apart has a non-finite gradient the gradient
    # stands (the caller raises) instead of becoming zero (with isolate they all get none:
    # tests/test_isolate.py)
    failed = torch.tensor([True, False, False])
    g0f = g0.clone()
    g0f[0], g0f[2] = 0.0, math.nan
    same = _without_unconverged_failures(spec, x0, theta, P, sol.x, sol.u, sol.free,
                                         torch.zeros(3, dtype=torch.bool), failed, gx, gu,
                                         g0f, gth, gP)
    assert same[0] is g0f and same[1] is gth
