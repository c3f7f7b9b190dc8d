"""Models: analytic and batched derivatives against per-pair torch.func, rocket, user models."""

import math

import pytest
import torch
from torch.func import hessian, jacrev

import dilqr_rl as dl

F64 = torch.float64


def _pairs(n, m, N=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, n, generator=g, dtype=F64)
    u = torch.randn(N, m, generator=g, dtype=F64)
    return x, u


def _ref_jac(dyn, x, u, theta):
    def one(xi, ui):
        return dyn.step(xi, ui, theta)

    Jx, Ju = [], []
    for i in range(x.shape[0]):
        jx, ju = jacrev(one, argnums=(0, 1))(x[i], u[i])
        Jx.append(jx)
        Ju.append(ju)
    return torch.cat([torch.stack(Jx), torch.stack(Ju)], -1)


def test_cartpole_analytic_jacobian_matches_torch_func():
    dyn = dl.CartPole(g=9.5, m_cart=1.3, m_pole=0.2, l=0.7).double()
    x, u = _pairs(5, 1, N=9, seed=3)
    theta = dyn.theta()
    xn, F = dyn.jacobians(x, u, theta.expand(9, 4))
    torch.testing.assert_close(xn, dyn.step(x, u, theta))
    torch.testing.assert_close(F, _ref_jac(dyn, x, u, theta), rtol=1e-11, atol=1e-11)


def test_pendulum_analytic_jacobian_matches_torch_func():
    dyn = dl.Pendulum(g=9.3, m=1.7, l=0.6).double()
    th = torch.linspace(-3, 3, 7, dtype=F64)
    x = torch.stack([1.3 * th.cos(), 1.3 * th.sin(), torch.linspace(-2, 2, 7, dtype=F64)], -1)
    u = torch.linspace(-2, 2, 7, dtype=F64)[:, None]
    theta = dyn.theta()
    xn, F = dyn.jacobians(x, u, theta.expand(7, 3))
    torch.testing.assert_close(xn, dyn.step(x, u, theta))
    torch.testing.assert_close(F, _ref_jac(dyn, x, u, theta), rtol=1e-12, atol=1e-12)
    # the generic (autograd) path of the base class agrees as well
    _, Fg = dl.Dynamics.jacobians(dyn, x, u, theta.expand(7, 3))
    torch.testing.assert_close(F, Fg, rtol=1e-12, atol=1e-12)


def test_pendulum_equations_match_mpc_pytorch_formula():
    """PendulumDx of mpc.pytorch (simple=True), written out: newdth = dth + dt*(3g/(2l) sin
    + 3u/(m l^2)), newth = th + dt*newdth."""
    dyn = dl.Pendulum(g=9.0, m=1.2, l=0.8, dt=0.04).double()
    g, m, l, dt = 9.0, 1.2, 0.8, 0.04
    th, dth, u = 0.7, -0.4, 1.3
    x = torch.tensor([[math.cos(th), math.sin(th), dth]], dtype=F64)
    nd = dth + dt * (3 * g / (2 * l) * math.sin(th) + 3 * u / (m * l * l))
    nt = th + dt * nd
    out = dyn(x, torch.tensor([[u]], dtype=F64))
    torch.testing.assert_close(out, torch.tensor([[math.cos(nt), math.sin(nt), nd]], dtype=F64))


@pytest.mark.parametrize("model", [dl.Pendulum(g=9.0, m=1.4, l=0.8),
                                   dl.CartPole(g=9.5, m_cart=1.3, m_pole=0.2, l=0.7),
                                   dl.Rocket(Jx=0.4, Jy=1.7, Jz=0.6, m=1.3, l=1.4)])
def test_batched_derivatives_match_per_pair_autograd(model):
    dyn = model.double()
    n, m = dyn.n_state, dyn.n_ctrl
    x, u = _pairs(n, m)
    if isinstance(dyn, dl.Pendulum):
        x[:, :2] = x[:, :2] / x[:, :2].norm(dim=-1, keepdim=True)
    theta = dyn.theta().detach()
    _, F = dl.Dynamics.jacobians(dyn, x, u, theta.expand(x.shape[0], -1))
    torch.testing.assert_close(F, _ref_jac(dyn, x, u, theta), rtol=1e-11, atol=1e-11)
    lam = torch.randn(x.shape[0], n, dtype=F64, generator=torch.Generator().manual_seed(2))
    H = dyn.weighted_hessian(x, u, theta.expand(x.shape[0], -1), lam)
    for i in range(x.shape[0]):
        def phi(z, i=i):
            return (lam[i] * dyn.step(z[:n], z[n:], theta)).sum()
        Href = hessian(phi)(torch.cat([x[i], u[i]]))
        torch.testing.assert_close(H[i], Href, rtol=1e-10, atol=1e-10)


