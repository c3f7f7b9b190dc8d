"""Steps 4-5 of an iteration of :func:`dilqr_rl.ilqr.ilqr_solve`: the globalization.

The step on the true dynamics: the feedback policy ``u = clamp(u + alpha k + K (x - x_bar))``
(paper eq. 5) rolled out for all step sizes at once and checked by an Armijo test on the true
directional derivative (:func:`_line_search`); with bounds, along the solution of the
box-constrained LQ model (sequential QP, :mod:`dilqr_rl.qp`); at a saddle, along a direction
of negative curvature (:func:`_escape`). Then the Levenberg-Marquardt regularization
(:func:`_regularization`). Notation as in :mod:`dilqr_rl.ilqr` (``b`` working samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .cost import Cost
from .ilqr_types import ILQRConfig, _Problem, _step_tol
from .lqr import LQRGains
from .lqr_gains import predicted_change
from .models import Dynamics
from .qp import LQModel, armijo_accept, closed_loop, rounding, solve_qp

__all__: list[str] = []


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
    pred = predicted_change(gains, U - u, X - x)
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
    # scaled by 1 / big (same eigenvectors and signs): LAPACK's eigh failed to converge on the
    # Quu ~ 1e60 of a tumbling rocket's rollout; a non-finite Quu has no direction to offer
    ok = torch.isfinite(big[..., 0, 0])
    Hm = (Quu * Mf[..., :, None] * Mf[..., None, :]) / big + torch.diag_embed(1.0 - Mf)
    eye = torch.eye(Quu.shape[-1], dtype=Quu.dtype, device=Quu.device)
    Hm = torch.where(ok[..., None, None], Hm, eye)
    try:
        evals, evecs = torch.linalg.eigh(Hm)
    except torch.linalg.LinAlgError:  # no escape this time; the line search still ran
        z = gains.K.new_zeros(gains.K.shape)
        return z, z[..., 0]
    T = Quu.shape[1]
    steps = torch.arange(T, device=Quu.device)
    tstar = torch.where((evals[..., 0] <= 0) & ok, steps, -1).amax(1)  # (b,)
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


def _step(dynamics, cost, pr: _Problem, xs, us, Js, nws, gains: LQRGains, model: LQModel,
          small: Tensor, alphas: Tensor, cfg: ILQRConfig, loose: Tensor
          ) -> tuple[_Step, Tensor]:
    """Step 4: the QP plan and the line search along it; at an indefinite exact reduced
    Hessian, also the negative-curvature escape. ``loose (b,)``: samples whose QP subproblem
    may be solved inexactly (:func:`dilqr_rl.qp.solve_qp`). :return: the step and the QP
    iterations."""
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
                                    cfg.armijo, cfg.qp_iters,
                                    loose if every else loose[r])
        inner = inner.index_copy(0, r, its)
        plan = LQRGains(Kq, du, g.free, g.ok & ((its > 0) | small[r]), g.pivot, g.Quu, g.lam,
                        g.gu, Kg=g.Kg)
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
