"""Batched time-varying LQR: the Riccati pass, the rollout, the costates. Pure functions.

Notation (batch-major in every interface; internally, the m = 1 Riccati pass on CPU switches
to a batch-last layout from ``BATCH_LAST_MIN_B`` samples on): ``B`` batch, ``T`` horizon,
``n`` states, ``m`` controls, ``z_t = [x_t; u_t]``. The problem in deviation coordinates is

    min  sum_{t<T} 1/2 z_t^T C_t z_t + c_t^T z_t  +  1/2 x_T^T C_T x_T + c_T^T x_T
    s.t. x_{t+1} = F_t z_t + f_t,   x_0 given,   u_{t,i} = 0 for the held controls.

Shapes: ``F (B, T, n, n+m)``, ``f (B, T, n)``, ``C (B, T, n+m, n+m)``, ``c (B, T, n+m)``,
``CT (B, n, n)``, ``cT (B, n)``; gains ``K (B, T, m, n)``, ``k (B, T, m)``.

Box constraints are handled by the solver as a *projected Newton* method over the whole
trajectory (docs/solver.md): a control that sits on a bound while the true gradient of the
cost pushes it outward is held (its deviation is zero, its gain row is zero); every other
control is free. The true gradient ``dJ/du_t = c_u + F_u^T lam_{t+1}`` needs the costates
``lam``, which obey a backward recursion of their own; :func:`lqr_backward` runs it in the
same loop as the Riccati recursion (``at_lower`` / ``at_upper``), so the held set of step
``t`` is known when step ``t`` is solved. The implicit gradient's adjoint LQR uses the same
pass with a given ``free`` mask.

:func:`_riccati_step` is the reference step, written once, for any ``m``. For ``m = 1`` two
labelled fast paths (:mod:`dilqr_rl.lqr_scalar`) do the same arithmetic in closed form without
LAPACK (tiny batched LAPACK calls are slow on CPU: docs/pitfalls.md), one of them in a
batch-last layout. :class:`LQRGains` (the pass's result) lives in :mod:`dilqr_rl.lqr_gains`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .lqr_gains import LQRGains, _held
from .lqr_scalar import BATCH_LAST_MIN_B, _riccati_scalar, _riccati_scalar_batch_last

__all__ = ["LQRGains", "lqr_backward", "lqr_rollout", "lqr_solve", "costates"]


def _masked(H: Tensor, M: Tensor) -> Tensor:
    """``M H M + (I - M)`` for a 0/1 diagonal mask ``M (..., m)``: zero rows/cols of held
    controls, identity on their diagonal, so a solve returns 0 there."""
    Mf = M.to(H.dtype)
    return H * Mf[..., :, None] * Mf[..., None, :] + torch.diag_embed(1.0 - Mf)



def _riccati_step(V: Tensor, v: Tensor, Ft: Tensor, Ct: Tensor, ct: Tensor, ft: Tensor | None,
                  mu: Tensor | None, mu_eye: Tensor | None, free_t: Tensor,
                  bounds_t: tuple[Tensor, Tensor] | None = None):
    """One step of the Riccati recursion, any ``m`` (the reference; Tassa et al. 2012 eq. 5).

    ``Q = C + F^T V F``, ``q = c + F^T (v + V f)``; on the free controls
    ``[k, K] = -(Quu + mu I)^-1 [qu, Qux]`` (Levenberg-Marquardt); held controls get zero rows.
    Then ``V = Qxx + K^T Quu K + K^T Qux + Qux^T K`` and ``v = qx + K^T (Quu k + qu) + Qux^T k``,
    which with ``(Quu + mu) [k, K] = -[qu, Qux]`` on the free rows (and zero rows elsewhere) is
    ``[v, V] = [qx, Qxx] + Qux^T [k, K] - mu K^T [k, K]``: two products instead of six.

    :param V: ``(B, n, n)``, :param v: ``(B, n)``: the value function of step ``t+1``
    :param Ft: ``(B, n, n+m)``; :param Ct: ``(B, n+m, n+m)``; :param ct: ``(B, n+m)``
    :param ft: ``(B, n)`` or ``None``; :param mu: ``(B,)`` or ``None``; :param mu_eye:
        ``mu I (B, m, m)`` or ``None``; :param free_t: ``(B, m)`` bool
    :param bounds_t: ``(at_lower, at_upper)`` of the step, ``(B, m)`` bool each, or ``None``:
        the closed-loop held set (controls on a bound whose ``qu`` pushes outward also held)
    :return: ``V, v, K (B, m, n), k (B, m), pd (B,), diag L (B, m), Quu (B, m, m)``, the free
        set ``(B, m)`` and ``qu (B, m)``
    """
    n = Ft.shape[-2]
    FtT = Ft.transpose(-1, -2)
    Q = Ct + FtT @ (V @ Ft)
    vv = v if ft is None else v + (V @ ft[..., None])[..., 0]
    q = ct + (FtT @ vv[..., None])[..., 0]
    Qux, Quu = Q[:, n:, :n], Q[:, n:, n:]
    if bounds_t is not None:
        free_t = free_t & ~_held(q[:, n:], *bounds_t)
    Hm = _masked(Quu if mu_eye is None else Quu + mu_eye, free_t)
    L, info = torch.linalg.cholesky_ex(Hm)
    pd = info == 0
    rhs = torch.cat([q[:, n:, None], Qux], -1) * free_t[..., None].to(Q.dtype)
    # the adjoint LQR (mu None) may meet an indefinite Quu away from a minimum: LU there (at a
    # certified minimum every free Quu is positive definite: the Cholesky factor serves; on
    # the CPU the check is free, elsewhere LU always, without a synchronisation)
    if mu is None:
        chol = Hm.device.type == "cpu" and bool(pd.all())
        kK = -(torch.cholesky_solve(rhs, L) if chol else torch.linalg.solve(Hm, rhs))
    else:  # no step where Quu + mu is not positive definite (ok reports it)
        kK = torch.where(pd[:, None, None], -torch.cholesky_solve(rhs, L), 0.0)
    K = kK[..., 1:]
    vV = Qux.transpose(-1, -2) @ kK
    if mu is not None:
        vV = vV - mu[:, None, None] * (K.transpose(-1, -2) @ kK)
    V = Q[:, :n, :n] + vV[..., 1:]
    V = 0.5 * (V + V.transpose(-1, -2))
    return (V, q[:, :n] + vV[..., 0], K, kK[..., 0], pd,
            torch.diagonal(L, dim1=-2, dim2=-1), Quu, free_t, q[:, n:])


def _pivots(Ld: Tensor, free: Tensor, pd: Tensor, mu: Tensor | None) -> Tensor:
    """``(B,)`` smallest Cholesky pivot of the free ``Quu`` over all steps, without ``mu``;
    ``-inf`` where a factorization failed. ``Ld (B, T, m)`` diagonals of the factors."""
    d = Ld ** 2 - (0.0 if mu is None else mu[:, None, None])
    piv = torch.where(free, d, torch.inf).amin(-1)  # (B, T)
    return torch.where(pd, piv, -torch.inf).amin(-1)


def lqr_backward(F: Tensor, C: Tensor, c: Tensor, CT: Tensor, cT: Tensor, *,
                 f: Tensor | None = None, mu: Tensor | None = None,
                 free: Tensor | None = None, at_lower: Tensor | None = None,
                 at_upper: Tensor | None = None, costates: bool = False,
                 box_lower: Tensor | None = None, box_upper: Tensor | None = None,
                 closed_loop: bool = False) -> LQRGains:
    """Riccati pass of the LQR, with a held set given (``free``) or found from the costates.

    :param F: ``(B, T, n, n+m)``; :param C: ``(B, T, n+m, n+m)``; :param c: ``(B, T, n+m)``
    :param CT: ``(B, n, n)``; :param cT: ``(B, n)``; :param f: ``(B, T, n)`` or ``None`` (0)
    :param mu: ``(B,)`` Levenberg-Marquardt regularization added to ``Quu``, or ``None``
    :param free: ``(B, T, m)`` bool; controls with ``False`` are held at zero
    :param at_lower: ``(B, T, m)`` bool, controls on their lower bound; with ``at_upper``, the
        controls on a bound whose gradient ``c_u + F_u^T lam_{t+1}`` pushes outward are held
        too (projected Newton). ``c``/``cT`` must then be the cost gradients at the trajectory
        and ``f`` ``None`` (the costates are those of the linearization)
    :param at_upper: ``(B, T, m)`` bool, controls on their upper bound
    :param costates: return ``lam`` and ``gu`` even without bounds
    :param box_lower: ``(B, T, 1)``, with ``box_upper``, ``m = 1`` only: bounds on the step
        ``k``; a free control whose step leaves them is clamped there, its gain row zero (the
        closed-form box QP of box-DDP, Tassa et al. 2014, on top of the held set)
    :param closed_loop: the gradients of the closed loop instead of the open loop (for long
        horizons through unstable dynamics, where the open-loop gradients grow like the open
        loop over the remaining horizon: docs/solver.md, "Long horizons"): ``gu_t = qu_t =
        c_u + F_u^T v_{t+1}`` decides the held set, and the gains return ``gu = qu``,
        ``lam = v`` and ``Kg = K``; no costate recursion is run. Same result as the open-loop
        pass at a fixed point (``k = 0``), where both gradients agree
    :return: :class:`LQRGains`
    """
    B, T, n, nz = F.shape
    m = nz - n
    if (at_lower is None) != (at_upper is None):
        raise ValueError("at_lower and at_upper go together")
    project = at_lower is not None
    if project and f is not None:
        raise ValueError("the projected pass works in deviation coordinates (f must be None)")
    if box_lower is not None and m != 1:
        raise ValueError("box_lower / box_upper (a closed-form box QP per step) need m = 1")
    if m == 1:
        fast = _riccati_scalar_batch_last if F.device.type == "cpu" and \
            B >= BATCH_LAST_MIN_B else _riccati_scalar
        return fast(F, C, c, CT, cT, f, mu, free, at_lower, at_upper, costates or project,
                    box_lower, box_upper, closed_loop=closed_loop)
    return _riccati_reference(F, C, c, CT, cT, f, mu, free, at_lower, at_upper,
                              costates or project, closed_loop=closed_loop)


def _riccati_reference(F, C, c, CT, cT, f, mu, free, at_lower, at_upper, with_lam,
                       closed_loop: bool = False) -> LQRGains:
    """The Riccati pass for any ``m``: :func:`_riccati_step` backward in time, with the
    costate recursion and the held set (arguments as :func:`lqr_backward`). The ``m = 1``
    fast paths are checked against it (tests/test_lqr.py)."""
    B, T, n, nz = F.shape
    m = nz - n
    V, v = CT, cT
    lam = cT
    out = [[None] * T for _ in range(9)]  # K, k, free, pd, pivot, Quu, gu, V, v
    lams = [None] * T
    all_free = torch.ones(B, m, dtype=torch.bool, device=F.device)
    mu_eye = None if mu is None else mu[:, None, None] * torch.eye(m, dtype=F.dtype,
                                                                   device=F.device)
    FT = F.transpose(-1, -2)  # (B, T, n+m, n): costates and gradients in one product
    for t in range(T - 1, -1, -1):
        Ft, ct = F[:, t], c[:, t]
        fr = all_free if free is None else free[:, t]
        gu = None
        if with_lam and not closed_loop:
            g = ct + (FT[:, t] @ lam[..., None])[..., 0]  # [lam_t; gu_t]
            lam, gu = g[:, :n], g[:, n:]
            lams[t] = lam
            if at_lower is not None:
                fr = fr & ~_held(gu, at_lower[:, t], at_upper[:, t])
        bt = (at_lower[:, t], at_upper[:, t]) if closed_loop and at_lower is not None else None
        V, v, K, k, pd, Ld, Quu, fr, qu = _riccati_step(
            V, v, Ft, C[:, t], ct, None if f is None else f[:, t], mu, mu_eye, fr, bt)
        if with_lam and closed_loop:
            gu = qu
        for lst, val in zip(out, (K, k, fr, pd, Ld, Quu, gu, V, v), strict=True):
            lst[t] = val
    K, k, fr, pd, Ld, Quu, gu, Vs, vs = out
    fr, pd, K, vs = torch.stack(fr, 1), torch.stack(pd, 1), torch.stack(K, 1), \
        torch.stack([*vs, cT], 1)
    lam = None if not with_lam else vs if closed_loop else torch.stack([*lams, cT], 1)
    return LQRGains(K, torch.stack(k, 1), fr, pd.all(1),
                    _pivots(torch.stack(Ld, 1), fr, pd, mu), torch.stack(Quu, 1), lam,
                    torch.stack(gu, 1) if with_lam else None, None,
                    torch.stack([*Vs, CT], 1), vs, K if closed_loop and with_lam else None)


def lqr_rollout(F: Tensor, K: Tensor, k: Tensor, x0: Tensor, f: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
    """Roll the linear system forward under ``u_t = K_t x_t + k_t``.

    :param F: ``(B, T, n, n+m)``; :param K: ``(B, T, m, n)``; :param k: ``(B, T, m)``
    :param x0: ``(B, n)``; :param f: ``(B, T, n)`` or ``None``
    :return: ``x (B, T+1, n)``, ``u (B, T, m)``
    """
    T = F.shape[1]
    xs, us = [x0], []
    x = x0
    for t in range(T):
        u = (K[:, t] @ x[..., None])[..., 0] + k[:, t]
        x = (F[:, t] @ torch.cat([x, u], -1)[..., None])[..., 0]
        if f is not None:
            x = x + f[:, t]
        xs.append(x)
        us.append(u)
    return torch.stack(xs, 1), torch.stack(us, 1)


def lqr_solve(F: Tensor, C: Tensor, c: Tensor, CT: Tensor, cT: Tensor, x0: Tensor,
              f: Tensor | None = None, free: Tensor | None = None
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Solve an (unconstrained or masked) LQR: states, controls and multipliers.

    The multipliers ``lam (B, T+1, n)`` are those of the constraints ``x_{t+1} = F_t z_t + f_t``
    (``lam_{t+1}``) and ``x_0 = x0`` (``lam_0``) in the Lagrangian
    ``J + sum_t lam_{t+1}^T (F_t z_t + f_t - x_{t+1}) + lam_0^T (x0 - x_0)``, from the costate
    recursion ``lam_T = C_T x_T + c_T``, ``lam_t = [C_t z_t + c_t]_x + F_{x,t}^T lam_{t+1}``.

    They equal the gradients of the value functions, ``lam_t = V_t x_t + v_t``.

    :return: ``x (B, T+1, n)``, ``u (B, T, m)``, ``lam (B, T+1, n)``
    """
    gains = lqr_backward(F, C, c, CT, cT, f=f, free=free)
    x, u = lqr_rollout(F, gains.K, gains.k, x0, f)
    # lam_t = grad V_t(x_t): no third loop, and no backward recursion through the open loop
    # (whose rounding errors grow like it: 8e6 at T = 500 with one unstable mode, measured)
    lam = (gains.V @ x[..., None])[..., 0] + gains.v
    return x, u, lam


def costates(F: Tensor, gz: Tensor, gT: Tensor) -> Tensor:
    """Costate recursion ``lam_T = gT``, ``lam_t = gz_t[:n] + F_{x,t}^T lam_{t+1}``.

    :param F: ``(B, T, n, n+m)``; :param gz: ``(B, T, n+m)`` stage gradients; :param gT: ``(B, n)``
    :return: ``lam (B, T+1, n)``
    """
    T, n = F.shape[1], F.shape[2]
    lam = [gT]
    for t in range(T - 1, -1, -1):
        lam.append(gz[:, t, :n] + (F[:, t, :, :n].transpose(-1, -2) @ lam[-1][..., None])[..., 0])
    return torch.stack(lam[::-1], 1)
