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
from .lqr import LQRGains, costates
from .models import Dynamics
from .qp import LQModel, armijo_accept, clamp, closed_loop, rounding, solve_qp


class NonFiniteError(ValueError):
    """A NaN or inf appeared in the solve or its gradient although the inputs were finite
    (the model or the cost returns NaN/inf there): raised with what and where, never passed
    on as a number, and distinct from \"did not converge\"."""

__all__ = ["ILQRConfig", "NonFiniteError", "Solution", "ilqr_solve", "rollout", "linearize"]


@dataclass(frozen=True)
class ILQRConfig:
    """Solver settings.

    :param max_iter: iteration cap
    :param tol: relative step tolerance: a sample converges when its exact-Hessian Newton step
        moves no control by more than ``tol * (1 + max|u|)`` and the reduced Hessian is
        positive definite (docs/solver.md); floored at ``64 eps`` of the dtype (``7.6e-6`` in
        float32). ``0`` never declares convergence, so exactly
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
    th = pr.theta if pr.theta.dim() == 1 else pr.theta.repeat(A, 1)
    ff = u + alphas[:, None, None, None] * k  # (A, b, T, m): every step size's feed-forward
    xr = x if dx is None else x + alphas[:, None, None, None] * dx  # (A, b, T+1, n) or x

    def step(t: int, xa: Tensor, ua: Tensor) -> Tensor:
        return dynamics.step(xa.reshape(A * b, n), ua.reshape(A * b, m), th).reshape(A, b, n)

    X, U = closed_loop(pr.x0.unsqueeze(0).expand(A, b, n), ff, K, xr, pr.lower, pr.upper,
                       step)
    P = {key: v.repeat(A, *([1] * (v.dim() - 1))) for key, v in pr.P.items()}
    return X, U, cost.total(X.reshape(A * b, T + 1, n), U.reshape(A * b, T, m),
                            P).reshape(A, b)


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
    """Roll out the step sizes ``alphas`` and pick per sample the largest one that passes
    :func:`dilqr_rl.qp.armijo_accept` against the first-order prediction ``gu . (u_a - u)``
    (the true gradient, so the clamping in the rollout is accounted for)."""
    X, U, Ja = _rollout_policy(dynamics, cost, pr, x, u, gains.K, gains.k, alphas, dx)
    pred = (gains.gu * (U - u)).sum((2, 3))
    ok = armijo_accept(Ja, J, pred, armijo) & gains.ok & torch.isfinite(Ja)
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
    ``alphas * (1 + max|u|)`` (the solver passes the four largest), and take the candidate
    with the lowest cost if it is lower."""
    K, k = _negative_curvature(gains)
    scale = (1 + u.abs().amax((1, 2)))[:, None, None]
    signed = torch.cat([alphas, -alphas])
    X, U, Ja = _rollout_policy(dynamics, cost, pr, x, u, K, k * scale, signed)
    Ja = torch.where(torch.isfinite(Ja), Ja, torch.inf)
    best = torch.argmin(Ja, 0)
    ar = torch.arange(u.shape[0], device=u.device)
    Jb = Ja[best, ar]
    accepted = Jb < J - rounding(J)
    return _Step(accepted, torch.where(accepted, signed[best].abs(), 0.0), X[best, ar],
                 U[best, ar], Jb)


def _put(full: Tensor, idx: Tensor | None, part: Tensor) -> Tensor:
    # out of place, so that grad="unroll" can record it
    return part if idx is None else full.index_copy(0, idx, part)


def _newton_step(dynamics: Dynamics, cost: Cost, pr: _Problem, x: Tensor, u: Tensor,
                 exact: Tensor, any_exact: bool, mu: Tensor | None
                 ) -> tuple[LQRGains, LQModel]:
    """Derivatives at ``(x, u)`` and the projected Riccati pass (steps 1-2 of the module
    docstring). ``exact (b,)``: samples that use the exact Lagrangian Hessian.

    :return: the gains at ``u`` and the LQ model of the problem around ``(x, u)``"""
    d = derivatives(dynamics, cost, x, u, pr.theta, pr.P)
    C = d.C
    if any_exact:
        lam = costates(d.F, d.c, d.cT)
        Hf = lagrangian_hessian(dynamics, x[:, :-1], u, pr.theta, lam[:, 1:])
        C = C + exact.to(C.dtype)[:, None, None, None] * Hf
    model = LQModel(d.F, C, d.c, d.CT, d.cT, mu,
                     None if pr.lower is None else pr.lower - u,
                     None if pr.upper is None else pr.upper - u)
    box = pr.lower is not None and u.shape[-1] == 1
    return model.newton(torch.zeros_like(u), torch.zeros_like(x), box=box), model