def test_rocket_second_derivatives_in_l_at_nonunit_inertia():
    """docs/rocket.md: a public implementation hand-coded d/dl of the angular dynamics, right only
    for J = 1. Our mixed derivatives d^2 f / (dtheta dz) come from autograd; check them against
    finite differences of the Jacobian at J != 1."""
    dyn = dl.Rocket(Jx=0.4, Jy=1.7, Jz=0.6, m=1.3, l=1.4).double()
    x, u = _pairs(13, 3, N=3, seed=4)
    theta = dyn.theta().detach()
    h = 1e-6

    def F_at(th):
        return dl.Dynamics.jacobians(dyn, x, u, th.expand(3, -1))[1]

    # mixed derivatives d/dtheta of the Jacobian, by autograd (the Jacobian is built with a
    # graph when theta requires grad), along random weightings W of its entries
    th = theta.clone().requires_grad_(True)
    F = F_at(th)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        W = torch.randn(F.shape, generator=gen, dtype=F64)
        (D,) = torch.autograd.grad((W * F).sum(), th, retain_graph=True)
        for j in range(5):
            e = torch.zeros(5, dtype=F64)
            e[j] = h
            fd = ((W * F_at(theta + e)).sum() - (W * F_at(theta - e)).sum()) / (2 * h)
            assert abs(D[j] - fd) <= 1e-7 * max(1.0, abs(fd)), (j, D[j], fd)
    # and the l-derivative of w_dot_y = ((l/2) Tz + ...)/Jy: d^2 wy_next / (dTz dl) = dt/(2 Jy)
    (fl,) = torch.autograd.grad(F[:, 11, 13 + 2].sum(), th)
    torch.testing.assert_close(fl[4], torch.tensor(3 * 0.1 / (2 * 1.7), dtype=F64))


def test_rocket_equations_by_hand():
    dyn = dl.Rocket(Jx=0.5, Jy=1.0, Jz=2.0, m=2.0, l=1.0).double()
    # upright (q = 1), spinning about body y and z, thrust along the body axis and side
    x = torch.zeros(1, 13, dtype=F64)
    x[0, 6] = 1.0
    x[0, 10:13] = torch.tensor([0.0, 0.5, 0.2])
    u = torch.tensor([[30.0, 1.0, 2.0]], dtype=F64)
    xd = dyn.derivative(x, u, dyn.theta())[0]
    # v_dot = C^T T / m + g = T/m + (-10, 0, 0) at q = identity
    torch.testing.assert_close(xd[3:6], torch.tensor([15.0 - 10, 0.5, 1.0], dtype=F64))
    # q_dot = 1/2 Omega(w) q = 1/2 (0, wx, wy, wz)
    torch.testing.assert_close(xd[6:10], torch.tensor([0.0, 0.0, 0.25, 0.1], dtype=F64))
    # w_dot
    wx, wy, wz = 0.0, 0.5, 0.2
    exp = torch.tensor([(1.0 - 2.0) * wy * wz / 0.5, (0.5 * 2.0 + (2.0 - 0.5) * wz * wx) / 1.0,
                        (-0.5 * 1.0 + (0.5 - 1.0) * wx * wy) / 2.0], dtype=F64)
    torch.testing.assert_close(xd[10:13], exp)
    # the DCM of a rotation by 90 deg about z maps inertial x to body -y
    q = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], dtype=F64)
    C = dl.Rocket.dcm(q)
    torch.testing.assert_close(C @ torch.tensor([1.0, 0, 0], dtype=F64),
                               torch.tensor([0.0, -1.0, 0.0], dtype=F64), atol=1e-12, rtol=0)


