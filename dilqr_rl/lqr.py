"""Batched time-varying LQR with box-constrained controls: pure functions, no module state.

Notation (batch-major in every interface; internally, the m = 1 Riccati pass on CPU switches
to a batch-last layout from ``BATCH_LAST_MIN_B`` samples on): ``B`` batch, ``T`` horizon,
``n`` states, ``m`` controls, ``z_t = [x_t; u_t]``. The problem in deviation coordinates is

    min  sum_{t<T} 1/2 z_t^T C_t z_t + c_t^T z_t  +  1/2 x_T^T C_T x_T + c_T^T x_T
    s.t. x_{t+1} = F_t z_t + f_t,   x_0 given,   lower_t <= u_t <= upper_t.

Shapes: ``F (B, T, n, n+m)``, ``f (B, T, n)``, ``C (B, T, n+m, n+m)``, ``c (B, T, n+m)``,
``CT (B, n, n)``, ``cT (B, n)``; gains ``K (B, T, m, n)``, ``k (B, T, m)``.

The backward (Riccati) pass handles the controls in one of three ways: unconstrained; box
bounds solved per step by a projected-Newton box QP on ``Quu`` (Tassa, Mansard & Todorov
2014, "Control-limited differential dynamic programming"); or a fixed set of controls held at
zero (``free`` mask), which is what the adjoint LQR of the implicit gradient needs. For
``m = 1`` all three have closed forms and no LAPACK call is made (tiny batched LAPACK calls are
slow on CPU, see DESIGN.md "Pitfalls").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LQRGains", "lqr_backward", "lqr_rollout", "box_qp", "lqr_solve", "costates"]


@dataclass(frozen=True)
class LQRGains:
    """Result of the Riccati pass.

    :ivar K: feedback gains ``(B, T, m, n)``
    :ivar k: feed-forward terms ``(B, T, m)``
    :ivar free: ``(B, T, m)`` bool, controls not clamped by the box (or the given mask)
    :ivar dV: ``(B, 2)``: ``sum_t k^T Qu`` and ``sum_t 1/2 k^T Quu k`` (predicted change of
        the cost for a step ``alpha``: ``alpha dV[0] + alpha^2 dV[1]``)
    :ivar ok: ``(B,)`` bool, ``Quu`` (restricted to free controls) positive definite at
        every step
    """

    K: Tensor
    k: Tensor
    free: Tensor
    dV: Tensor
    ok: Tensor


def _masked(H: Tensor, M: Tensor) -> Tensor:
    """``M H M + (I - M)`` for a 0/1 diagonal mask ``M (..., m)``: zero rows/cols of fixed
    controls, identity on their diagonal, so a solve returns 0 there."""
    Mf = M.to(H.dtype)
    return H * Mf[..., :, None] * Mf[..., None, :] + torch.diag_embed(1.0 - Mf)


def box_qp(H: Tensor, g: Tensor, lower: Tensor, upper: Tensor, x_init: Tensor | None = None,
           iters: int = 20, n_alpha: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """Batched projected-Newton solver of ``min 1/2 x^T H x + g^T x, lower <= x <= upper``.

    Tassa et al. (2014), Algorithm 3: identify the clamped set (at a bound with the gradient
    pushing outward), take a Newton step on the free set, and search along the projected
    arc. All ``n_alpha`` candidate steps are evaluated at once; a fixed number of iterations
    runs without host synchronisation (converged samples do not move).

    :param H: ``(B, m, m)`` symmetric positive definite
    :param g: ``(B, m)``; :param lower: ``(B, m)``; :param upper: ``(B, m)``
    :param x_init: ``(B, m)`` starting point (projected); default ``0`` projected
    :return: ``x (B, m)``, ``free (B, m)`` bool, ``ok (B,)`` bool (free Hessian factorized)
    """
    x = torch.zeros_like(g) if x_init is None else x_init
    x = torch.minimum(torch.maximum(x, lower), upper)
    alphas = 0.5 ** torch.arange(n_alpha, dtype=g.dtype, device=g.device)
    ok = torch.ones(g.shape[0], dtype=torch.bool, device=g.device)

    def value(y: Tensor) -> Tensor:
        return 0.5 * (y[..., None, :] @ H @ y[..., :, None])[..., 0, 0] + (g * y).sum(-1)

    for _ in range(iters):
        grad = g + (H @ x[..., None])[..., 0]
        clamped = ((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0))
        Mf = (~clamped).to(g.dtype)
        L, info = torch.linalg.cholesky_ex(_masked(H, ~clamped))
        ok = ok & (info == 0)
        d = -torch.cholesky_solve((Mf * grad)[..., None], L)[..., 0]
        d = torch.where((info == 0)[:, None], d, -Mf * grad)  # gradient step if not PD
        xa = torch.minimum(torch.maximum(x + alphas[:, None, None] * d, lower), upper)
        f0 = value(x)
        fa = value(xa)  # (A, B)
        armijo = (fa - f0) <= 0.1 * (grad * (xa - x)).sum(-1)
        # the largest step satisfying the projected Armijo condition; none: stay
        first = torch.argmax(armijo.to(torch.int8), 0)
        anyok = armijo.any(0)
        xn = xa.gather(0, first[None, :, None].expand(1, *x.shape))[0]
        moved = anyok & (xn != x).any(-1)
        x = torch.where(anyok[:, None], xn, x)
        # On the CPU a host check is free, so stop as soon as no sample moves; on an
        # accelerator the fixed iteration count avoids a synchronisation per iteration.
        if x.device.type == "cpu" and not bool(moved.any()):
            break
    grad = g + (H @ x[..., None])[..., 0]
    clamped = ((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0))
    return x, ~clamped, ok


def lqr_backward(F: Tensor, C: Tensor, c: Tensor, CT: Tensor, cT: Tensor, *,
                 f: Tensor | None = None, mu: Tensor | None = None,
                 lower: Tensor | None = None, upper: Tensor | None = None,
                 free: Tensor | None = None, boxqp_iters: int = 20) -> LQRGains:
    """Riccati pass of the (box-constrained) LQR.

    :param F: ``(B, T, n, n+m)``; :param C: ``(B, T, n+m, n+m)``; :param c: ``(B, T, n+m)``
    :param CT: ``(B, n, n)``; :param cT: ``(B, n)``; :param f: ``(B, T, n)`` or ``None`` (0)
    :param mu: ``(B,)`` Levenberg-Marquardt regularization added to ``Quu``
    :param lower: ``(B, T, m)`` bounds on ``u`` (deviation coordinates); ``None``: none
    :param upper: ``(B, T, m)``
    :param free: ``(B, T, m)`` bool; controls with ``False`` are held at zero
    :return: :class:`LQRGains`
    """
    B, T, n, nz = F.shape
    m = nz - n
    if m == 1:
        if F.device.type == "cpu" and B >= BATCH_LAST_MIN_B:
            return _riccati_scalar_batch_last(F, C, c, CT, cT, f, mu, lower, upper, free)
        return _riccati_scalar(F, C, c, CT, cT, f, mu, lower, upper, free)
    V, v = CT, cT
    Ks, ks, frees = [None] * T, [None] * T, [None] * T
    dV1 = torch.zeros(B, dtype=F.dtype, device=F.device)
    dV2 = torch.zeros_like(dV1)
    ok = torch.ones(B, dtype=torch.bool, device=F.device)
    boxed = lower is not None
    for t in range(T - 1, -1, -1):
        Ft = F[:, t]
        FtT = Ft.transpose(-1, -2)
        VF = V @ Ft
        Q = C[:, t] + FtT @ VF
        vv = v if f is None else v + (V @ f[:, t, :, None])[..., 0]
        q = c[:, t] + (FtT @ vv[..., None])[..., 0]
        Qxx, Qux, Quu = Q[:, :n, :n], Q[:, n:, :n], Q[:, n:, n:]
        qx, qu = q[:, :n], q[:, n:]
        H = Quu if mu is None else Quu + mu[:, None, None] * torch.eye(
            m, dtype=F.dtype, device=F.device)
        if boxed:
            kt, fr, okq = box_qp(H, qu, lower[:, t], upper[:, t], iters=boxqp_iters)
            ok = ok & okq
            L, info = torch.linalg.cholesky_ex(_masked(H, fr))
            ok = ok & (info == 0)
            Kt = -torch.cholesky_solve(Qux * fr[..., None].to(F.dtype), L)
        else:
            fr = torch.ones_like(qu, dtype=torch.bool) if free is None else free[:, t]
            Hm = _masked(H, fr)
            rhs = torch.cat([qu[..., None], Qux], -1) * fr[..., None].to(F.dtype)
            if mu is None:
                # adjoint / plain LQR: Quu may be indefinite away from a minimum; LU
                sol = torch.linalg.solve(Hm, rhs)
                ok = ok & (torch.linalg.cholesky_ex(Hm)[1] == 0)
            else:
                L, info = torch.linalg.cholesky_ex(Hm)
                ok = ok & (info == 0)
                sol = torch.cholesky_solve(rhs, L)
            kt, Kt = -sol[..., 0], -sol[..., 1:]
        KtT = Kt.transpose(-1, -2)
        QuuK = Quu @ Kt
        V = Qxx + KtT @ QuuK + KtT @ Qux + Qux.transpose(-1, -2) @ Kt
        V = 0.5 * (V + V.transpose(-1, -2))
        v = qx + (KtT @ (Quu @ kt[..., None] + qu[..., None]))[..., 0] + \
            (Qux.transpose(-1, -2) @ kt[..., None])[..., 0]
        dV1 = dV1 + (kt * qu).sum(-1)
        dV2 = dV2 + 0.5 * (kt[:, None, :] @ Quu @ kt[..., None])[:, 0, 0]
        Ks[t], ks[t], frees[t] = Kt, kt, fr
    return LQRGains(torch.stack(Ks, 1), torch.stack(ks, 1), torch.stack(frees, 1),
                    torch.stack([dV1, dV2], -1), ok)


def _scalar_control(Quu: Tensor, qu: Tensor, mu: Tensor | None, lo: Tensor | None,
                    hi: Tensor | None, both: Tensor | None, free: Tensor | None
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step's control in the scalar Riccati pass, elementwise (any batch layout).

    :param Quu: ``Quu``; :param qu: ``qu``; :param mu: regularization added to ``Quu`` or
        ``None``; all of the same shape (or broadcastable)
    :param lo: lower bound, :param hi: upper bound, :param both: where both are finite;
        ``None`` when unboxed
    :param free: the fixed free mask (unboxed only) or ``None``
    :return: ``k = clamp(-qu / h)`` with ``h = Quu + mu``; ``fr`` (free, not clamped);
        ``pd`` (``h > 0``, or a concave step resolved at a finite bound); ``s = fr / h``
    """
    h = Quu if mu is None else Quu + mu
    pd = h > 0
    hs = torch.where(pd, h, 1.0)
    k = -qu / hs
    if lo is not None:
        fr = pd & (k > lo) & (k < hi)
        k = torch.minimum(torch.maximum(k, lo), hi)
        if not free_of_concavity(pd):
            # Non-positive curvature (possible with the exact Hessian): the minimum of a
            # concave 1-D quadratic over a finite box is at the better bound, so the control
            # is clamped there and the step is still well defined.
            better_lo = (0.5 * h * lo + qu) * lo <= (0.5 * h * hi + qu) * hi
            k = torch.where(pd, k, torch.where(better_lo, lo, hi))
            pd = pd | both
    elif free is not None:
        fr = free & pd
        k = k * fr
    else:
        fr = pd
    return k, fr, pd, fr / hs


