"""``ILQRConfig.on_nonfinite="isolate"``: the solver sets apart the samples whose initial
rollout or Newton step is not finite, finishes the others exactly as it would without them,
and gives the set-apart ones no gradient (checked against the batch without them)."""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import pytest
import torch

import dilqr_rl as dl
from dilqr_rl.grad import UnconvergedGradientWarning

F64 = torch.float64


class _Kink(dl.Dynamics):
    """A user model with two controls whose Jacobian is NaN at ``x1 = 0`` (``sqrt|x1|``): a
    sample that sits there gets a non-finite Newton step, the others never go there."""

    n_state, n_ctrl = 2, 2
    u_lower, u_upper = -1.0, 1.0

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.5, dtype=F64))
        self.b = torch.nn.Parameter(torch.tensor(0.8, dtype=F64))

    def forward(self, x, u):
        x1, x2 = x[..., 0], x[..., 1]
        return torch.stack([x1 + 0.1 * (u[..., 0] + self.a * x1.abs().sqrt()),
                            x2 + 0.1 * (self.b * u[..., 1] + 0.3 * x1)], -1)


def _ctrl(**config) -> dl.DiLQR:
    cost = dl.QuadraticCost.tracking([1.0, 2.0, 0.1, 0.1], [4.0, 0.0, 0.0, 0.0],
                                     n_state=2).double()
    return dl.DiLQR(_Kink(), cost, horizon=12, config=dl.ILQRConfig(max_iter=60, **config))


X0 = torch.tensor([[0.0, 0.0], [2.0, 1.0], [3.0, -1.0], [2.5, 0.5]], dtype=F64)


def test_default_raises_and_names_the_sample():
    with pytest.raises(dl.NonFiniteError, match="Newton step") as err:
        _ctrl()(X0)
    assert err.value.samples == [0]


def test_isolate_newton_failure_finishes_the_others_exactly():
    with pytest.warns(dl.UnconvergedWarning, match="set apart as not finite"):
        sol = _ctrl(on_nonfinite="isolate")(X0)
    ref = _ctrl()(X0[1:])
    assert sol.failed.tolist() == [True, False, False, False]
    assert not bool(sol.converged[0]) and bool(sol.converged[1:].all())
    assert torch.allclose(sol.u[1:], ref.u, atol=1e-12, rtol=0)
    assert torch.allclose(sol.x[1:], ref.x, atol=1e-12, rtol=0)
    assert torch.equal(sol.iterations[1:], ref.iterations)
    # the set-apart sample keeps its last finite iterate (here the initial one) and says so
    assert torch.isfinite(sol.x[0]).all() and torch.equal(sol.u[0], torch.zeros(12, 2, dtype=F64))
    assert torch.isnan(sol.kkt[0]) and torch.isnan(sol.pivot[0])


@pytest.mark.parametrize("grad", ["implicit", "last_lqr"])
def test_isolate_gradient_is_the_gradient_without_the_failed_sample(grad):
    def grads(ctrl, x0):
        x0 = x0.clone().requires_grad_(True)
        w = torch.linspace(0.5, 1.5, ctrl.horizon, dtype=F64)
        with pytest.warns(dl.UnconvergedWarning) if x0.shape[0] == 4 else nullcontext():
            sol = ctrl(x0)
        # set apart up front: not rescued afterwards as an unconverged sample whose gradient
        # came out NaN (that warning would misname the cause)
        warnings.simplefilter("error", UnconvergedGradientWarning)
        keep = ~sol.failed
        # a loss that touches every output, also the set-apart rows (masked the way a user
        # must: their x may be NaN)
        loss = (sol.u[keep] * w[:, None]).sum() + sol.x[keep].pow(2).sum() + \
            sol.cost[keep].sum()
        loss.backward()
        return x0.grad, ctrl.dynamics.a.grad, ctrl.dynamics.b.grad, ctrl.cost.weights.grad

    c1 = _ctrl(on_nonfinite="isolate")
    c1.grad = grad
    c2 = _ctrl()
    c2.grad = grad
    g1, g2 = grads(c1, X0), grads(c2, X0[1:])
    assert torch.equal(g1[0][0], torch.zeros(2, dtype=F64))
    assert torch.allclose(g1[0][1:], g2[0], atol=1e-10, rtol=0)
    for a, b in zip(g1[1:], g2[1:], strict=True):
        assert torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-10, rtol=1e-10)
    assert g1[1].abs() > 0 and g1[2].abs() > 0  # the shared parameters do get a gradient


