"""Derivatives of the control problem at a trajectory: the one home of the KKT pieces.

The solver (:mod:`dilqr_rl.ilqr`) and the gradient (:mod:`dilqr_rl.grad`) both need, at a
trajectory ``(x, u)``, the linearized dynamics, the quadratized cost, the costates and the
Lagrangian Hessian (paper section 4, eq. 8-12)::

    F_t = [df/dx, df/du](x_t, u_t)                     (B, T, n, n+m)
    c_t, C_t = grad and Hessian of c(x_t, u_t)         (B, T, n+m), (B, T, n+m, n+m)
    cT, CT = grad and Hessian of c_T(x_T)              (B, n), (B, n, n)
    C~_t = C_t + sum_i lam_{t+1,i} hess f_i(x_t, u_t)  the exact Lagrangian Hessian

All ``B*T`` pairs are evaluated in one vectorized call (the paper's parallelization, section
4.4); the ``T(n+m) x T(n+m)`` matrix is never built (section 4.5).

Parameters: ``theta`` is the dynamics parameter vector, shared ``(p,)`` or per sample
``(B, p)``. Shared parameters go to the model as they are, so a user model's ``forward`` runs
as one plain batched call; only per-sample parameters take the ``vmap`` route of
:meth:`dilqr_rl.Dynamics.step`. ``P`` maps cost parameter names to values ``(B, *shape)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .cost import Cost, _pshape
from .models import Dynamics

__all__ = ["Derivatives", "linearize", "lagrangian_hessian", "derivatives", "per_pair",
           "stage_params", "take_theta", "projected_gradient"]


def per_pair(theta: Tensor, B: int, T: int) -> Tensor:
    """``theta`` for the ``B*T`` pairs: ``(p,)`` stays shared, ``(B, p)`` becomes ``(B*T, p)``."""
    if theta.dim() == 1:
        return theta
    return theta[:, None].expand(B, T, theta.shape[-1]).reshape(B * T, -1)


def take_theta(theta: Tensor, idx: Tensor) -> Tensor:
    """The parameters of samples ``idx``: shared ``(p,)`` as is, per sample ``(B, p)`` indexed."""
    return theta if theta.dim() == 1 else theta[idx]


def stage_params(cost: Cost, P: Mapping[str, Tensor], batch: tuple[int, ...]
                 ) -> dict[str, Tensor]:
    """Cost parameters ``(B, *shape)`` reshaped to broadcast over ``batch`` (e.g. ``(B, T)``
    for the stages, ``(B,)`` for the terminal cost)."""
    return {k: _pshape(P, k, batch, s) for k, s in cost.param_shapes().items()}


def linearize(dynamics: Dynamics, x: Tensor, u: Tensor, theta: Tensor) -> Tensor:
    """Jacobians ``F (B, T, n, n+m)`` of all ``B*T`` steps in one vectorized call.

    :param x: ``(B, T, n)`` (states ``x_0 .. x_{T-1}``); :param u: ``(B, T, m)``
    :param theta: ``(p,)`` or ``(B, p)``
    """
    B, T, n = x.shape
    m = u.shape[-1]
    _, F = dynamics.jacobians(x.reshape(B * T, n), u.reshape(B * T, m), per_pair(theta, B, T))
    return F.reshape(B, T, n, n + m)


def lagrangian_hessian(dynamics: Dynamics, x: Tensor, u: Tensor, theta: Tensor,
                       lam: Tensor) -> Tensor:
    """``sum_i lam_{t+1,i} hess f_i(x_t, u_t)`` at every step: ``(B, T, n+m, n+m)``.

    :param x: ``(B, T, n)``; :param u: ``(B, T, m)``; :param theta: ``(p,)`` or ``(B, p)``
    :param lam: ``(B, T, n)`` the multipliers of the dynamics ``x_{t+1} = f(x_t, u_t)``
    """
    B, T, n = x.shape
    m = u.shape[-1]
    H = dynamics.weighted_hessian(x.reshape(B * T, n), u.reshape(B * T, m),
                                  per_pair(theta, B, T), lam.reshape(B * T, n))
    return H.reshape(B, T, n + m, n + m)


@dataclass(frozen=True)
class Derivatives:
    """The LQR approximation at a trajectory (shapes in the module docstring)."""

    F: Tensor
    c: Tensor
    C: Tensor
    cT: Tensor
    CT: Tensor


def derivatives(dynamics: Dynamics, cost: Cost, x: Tensor, u: Tensor, theta: Tensor,
                P: Mapping[str, Tensor]) -> Derivatives:
    """Linearize the dynamics and quadratize the cost at ``x (B, T+1, n)``, ``u (B, T, m)``."""
    F = linearize(dynamics, x[:, :-1], u, theta)
    c, C, cT, CT = cost.quadratize(x, u, P)
    return Derivatives(F, c, C, cT, CT)


def projected_gradient(u: Tensor, gu: Tensor, lower: Tensor | None, upper: Tensor | None
                       ) -> Tensor:
    """First-order optimality residual ``max |u - clamp(u - gu, lower, upper)|``: ``(B,)``.

    Zero exactly at a KKT point of the box-constrained problem: the gradient ``gu`` of the
    cost (from the true costates) vanishes on free controls and pushes outward on controls
    at a bound.

    :param u: ``(B, T, m)``; :param gu: ``(B, T, m)``; bounds ``(B, T, m)`` or ``None``
    """
    step = u - gu
    if lower is not None:
        step = torch.minimum(torch.maximum(step, lower), upper)
    return (u - step).abs().amax((1, 2))