def _riccati_scalar(F, C, c, CT, cT, f, mu, lower, upper, free) -> LQRGains:
    """:func:`lqr_backward` for ``m = 1``: scalar ``Quu``, closed-form clamping, no LAPACK,
    and as few tensor operations per step as possible (Python overhead dominates the time of
    these tiny problems).

    With ``s = [free] / (Quu + mu)``, ``K = -s Qux`` and ``k = clamp(-qu / (Quu + mu))``:
    ``V = Qxx + (s^2 Quu - 2 s) Qux^T Qux`` and ``v = qx + Qux^T (k - s (Quu k + qu))``.
    """
    B, T, n, _ = F.shape
    dt = F.dtype
    V, v = CT, cT
    FT = F.transpose(-1, -2)
    # per-step views, taken once: (lower, upper, both finite) and the free mask, (B, 1) each
    bounds = ([(None, None, None)] * T if lower is None else
              list(zip(lower.unbind(1), upper.unbind(1),
                       (torch.isfinite(lower) & torch.isfinite(upper)).unbind(1), strict=True)))
    free_t = [None] * T if free is None else free.unbind(1)
    mu_b = None if mu is None else mu[:, None]
    scs, Quxs, ks, frees, Quus, qus, pds = ([None] * T for _ in range(7))
    for t in range(T - 1, -1, -1):
        FtT = FT[:, t]
        Q = C[:, t] + FtT @ (V @ F[:, t])
        vv = v if f is None else v + (V @ f[:, t, :, None])[..., 0]
        q = c[:, t] + (FtT @ vv[..., None])[..., 0]
        Qux = Q[:, n:, :n]  # (B, 1, n)
        Quu, qu = Q[:, n:, n], q[:, n:]  # (B, 1)
        k, fr, pd, sc = _scalar_control(Quu, qu, mu_b, *bounds[t], free_t[t])  # (B, 1) each
        V = Q[:, :n, :n] + ((sc * (sc * Quu - 2))[..., None] * Qux.transpose(-1, -2)) @ Qux
        v = q[:, :n] + Qux[:, 0] * (k - sc * (Quu * k + qu))
        # per-step outputs are combined after the loop (fewer small ops per step)
        scs[t], Quxs[t], ks[t], frees[t], Quus[t], qus[t], pds[t] = sc, Qux, k, fr, Quu, qu, pd
    k = torch.stack(ks, 1)
    qu, Quu = torch.stack(qus, 1), torch.stack(Quus, 1)
    dV = torch.stack([(k * qu).sum((1, 2)), 0.5 * (k * k * Quu).sum((1, 2))], -1).to(dt)
    K = -torch.stack(scs, 1)[..., None] * torch.stack(Quxs, 1)
    ok = torch.stack(pds, 1).all(1)[:, 0]
    return LQRGains(K, k, torch.stack(frees, 1), dV, ok)


