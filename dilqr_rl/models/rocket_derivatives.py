"""Closed-form first and second derivatives of the rocket's Euler step (docs/rocket.md).

The step is ``x' = x + dt f_c(x, u; theta)`` with ``z = [x; u] = [r, v, q, w, T]`` (16). Only
three parts of ``f_c`` are nonlinear, each a low-degree polynomial:

- ``v' = R(q) T / m + g`` with ``R = C(q)^T`` (body -> inertial). The model's ``R`` is
  ``I + (quadratic form in q)`` (not renormalized: ``1 - 2 (q2^2 + q3^2)``, ...), written
  ``R_ij(q) = delta_ij + sum_kl K_ijkl q_k q_l`` with a constant symmetric ``K (3, 3, 4, 4)``.
  So ``d(R T)_i / dq = 2 K_ij.. T_j q``, ``d^2 (mu . R T) / dq^2 = 2 mu_i K_ij.. T_j`` and
  ``d^2 (mu . R T) / dq dT_j = 2 mu_i K_ij.. q``: bilinear in ``(q, T)``.
- ``q' = 1/2 Omega(w) q = 1/2 E_ikj q_k w_j`` with a constant ``E (4, 4, 3)``: bilinear in
  ``(q, w)``.
- ``w'``: ``c_x wy wz``, ``l / (2 Jy) Tz + c_y wz wx``, ``-l / (2 Jz) Ty + c_z wx wy`` with
  ``c_x = (Jy - Jz) / Jx``, ``c_y = (Jz - Jx) / Jy``, ``c_z = (Jx - Jy) / Jz``.

Every other entry is linear, so the weighted Hessian has only the ``(q, q)``, ``(q, T)``,
``(q, w)`` and ``(w, w)`` blocks. Everything is a handful of batched tensor ops over all
pairs (no per-row reverse passes; the generic route of :class:`dilqr_rl.Dynamics` needs 13
for the Jacobian and 16 double-backward passes for the Hessian). Checked against
``torch.func`` in ``tests/test_rocket_derivatives.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rocket_jacobians", "rocket_weighted_hessian", "rotate"]

# slices of z = [r, v, q, w, T]
_R, _V, _Q, _W, _T = slice(0, 3), slice(3, 6), slice(6, 10), slice(10, 13), slice(13, 16)


def _k_table() -> Tensor:
    """``K (3, 3, 4, 4)``: ``R_ij(q) = delta_ij + q^T K_ij q`` (symmetric in the last two)."""
    K = torch.zeros(3, 3, 4, 4, dtype=torch.float64)
    # (i, j): [(a, b, coefficient of q_a q_b)], from R = C^T (docs/rocket.md)
    terms = {(0, 0): [(2, 2, -2), (3, 3, -2)], (1, 1): [(1, 1, -2), (3, 3, -2)],
             (2, 2): [(1, 1, -2), (2, 2, -2)],
             (0, 1): [(1, 2, 2), (0, 3, -2)], (1, 0): [(1, 2, 2), (0, 3, 2)],
             (0, 2): [(1, 3, 2), (0, 2, 2)], (2, 0): [(1, 3, 2), (0, 2, -2)],
             (1, 2): [(2, 3, 2), (0, 1, -2)], (2, 1): [(2, 3, 2), (0, 1, 2)]}
    for (i, j), entries in terms.items():
        for a, b, c in entries:
            if a == b:
                K[i, j, a, a] += c
            else:  # split the cross term over both symmetric entries
                K[i, j, a, b] += c / 2
                K[i, j, b, a] += c / 2
    return K


def _e_table() -> Tensor:
    """``E (4, 4, 3)``: ``(Omega(w) q)_i = sum_kj E_ikj q_k w_j``."""
    E = torch.zeros(4, 4, 3, dtype=torch.float64)
    for i, k, j, c in [(0, 1, 0, -1), (0, 2, 1, -1), (0, 3, 2, -1),
                       (1, 0, 0, 1), (1, 2, 2, 1), (1, 3, 1, -1),
                       (2, 0, 1, 1), (2, 1, 2, -1), (2, 3, 0, 1),
                       (3, 0, 2, 1), (3, 1, 1, 1), (3, 2, 0, -1)]:
        E[i, k, j] = c
    return E


_TABLES: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}


def _tables(ref: Tensor) -> tuple[Tensor, Tensor]:
    """``K``, ``E`` in ``ref``'s dtype and device (made once per pair)."""
    key = (ref.dtype, ref.device)
    if key not in _TABLES:
        _TABLES[key] = (_k_table().to(ref), _e_table().to(ref))
    return _TABLES[key]


def rotate(q: Tensor, T: Tensor) -> Tensor:
    """``R(q) T = C(q)^T T`` for the model's (not renormalized) ``R = I + 2 q0 [qv x] +
    2 [qv x]^2``: ``T + q0 t + qv x t`` with ``t = 2 qv x T``. ``q (..., 4)``, ``T (..., 3)``
    -> ``(..., 3)``."""
    qv = q[..., 1:]
    t = 2 * torch.linalg.cross(qv, T, dim=-1)
    return T + q[..., :1] * t + torch.linalg.cross(qv, t, dim=-1)


def _dtype(*ts: Tensor) -> torch.dtype:
    d = ts[0].dtype
    for t in ts[1:]:
        d = torch.promote_types(d, t.dtype)
    return d


