"""The cart-pole (``mpc.pytorch``'s ``CartpoleDx``)."""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from .base import Dynamics

__all__ = ["CartPole"]


class _CartPoleTerms(NamedTuple):
    """What the cart-pole's step, Jacobian and weighted Hessian share (all ``(...)``):
    ``th_acc = num / den``, ``x_acc = ci - pml th_acc c / M``."""

    g: Tensor
    mp: Tensor
    l: Tensor
    M: Tensor  # m_pole + m_cart
    pml: Tensor  # m_pole l
    c: Tensor  # cos th
    s: Tensor  # sin th
    w: Tensor  # thdot
    ci: Tensor  # (u + pml w^2 s) / M
    den: Tensor  # l (4/3 - mp c^2 / M)
    num: Tensor  # g s - c ci


def _cartpole_terms(x: Tensor, u: Tensor, theta: Tensor) -> _CartPoleTerms:
    g, mc, mp, l = theta[..., 0], theta[..., 1], theta[..., 2], theta[..., 3]
    c, s, w = x[..., 2], x[..., 3], x[..., 4]
    M = mp + mc
    pml = mp * l
    ci = (u[..., 0] + pml * w**2 * s) / M
    den = l * (4.0 / 3.0 - mp * c**2 / M)
    return _CartPoleTerms(g, mp, l, M, pml, c, s, w, ci, den, g * s - c * ci)


