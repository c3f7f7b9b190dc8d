"""The result of the Riccati pass, and the projected-Newton held set.

Shared by the reference pass (:mod:`dilqr_rl.lqr`) and the ``m = 1`` fast paths
(:mod:`dilqr_rl.lqr_scalar`); shapes and notation as in :mod:`dilqr_rl.lqr`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["LQRGains", "predicted_change"]


@dataclass(frozen=True)
class LQRGains:
    """Result of the Riccati pass.

    :ivar K: feedback gains ``(B, T, m, n)`` (zero rows for held controls)
    :ivar k: feed-forward terms ``(B, T, m)`` (zero for held controls)
    :ivar free: ``(B, T, m)`` bool, the controls that were free (not held)
    :ivar ok: ``(B,)`` bool, ``Quu + mu`` restricted to the free controls positive definite at
        every step
    :ivar pivot: ``(B,)`` the smallest pivot of the free ``Quu`` over all steps, without the
        regularization ``mu``: for ``m = 1`` the free ``Quu`` itself; for ``m > 1`` the smallest
        squared diagonal of its Cholesky factor, ``-inf`` where it was not positive definite.
        Positive exactly when the reduced Hessian of the LQR over the free controls is positive
        definite. ``+inf`` when no control is free.
    :ivar Quu: ``(B, T, m, m)`` the ``Quu`` of every step (without ``mu``)
    :ivar lam: ``(B, T+1, n)`` costates ``lam_T = cT``, ``lam_t = c_x + F_x^T lam_{t+1}`` (only
        with ``at_lower`` / ``at_upper`` or ``costates=True``, else ``None``)
    :ivar gu: ``(B, T, m)`` the gradient ``c_u + F_u^T lam_{t+1}`` (as ``lam``)
    :ivar boxed: ``(B,)`` bool, with ``box_lower`` / ``box_upper`` (``m = 1``): a free control's
        step was clamped to the box at some step (``None`` otherwise)
    :ivar V: ``(B, T+1, n, n)``, :ivar v: ``(B, T+1, n)``: the value functions
        ``V_t(x) = 1/2 x^T V_t x + v_t^T x + const`` of the LQR (``V_T = CT``, ``v_T = cT``);
        the multipliers of its solution are ``lam_t = V_t x_t + v_t``
    :ivar Kg: ``(B, T, m, n)`` or ``None``: with ``closed_loop=True`` the feedback that defines
        ``lam`` and ``gu`` (the pass's ``K``): they are then the costates and gradient of the
        closed loop ``u_t = u_bar_t + K_t dx_t + w_t`` with respect to ``w``, and the first-order
        change of the cost along a change ``(dx, du)`` is ``gu . (du - Kg dx)``
        (docs/solver.md, "Long horizons"); ``None``: open-loop ``lam``, ``gu``
    """

    K: Tensor
    k: Tensor
    free: Tensor
    ok: Tensor
    pivot: Tensor
    Quu: Tensor
    lam: Tensor | None = None
    gu: Tensor | None = None
    boxed: Tensor | None = None
    V: Tensor | None = None
    v: Tensor | None = None
    Kg: Tensor | None = None

    def take(self, idx: Tensor) -> LQRGains:
        """The gains of the samples ``idx (b,)``."""
        return LQRGains(*(None if v is None else v[idx] for v in (
            self.K, self.k, self.free, self.ok, self.pivot, self.Quu, self.lam, self.gu,
            self.boxed, self.V, self.v, self.Kg)))


def predicted_change(g: LQRGains, du: Tensor, dx: Tensor) -> Tensor:
    """The first-order change of the cost along a change ``du (..., b, T, m)``, ``dx (..., b,
    T+1, n)`` of the trajectory (any leading dims): ``gu . du`` with open-loop gradients,
    ``gu . (du - Kg dx)`` with closed-loop ones. :return: ``(..., b)``"""
    if g.Kg is None:
        return (g.gu * du).sum((-1, -2))
    w = du - (g.Kg @ dx[..., :-1, :, None])[..., 0]
    return (g.gu * w).sum((-1, -2))


def _held(gu: Tensor, at_lower: Tensor, at_upper: Tensor) -> Tensor:
    """Controls on a bound whose gradient ``gu`` pushes them outward (the projected-Newton
    held set; its multiplier has the right sign by construction)."""
    return (at_lower & (gu > 0)) | (at_upper & (gu < 0))