def test_isolate_initial_rollout_failure():
    # the cost of x0 = 1e200 overflows: the first rollout's cost is inf for that sample
    x0 = X0.clone()
    x0[0] = torch.tensor([1e200, 0.0], dtype=F64)
    with pytest.raises(dl.NonFiniteError, match="initial rollout"):
        _ctrl()(x0)
    ctrl, ref_ctrl = _ctrl(on_nonfinite="isolate"), _ctrl()
    with pytest.warns(dl.UnconvergedWarning, match="1 of them set apart"):
        sol = ctrl(x0)
    ref = ref_ctrl(x0[1:])
    assert sol.failed.tolist() == [True, False, False, False]
    assert not torch.isfinite(sol.cost[0])
    assert torch.allclose(sol.u[1:], ref.u, atol=1e-12, rtol=0)
    assert torch.equal(sol.iterations, torch.tensor([0, *ref.iterations.tolist()]))
    # the cost's own parameters: no 0 * inf from the set-apart row reaches their gradient
    keep = ~sol.failed
    (sol.cost[keep].sum() + sol.u[keep].sum()).backward()
    (ref.cost.sum() + ref.u.sum()).backward()
    for p, q in ((ctrl.cost.weights, ref_ctrl.cost.weights), (ctrl.dynamics.a,
                                                              ref_ctrl.dynamics.a)):
        assert torch.isfinite(p.grad).all()
        assert torch.allclose(p.grad, q.grad, atol=1e-10, rtol=1e-10)


def test_isolate_every_sample_failed_returns_without_iterating():
    x0 = torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=F64)
    with pytest.warns(dl.UnconvergedWarning, match="2 of them set apart"):
        sol = _ctrl(on_nonfinite="isolate")(x0)
    assert sol.failed.all() and not sol.converged.any()
    assert torch.equal(sol.u, torch.zeros_like(sol.u))


def test_isolate_with_unroll_records_only_the_others():
    """With ``grad="unroll"`` the recorded graph of a set-apart sample would carry its NaN into
    the shared parameters' gradient: the others are recorded alone, same result."""
    c1, c2 = _ctrl(on_nonfinite="isolate"), _ctrl()
    c1.grad = c2.grad = "unroll"
    with pytest.warns(dl.UnconvergedWarning, match="1 of them set apart"):
        sol = c1(X0)
    ref = c2(X0[1:])
    assert sol.failed.tolist() == [True, False, False, False]
    assert torch.allclose(sol.u[1:], ref.u, atol=1e-12, rtol=0)
    keep = ~sol.failed
    (sol.u[keep].sum() + sol.cost[keep].sum()).backward()
    (ref.u.sum() + ref.cost.sum()).backward()
    for p, q in ((c1.dynamics.a, c2.dynamics.a), (c1.dynamics.b, c2.dynamics.b),
                 (c1.cost.weights, c2.cost.weights)):
        assert torch.isfinite(p.grad).all()
        assert torch.allclose(p.grad, q.grad, atol=1e-10, rtol=1e-10)


def test_isolate_warns_at_a_fixed_iteration_count_too():
    # tol = 0 asks for max_iter iterations and reports no unconverged sample; a set-apart one
    # is still reported
    cfg = dict(on_nonfinite="isolate", tol=0.0)
    cost = dl.QuadraticCost.tracking([1.0, 2.0, 0.1, 0.1], [4.0, 0.0, 0.0, 0.0],
                                     n_state=2).double()
    ctrl = dl.DiLQR(_Kink(), cost, horizon=12, config=dl.ILQRConfig(max_iter=5, **cfg))
    with pytest.warns(dl.UnconvergedWarning, match="1 of 4 samples set apart"):
        sol = ctrl(X0)
    assert sol.failed.tolist() == [True, False, False, False]
    assert torch.isnan(sol.kkt[0]) and torch.isnan(sol.pivot[0])


def test_on_nonfinite_is_checked():
    with pytest.raises(ValueError, match="on_nonfinite must be 'raise' or 'isolate'"):
        dl.ILQRConfig(on_nonfinite="skip")


