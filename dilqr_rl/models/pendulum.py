"""The torque-limited pendulum (``mpc.pytorch``'s ``PendulumDx``)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import Dynamics

__all__ = ["Pendulum"]


class Pendulum(Dynamics):
    """Torque-limited pendulum, identical to ``mpc.pytorch``'s ``PendulumDx`` (simple=True).

    State ``(cos th, sin th, thdot)`` (``th = 0`` upright), control torque in
    ``[u_lower, u_upper]``, parameters ``(g, m, l)`` (defaults ``param_defaults``), time step
    ``dt`` (default ``default_dt``), semi-implicit Euler::

        thdot' = thdot + dt * (3 g / (2 l) sin th + 3 u / (m l^2));  th' = th + dt thdot'

    Unlike ``PendulumDx`` the model does not clamp ``u``: the solver enforces the bounds, and a
    clamp inside the model would zero the gradient at them.
    """

    positive_params = True
    n_state = 3
    n_ctrl = 1
    u_lower = -2.0
    u_upper = 2.0

    param_defaults: ClassVar[dict[str, float]] = {"g": 10.0, "m": 1.0, "l": 1.0}
    default_dt: ClassVar[float] = 0.05

    def step(self, x: Tensor, u: Tensor, theta: Tensor) -> Tensor:
        g, m, l = theta[..., 0], theta[..., 1], theta[..., 2]
        cos_th, sin_th, dth = x[..., 0], x[..., 1], x[..., 2]
        th = torch.atan2(sin_th, cos_th)
        new_dth = dth + self.dt * (3.0 * g / (2.0 * l) * sin_th + 3.0 * u[..., 0] / (m * l**2))
        new_th = th + new_dth * self.dt
        return torch.stack([torch.cos(new_th), torch.sin(new_th), new_dth], -1)

    def jacobians(self, x: Tensor, u: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        # Analytic linearization (the paper's section 4.6 idea: closed forms instead of
        # autograd); checked against torch.func in tests/test_dynamics.py.
        g, m, l = theta[..., 0], theta[..., 1], theta[..., 2]
        c, s, dth = x[..., 0], x[..., 1], x[..., 2]
        dt = self.dt
        r2 = c * c + s * s
        th = torch.atan2(s, c)
        a = 3.0 * g / (2.0 * l)
        b = 3.0 / (m * l**2)
        new_dth = dth + dt * (a * s + b * u[..., 0])
        new_th = th + new_dth * dt
        cn, sn = torch.cos(new_th), torch.sin(new_th)
        # d th / d(c, s) = (-s, c) / r2
        dth_dc, dth_ds = -s / r2, c / r2
        # new_dth derivatives w.r.t. (c, s, dth, u)
        ndth = torch.stack(
            [torch.zeros_like(c), dt * a.expand_as(c), torch.ones_like(c),
             (dt * b).expand_as(c)], -1)
        nth = torch.stack([dth_dc, dth_ds, torch.zeros_like(c), torch.zeros_like(c)], -1)
        nth = nth + dt * ndth
        F = torch.stack([-sn[..., None] * nth, cn[..., None] * nth, ndth], -2)
        return torch.stack([cn, sn, new_dth], -1), F

    def weighted_hessian(self, x: Tensor, u: Tensor, theta: Tensor, lam: Tensor) -> Tensor:
        # Closed form: thdot' is linear in (s, thdot, u), so only th' = atan2(s, c) + dt thdot'
        # curves, and sum_i lam_i hess f_i = alpha g g^T + beta hess(atan2) with
        # g = grad th', alpha = -(lam1 cos th' + lam2 sin th'), beta = lam2 cos th' - lam1 sin th'.
        g_, m, l = theta[..., 0], theta[..., 1], theta[..., 2]
        c, s, dth = x[..., 0], x[..., 1], x[..., 2]
        dt = self.dt
        r2 = c * c + s * s
        a = 3.0 * g_ / (2.0 * l)
        b = 3.0 / (m * l**2)
        new_th = torch.atan2(s, c) + dt * (dth + dt * (a * s + b * u[..., 0]))
        cn, sn = torch.cos(new_th), torch.sin(new_th)
        alpha = -(lam[..., 0] * cn + lam[..., 1] * sn)
        beta = lam[..., 1] * cn - lam[..., 0] * sn
        grad = torch.stack([-s / r2, c / r2 + dt * dt * a.expand_as(c),
                            torch.full_like(c, dt), (dt * dt * b).expand_as(c)], -1)
        H = alpha[..., None, None] * grad[..., :, None] * grad[..., None, :]
        r4 = r2 * r2
        hcc, hss, hcs = 2 * c * s / r4, -2 * c * s / r4, (s * s - c * c) / r4
        Hth = torch.stack([torch.stack([hcc, hcs], -1), torch.stack([hcs, hss], -1)], -2)
        return H + torch.nn.functional.pad(beta[..., None, None] * Hth, (0, 2, 0, 2))
