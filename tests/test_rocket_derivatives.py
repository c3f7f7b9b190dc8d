"""The rocket's closed-form derivatives (dilqr_rl/models/rocket_derivatives.py) against
torch.func, and a rocket solve's implicit gradient against finite differences."""

import pytest
import torch
from torch.func import hessian, jacrev

import dilqr_rl as dl
from dilqr_rl.models.rocket_derivatives import rotate

from .problems import fd_check, rocket

F64 = torch.float64


def _random(N=9, seed=0):
    """States with a non-unit quaternion (the model does not renormalize), large thrusts and
    rates, per-sample parameters away from the truth (J != 1, l != 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 13, generator=g, dtype=F64)
    u = 8 * torch.randn(N, 3, generator=g, dtype=F64)
    theta = 0.3 + 2 * torch.rand(N, 5, generator=g, dtype=F64)
    lam = torch.randn(N, 13, generator=g, dtype=F64)
    return x, u, theta, lam


def _per_pair_jacobian(dyn, x, u, theta):
    return torch.stack([torch.cat(jacrev(dyn.step, argnums=(0, 1))(x[i], u[i], theta[i]), -1)
                        for i in range(x.shape[0])])


def _per_pair_hessian(dyn, x, u, theta, lam):
    def phi(z, i):
        return (lam[i] * dyn.step(z[:13], z[13:], theta[i])).sum()

    return torch.stack([hessian(phi)(torch.cat([x[i], u[i]]), i) for i in range(x.shape[0])])


@pytest.mark.parametrize("shared", [True, False])
def test_jacobians_match_torch_func(shared):
    dyn = dl.Rocket().double()
    x, u, theta, _ = _random()
    th = theta[0] if shared else theta
    xn, F = dyn.jacobians(x, u, th)
    assert F.shape == (9, 13, 16) and F.dtype == F64
    torch.testing.assert_close(xn, dyn.step(x, u, th), rtol=1e-13, atol=1e-13)
    ref = _per_pair_jacobian(dyn, x, u, th.expand(9, 5))
    torch.testing.assert_close(F, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shared", [True, False])
def test_weighted_hessian_matches_torch_func(shared):
    dyn = dl.Rocket().double()
    x, u, theta, lam = _random(seed=1)
    th = theta[0] if shared else theta
    H = dyn.weighted_hessian(x, u, th, lam)
    assert H.shape == (9, 16, 16)
    ref = _per_pair_hessian(dyn, x, u, th.expand(9, 5), lam)
    assert ref.abs().max() > 1.0  # the test point has curvature to get wrong
    torch.testing.assert_close(H, ref, rtol=1e-12, atol=1e-12)


def test_rotate_is_the_transposed_dcm_for_non_unit_quaternions():
    x, u, _, _ = _random(seed=2)
    q = 1.7 * x[:, 6:10]
    ref = (dl.Rocket.dcm(q).transpose(-1, -2) @ u[..., None])[..., 0]
    torch.testing.assert_close(rotate(q, u), ref, rtol=1e-13, atol=1e-12)


def test_jacobian_is_differentiable_in_theta_like_the_generic_route():
    """grad="unroll" differentiates through the linearization: the closed form's d/dtheta of
    the Jacobian equals autograd's through the generic per-row route (at J != 1, the case a
    public hand-coded d/dl got wrong)."""
    dyn = dl.Rocket().double()
    x, u, theta, lam = _random(N=5, seed=3)
    W = torch.randn(5, 13, 16, dtype=F64, generator=torch.Generator().manual_seed(4))
    th = theta.clone().requires_grad_(True)
    (g_closed,) = torch.autograd.grad((W * dyn.jacobians(x, u, th)[1]).sum(), th)
    (g_generic,) = torch.autograd.grad((W * dl.Dynamics.jacobians(dyn, x, u, th)[1]).sum(), th)
    torch.testing.assert_close(g_closed, g_generic, rtol=1e-12, atol=1e-12)
    assert g_closed[:, 4].abs().min() > 0  # d/dl is exercised
    (h_closed,) = torch.autograd.grad(dyn.weighted_hessian(x, u, th, lam).sum(), th)
    (h_generic,) = torch.autograd.grad(dl.Dynamics.weighted_hessian(dyn, x, u, th, lam).sum(),
                                       th)
    torch.testing.assert_close(h_closed, h_generic, rtol=1e-12, atol=1e-12)


def test_float32_follows_the_input():
    dyn = dl.Rocket()
    x64, u64, th64, lam64 = _random(seed=5)
    x, u, theta, lam = (t.float() for t in (x64, u64, th64, lam64))
    xn, F = dyn.jacobians(x, u, theta)
    H = dyn.weighted_hessian(x, u, theta, lam)
    assert xn.dtype == F.dtype == H.dtype == torch.float32
    dyn64 = dyn.double()
    torch.testing.assert_close(F.double(), dyn64.jacobians(x64, u64, th64)[1],
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(H.double(), dyn64.weighted_hessian(x64, u64, th64, lam64),
                               rtol=1e-4, atol=1e-4)


def test_implicit_gradient_of_a_rocket_solve_matches_finite_differences():
    """Short horizon, bounds active: the layer's gradient (closed-form Jacobians and
    Lagrangian Hessian) against 4th-order central differences of the converged solution."""
    dyn, cost, x0, _, lo, hi = rocket(T=6, bounded=True)
    errors, sol = fd_check(dyn, cost, x0, 6, lo, hi,
                           directions=("x0", "weights", "goal", "terminal_weights"))
    assert (~sol.free).any() and sol.free.any()
    assert {"Jx", "Jy", "Jz", "m", "l"} <= set(errors)
    for k, e in errors.items():
        assert e <= 1e-6, (k, e)
