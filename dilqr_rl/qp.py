"""The box-constrained LQ subproblem of a sequential-QP iteration (docs/solver.md).

Around a trajectory ``(x, u)`` the problem is approximated by an LQ model in deviations
``(dx, du)``: the linearized dynamics ``dx_{t+1} = F_t dz_t`` (``dx_0 = 0``), the quadratized
cost (Gauss-Newton or the exact Lagrangian Hessian), the Levenberg-Marquardt term
``1/2 mu |du|^2`` and the box ``lower - u <= du <= upper - u``. :func:`solve_qp` minimizes it
by projected Newton with the Riccati pass of :mod:`dilqr_rl.lqr`. It never calls the user's
model: every operation is a small batched tensor product, so the active set is found on the
model at a fraction of the cost of an iteration on the true dynamics, and a box-constrained
LQ problem is solved in a single outer iteration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .lqr import LQRGains
from .lqr_gains import predicted_change
from .lqr_scan import riccati_pass

__all__ = ["LQModel", "solve_qp", "closed_loop", "armijo_accept"]


def rounding(J: Tensor) -> Tensor:
    """The rounding level of a cost ``J``: ``100 eps (1 + |J|)``, same shape."""
    return 100 * torch.finfo(J.dtype).eps * (1 + J.abs())


def armijo_accept(J_new: Tensor, J: Tensor, pred: Tensor, armijo: float) -> Tensor:
    """The acceptance test of every line search (true dynamics or model): a decrease of at
    least ``armijo`` times the first-order prediction ``pred`` (< 0); once that prediction is
    below rounding, a step that does not increase ``J`` beyond rounding (otherwise the search
    stalls near 1e-8 in ``u`` and the fixed point, hence the gradient, is inexact).

    :param J_new: ``(A, b)`` costs of the candidates; :param J: ``(b,)``; :param pred: ``(A, b)``
    :return: ``(A, b)`` bool
    """
    tiny = rounding(J)
    actual = J_new - J
    return ((actual <= armijo * pred) & (pred < 0)) | ((pred.abs() <= tiny) & (actual <= tiny))


def clamp(u: Tensor, lower: Tensor | None, upper: Tensor | None) -> Tensor:
    """``u`` clamped to ``[lower, upper]`` (no bounds: ``u``)."""
    return u if lower is None else torch.minimum(torch.maximum(u, lower), upper)


def closed_loop(x0: Tensor, ff: Tensor, K: Tensor, xr: Tensor, lower: Tensor | None,
                upper: Tensor | None, step: Callable[[int, Tensor, Tensor], Tensor]
                ) -> tuple[Tensor, Tensor]:
    """Roll out ``u_t = clamp(ff_t + K_t (x_t - xr_t))`` for ``A`` step sizes at once (paper
    eq. 5): the line search's rollout, on the true dynamics or on the LQ model.

    :param x0: ``(A, b, n)``; :param ff: ``(A, b, T, m)`` feed-forward of every step size
    :param K: ``(b, T, m, n)``; :param xr: reference states ``(b, T+1, n)`` or
        ``(A, b, T+1, n)``; :param lower: ``(b, T, m)`` or ``None``; :param upper: as ``lower``
    :param step: ``step(t, x (A, b, n), u (A, b, m)) -> x_{t+1} (A, b, n)``
    :return: ``X (A, b, T+1, n)``, ``U (A, b, T, m)``
    """
    xa, xs, us = x0, [x0], []
    for t in range(ff.shape[2]):
        ua = ff[:, :, t] + (K[:, t] @ (xa - xr[..., t, :])[..., None])[..., 0]
        ua = clamp(ua, None if lower is None else lower[:, t],
                   None if upper is None else upper[:, t])
        xa = step(t, xa, ua)
        xs.append(xa)
        us.append(ua)
    return torch.stack(xs, 2), torch.stack(us, 2)


@dataclass
class LQModel:
    """The LQ model of the problem around a trajectory, in deviations ``(dx, du)``:
    ``min sum_t 1/2 dz^T C dz + c^T dz + 1/2 dx_T^T CT dx_T + cT^T dx_T``,
    ``dx_{t+1} = F_t dz_t``, ``dx_0 = 0``, ``lower <= du <= upper`` (bounds minus ``u``).
    ``closed_loop``: its Riccati passes return the closed loop's gradients (long horizons,
    :func:`dilqr_rl.lqr.lqr_backward`)."""

    F: Tensor
    C: Tensor
    c: Tensor
    CT: Tensor
    cT: Tensor
    mu: Tensor | None
    lower: Tensor | None
    upper: Tensor | None
    closed_loop: bool = False

    def take(self, idx: Tensor) -> LQModel:
        return LQModel(*(None if v is None else v[idx] for v in (
            self.F, self.C, self.c, self.CT, self.cT, self.mu, self.lower, self.upper)),
            self.closed_loop)

    def newton(self, du: Tensor, dx: Tensor, free: Tensor | None = None, box: bool = False
               ) -> LQRGains:
        """The projected Newton step of the model from ``(dx, du)``: the Riccati pass with the
        model's gradient there (``C dz + c``) and its held set; ``box`` (``m = 1``): free
        steps also clamped to the box per step (box-DDP's closed form)."""
        dz = torch.cat([dx[:, :-1], du], -1)
        gz = (self.C @ dz[..., None])[..., 0] + self.c
        if self.mu is not None:  # the proximal term 1/2 mu |du|^2 of the regularization
            gz = torch.cat([gz[..., :-du.shape[-1]], gz[..., -du.shape[-1]:] +
                            self.mu[:, None, None] * du], -1)
        gT = (self.CT @ dx[:, -1, :, None])[..., 0] + self.cT
        at_lo = at_hi = None
        if self.lower is not None:
            at_lo, at_hi = du <= self.lower, du >= self.upper
        # sequential, or by associative scans where that was measured faster
        # (dilqr_rl/lqr_scan.py)
        return riccati_pass(self.F, self.C, gz, self.CT, gT, mu=self.mu, free=free,
                            at_lower=at_lo, at_upper=at_hi, costates=True,
                            box_lower=self.lower - du if box else None,
                            box_upper=self.upper - du if box else None,
                            closed_loop=self.closed_loop)

    def rollout(self, du: Tensor, dx: Tensor, gains: LQRGains, alphas: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        """The model's version of :func:`_rollout_policy`: ``(dX (A, b, T+1, n),
        dU (A, b, T, m), value (A, b))``."""
        A, b = alphas.shape[0], du.shape[0]
        ff = du + alphas[:, None, None, None] * gains.k
        x0 = torch.zeros_like(dx[None, :, 0]).expand(A, b, dx.shape[-1])

        def step(t: int, x: Tensor, u: Tensor) -> Tensor:
            return (self.F[:, t] @ torch.cat([x, u], -1)[..., None])[..., 0]

        dX, dU = closed_loop(x0, ff, gains.K, dx, self.lower, self.upper, step)
        return dX, dU, self.value(dX, dU)

    def value(self, dX: Tensor, dU: Tensor) -> Tensor:
        """The model's value, with the regularization's proximal term ``1/2 mu |du|^2``
        (the Riccati pass adds ``mu`` to ``Quu``: its step minimizes exactly this)."""
        dz = torch.cat([dX[..., :-1, :], dU], -1)
        xT = dX[..., -1, :]
        prox = 0.0 if self.mu is None else 0.5 * self.mu * dU.square().sum((-1, -2))
        # (einsum: half the time of a broadcast matmul over the step sizes, measured)
        stage = (dz * (0.5 * torch.einsum("btij,abtj->abti", self.C, dz) + self.c)).sum((-1, -2))
        term = (xT * (0.5 * torch.einsum("bij,abj->abi", self.CT, xT) + self.cT)).sum(-1)
        return prox + stage + term


def model_search(mdl: LQModel, du: Tensor, dx: Tensor, q: Tensor, g: LQRGains,
                  alphas: Tensor, armijo: float
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Armijo search of the model along the policy ``g`` (as :func:`_armijo` does on the true
    dynamics): ``accepted (b,)``, ``du``, ``dx``, model value of the chosen step, and whether
    the full step (``alphas[0]``) was taken ``(b,)``."""
    dX, dU, Qa = mdl.rollout(du, dx, g, alphas)
    pred = predicted_change(g, dU - du, dX - dx)
    ok = armijo_accept(Qa, q, pred, armijo) & g.ok & (pred < 0)
    acc = ok.any(0)
    first = torch.argmax(ok.to(torch.int8), 0)
    ar = torch.arange(du.shape[0], device=du.device)
    a3 = acc[:, None, None]
    return (acc, torch.where(a3, dU[first, ar], du), torch.where(a3, dX[first, ar], dx),
            torch.where(acc, Qa[first, ar], q), acc & (first == 0))


#: an inexact subproblem (``solve_qp``'s ``loose`` samples) stops once an inner step lowers the
#: model by at most this fraction of its decrease so far
QP_RTOL = 1e-3


def solve_qp(model: LQModel, gains: LQRGains, u: Tensor, alphas: Tensor, tol: float,
              armijo: float, max_iter: int, loose: Tensor | None = None
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Minimize the box-constrained LQ model by projected Newton, from ``du = 0`` whose step
    ``gains`` is given (the sequential-QP subproblem; on an LQ problem the whole problem).

    Each iteration is the outer iteration's projected Newton step on the model: Riccati pass
    with the held set, closed-loop rollout of the step sizes clamped to the box, Armijo test
    on the model's gradient. No call of the user's model: only small tensor products, so
    failures are cheap to repair. When the projected Newton step is no descent (it can point
    out of the box at a control that sits on a bound with an inward gradient), the step on the
    face (every control on a bound held) is tried, then a projected gradient step scaled by
    the Riccati pass's curvature ``diag Quu``; both are descent directions unless the point is
    stationary. The search there goes down to ``4^-15``.

    Samples in ``loose`` are solved inexactly: they stop once an inner step lowers the model by
    at most ``QP_RTOL`` of the decrease so far. The outer solver passes the samples whose last
    step on the true dynamics was not a full one: there the model is a poor guide, and
    projected Newton can creep for tens of inner iterations (each a Riccati pass and a
    rollout) to polish a plan the line search then cuts back (a cart-pole under a wrong
    model: 50 inner iterations for 1.3 % more model decrease). Where the model predicted the
    last step well (an LQ problem) the subproblem is solved to the end.

    :param u: ``(b, T, m)`` the controls around which the model is taken
    :param loose: ``(b,)`` bool, or ``None`` (every sample solved to the end)
    :return: ``du (b, T, m)``, ``dx (b, T+1, n)``, the feedback gains ``K (b, T, m, n)`` at
        ``du``, and the inner iterations ``(b,)``
    """
    b, T, m = u.shape
    n = model.F.shape[2]
    du = torch.zeros_like(u)
    dx = torch.zeros(b, T + 1, n, dtype=u.dtype, device=u.device)
    q = torch.zeros(b, dtype=u.dtype, device=u.device)
    K = gains.K
    its = torch.zeros(b, dtype=torch.long, device=u.device)
    idx = torch.arange(b, device=u.device)
    fine = 0.25 ** torch.arange(16, dtype=u.dtype, device=u.device)
    g, mdl = gains, model
    for _ in range(max_iter):
        dus, dxs, qs = du[idx], dx[idx], q[idx]
        small = g.k.abs().amax((1, 2)) <= tol * (1 + (u[idx] + dus).abs().amax((1, 2)))
        acc, dU, dX, Q, full = model_search(mdl, dus, dxs, qs, g, alphas, armijo)
        fail = ~acc & ~small & g.ok
        if mdl.lower is not None and bool(fail.any()):
            r = torch.nonzero(fail)[:, 0]
            mr = mdl.take(r)
            on_bound = (dus[r] <= mr.lower) | (dus[r] >= mr.upper)
            face = mr.newton(dus[r], dxs[r], free=~on_bound)
            a2, u2, x2, q2, _ = model_search(mr, dus[r], dxs[r], qs[r], face, fine, armijo)
            h = \
                torch.diagonal(g.Quu[r], dim1=-2, dim2=-1).clamp_min(1e-300)
            grad = LQRGains(torch.zeros_like(face.K), -g.gu[r] / h, face.free, face.ok,
                            face.pivot, face.Quu, g.lam[r], g.gu[r],
                            Kg=None if g.Kg is None else g.Kg[r])
            a3, u3, x3, q3, _ = model_search(mr, dus[r], dxs[r], qs[r], grad, fine, armijo)
            use3 = a3 & (~a2 | (q3 < q2))
            a2 = a2 | a3
            u2 = torch.where(use3[:, None, None], u3, u2)
            x2 = torch.where(use3[:, None, None], x3, x2)
            q2 = torch.where(use3, q3, q2)
            acc = acc.index_copy(0, r, a2)
            dU, dX, Q = dU.index_copy(0, r, u2), dX.index_copy(0, r, x2), Q.index_copy(0, r, q2)
        du, dx, q = du.index_copy(0, idx, dU), dx.index_copy(0, idx, dX), q.index_copy(0, idx, Q)
        its = its.index_add(0, idx, acc.long())
        # a step below tolerance is still taken (the fixed point to O(tol^2)), then the sample
        # is done. So is a full step that neither held nor clamped a control: it is the
        # exact minimizer of the (regularized) model, nothing is left to find
        keep = acc & ~small
        if loose is not None:  # inexact: stop once an inner step gains little (see above)
            keep = keep & ~(loose[idx] & (qs - Q <= QP_RTOL * -Q))
        if mdl.lower is not None:
            touched = (dU <= mdl.lower) | (dU >= mdl.upper) | ~g.free
            keep = keep & ~(full & ~touched.any(-1).any(-1))
        if not bool(keep.any()):
            break
        idx, mdl = idx[keep], mdl.take(torch.nonzero(keep)[:, 0])
        g = mdl.newton(du[idx], dx[idx])
        K = K.index_copy(0, idx, g.K)
    return du, dx, K, its