#: on CPU, from this batch size the scalar Riccati pass runs in a batch-last layout
BATCH_LAST_MIN_B = 64


def _riccati_scalar_batch_last(F, C, c, CT, cT, f, mu, lower, upper, free) -> LQRGains:
    """:func:`_riccati_scalar` with the batch as the last, contiguous dimension.

    On CPU, ``torch.bmm`` multiplies a batch of tiny matrices one GEMM call at a time (~0.3 us
    each: 65 us for 256 products of 5x5 by 5x6), while the same product written as a broadcast
    multiply-and-sum over ``(rows, inner, cols, B)`` tensors is vectorized along ``B`` (20 us).
    One copy of the inputs into this layout, then every step is elementwise. Same arithmetic
    and results as :func:`_riccati_scalar` up to rounding.
    """
    B, T, n, nz = F.shape
    dt = F.dtype
    Fl = F.permute(1, 2, 3, 0).contiguous()  # (T, n, nz, B)
    FTl = Fl.transpose(1, 2)  # (T, nz, n, B)
    Cl = C.permute(1, 2, 3, 0).contiguous()  # (T, nz, nz, B)
    cl = c.permute(1, 2, 0).contiguous()  # (T, nz, B)
    fl = None if f is None else f.permute(1, 2, 0).contiguous()  # (T, n, B)
    V = CT.permute(1, 2, 0).contiguous()  # (n, n, B)
    v = cT.t().contiguous()  # (n, B)
    if lower is None:
        bounds = [(None, None, None)] * T
    else:
        lo_l, hi_l = lower[..., 0].t().contiguous(), upper[..., 0].t().contiguous()  # (T, B)
        bounds = list(zip(lo_l, hi_l, torch.isfinite(lo_l) & torch.isfinite(hi_l), strict=True))
    free_t = [None] * T if free is None else free[..., 0].t()
    Ks, ks, frees, Quus, qus = [None] * T, [None] * T, [None] * T, [None] * T, [None] * T
    ok = torch.ones(B, dtype=torch.bool, device=F.device)
    for t in range(T - 1, -1, -1):
        Ft = Fl[t]
        vv = v if fl is None else v + (V * fl[t][None]).sum(1)
        VF = (V[:, :, None] * Ft[None]).sum(1)  # (n, nz, B)
        Q = Cl[t] + (FTl[t][:, :, None] * VF[None]).sum(1)  # (nz, nz, B)
        q = cl[t] + (Ft * vv[:, None]).sum(0)  # (nz, B)
        Qux, Quu, qu = Q[n, :n], Q[n, n], q[n]  # (n, B), (B,), (B,)
        k, fr, pd, sc = _scalar_control(Quu, qu, mu, *bounds[t], free_t[t])  # (B,) each
        ok = ok & pd
        V = Q[:n, :n] + (sc * (sc * Quu - 2)) * Qux[:, None] * Qux[None, :]
        v = q[:n] + Qux * (k - sc * (Quu * k + qu))
        Ks[t], ks[t], frees[t], Quus[t], qus[t] = -sc * Qux, k, fr, Quu, qu
    k = torch.stack(ks, 1)[..., None]  # (B, T, 1)
    qu, Quu = torch.stack(qus, 1)[..., None], torch.stack(Quus, 1)[..., None]
    dV = torch.stack([(k * qu).sum((1, 2)), 0.5 * (k * k * Quu).sum((1, 2))], -1).to(dt)
    K = torch.stack(Ks, 0).permute(2, 0, 1)[:, :, None, :]  # (B, T, 1, n)
    return LQRGains(K, k, torch.stack(frees, 1)[..., None], dV, ok)


def free_of_concavity(pd: Tensor) -> bool:
    """Whether every ``Quu`` is positive (CPU: a free check; on an accelerator assume not, so
    the concave branch runs without a host synchronisation)."""
    return pd.device.type == "cpu" and bool(pd.all())


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

    :return: ``x (B, T+1, n)``, ``u (B, T, m)``, ``lam (B, T+1, n)``
    """
    gains = lqr_backward(F, C, c, CT, cT, f=f, free=free)
    x, u = lqr_rollout(F, gains.K, gains.k, x0, f)
    z = torch.cat([x[:, :-1], u], -1)
    gz = (C @ z[..., None])[..., 0] + c
    lam = costates(F, gz, (CT @ x[:, -1, :, None])[..., 0] + cT)
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