@dataclass
class _State:
    """Per-sample solver state, ``(B, ...)`` each. Written out of place (``grad="unroll"``
    records it)."""

    x: Tensor
    u: Tensor
    J: Tensor
    mu: Tensor
    newton: Tensor  # (B,) bool: exact Lagrangian Hessian
    converged: Tensor
    iterations: Tensor
    qp_iterations: Tensor
    kkt: Tensor
    pivot: Tensor

    def write(self, idx: Tensor | None, **parts: Tensor) -> None:
        for name, part in parts.items():
            setattr(self, name, _put(getattr(self, name), idx, part))


def _start(dynamics: Dynamics, cost: Cost, pr: _Problem, u_init: Tensor, cfg: ILQRConfig
           ) -> _State:
    """The initial rollout, checked finite."""
    u = clamp(u_init, pr.lower, pr.upper)
    x = rollout(dynamics, pr.x0, u, pr.theta)
    J = cost.total(x, u, pr.P)
    bad = ~(torch.isfinite(x).all(-1).all(-1) & torch.isfinite(J))
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        raise NonFiniteError(f"the initial rollout is not finite for {int(bad.sum())} of "
                         f"{u.shape[0]} samples (first: sample {i}, cost {float(J[i])}): the "
                         "dynamics or the cost return NaN/inf at x0 with u_init; check the "
                         "model's parameters, x0 and the bounds")
    B = u.shape[0]
    nan = torch.full_like(J, math.nan)
    no = torch.zeros(B, dtype=torch.bool, device=u.device)
    zero = torch.zeros(B, dtype=torch.long, device=u.device)
    return _State(x, u, J, torch.full_like(J, cfg.mu_init), no, no, zero, zero, nan, nan)


def _step(dynamics, cost, pr: _Problem, xs, us, Js, nws, gains: LQRGains, model: LQModel,
          small: Tensor, alphas: Tensor, cfg: ILQRConfig) -> tuple[_Step, Tensor]:
    """Step 4: the QP plan and the line search along it; at an indefinite exact reduced
    Hessian, also the negative-curvature escape. :return: the step and the QP iterations."""
    inner = torch.zeros_like(Js, dtype=torch.long)
    qp = torch.ones_like(Js, dtype=torch.bool) if pr.lower is not None else \
        torch.zeros_like(Js, dtype=torch.bool)
    if pr.lower is None or gains.boxed is not None:
        # no bounds, or m = 1: the Newton step itself (for m = 1 with box-DDP's closed-form
        # clamp per step, exact for one control); the QP below only where it fails or stalls
        # on a clamp (a clamp against the true gradient is no KKT point)
        step = _line_search(dynamics, cost, pr, xs, us, Js, gains, alphas, cfg)
        if pr.lower is not None:
            qp = (~step.accepted & gains.ok) | (gains.boxed & small)
    if bool(qp.any()):
        # sequential QP: solve the box-constrained LQ model (cheap: no model calls), then
        # search along its solution with its feedback. Its active set is found on the model,
        # so an LQ problem is solved in one iteration (docs/solver.md)
        # (tol = 0 asks for a fixed number of outer iterations; the subproblem is still
        # solved to the default tolerance)
        r = torch.nonzero(qp)[:, 0]
        every = bool(qp.all())
        mdl, g = (model, gains) if every else (model.take(r), gains.take(r))
        if g.boxed is not None:  # start from the projected step without the per-step clamp
            g = mdl.newton(torch.zeros_like(us[r]), torch.zeros_like(xs[r]))
        du, dxq, Kq, its = solve_qp(mdl, g, us[r], alphas, _step_tol(cfg.tol or ILQRConfig.tol,
                                                                      us.dtype),
                                    cfg.armijo, cfg.qp_iters)
        inner = inner.index_copy(0, r, its)
        plan = LQRGains(Kq, du, g.free, g.ok & ((its > 0) | small[r]), g.pivot, g.Quu, g.lam,
                        g.gu)
        res = _line_search(dynamics, cost, pr if every else pr.take(r), xs[r], us[r], Js[r],
                           plan, alphas, cfg, dxq)
        step = res if every else step.merge(res, r)
    # exact reduced Hessian indefinite (a saddle, or near one: a hanging pendulum): also try
    # the direction of negative curvature, and keep whichever step lowers J more. Regularized
    # Newton alone creeps there (its step is tiny where the gradient is).
    # Only where the Newton step failed or barely moved J (creeping): elsewhere it is cheaper
    # to let the regularized step work than to roll out 2 n_alpha more candidates.
    creep = ~step.accepted | (Js - step.J <= cfg.newton_tol * (1 + Js.abs()))
    indef = nws & ~(gains.pivot > 0) & creep
    if bool(indef.any()):
        r = torch.nonzero(indef)[:, 0]
        esc = _escape(dynamics, cost, pr.take(r), xs[r], us[r], Js[r], gains.take(r),
                      alphas[:4])
        esc.accepted = esc.accepted & (~step.accepted[r] | (esc.J < step.J[r]))
        step = step.merge(esc, r)
    return step, inner