class Damped(dl.Dynamics):
    """A user model: only forward, with a matrix and a scalar parameter."""

    n_state, n_ctrl = 2, 1

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(2.0, dtype=F64))
        self.B = torch.nn.Parameter(torch.tensor([[0.0], [0.1]], dtype=F64))

    def forward(self, x, u):
        pos, vel = x[..., 0], x[..., 1]
        acc = -self.k * torch.sin(pos) - 0.1 * vel
        nxt = torch.stack([pos + 0.1 * vel, vel + 0.1 * acc], -1)
        return nxt + (self.B @ u[..., None])[..., 0]


def test_user_model_theta_and_per_sample_step():
    dyn = Damped()
    assert dyn.param_names() == ["k", "B"] and dyn.n_params == 3
    theta = dyn.theta()
    x, u = _pairs(2, 1, N=4)
    torch.testing.assert_close(dyn.step(x, u, theta), dyn(x, u))
    thb = theta.detach().expand(4, 3).clone()
    thb[:, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = dyn.step(x, u, thb)
    for i in range(4):
        d = Damped()
        with torch.no_grad():
            d.k.fill_(float(thb[i, 0]))
        torch.testing.assert_close(out[i], d(x[i : i + 1], u[i : i + 1])[0])


def test_user_model_gradient_matches_fd():
    from .problems import fd_check

    dyn = Damped()
    cost = dl.QuadraticCost.tracking([1.0, 0.1, 0.05], [0.5, 0, 0], n_state=2).double()
    x0 = torch.tensor([[2.0, 0.0], [-1.0, 0.3]], dtype=F64)
    errors, sol = fd_check(dyn, cost, x0, 10, -1.0, 1.0)
    assert (~sol.free).any()
    for k, e in errors.items():
        assert e <= 1e-6, (k, e)


class _Generic(dl.Dynamics):
    """A built-in model seen as a user model: only ``forward``, so the solver and the gradient
    take the general path (autograd derivatives, functional_call) instead of its fast paths."""

    def __init__(self, inner: dl.Dynamics):
        super().__init__()
        self.inner = inner
        self.n_state, self.n_ctrl = inner.n_state, inner.n_ctrl

    def forward(self, x, u):
        return type(self.inner).step(self.inner, x, u, self.inner.theta())


@pytest.mark.parametrize("name", ["pendulum", "cartpole", "rocket"])
def test_builtin_fast_paths_match_the_general_path(name):
    """Every fast path of a built-in model (analytic Jacobians, closed-form Lagrangian Hessian,
    the m = 1 Riccati passes) against the same model on the general path: the same solve
    (same iterations, same trajectory) and the same implicit gradient."""
    from .problems import cartpole, pendulum, rocket

    dyn, cost, x0, T, lo, hi = {"pendulum": pendulum, "cartpole": cartpole,
                                "rocket": rocket}[name]()
    gen = _Generic(dyn)
    cfg = dl.ILQRConfig(max_iter=200, tol=1e-10)
    sols, grads = [], []
    for model in (dyn, gen):
        ctrl = dl.DiLQR(model, cost, horizon=T, u_lower=lo, u_upper=hi, config=cfg)
        sol = ctrl(x0)
        assert bool(sol.converged.all())
        w = torch.linspace(-1, 1, sol.u.numel(), dtype=F64).reshape(sol.u.shape)
        g = torch.autograd.grad((w * sol.u).sum() + sol.x.square().sum(), list(dyn.parameters()))
        sols.append(sol)
        grads.append(torch.stack(g))
    a, b = sols
    assert torch.equal(a.iterations, b.iterations)
    torch.testing.assert_close(a.u, b.u, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(a.x, b.x, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-9)
    # and the derivatives themselves, pair by pair
    x, u = a.x[:, :-1].reshape(-1, dyn.n_state).detach(), a.u.reshape(-1, dyn.n_ctrl).detach()
    th = dyn.theta().detach()
    lam = torch.randn(x.shape[0], dyn.n_state, dtype=F64,
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(dyn.jacobians(x, u, th)[1], gen.jacobians(x, u, th)[1],
                               rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(dyn.weighted_hessian(x, u, th, lam),
                               gen.weighted_hessian(x, u, th, lam), rtol=1e-10, atol=1e-10)
