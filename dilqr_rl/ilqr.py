"""Batched box-constrained iLQR: the forward solve (no autograd graph unless ``grad="unroll"``).

One iteration (paper section 3, with the changes of docs/solver.md), for every sample still
working, all at once:

1. **derivatives** at the trajectory: all ``B*T`` linearizations and quadratizations in one
   vectorized call (:mod:`dilqr_rl.derivatives`); the exact Lagrangian Hessian for samples in
   Newton mode.
2. **Newton step**: one Riccati pass that also runs the costate recursion, holds the controls
   that sit on a bound while the true gradient pushes them outward, and solves for the rest
   (projected Newton over the whole trajectory, :func:`dilqr_rl.lqr.lqr_backward`).
3. **certify**: a sample whose Newton step (exact Hessian, negligible regularization) is below
   ``tol`` and whose reduced Hessian on the free controls is positive definite is a verified
   strict local minimum: it stops there, converged.
4. **line search**: the feedback policy ``u = clamp(u + alpha k + K (x - x_bar))`` (eq. 5) is
   rolled out through the true dynamics for all step sizes at once and checked by an Armijo
   test on the true directional derivative. When no step is accepted the controls that the
   full step pushes into their bound are held too and the step is redone; at a saddle
   (stationary, exact reduced Hessian indefinite) the solver moves along a direction of
   negative curvature instead.
5. **regularization**: Levenberg-Marquardt ``mu`` per sample, down on success, up on failure.

One host synchronisation per iteration (which samples are still working).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor

from .cost import Cost
from .derivatives import derivatives, lagrangian_hessian, linearize, projected_gradient, take_theta
from .dynamics import Dynamics
from .lqr import LQRGains, costates, lqr_backward

__all__ = ["ILQRConfig", "Solution", "ilqr_solve", "rollout", "linearize"]


@dataclass(frozen=True)
class ILQRConfig:
    """Solver settings.

    :param max_iter: iteration cap
    :param tol: relative step tolerance: a sample converges when its exact-Hessian Newton step
        moves no control by more than ``tol * (1 + max|u|)`` and the reduced Hessian is
        positive definite (docs/solver.md). ``0`` never declares convergence, so exactly
        ``max_iter`` iterations run (benchmarks compare at equal iteration counts this way).
    :param mu_init: initial Levenberg-Marquardt regularization of ``Quu``
    :param mu_min: regularization floor (the regularization decays towards it on success)
    :param mu_max: a sample whose regularization exceeds this has stalled (not converged)
    :param mu_factor: multiplicative increase / decrease of the regularization
    :param n_alpha: number of line-search step sizes ``1, 1/2, ..., 2^-(n_alpha-1)``
    :param armijo: accept a step whose decrease is at least this fraction of the first-order
        prediction ``grad J . (u_new - u)``
    :param newton_tol: a sample switches from Gauss-Newton (iLQR's Hessian, which drops the
        second derivatives of the dynamics) to the exact Lagrangian Hessian (Newton) once an
        accepted step lowers the cost by less than ``newton_tol * (1 + |J|)``, or its step is
        below ``tol``. Gauss-Newton creeps near saddles (a hanging pendulum) and near the end;
        Newton is quadratically convergent and sees negative curvature. Convergence is always
        certified with the exact Hessian. ``0``: switch only for the final certification.
    :param qp_iters: iteration cap of the box-constrained LQ subproblem of each iteration
        (projected Newton on the model, without calls of the dynamics)
    :param batched_line_search: roll the step sizes out in (at most) two batched stages
        (default); ``False`` tries them one after the other (for the ablation benchmark)
    :param record_history: keep per-iteration diagnostics in ``Solution.history``
    :param on_unconverged: what to do when samples have not converged after ``max_iter``:
        ``"warn"`` (default), ``"raise"`` (``RuntimeError``) or ``"detach"`` (warn, and give
        those samples no gradient). Never silent.
    """

    max_iter: int = 100
    tol: float = 1e-7
    mu_init: float = 1e-6
    mu_min: float = 1e-9
    mu_max: float = 1e10
    mu_factor: float = 10.0
    n_alpha: int = 8
    armijo: float = 1e-4
    newton_tol: float = 1e-3
    qp_iters: int = 50
    record_history: bool = False
    batched_line_search: bool = True
    on_unconverged: Literal["warn", "raise", "detach"] = "warn"

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ValueError(f"ILQRConfig.{f.name} must be an int, got {v!r}")
            elif f.type in ("float", float):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                        not math.isfinite(v):
                    raise ValueError(f"ILQRConfig.{f.name} must be a finite number, got {v!r}")
            elif f.type in ("bool", bool) and not isinstance(v, bool):
                raise ValueError(f"ILQRConfig.{f.name} must be a bool, got {v!r}")
        if self.max_iter < 1:
            raise ValueError(f"ILQRConfig.max_iter must be >= 1, got {self.max_iter!r}")
        if self.tol < 0:
            raise ValueError(f"ILQRConfig.tol must be >= 0, got {self.tol!r}")
        if not 0 < self.mu_min <= self.mu_init < self.mu_max:
            raise ValueError("ILQRConfig needs 0 < mu_min <= mu_init < mu_max, got "
                             f"{self.mu_min}, {self.mu_init}, {self.mu_max}")
        if self.mu_factor <= 1:
            raise ValueError(f"ILQRConfig.mu_factor must be > 1, got {self.mu_factor}")
        if self.qp_iters < 1:
            raise ValueError(f"ILQRConfig.qp_iters must be >= 1, got {self.qp_iters}")
        if self.n_alpha < 1:
            raise ValueError(f"ILQRConfig.n_alpha must be >= 1, got {self.n_alpha}")
        if not 0 < self.armijo < 1:
            raise ValueError(f"ILQRConfig.armijo must be in (0, 1), got {self.armijo}")
        if self.newton_tol < 0:
            raise ValueError(f"ILQRConfig.newton_tol must be >= 0, got {self.newton_tol}")
        if self.on_unconverged not in ("warn", "raise", "detach"):
            raise ValueError("ILQRConfig.on_unconverged must be 'warn', 'raise' or 'detach', "
                             f"got {self.on_unconverged!r}")


@dataclass
class Solution:
    """The result of a solve.

    :ivar x: states ``(B, T+1, n)`` (differentiable)
    :ivar u: controls ``(B, T, m)`` (differentiable)
    :ivar cost: trajectory cost ``(B,)`` (differentiable)
    :ivar converged: ``(B,)`` bool: a verified strict local minimum (docs/solver.md)
    :ivar iterations: ``(B,)`` int64, iterations each sample ran
    :ivar free: ``(B, T, m)`` bool, controls not on a bound at the solution
    :ivar kkt: ``(B,)`` first-order residual ``max|u - clamp(u - dJ/du)|`` from the true
        costates (zero at a KKT point), at the certifying linearization for converged samples
        (the returned point is that point plus its last Newton step, below ``tol``), at the
        returned point for the others
    :ivar pivot: ``(B,)`` smallest pivot of the exact reduced Hessian on the free controls
        (positive: strict local minimum; see :class:`dilqr_rl.lqr.LQRGains`), where ``kkt``
    :ivar qp_iterations: ``(B,)`` int64, projected-Newton iterations spent on the box-
        constrained LQ subproblems (on the model only: no dynamics calls), summed over the
        iterations; zero without bounds
    :ivar history: with ``ILQRConfig.record_history``, ``(B, iterations, 4)``: per iteration
        the accepted step ``max|du|`` (NaN if rejected), the regularization, the step size
        (0 if rejected) and the cost; NaN once a sample has stopped
    """

    x: Tensor
    u: Tensor
    cost: Tensor
    converged: Tensor
    iterations: Tensor
    free: Tensor
    kkt: Tensor | None = None
    pivot: Tensor | None = None
    qp_iterations: Tensor | None = None
    history: Tensor | None = None


def rollout(dynamics: Dynamics, x0: Tensor, u: Tensor, theta: Tensor) -> Tensor:
    """Open-loop rollout.

    :param x0: ``(B, n)``; :param u: ``(B, T, m)``; :param theta: ``(p,)`` or ``(B, p)``
    :return: ``x (B, T+1, n)``
    """
    xs = [x0]
    for t in range(u.shape[1]):
        xs.append(dynamics.step(xs[-1], u[:, t], theta))
    return torch.stack(xs, 1)


@dataclass
class _Problem:
    """The working samples' data (a sub-batch of ``b`` samples)."""

    x0: Tensor
    theta: Tensor
    P: dict[str, Tensor]
    lower: Tensor | None
    upper: Tensor | None

    def take(self, idx: Tensor) -> _Problem:
        return _Problem(self.x0[idx], take_theta(self.theta, idx),
                        {k: v[idx] for k, v in self.P.items()},
                        None if self.lower is None else self.lower[idx],
                        None if self.upper is None else self.upper[idx])