def _regularization(mus: Tensor, acc: Tensor, cert: Tensor, gains: LQRGains,
                    cfg: ILQRConfig) -> Tensor:
    """Step 5: ``mu`` down on success, up on failure; an indefinite ``Quu`` of known size
    (``m = 1``) jumps to a regularization that fixes it; certified samples keep theirs."""
    mus_new = torch.where(acc, torch.clamp(mus / cfg.mu_factor, min=cfg.mu_min),
                          mus * cfg.mu_factor)
    jump = ~acc & ~gains.ok & torch.isfinite(gains.pivot) & (gains.pivot < 0)
    mus_new = torch.where(jump, torch.maximum(mus_new, -2 * gains.pivot), mus_new)
    return torch.where(cert, mus, mus_new)


def _finish(dynamics, cost, full: _Problem, st: _State, hist: list[Tensor],
            cfg: ILQRConfig) -> Solution:
    """The diagnostics of the samples that did not converge (at the returned point) and the
    :class:`Solution`."""
    x, u, lower, upper = st.x, st.u, full.lower, full.upper
    if cfg.tol > 0 and not bool(st.converged.all()):
        r = torch.nonzero(~st.converged)[:, 0]
        pr = full.take(r)
        g, _ = _newton_step(dynamics, cost, pr, x[r], u[r],
                            torch.ones_like(r, dtype=torch.bool), True, None)
        st.write(r, kkt=projected_gradient(u[r], g.gu, pr.lower, pr.upper), pivot=g.pivot)
    free = torch.ones_like(u, dtype=torch.bool)
    if lower is not None:
        eps = torch.finfo(u.dtype).eps
        # clamped controls sit exactly on the bound; allow a few ulps
        above = torch.where(torch.isfinite(lower), u > lower + 4 * eps * (1 + lower.abs()), True)
        below = torch.where(torch.isfinite(upper), u < upper - 4 * eps * (1 + upper.abs()), True)
        free = above & below
    return Solution(x=x, u=u, cost=st.J, converged=st.converged, iterations=st.iterations,
                    free=free.detach(), kkt=st.kkt.detach(), pivot=st.pivot.detach(),
                    qp_iterations=st.qp_iterations,
                    history=torch.stack(hist, 1).detach() if hist else None)


def _step_tol(tol: float, dtype: torch.dtype) -> float:
    """The relative step tolerance, floored at what the dtype resolves (64 eps: 7.6e-6 in
    float32, where 1e-7 is below rounding and would never be reached); 0 stays 0."""
    return 0.0 if tol == 0 else max(tol, 64 * torch.finfo(dtype).eps)