def test_no_failure_means_failed_all_false_and_same_result():
    a = _ctrl(on_nonfinite="isolate")(X0[1:])
    b = _ctrl()(X0[1:])
    assert not a.failed.any() and not b.failed.any()
    assert torch.equal(a.u, b.u)


def test_isolate_leaves_a_converged_sample_with_a_nonfinite_gradient_out(monkeypatch):
    """A converged sample whose implicit gradient is not finite (seen on a tumbling rocket in
    a PPO update) raises by default; with isolate it gets no gradient, with a warning, and the
    others keep theirs."""
    import dilqr_rl.grad as grad

    real = grad.fixed_point_vjp

    def poisoned(dynamics, cost, x0, *args, **kw):  # sample 1's adjoint "overflows"
        g0, gth, gP = real(dynamics, cost, x0, *args, **kw)
        if x0.shape[0] == 3:
            g0 = g0.clone()
            g0[1] = float("inf")
        return g0, gth, gP

    monkeypatch.setattr(grad, "fixed_point_vjp", poisoned)
    x0 = X0[1:].clone().requires_grad_(True)
    sol = _ctrl()(x0)
    assert sol.converged.all()
    with pytest.raises(dl.NonFiniteError, match="implicit gradient for x0"):
        sol.u.sum().backward()
    ctrl = _ctrl(on_nonfinite="isolate")
    x0 = X0[1:].clone().requires_grad_(True)
    sol = ctrl(x0)
    with pytest.warns(UnconvergedGradientWarning, match=r"\(1 converged"):
        sol.u.sum().backward()
    ref_ctrl = _ctrl()
    xr = X0[[1, 3]].clone().requires_grad_(True)
    ref_ctrl(xr).u.sum().backward()
    assert x0.grad[1].abs().sum() == 0
    assert torch.allclose(x0.grad[[0, 2]], xr.grad, atol=1e-10, rtol=0)
    assert torch.allclose(ctrl.dynamics.a.grad, ref_ctrl.dynamics.a.grad, atol=1e-10, rtol=1e-10)


def test_isolate_every_sample_with_a_nonfinite_gradient_gets_none(monkeypatch):
    """With isolate, a batch whose every sample has a non-finite implicit gradient (the SB3
    actor's cold re-solve of one sample inside a PPO update, seen on the rocket) gives those
    samples no gradient, with a warning, like samples the solve set apart; by default it still
    raises, and with isolate a non-finite shared gradient that no sample's row explains still
    raises."""
    import dilqr_rl.grad as grad

    real = grad.fixed_point_vjp

    def poisoned(dynamics, cost, x0, *args, **kw):  # every sample's adjoint "overflows"
        g0, gth, gP = real(dynamics, cost, x0, *args, **kw)
        return torch.full_like(g0, float("inf")), gth, gP

    monkeypatch.setattr(grad, "fixed_point_vjp", poisoned)
    x0 = X0[1:2].clone().requires_grad_(True)
    sol = _ctrl()(x0)
    assert sol.converged.all()
    with pytest.raises(dl.NonFiniteError, match="implicit gradient for x0"):
        sol.u.sum().backward()
    ctrl = _ctrl(on_nonfinite="isolate")
    x0 = X0[1:3].clone().requires_grad_(True)
    sol = ctrl(x0)
    with pytest.warns(UnconvergedGradientWarning, match=r"2 sample\(s\) \(2 converged"):
        sol.u.sum().backward()
    assert torch.equal(x0.grad, torch.zeros_like(x0))
    assert ctrl.dynamics.a.grad is None or ctrl.dynamics.a.grad.abs().sum() == 0

    def shared(dynamics, cost, x0, *args, **kw):  # finite rows, non-finite shared gradient
        g0, gth, gP = real(dynamics, cost, x0, *args, **kw)
        return g0, gth + float("nan"), gP

    monkeypatch.setattr(grad, "fixed_point_vjp", shared)
    x0 = X0[1:3].clone().requires_grad_(True)
    sol = _ctrl(on_nonfinite="isolate")(x0)
    with pytest.raises(dl.NonFiniteError, match="dynamics parameters"):
        sol.u.sum().backward()