def _inertia_terms(theta: Tensor) -> tuple[Tensor, ...]:
    """``(c_x, c_y, c_z, l / (2 Jy), l / (2 Jz), 1 / m)`` each ``(...)`` from ``theta (..., 5)``."""
    Jx, Jy, Jz, m, l = theta.unbind(-1)
    return (Jy - Jz) / Jx, (Jz - Jx) / Jy, (Jx - Jy) / Jz, l / (2 * Jy), l / (2 * Jz), 1 / m


def rocket_jacobians(x: Tensor, u: Tensor, theta: Tensor, dt: float, gravity: float
                     ) -> tuple[Tensor, Tensor]:
    """``(x_next (..., 13), F = d x_next / d[x; u] (..., 13, 16))`` of the Euler step.

    :param x: ``(..., 13)``; :param u: ``(..., 3)``; :param theta: ``(..., 5)`` or ``(5,)``
    """
    K, E = _tables(x)
    cx, cy, cz, ky, kz, im = _inertia_terms(theta)
    q, w = x[..., _Q], x[..., 10:13]
    wx, wy, wz = w.unbind(-1)
    Rm = torch.eye(3, dtype=x.dtype, device=x.device) + torch.einsum(
        "ijkl,...k,...l->...ij", K, q, q)  # R(q)
    KT = torch.einsum("ijkl,...j->...ikl", K, u)  # (..., 3, 4, 4)
    dv_dq = 2 * (KT @ q[..., None, :, None])[..., 0]  # d(R T)/dq (..., 3, 4)
    im_ = im[..., None, None]
    acc = (Rm @ u[..., None])[..., 0] * im[..., None]
    acc = acc - torch.tensor([gravity, 0.0, 0.0], dtype=acc.dtype, device=acc.device)
    dq = 0.5 * torch.einsum("ikj,...k,...j->...i", E, q, w)
    zero = torch.zeros_like(wx)
    dw = torch.stack([cx * wy * wz, ky * u[..., 2] + cy * wz * wx,
                      -kz * u[..., 1] + cz * wx * wy], -1)
    xn = x + dt * torch.cat([x[..., _V], acc, dq, dw], -1)

    shape = torch.broadcast_shapes(x.shape[:-1], u.shape[:-1], theta.shape[:-1])
    F = torch.zeros(*shape, 13, 16, dtype=_dtype(x, u, theta), device=x.device)
    F[..., :13, :13] = torch.eye(13, dtype=F.dtype, device=F.device)
    F[..., _R, _V] += dt * torch.eye(3, dtype=F.dtype, device=F.device)
    F[..., _V, _Q] = dt * dv_dq * im_
    F[..., _V, _T] = dt * Rm * im_
    F[..., _Q, _Q] += 0.5 * dt * torch.einsum("ikj,...j->...ik", E, w)  # Omega(w) / 2
    F[..., _Q, _W] = 0.5 * dt * torch.einsum("ikj,...k->...ij", E, q)
    # w' rows over (wx, wy, wz, Tx, Ty, Tz)
    F[..., _W, 10:16] += dt * torch.stack([
        torch.stack([zero, cx * wz, cx * wy, zero, zero, zero], -1),
        torch.stack([cy * wz, zero, cy * wx, zero, zero, (ky + zero)], -1),
        torch.stack([cz * wy, cz * wx, zero, zero, -(kz + zero), zero], -1)], -2)
    return xn, F


def rocket_weighted_hessian(x: Tensor, u: Tensor, theta: Tensor, lam: Tensor, dt: float
                            ) -> Tensor:
    """``sum_i lam_i d^2 x_next_i / dz^2`` ``(..., 16, 16)``, ``z = [x; u]``.

    :param x: ``(..., 13)``; :param u: ``(..., 3)``; :param theta: ``(..., 5)`` or ``(5,)``
    :param lam: ``(..., 13)``
    """
    K, E = _tables(x)
    cx, cy, cz, _, _, im = _inertia_terms(theta)
    q = x[..., _Q]
    mu = lam[..., _V] * im[..., None]  # the v' multipliers, with the 1/m of R T / m
    lq, lw = lam[..., _Q], lam[..., _W]
    muK = torch.einsum("...i,ijkl->...jkl", mu, K)  # (..., 3, 4, 4)
    Hqq = 2 * dt * torch.einsum("...jkl,...j->...kl", muK, u)
    HqT = 2 * dt * (muK @ q[..., None, :, None])[..., 0].transpose(-1, -2)  # (..., 4, 3)
    Hqw = 0.5 * dt * torch.einsum("...i,ikj->...kj", lq, E)
    # w' Hessian in (wx, wy, wz): lam_wx c_x at (wy, wz), lam_wy c_y at (wz, wx), ...
    a, b, c = dt * lw[..., 0] * cx, dt * lw[..., 1] * cy, dt * lw[..., 2] * cz
    zero = torch.zeros_like(a)
    Hww = torch.stack([torch.stack([zero, c, b], -1), torch.stack([c, zero, a], -1),
                       torch.stack([b, a, zero], -1)], -2)

    shape = torch.broadcast_shapes(x.shape[:-1], u.shape[:-1], theta.shape[:-1],
                                   lam.shape[:-1])
    H = torch.zeros(*shape, 16, 16, dtype=_dtype(x, u, theta, lam), device=x.device)
    H[..., _Q, _Q] = Hqq
    H[..., _Q, _T] = HqT
    H[..., _T, _Q] = HqT.transpose(-1, -2)
    H[..., _Q, _W] = Hqw
    H[..., _W, _Q] = Hqw.transpose(-1, -2)
    H[..., _W, _W] = Hww
    return H
