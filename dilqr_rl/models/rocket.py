"""The 6-DoF rocket of PDP / Safe-PDP (docs/rocket.md)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import Dynamics
from .rocket_derivatives import rocket_jacobians, rocket_weighted_hessian, rotate

__all__ = ["Rocket", "TimedRocket"]


class Rocket(Dynamics):
    """6-DoF rocket of PDP / Safe-PDP (docs/rocket.md), explicit Euler with ``dt`` (default
    ``default_dt``).

    State (13): position ``r`` (inertial x-axis up), velocity ``v``, scalar-first unit
    quaternion ``q`` (body attitude), body rate ``w``. Control (3): body-frame thrust
    ``(Tx, Ty, Tz)`` in ``[u_lower, u_upper]``. Parameters ``(Jx, Jy, Jz, m, l)`` (defaults
    ``param_defaults``); gravity ``(-gravity, 0, 0)``; thrust acts at ``(-l/2, 0, 0)`` in the
    body frame. The quaternion is not renormalized by the model (as in the original code);
    :class:`dilqr_rl.envs.RocketEnv` renormalizes after each true step.
    """

    positive_params = True
    n_state = 13
    n_ctrl = 3
    u_lower = -20.0
    u_upper = 20.0
    gravity = 10.0

    param_defaults: ClassVar[dict[str, float]] = {"Jx": 0.5, "Jy": 1.0, "Jz": 1.0, "m": 1.0,
                                                  "l": 1.0}
    default_dt: ClassVar[float] = 0.1

    @staticmethod
    def dcm(q: Tensor) -> Tensor:
        """Direction cosine matrix inertial -> body, ``q: (..., 4)`` -> ``(..., 3, 3)``."""
        q0, q1, q2, q3 = q.unbind(-1)
        rows = [
            [1 - 2 * (q2**2 + q3**2), 2 * (q1 * q2 + q0 * q3), 2 * (q1 * q3 - q0 * q2)],
            [2 * (q1 * q2 - q0 * q3), 1 - 2 * (q1**2 + q3**2), 2 * (q2 * q3 + q0 * q1)],
            [2 * (q1 * q3 + q0 * q2), 2 * (q2 * q3 - q0 * q1), 1 - 2 * (q1**2 + q2**2)],
        ]
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    def derivative(self, x: Tensor, u: Tensor, theta: Tensor) -> Tensor:
        """Continuous-time ``xdot = f_c(x, u; theta)``, shapes as :meth:`step`."""
        Jx, Jy, Jz, m, l = theta.unbind(-1)
        v, q, w = x[..., 3:6], x[..., 6:10], x[..., 10:13]
        q0, q1, q2, q3 = q.unbind(-1)
        wx, wy, wz = w.unbind(-1)
        Tx, Ty, Tz = u.unbind(-1)
        # v_dot = C(q)^T T_B / m + g_I (two cross products instead of building C)
        acc = rotate(q, u) / m[..., None]
        acc = acc + torch.stack([torch.full_like(Tx, -self.gravity), torch.zeros_like(Tx),
                                 torch.zeros_like(Tx)], -1)
        # q_dot = 1/2 Omega(w) q
        dq = 0.5 * torch.stack([
            -wx * q1 - wy * q2 - wz * q3,
            wx * q0 + wz * q2 - wy * q3,
            wy * q0 - wz * q1 + wx * q3,
            wz * q0 + wy * q1 - wx * q2,
        ], -1)
        # w_dot = J^-1 (r_T x T_B - w x (J w)), r_T = (-l/2, 0, 0)
        dw = torch.stack([
            (Jy - Jz) * wy * wz / Jx,
            ((l / 2) * Tz + (Jz - Jx) * wz * wx) / Jy,
            (-(l / 2) * Ty + (Jx - Jy) * wx * wy) / Jz,
        ], -1)
        return torch.cat([v, acc, dq, dw], -1)

    def step(self, x: Tensor, u: Tensor, theta: Tensor) -> Tensor:
        return x + self.dt * self.derivative(x, u, theta)

    def jacobians(self, x: Tensor, u: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Closed-form linearization (:mod:`dilqr_rl.models.rocket_derivatives`); shapes as
        :meth:`dilqr_rl.Dynamics.jacobians`: ``x (N, 13)``, ``u (N, 3)``, ``theta (N, 5)``
        or ``(5,)`` -> ``(x_next (N, 13), F (N, 13, 16))``. Differentiable in every input."""
        return rocket_jacobians(x, u, theta, self.dt, self.gravity)

    def weighted_hessian(self, x: Tensor, u: Tensor, theta: Tensor, lam: Tensor) -> Tensor:
        """Closed-form ``sum_i lam_i d^2 f_i / dz^2`` ``(N, 16, 16)``, ``lam (N, 13)``; other
        shapes as :meth:`jacobians`."""
        return rocket_weighted_hessian(x, u, theta, lam, self.dt)


class TimedRocket(Rocket):
    """The :class:`Rocket` with a clock: state (14) ``(r, v, q, w, k)``, where ``k`` is the
    number of steps to the landing time, and ``k_next = k - 1``.

    The clock lets a plan of fixed length ``T`` land at a time that moves closer from step to
    step (a shrinking horizon) without a time input: the timed landing cost
    (:func:`dilqr_rl.tasks.rocket.timed_stage_cost`) charges the state only while ``k >= 0``.
    It is what lets an SB3 actor, whose plans all have the same length, plan like the
    rocket's closed-loop MPC. The physical parameters and their derivatives are the rocket's;
    the clock row of ``F`` is ``e_k`` and it adds nothing to the weighted Hessian.
    """

    n_state = 14

    def step(self, x: Tensor, u: Tensor, theta: Tensor) -> Tensor:
        return torch.cat([super().step(x[..., :13], u, theta), x[..., 13:] - 1.0], -1)

    #: where the rocket's ``z = [x (13); u (3)]`` sits in ``[x (13); k; u (3)]``
    _Z = (*range(13), 14, 15, 16)

    def jacobians(self, x: Tensor, u: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``x (N, 14)`` -> ``(x_next (N, 14), F (N, 14, 17))``; see :meth:`Rocket.jacobians`."""
        y, F13 = super().jacobians(x[..., :13], u, theta)
        F = F13.new_zeros(F13.shape[0], 14, 17)
        F[:, :13, self._Z] = F13
        F[:, 13, 13] = 1.0
        return torch.cat([y, x[..., 13:] - 1.0], -1), F

    def weighted_hessian(self, x: Tensor, u: Tensor, theta: Tensor, lam: Tensor) -> Tensor:
        """``(N, 17, 17)``, ``lam (N, 14)``: the rocket's, with a zero row and column for the
        clock (its step is linear)."""
        H16 = super().weighted_hessian(x[..., :13], u, theta, lam[..., :13])
        z = torch.tensor(self._Z, device=H16.device)
        H = H16.new_zeros(H16.shape[0], 17, 17)
        H[:, z[:, None], z] = H16
        return H
