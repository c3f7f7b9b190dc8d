"""The ``m = 1`` fast paths of the Riccati pass (:func:`dilqr_rl.lqr.lqr_backward`).

For one control the pass needs no LAPACK: ``Quu`` is a scalar, so the step is in closed form
(tiny batched LAPACK calls are slow on CPU: docs/pitfalls.md). Two labelled fast paths do the
arithmetic of the reference pass (:func:`dilqr_rl.lqr._riccati_reference`, checked against it
in tests/test_lqr.py): :func:`_riccati_scalar` batch-major, and
:func:`_riccati_scalar_batch_last` with the batch as the last, contiguous dimension (on CPU
from ``BATCH_LAST_MIN_B`` samples on). Arguments as :func:`dilqr_rl.lqr.lqr_backward`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .lqr_gains import LQRGains, _held

__all__ = ["BATCH_LAST_MIN_B"]


def _scalar_control(Quu: Tensor, qu: Tensor, mu: Tensor | None, free: Tensor | None,
                    lo: Tensor | None = None, hi: Tensor | None = None
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """One step's control in the scalar Riccati pass, elementwise (any batch layout).

    :param Quu: ``Quu``; :param qu: ``qu``; :param mu: regularization added to ``Quu`` or
        ``None``; :param free: the free mask or ``None``; all broadcastable
    :return: ``k = -qu / h`` on free controls with ``h = Quu + mu > 0`` (without ``mu``: any
        ``h != 0``, as the reference pass's LU solve), else 0; ``fr`` (free and stepped);
        ``pd`` (``h > 0`` or held); ``s = fr / h``; ``pivot`` (``Quu`` where free, ``+inf``
        where held). With ``mu``, a free control with ``h <= 0`` gets no step (``pd`` False
        reports it). With bounds ``lo``/``hi`` on the step: ``k`` clamped to them, and a
        clamped control leaves ``fr`` (zero gain); last return: where that happened (or
        ``None``)
    """
    h = Quu if mu is None else Quu + mu
    pos = h > 0
    pd = pos if free is None else pos | ~free
    piv = Quu if free is None else torch.where(free, Quu, torch.inf)
    if mu is None:
        # the adjoint / plain LQR: the stationary point even where Quu < 0 (as the LU solve
        # of the reference pass); only a singular Quu gets no step
        use = h != 0
    else:
        use = pos
    hs = torch.where(use, h, 1.0)
    fr = use if free is None else free & use
    k = -qu / hs * fr
    clamped = None
    if lo is not None:
        kc = torch.minimum(torch.maximum(k, lo), hi)
        clamped = fr & (kc != k)
        fr = fr & ~clamped
        k = kc
    return k, fr, pd, fr / hs, piv, clamped


def _riccati_scalar(F, C, c, CT, cT, f, mu, free, at_lower, at_upper, with_lam,
                    box_lower=None, box_upper=None, closed_loop: bool = False) -> LQRGains:
    """Fast path of :func:`lqr_backward` for ``m = 1``: scalar ``Quu``, no LAPACK, and as few
    tensor operations per step as possible (Python overhead dominates these tiny problems).

    With ``s = [free] / (Quu + mu)``, ``K = -s Qux`` and ``k = -s qu``:
    ``V = Qxx + (s^2 Quu - 2 s) Qux^T Qux`` and ``v = qx + Qux^T (k - s (Quu k + qu))``.
    """
    B, T, n, _ = F.shape
    V, v = CT, cT
    FT = F.transpose(-1, -2)
    free_t = [None] * T if free is None else list(free.unbind(1))
    bounds = None if at_lower is None else (at_lower.unbind(1), at_upper.unbind(1))
    box = [(None, None)] * T if box_lower is None else \
        list(zip(box_lower.unbind(1), box_upper.unbind(1), strict=True))
    boxed = None
    mu_b = None if mu is None else mu[:, None]
    lam = cT
    outs = [[None] * T for _ in range(10)]  # s, Qux, k, free, Quu, pd, pivot, gu, V, v
    lams = [None] * T
    for t in range(T - 1, -1, -1):
        FtT = FT[:, t]
        ct = c[:, t]
        fr_in = free_t[t]
        gu = None
        if with_lam and not closed_loop:
            FtTlam = (FtT @ lam[..., None])[..., 0]  # (B, n+1): [F_x^T lam; F_u^T lam]
            gu = ct[:, n:] + FtTlam[:, n:]
            lams[t] = lam = ct[:, :n] + FtTlam[:, :n]
            if bounds is not None:
                held = _held(gu, bounds[0][t], bounds[1][t])
                fr_in = ~held if fr_in is None else fr_in & ~held
        Q = C[:, t] + FtT @ (V @ F[:, t])
        vv = v if f is None else v + (V @ f[:, t, :, None])[..., 0]
        q = ct + (FtT @ vv[..., None])[..., 0]
        Qux = Q[:, n:, :n]  # (B, 1, n)
        Quu, qu = Q[:, n:, n], q[:, n:]  # (B, 1)
        if closed_loop and with_lam:  # the closed loop's gradient (lqr_backward)
            gu = qu
            if bounds is not None:
                held = _held(gu, bounds[0][t], bounds[1][t])
                fr_in = ~held if fr_in is None else fr_in & ~held
        k, fr, pd, sc, piv, hit = _scalar_control(Quu, qu, mu_b, fr_in, *box[t])  # (B, 1) each
        if hit is not None:
            boxed = hit if boxed is None else boxed | hit
        V = Q[:, :n, :n] + ((sc * (sc * Quu - 2))[..., None] * Qux.transpose(-1, -2)) @ Qux
        # symmetrized: over long horizons the rounding asymmetry of F^T V F grows through an
        # unstable open loop until Quu turns negative (measured at T = 500-2000)
        V = 0.5 * (V + V.transpose(-1, -2))
        v = q[:, :n] + Qux[:, 0] * (k - sc * (Quu * k + qu))
        # per-step outputs are combined after the loop (fewer small ops per step)
        for lst, val in zip(outs, (sc, Qux, k, fr_in, Quu, pd, piv, gu, V, v), strict=True):
            lst[t] = val
    sc, Qux, k, fr, Quu, pd, piv, gu, Vs, vs = outs
    K = -torch.stack(sc, 1)[..., None] * torch.stack(Qux, 1)
    fr = torch.ones(B, T, 1, dtype=torch.bool, device=F.device) if fr[0] is None else \
        torch.stack(fr, 1)
    vs = torch.stack([*vs, cT], 1)
    lam = None if not with_lam else vs if closed_loop else torch.stack([*lams, cT], 1)
    return LQRGains(K, torch.stack(k, 1), fr, torch.stack(pd, 1).all(1)[:, 0],
                    torch.stack(piv, 1).amin((1, 2)), torch.stack(Quu, 1)[..., None], lam,
                    torch.stack(gu, 1) if with_lam else None,
                    None if boxed is None else boxed[:, 0],
                    torch.stack([*Vs, CT], 1), vs, K if closed_loop and with_lam else None)


#: on CPU, from this batch size the scalar Riccati pass runs in a batch-last layout
BATCH_LAST_MIN_B = 64


def _riccati_scalar_batch_last(F, C, c, CT, cT, f, mu, free, at_lower, at_upper,
                               with_lam, box_lower=None, box_upper=None,
                               closed_loop: bool = False) -> LQRGains:
    """Fast path: :func:`_riccati_scalar` with the batch as the last, contiguous dimension.

    On CPU, ``torch.bmm`` multiplies a batch of tiny matrices one GEMM call at a time (~0.3 us
    each: 65 us for 256 products of 5x5 by 5x6), while the same product written as a broadcast
    multiply-and-sum over ``(rows, inner, cols, B)`` tensors is vectorized along ``B`` (20 us).
    One copy of the inputs into this layout, then every step is elementwise. Same arithmetic
    and results as :func:`_riccati_scalar` up to rounding.
    """
    B, T, n, nz = F.shape
    Fl = F.permute(1, 2, 3, 0).contiguous()  # (T, n, nz, B)
    FTl = Fl.transpose(1, 2)  # (T, nz, n, B)
    Cl = C.permute(1, 2, 3, 0).contiguous()  # (T, nz, nz, B)
    cl = c.permute(1, 2, 0).contiguous()  # (T, nz, B)
    fl = None if f is None else f.permute(1, 2, 0).contiguous()  # (T, n, B)
    V = CT.permute(1, 2, 0).contiguous()  # (n, n, B)
    v = cT.t().contiguous()  # (n, B)
    lam = v
    free_t = [None] * T if free is None else free[..., 0].t()
    bounds = None if at_lower is None else (at_lower[..., 0].t(), at_upper[..., 0].t())
    box = [(None, None)] * T if box_lower is None else \
        list(zip(box_lower[..., 0].t(), box_upper[..., 0].t(), strict=True))
    boxed = None
    outs = [[None] * T for _ in range(10)]  # K, k, free, Quu, pd, pivot, gu, lam, V, v
    for t in range(T - 1, -1, -1):
        Ft = Fl[t]
        fr_in = free_t[t]
        gu = None
        if with_lam and not closed_loop:
            FtTlam = (Ft * lam[:, None]).sum(0)  # (nz, B)
            gu = cl[t, n] + FtTlam[n]
            lam = cl[t, :n] + FtTlam[:n]
            if bounds is not None:
                held = _held(gu, bounds[0][t], bounds[1][t])
                fr_in = ~held if fr_in is None else fr_in & ~held
        vv = v if fl is None else v + (V * fl[t][None]).sum(1)
        VF = (V[:, :, None] * Ft[None]).sum(1)  # (n, nz, B)
        Q = Cl[t] + (FTl[t][:, :, None] * VF[None]).sum(1)  # (nz, nz, B)
        q = cl[t] + (Ft * vv[:, None]).sum(0)  # (nz, B)
        Qux, Quu, qu = Q[n, :n], Q[n, n], q[n]  # (n, B), (B,), (B,)
        if closed_loop and with_lam:  # the closed loop's gradient (lqr_backward)
            gu = qu
            if bounds is not None:
                held = _held(gu, bounds[0][t], bounds[1][t])
                fr_in = ~held if fr_in is None else fr_in & ~held
        k, fr, pd, sc, piv, hit = _scalar_control(Quu, qu, mu, fr_in, *box[t])  # (B,) each
        if hit is not None:
            boxed = hit if boxed is None else boxed | hit
        V = Q[:n, :n] + (sc * (sc * Quu - 2)) * Qux[:, None] * Qux[None, :]
        V = 0.5 * (V + V.transpose(0, 1))  # symmetrized (see _riccati_scalar)
        v = q[:n] + Qux * (k - sc * (Quu * k + qu))
        for lst, val in zip(outs, (-sc * Qux, k, fr_in, Quu, pd, piv, gu,
                                   v if closed_loop else lam, V, v), strict=True):
            lst[t] = val
    K, k, fr, Quu, pd, piv, gu, lams, Vs, vs = outs
    K = torch.stack(K, 0).permute(2, 0, 1)[:, :, None, :]  # (B, T, 1, n)
    fr = torch.ones(B, T, 1, dtype=torch.bool, device=F.device) if fr[0] is None else \
        torch.stack(fr, 1)[..., None]
    return LQRGains(K, torch.stack(k, 1)[..., None], fr, torch.stack(pd, 1).all(1),
                    torch.stack(piv, 1).amin(1), torch.stack(Quu, 1)[..., None, None],
                    torch.stack([*lams, cT.t()], 0).permute(2, 0, 1) if with_lam else None,
                    torch.stack(gu, 1)[..., None] if with_lam else None, boxed,
                    torch.stack([*Vs, CT.permute(1, 2, 0)], 0).permute(3, 0, 1, 2),
                    torch.stack([*vs, cT.t()], 0).permute(2, 0, 1),
                    K if closed_loop and with_lam else None)