def _nonfinite_message(finite: Tensor, iterations: Tensor) -> str:
    bad = torch.nonzero(~finite)[:, 0].tolist()
    return (f"the Newton step is not finite for samples {bad[:8]} (iteration "
            f"{int(iterations[bad[0]])}): the dynamics' Jacobians or the cost's derivatives "
            "return NaN/inf along the trajectory (e.g. a pendulum state off the unit circle, "
            "a zero mass or inertia); check the model, its parameters and x0")


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
    :raises NonFiniteError: (a ``ValueError``) when the initial rollout or its cost, or a
        Newton step, is not finite
    """
    cfg = config
    full = _Problem(x0, theta, P, lower, upper)
    st = _start(dynamics, cost, full, u_init, cfg)
    alphas = 0.5 ** torch.arange(cfg.n_alpha, dtype=x0.dtype, device=x0.device)
    idx: Tensor | None = None  # the working samples; None: all
    any_exact = False
    hist: list[Tensor] = []
    for _ in range(cfg.max_iter):
        pr = full if idx is None else full.take(idx)
        xs, us, Js, mus, nws = (v if idx is None else v[idx]
                                for v in (st.x, st.u, st.J, st.mu, st.newton))
        # 1-2. derivatives and the projected Newton step
        gains, model = _newton_step(dynamics, cost, pr, xs, us, nws, any_exact, mus)
        small = gains.k.abs().amax((1, 2)) <= _step_tol(cfg.tol, us.dtype) * (
            1 + us.abs().amax((1, 2)))
        # 3. certified: exact Hessian, negligible regularization, positive definite reduced
        # Hessian on the free controls, Newton step below tolerance (docs/solver.md)
        cert = nws & small & gains.ok & (gains.pivot > 0) & (mus <= 1e-3 * gains.pivot)
        cert = cert & (cfg.tol > 0)
        if gains.boxed is not None:  # (m = 1) a step clamped per step: not the projected one
            cert = cert & ~gains.boxed
        # 4. the step; a certified sample still takes its last (tiny) Newton step when it is
        # accepted: the fixed point, hence the implicit gradient, is then exact to O(tol^2)
        step, inner = _step(dynamics, cost, pr, xs, us, Js, nws, gains, model, small, alphas,
                            cfg)
        acc = step.accepted
        # 5. regularization, Newton mode, bookkeeping
        mus_new = _regularization(mus, acc, cert, gains, cfg)
        decrease = Js - step.J
        a3 = acc[:, None, None]
        us_new = torch.where(a3, step.u, us)
        stalled = ~acc & ~cert & (mus_new > cfg.mu_max)
        if cfg.record_history:
            nan = torch.full_like(st.J, math.nan)
            du = torch.where(acc, (us_new - us).abs().amax((1, 2)), math.nan)
            hist.append(torch.stack([_put(nan, idx, v) for v in (
                du, mus_new, torch.where(acc, step.alpha, 0.0),
                torch.where(acc, step.J, Js))], -1))
        nan_b = torch.full_like(Js, math.nan)
        st.write(idx, x=torch.where(a3, step.x, xs), u=us_new, J=torch.where(acc, step.J, Js),
                 mu=mus_new, converged=cert,
                 newton=nws | small | (acc & (decrease <= cfg.newton_tol * (1 + Js.abs()))),
                 iterations=(st.iterations if idx is None else st.iterations[idx]) + 1,
                 qp_iterations=(st.qp_iterations if idx is None else st.qp_iterations[idx])
                 + inner,
                 kkt=torch.where(cert, projected_gradient(us, gains.gu, pr.lower, pr.upper),
                                 nan_b),
                 pivot=torch.where(cert, gains.pivot, nan_b))
        working = _put(torch.zeros_like(st.converged), idx, ~cert & ~stalled)
        finite = torch.isfinite(gains.k).all(-1).all(-1) & torch.isfinite(gains.K).all(
            -1).all(-1).all(-1)
        # the one host synchronisation of the iteration
        w_host, n_host, f_host = torch.stack([working, st.newton,
                                              _put(torch.ones_like(working), idx, finite)]).cpu()
        if not bool(f_host.all()):
            raise NonFiniteError(_nonfinite_message(f_host, st.iterations))
        if not bool(w_host.any()):
            break
        any_exact = bool((n_host & w_host).any())
        idx = None if bool(w_host.all()) else torch.nonzero(w_host)[:, 0].to(x0.device)
    return _finish(dynamics, cost, full, st, hist, cfg)