def _clamp(u: Tensor, lower: Tensor | None, upper: Tensor | None) -> Tensor:
    return u if lower is None else torch.minimum(torch.maximum(u, lower), upper)


def _rollout_policy(dynamics: Dynamics, cost: Cost, pr: _Problem, x: Tensor, u: Tensor,
                    K: Tensor, k: Tensor, alphas: Tensor, dx: Tensor | None = None
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Roll out ``u = clamp(u_bar + alpha k + K (x - x_bar - alpha dx))`` (paper eq. 5, with
    the planned state change ``dx (b, T+1, n)`` of a QP step when given) for all step sizes
    ``alphas (A,)`` at once through the true dynamics.

    :return: ``X (A, b, T+1, n)``, ``U (A, b, T, m)``, ``J (A, b)``
    """
    A, (b, T, m) = alphas.shape[0], u.shape
    n = x.shape[-1]
    xa = pr.x0.unsqueeze(0).expand(A, b, n).reshape(A * b, n)
    th = pr.theta if pr.theta.dim() == 1 else pr.theta.repeat(A, 1)
    ff = u + alphas[:, None, None, None] * k  # (A, b, T, m): every step size's feed-forward
    xr = x if dx is None else x + alphas[:, None, None, None] * dx  # (A, b, T+1, n) or x
    xs, us = [xa], []
    for t in range(T):
        ua = ff[:, :, t] + (K[:, t] @ (xa.reshape(A, b, n) - xr[..., t, :])[..., None])[..., 0]
        ua = _clamp(ua, None if pr.lower is None else pr.lower[:, t],
                    None if pr.upper is None else pr.upper[:, t]).reshape(A * b, m)
        xa = dynamics.step(xa, ua, th)
        xs.append(xa)
        us.append(ua)
    X = torch.stack(xs, 1)
    U = torch.stack(us, 1)
    P = {key: v.repeat(A, *([1] * (v.dim() - 1))) for key, v in pr.P.items()}
    return X.reshape(A, b, T + 1, n), U.reshape(A, b, T, m), cost.total(X, U, P).reshape(A, b)


@dataclass
class _Step:
    """A line search's outcome per sample (``b`` samples)."""

    accepted: Tensor  # (b,) bool
    alpha: Tensor  # (b,) chosen step size (0 if rejected)
    x: Tensor  # (b, T+1, n)
    u: Tensor  # (b, T, m)
    J: Tensor  # (b,)

    def merge(self, other: _Step, idx: Tensor) -> _Step:
        """Replace samples ``idx`` by ``other``'s where ``other`` accepted (a sample accepted
        before stays accepted)."""
        acc = other.accepted
        new = [torch.where(acc.view(-1, *[1] * (w.dim() - 1)), w, v[idx])
               for v, w in ((self.alpha, other.alpha), (self.x, other.x), (self.u, other.u),
                            (self.J, other.J))]
        return _Step(self.accepted.index_copy(0, idx, self.accepted[idx] | acc),
                     *(v.index_copy(0, idx, w) for v, w in zip(
                         (self.alpha, self.x, self.u, self.J), new, strict=True)))


def _armijo(dynamics, cost, pr, x, u, J, gains: LQRGains, alphas, armijo, dx=None) -> _Step:
    """Roll out the step sizes ``alphas`` and pick per sample the largest acceptable one:
    a decrease of at least ``armijo`` times the first-order prediction ``gu . (u_a - u)``
    (the true gradient, so the clamping in the rollout is accounted for); once that prediction
    is below rounding, a step that does not increase ``J`` beyond rounding (otherwise the
    search stalls near 1e-8 in ``u`` and the fixed point, hence the gradient, is inexact)."""
    X, U, Ja = _rollout_policy(dynamics, cost, pr, x, u, gains.K, gains.k, alphas, dx)
    pred = (gains.gu * (U - u)).sum((2, 3))
    actual = Ja - J
    tiny = 100 * torch.finfo(J.dtype).eps * (1 + J.abs())
    ok = ((actual <= armijo * pred) & (pred < 0)) | ((pred.abs() <= tiny) & (actual <= tiny))
    ok = ok & gains.ok & torch.isfinite(Ja)
    first = torch.argmax(ok.to(torch.int8), 0)
    ar = torch.arange(u.shape[0], device=u.device)
    accepted = ok.any(0)
    return _Step(accepted, torch.where(accepted, alphas[first], 0.0), X[first, ar], U[first, ar],
                 Ja[first, ar])


def _line_search(dynamics, cost, pr, x, u, J, gains, alphas, cfg, dx=None) -> _Step:
    """:func:`_armijo` over all step sizes, batched in two stages: the two largest for all
    samples (near convergence the full step is accepted), the rest only for the samples that
    accepted neither. Same choice as one rollout of all of them, less work at large ``B``."""
    if not cfg.batched_line_search:  # ablation: one rollout per step size
        res = _armijo(dynamics, cost, pr, x, u, J, gains, alphas[:1], cfg.armijo, dx)
        for j in range(1, alphas.shape[0]):
            if bool(res.accepted.all()):
                break
            r = torch.nonzero(~res.accepted)[:, 0]
            res = res.merge(_armijo(dynamics, cost, pr.take(r), x[r], u[r], J[r],
                                    gains.take(r), alphas[j:j + 1], cfg.armijo,
                                    None if dx is None else dx[r]), r)
        return res
    A1 = min(2, alphas.shape[0])
    res = _armijo(dynamics, cost, pr, x, u, J, gains, alphas[:A1], cfg.armijo, dx)
    if A1 < alphas.shape[0] and not bool(res.accepted.all()):
        r = torch.nonzero(~res.accepted)[:, 0]
        res = res.merge(_armijo(dynamics, cost, pr.take(r), x[r], u[r], J[r], gains.take(r),
                                alphas[A1:], cfg.armijo, None if dx is None else dx[r]), r)
    return res


def _negative_curvature(gains: LQRGains) -> tuple[Tensor, Tensor]:
    """A direction of negative curvature of the reduced Hessian, from the Riccati pass.

    At the latest step ``t*`` whose free ``Quu`` is not positive definite, the eigenvector
    ``e`` of its smallest eigenvalue; earlier controls unchanged; later controls follow the
    feedback ``K`` of the (positive definite) later steps. Along it the second-order change of
    the cost is ``1/2 e^T Quu_t* e <= 0``: the Riccati pass is the elimination of the later
    steps, so ``Quu_t*`` is the reduced Hessian's pivot there.

    :return: gains of the direction, ``K (b, T, m, n)`` and ``k (b, T, m)``
    """
    Quu, free = gains.Quu, gains.free
    Mf = free.to(Quu.dtype)
    big = 1.0 + 10.0 * Quu.abs().amax((-1, -2), keepdim=True)
    Hm = Quu * Mf[..., :, None] * Mf[..., None, :] + torch.diag_embed((1.0 - Mf) * big[..., 0])
    evals, evecs = torch.linalg.eigh(Hm)
    T = Quu.shape[1]
    steps = torch.arange(T, device=Quu.device)
    tstar = torch.where(evals[..., 0] <= 0, steps, -1).amax(1)  # (b,)
    k = evecs[..., :, 0] * (steps == tstar[:, None])[..., None]
    K = gains.K * (steps > tstar[:, None])[..., None, None]
    return K, k


def _escape(dynamics, cost, pr, x, u, J, gains, alphas) -> _Step:
    """At a saddle: move along ``+-`` the negative-curvature direction, step sizes
    ``alphas * (1 + max|u|)``, and take the candidate with the lowest cost if it is lower."""
    K, k = _negative_curvature(gains)
    scale = (1 + u.abs().amax((1, 2)))[:, None, None]
    signed = torch.cat([alphas, -alphas])
    X, U, Ja = _rollout_policy(dynamics, cost, pr, x, u, K, k * scale, signed)
    Ja = torch.where(torch.isfinite(Ja), Ja, torch.inf)
    best = torch.argmin(Ja, 0)
    ar = torch.arange(u.shape[0], device=u.device)
    Jb = Ja[best, ar]
    accepted = Jb < J - 100 * torch.finfo(J.dtype).eps * (1 + J.abs())
    return _Step(accepted, torch.where(accepted, signed[best].abs(), 0.0), X[best, ar],
                 U[best, ar], Jb)


def _put(full: Tensor, idx: Tensor | None, part: Tensor) -> Tensor:
    # out of place, so that grad="unroll" can record it
    return part if idx is None else full.index_copy(0, idx, part)


@dataclass
class _LQModel:
    """The LQ model of the problem around a trajectory, in deviations ``(dx, du)``:
    ``min sum_t 1/2 dz^T C dz + c^T dz + 1/2 dx_T^T CT dx_T + cT^T dx_T``,
    ``dx_{t+1} = F_t dz_t``, ``dx_0 = 0``, ``lower <= du <= upper`` (bounds minus ``u``)."""

    F: Tensor
    C: Tensor
    c: Tensor
    CT: Tensor
    cT: Tensor
    mu: Tensor | None
    lower: Tensor | None
    upper: Tensor | None

    def take(self, idx: Tensor) -> _LQModel:
        return _LQModel(*(None if v is None else v[idx] for v in (
            self.F, self.C, self.c, self.CT, self.cT, self.mu, self.lower, self.upper)))

    def newton(self, du: Tensor, dx: Tensor, free: Tensor | None = None) -> LQRGains:
        """The projected Newton step of the model from ``(dx, du)``: the Riccati pass with the
        model's gradient there (``C dz + c``) and its held set."""
        dz = torch.cat([dx[:, :-1], du], -1)
        gz = (self.C @ dz[..., None])[..., 0] + self.c
        if self.mu is not None:  # the proximal term 1/2 mu |du|^2 of the regularization
            gz = torch.cat([gz[..., :-du.shape[-1]], gz[..., -du.shape[-1]:] +
                            self.mu[:, None, None] * du], -1)
        gT = (self.CT @ dx[:, -1, :, None])[..., 0] + self.cT
        at_lo = at_hi = None
        if self.lower is not None:
            at_lo, at_hi = du <= self.lower, du >= self.upper
        return lqr_backward(self.F, self.C, gz, self.CT, gT, mu=self.mu, free=free,
                            at_lower=at_lo, at_upper=at_hi, costates=True)

    def rollout(self, du: Tensor, dx: Tensor, gains: LQRGains, alphas: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        """The model's version of :func:`_rollout_policy`: ``(dX (A, b, T+1, n),
        dU (A, b, T, m), value (A, b))``."""
        A = alphas.shape[0]
        b, T, m = du.shape
        ff = du + alphas[:, None, None, None] * gains.k
        xa = torch.zeros_like(dx[None, :, 0]).expand(A, b, dx.shape[-1])
        xs, us = [xa], []
        for t in range(T):
            ua = ff[:, :, t] + (gains.K[:, t] @ (xa - dx[:, t])[..., None])[..., 0]
            ua = _clamp(ua, None if self.lower is None else self.lower[:, t],
                        None if self.upper is None else self.upper[:, t])
            xa = (self.F[:, t] @ torch.cat([xa, ua], -1)[..., None])[..., 0]
            xs.append(xa)
            us.append(ua)
        dX, dU = torch.stack(xs, 2), torch.stack(us, 2)
        return dX, dU, self.value(dX, dU)

    def value(self, dX: Tensor, dU: Tensor) -> Tensor:
        """The model's value, with the regularization's proximal term ``1/2 mu |du|^2``
        (the Riccati pass adds ``mu`` to ``Quu``: its step minimizes exactly this)."""
        dz = torch.cat([dX[..., :-1, :], dU], -1)
        xT = dX[..., -1, :]
        prox = 0.0 if self.mu is None else 0.5 * self.mu * dU.square().sum((-1, -2))
        return prox + (0.5 * (dz[..., None, :] @ self.C @ dz[..., :, None])[..., 0, 0]
                + (self.c * dz).sum(-1)).sum(-1) + \
            0.5 * (xT[..., None, :] @ self.CT @ xT[..., :, None])[..., 0, 0] + \
            (self.cT * xT).sum(-1)


def _model_search(mdl: _LQModel, du: Tensor, dx: Tensor, q: Tensor, g: LQRGains,
                  alphas: Tensor, armijo: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Armijo search of the model along the policy ``g`` (as :func:`_armijo` does on the true
    dynamics): ``accepted (b,)``, ``du``, ``dx``, model value of the chosen step."""
    dX, dU, Qa = mdl.rollout(du, dx, g, alphas)
    pred = (g.gu * (dU - du)).sum((2, 3))
    tiny = 100 * torch.finfo(q.dtype).eps * (1 + q.abs())
    ok = ((Qa - q <= armijo * pred) & (pred < 0)) | ((pred.abs() <= tiny) & (Qa - q <= tiny))
    ok = ok & g.ok & (pred < 0)
    acc = ok.any(0)
    first = torch.argmax(ok.to(torch.int8), 0)
    ar = torch.arange(du.shape[0], device=du.device)
    a3 = acc[:, None, None]
    return (acc, torch.where(a3, dU[first, ar], du), torch.where(a3, dX[first, ar], dx),
            torch.where(acc, Qa[first, ar], q))


def _solve_qp(model: _LQModel, gains: LQRGains, u: Tensor, alphas: Tensor, tol: float,
              armijo: float, max_iter: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Minimize the box-constrained LQ model by projected Newton, from ``du = 0`` whose step
    ``gains`` is given (the sequential-QP subproblem; on an LQ problem the whole problem).

    Each iteration is the outer iteration's projected Newton step on the model: Riccati pass
    with the held set, closed-loop rollout of the step sizes clamped to the box, Armijo test
    on the model's gradient. No call of the user's model: only small tensor products, so
    failures are cheap to repair. When the projected Newton step is no descent (it can point
    out of the box at a control that sits on a bound with an inward gradient), the step on the
    face (every control on a bound held) is tried, then a projected gradient step scaled by
    the Riccati pass's curvature ``diag Quu``; both are descent directions unless the point is
    stationary. The search there goes down to ``2^-30``.

    :param u: ``(b, T, m)`` the controls around which the model is taken
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
    fine = 0.5 ** torch.arange(31, dtype=u.dtype, device=u.device)
    g, mdl = gains, model
    for _ in range(max_iter):
        dus, dxs, qs = du[idx], dx[idx], q[idx]
        small = g.k.abs().amax((1, 2)) <= tol * (1 + (u[idx] + dus).abs().amax((1, 2)))
        acc, dU, dX, Q = _model_search(mdl, dus, dxs, qs, g, alphas, armijo)
        fail = ~acc & ~small & g.ok
        if mdl.lower is not None and bool(fail.any()):
            r = torch.nonzero(fail)[:, 0]
            mr = mdl.take(r)
            on_bound = (dus[r] <= mr.lower) | (dus[r] >= mr.upper)
            face = mr.newton(dus[r], dxs[r], free=~on_bound)
            a2, u2, x2, q2 = _model_search(mr, dus[r], dxs[r], qs[r], face, fine, armijo)
            h = \
                torch.diagonal(g.Quu[r], dim1=-2, dim2=-1).clamp_min(1e-300)
            grad = LQRGains(torch.zeros_like(face.K), -g.gu[r] / h, face.free, face.ok,
                            face.pivot, face.Quu, g.lam[r], g.gu[r])
            a3, u3, x3, q3 = _model_search(mr, dus[r], dxs[r], qs[r], grad, fine, armijo)
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
        # is done
        keep = acc & ~small
        if not bool(keep.any()):
            break
        idx, mdl = idx[keep], mdl.take(torch.nonzero(keep)[:, 0])
        g = mdl.newton(du[idx], dx[idx])
        K = K.index_copy(0, idx, g.K)
    return du, dx, K, its


def _newton_step(dynamics: Dynamics, cost: Cost, pr: _Problem, x: Tensor, u: Tensor,
                 exact: Tensor, any_exact: bool, mu: Tensor | None
                 ) -> tuple[LQRGains, _LQModel]:
    """Derivatives at ``(x, u)`` and the projected Riccati pass (steps 1-2 of the module
    docstring). ``exact (b,)``: samples that use the exact Lagrangian Hessian.

    :return: the gains at ``u`` and the LQ model of the problem around ``(x, u)``"""
    d = derivatives(dynamics, cost, x, u, pr.theta, pr.P)
    C = d.C
    if any_exact:
        lam = costates(d.F, d.c, d.cT)
        Hf = lagrangian_hessian(dynamics, x[:, :-1], u, pr.theta, lam[:, 1:])
        C = C + exact.to(C.dtype)[:, None, None, None] * Hf
    model = _LQModel(d.F, C, d.c, d.CT, d.cT, mu,
                     None if pr.lower is None else pr.lower - u,
                     None if pr.upper is None else pr.upper - u)
    return model.newton(torch.zeros_like(u), torch.zeros_like(x)), model


def ilqr_solve(dynamics: Dynamics, cost: Cost, x0: Tensor, theta: Tensor,
               P: dict[str, Tensor], u_init: Tensor, lower: Tensor | None,
               upper: Tensor | None, config: ILQRConfig) -> Solution:
    """Solve ``min_u J(u)`` from ``u_init`` (the module docstring lists the steps).

    Differentiable by unrolling when called with inputs that require grad under grad mode;
    :class:`dilqr_rl.DiLQR` calls it under ``no_grad`` and differentiates the fixed point.

    :param x0: ``(B, n)``; :param theta: dynamics parameters, shared ``(p,)`` or ``(B, p)``
    :param P: cost parameters, values ``(B, ...)``
    :param u_init: ``(B, T, m)`` initial controls (projected onto the box)
    :param lower: ``(B, T, m)`` or ``None``; :param upper: ``(B, T, m)`` or ``None``
    :return: :class:`Solution` (``cost`` undifferentiated here; the layer recomputes it)
    :raises ValueError: when the initial rollout or its cost is not finite
    """
    cfg = config
    B, T, m = u_init.shape
    dev, dt = x0.device, x0.dtype
    full = _Problem(x0, theta, P, lower, upper)
    u = _clamp(u_init, lower, upper)
    x = rollout(dynamics, x0, u, theta)
    J = cost.total(x, u, P)
    bad = ~(torch.isfinite(x).all(-1).all(-1) & torch.isfinite(J))
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"the initial rollout is not finite for {int(bad.sum())} of {B} samples "
                         f"(first: sample {i}, cost {float(J[i])}): the dynamics or the cost "
                         "return NaN/inf at x0 with u_init; check the model's parameters, x0 "
                         "and the bounds")
    mu = torch.full((B,), cfg.mu_init, dtype=dt, device=dev)
    nan = torch.full((B,), math.nan, dtype=dt, device=dev)
    newton = torch.zeros(B, dtype=torch.bool, device=dev)
    converged = torch.zeros_like(newton)
    iterations = torch.zeros(B, dtype=torch.long, device=dev)
    qp_iterations = torch.zeros_like(iterations)
    kkt, pivot = nan, nan
    alphas = 0.5 ** torch.arange(cfg.n_alpha, dtype=dt, device=dev)
    idx: Tensor | None = None  # None: the whole batch is working
    any_exact = False
    hist: list[Tensor] = []

    for _ in range(cfg.max_iter):
        pr = full if idx is None else full.take(idx)
        xs, us, Js, mus, nws = (v if idx is None else v[idx] for v in (x, u, J, mu, newton))
        umax = us.abs().amax((1, 2))
        gains, model = _newton_step(dynamics, cost, pr, xs, us, nws, any_exact, mus)
        small = gains.k.abs().amax((1, 2)) <= cfg.tol * (1 + umax)
        # certified: exact Hessian, negligible regularization, positive definite reduced
        # Hessian on the free controls, Newton step below tolerance (docs/solver.md)
        cert = nws & small & gains.ok & (gains.pivot > 0) & (mus <= 1e-3 * gains.pivot)
        if pr.lower is None:
            step = _line_search(dynamics, cost, pr, xs, us, Js, gains, alphas, cfg)
        else:
            # sequential QP: solve the box-constrained LQ model (cheap: no model calls), then
            # search along its solution with its feedback. Its active set is found on the
            # model, so an LQ problem is solved in one iteration (docs/solver.md)
            du, dxq, Kq, inner = _solve_qp(model, gains, us, alphas, cfg.tol, cfg.armijo,
                                           cfg.qp_iters)
            qp_iterations = qp_iterations + _put(torch.zeros_like(iterations), idx, inner)
            plan = LQRGains(Kq, du, gains.free, gains.ok & ((inner > 0) | small), gains.pivot,
                            gains.Quu, gains.lam, gains.gu)
            step = _line_search(dynamics, cost, pr, xs, us, Js, plan, alphas, cfg, dxq)
        # exact reduced Hessian indefinite (a saddle, or near one: a hanging pendulum): also
        # try the direction of negative curvature, and keep whichever step lowers J more.
        # Regularized Newton alone creeps there (its step is tiny where the gradient is).
        indef = nws & ~(gains.pivot > 0)
        if bool(indef.any()):
            r = torch.nonzero(indef)[:, 0]
            esc = _escape(dynamics, cost, pr.take(r), xs[r], us[r], Js[r], gains.take(r), alphas)
            esc.accepted = esc.accepted & (~step.accepted[r] | (esc.J < step.J[r]))
            step = step.merge(esc, r)
        if cfg.tol == 0:
            cert = torch.zeros_like(cert)
        # a certified sample still takes its last (tiny) Newton step when it is accepted: the
        # fixed point, hence the implicit gradient, is then exact to O(tol^2), not O(tol)
        acc = step.accepted
        mus_new = torch.where(acc, torch.clamp(mus / cfg.mu_factor, min=cfg.mu_min),
                              mus * cfg.mu_factor)
        # an indefinite Quu (m = 1 knows by how much): jump to a regularization that fixes it
        jump = ~acc & ~gains.ok & torch.isfinite(gains.pivot) & (gains.pivot < 0)
        mus_new = torch.where(jump, torch.maximum(mus_new, -2 * gains.pivot), mus_new)
        mus_new = torch.where(cert, mus, mus_new)
        decrease = Js - step.J
        nws_new = nws | small | (acc & (decrease <= cfg.newton_tol * (1 + Js.abs())))
        a3 = acc[:, None, None]
        xs_new, us_new = torch.where(a3, step.x, xs), torch.where(a3, step.u, us)
        Js_new = torch.where(acc, step.J, Js)
        stalled = ~acc & ~cert & (mus_new > cfg.mu_max)
        if cfg.record_history:
            du = torch.where(acc, (us_new - us).abs().amax((1, 2)), math.nan)
            hist.append(torch.stack([_put(nan, idx, v) for v in (
                du, mus_new, torch.where(acc, step.alpha, 0.0), Js_new)], -1))
        x, u, J = _put(x, idx, xs_new), _put(u, idx, us_new), _put(J, idx, Js_new)
        mu, newton = _put(mu, idx, mus_new), _put(newton, idx, nws_new)
        kkt = _put(kkt, idx, torch.where(cert, projected_gradient(us, gains.gu, pr.lower,
                                                                  pr.upper), math.nan))
        pivot = _put(pivot, idx, torch.where(cert, gains.pivot, math.nan))
        ones = torch.ones(us.shape[0], dtype=torch.long, device=dev)
        iterations = iterations + 1 if idx is None else iterations.index_add(0, idx, ones)
        converged = _put(converged, idx, cert)
        working = _put(torch.zeros_like(converged), idx, ~cert & ~stalled) if idx is not None \
            else ~cert & ~stalled
        # the one host synchronisation of the iteration
        w_host, n_host = torch.stack([working, newton]).cpu()
        if not bool(w_host.any()):
            break
        any_exact = bool((n_host & w_host).any())
        idx = None if bool(w_host.all()) else torch.nonzero(w_host)[:, 0].to(dev)

    if cfg.tol > 0 and not bool(converged.all()):
        # the diagnostics of the samples that did not converge, at the returned point
        r = torch.nonzero(~converged)[:, 0]
        g, _ = _newton_step(dynamics, cost, full.take(r), x[r], u[r],
                            torch.ones_like(r, dtype=torch.bool), True, None)
        kkt = kkt.index_copy(0, r, projected_gradient(u[r], g.gu, *(
            None if v is None else v[r] for v in (lower, upper))))
        pivot = pivot.index_copy(0, r, g.pivot)
    free = torch.ones_like(u, dtype=torch.bool)
    if lower is not None:
        eps = torch.finfo(dt).eps
        # clamped controls sit exactly on the bound; allow a few ulps
        above = torch.where(torch.isfinite(lower), u > lower + 4 * eps * (1 + lower.abs()), True)
        below = torch.where(torch.isfinite(upper), u < upper - 4 * eps * (1 + upper.abs()), True)
        free = above & below
    history = torch.stack(hist, 1).detach() if hist else None
    return Solution(x=x, u=u, cost=J, converged=converged, iterations=iterations,
                    free=free.detach(), kkt=kkt.detach(), pivot=pivot.detach(),
                    qp_iterations=qp_iterations,
                    history=history)