class CartPole(Dynamics):
    """Cart-pole, identical to ``mpc.pytorch``'s ``CartpoleDx``.

    State ``(x, xdot, cos th, sin th, thdot)`` (``th = 0`` upright), control force in
    ``[u_lower, u_upper]``, parameters ``(g, m_cart, m_pole, l)`` (defaults
    ``param_defaults``; ``l`` is the pole's half-length), explicit Euler with ``dt`` (default
    ``default_dt``).
    """

    positive_params = True
    n_state = 5
    n_ctrl = 1
    u_lower = -100.0
    u_upper = 100.0

    param_defaults: ClassVar[dict[str, float]] = {"g": 9.8, "m_cart": 1.0, "m_pole": 0.1,
                                                  "l": 0.5}
    default_dt: ClassVar[float] = 0.05

    def step(self, x: Tensor, u: Tensor, theta: Tensor) -> Tensor:
        t = _cartpole_terms(x, u, theta)
        th_acc = t.num / t.den
        x_acc = t.ci - t.pml * th_acc * t.c / t.M
        dt = self.dt
        new_th = torch.atan2(t.s, t.c) + dt * t.w
        return torch.stack([x[..., 0] + dt * x[..., 1], x[..., 1] + dt * x_acc,
                            torch.cos(new_th), torch.sin(new_th), t.w + dt * th_acc], -1)

    def jacobians(self, x: Tensor, u: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        # Analytic linearization (checked against torch.func in tests/test_dynamics.py).
        g, mp, l, M, pml, c, s, w, cart_in, den, num = _cartpole_terms(x, u, theta)
        pos, vel = x[..., 0], x[..., 1]
        dt = self.dt
        th_acc = num / den
        x_acc = cart_in - pml * th_acc * c / M
        r2 = c * c + s * s
        new_th = torch.atan2(s, c) + dt * w
        # partials w.r.t. (c, s, w, u)
        ci_s, ci_w, ci_u = pml * w**2 / M, 2 * pml * w * s / M, 1.0 / M
        ta_c = (-cart_in * den + num * 2 * l * mp * c / M) / den**2
        ta_s = (g - c * ci_s) / den
        ta_w = -c * ci_w / den
        ta_u = -c * ci_u / den
        k = pml / M
        xa_c = -k * (ta_c * c + th_acc)
        xa_s = ci_s - k * c * ta_s
        xa_w = ci_w - k * c * ta_w
        xa_u = ci_u - k * c * ta_u
        zero, one = torch.zeros_like(c), torch.ones_like(c)
        nt = [zero, zero, -s / r2, c / r2, torch.full_like(c, dt), zero]
        cn, sn = torch.cos(new_th), torch.sin(new_th)

        def row(*entries):
            return torch.stack([e.expand_as(c) for e in entries], -1)

        F = torch.stack([
            row(one, torch.full_like(c, dt), zero, zero, zero, zero),
            row(zero, one, dt * xa_c, dt * xa_s, dt * xa_w, dt * xa_u),
            row(*[-sn * e for e in nt]),
            row(*[cn * e for e in nt]),
            row(zero, zero, dt * ta_c, dt * ta_s, 1 + dt * ta_w, dt * ta_u),
        ], -2)
        xn = torch.stack([pos + dt * vel, vel + dt * x_acc, cn, sn, w + dt * th_acc], -1)
        return xn, F

    def weighted_hessian(self, x: Tensor, u: Tensor, theta: Tensor, lam: Tensor) -> Tensor:
        # Closed form over z = (pos, vel, cos, sin, w, u). pos' and vel' are linear in z
        # except through the accelerations, so only y = (c, s, w, u) curves:
        #   sum_i lam_i hess f_i = dt (lam1 hess x_acc + lam4 hess th_acc)
        #                          + alpha g g^T + beta hess(atan2)     (as in Pendulum)
        # with th_acc = num / den(c), num = g s - c ci, ci = (u + pml w^2 s) / M,
        # x_acc = ci - k c th_acc, k = pml / M; so hess x_acc = hess ci - k (c hess th_acc +
        # e_c grad th_acc^T + grad th_acc e_c^T). Written entry by entry (10 distinct ones,
        # 4 of them zero) because this runs on every B*T pair of every Newton-polish iteration.
        # Checked against double backward in tests/test_dynamics.py.
        g, mp, l, M, pml, c, s, w, ci, den, num = _cartpole_terms(x, u, theta)
        dt = self.dt
        k = pml / M
        ci_s, ci_w, ci_u = pml * w**2 / M, 2 * pml * w * s / M, 1.0 / M
        ci_ws, ci_ww = 2 * pml * w / M, 2 * pml * s / M
        d1, d2 = -2 * l * mp * c / M, -2 * l * mp / M  # den', den''
        dn0, dn1, dn2, dn3 = -ci, g - c * ci_s, -c * ci_w, -c * ci_u  # grad num over y
        iden, iden2 = 1.0 / den, 1.0 / den**2
        # grad th_acc
        gt0, gt1, gt2, gt3 = dn0 * iden - num * d1 * iden2, dn1 * iden, dn2 * iden, dn3 * iden
        lam1, lam2, lam3, lam4 = lam[..., 1], lam[..., 2], lam[..., 3], lam[..., 4]
        a = lam4 - lam1 * k * c  # weight of hess th_acc
        b = lam1 * k  # weight of the e_c grad th_acc^T terms
        # the angle th' = atan2(s, c) + dt w: alpha g g^T + beta hess(atan2)
        r2 = c * c + s * s
        new_th = torch.atan2(s, c) + dt * w
        cn, sn = torch.cos(new_th), torch.sin(new_th)
        alpha = -(lam2 * cn + lam3 * sn)
        beta = lam3 * cn - lam2 * sn
        g0, g1 = -s / r2, c / r2
        r4 = r2 * r2
        h00 = dt * (a * (-2 * dn0 * d1 * iden2 + num * (2 * d1**2 * iden * iden2 - d2 * iden2))
                    - 2 * b * gt0) + alpha * g0 * g0 + beta * (2 * c * s / r4)
        h01 = dt * (a * (-ci_s * iden - dn1 * d1 * iden2) - b * gt1) + alpha * g0 * g1 \
            + beta * ((s * s - c * c) / r4)
        h02 = dt * (a * (-ci_w * iden - dn2 * d1 * iden2) - b * gt2) + alpha * g0 * dt
        h03 = dt * (a * (-ci_u * iden - dn3 * d1 * iden2) - b * gt3)
        h11 = alpha * g1 * g1 + beta * (-2 * c * s / r4)
        h12 = dt * (lam1 * ci_ws - a * c * ci_ws * iden) + alpha * g1 * dt
        h22 = dt * (lam1 * ci_ww - a * c * ci_ww * iden) + alpha * dt * dt
        z = torch.zeros_like(c)
        h00, h01, h02, h03, h11, h12, h22 = (t.expand_as(c) for t in
                                             (h00, h01, h02, h03, h11, h12, h22))
        H = torch.stack([z, z, z, z, z, z,
                         z, z, z, z, z, z,
                         z, z, h00, h01, h02, h03,
                         z, z, h01, h11, h12, z,
                         z, z, h02, h12, h22, z,
                         z, z, h03, z, z, z], -1)
        return H.reshape(*c.shape, 6, 6)
