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

Modules: the types (:class:`ILQRConfig`, :class:`Solution`, :class:`NonFiniteError`) in
:mod:`dilqr_rl.ilqr_types`; steps 1-3 in :mod:`dilqr_rl.ilqr_newton`; steps 4-5 in
:mod:`dilqr_rl.ilqr_step`; here the loop. One host synchronisation per iteration (which
samples are still working).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .cost import Cost
from .derivatives import linearize, projected_gradient
from .ilqr_newton import _certify, _diagnose, _newton_step
from .ilqr_step import _regularization, _step
from .ilqr_types import ILQRConfig, NonFiniteError, Solution, _Problem
from .models import Dynamics
from .qp import clamp

__all__ = ["ILQRConfig", "NonFiniteError", "Solution", "ilqr_solve", "rollout", "linearize"]


def rollout(dynamics: Dynamics, x0: Tensor, u: Tensor, theta: Tensor) -> Tensor:
    """Open-loop rollout.

    :param x0: ``(B, n)``; :param u: ``(B, T, m)``; :param theta: ``(p,)`` or ``(B, p)``
    :return: ``x (B, T+1, n)``
    """
    xs = [x0]
    for t in range(u.shape[1]):
        xs.append(dynamics.step(xs[-1], u[:, t], theta))
    return torch.stack(xs, 1)



def _put(full: Tensor, idx: Tensor | None, part: Tensor) -> Tensor:
    # out of place, so that grad="unroll" can record it
    return part if idx is None else full.index_copy(0, idx, part)


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
    failed: Tensor  # (B,) bool: set apart, not finite (on_nonfinite="isolate")
    # (B,) bool: the last step was accepted at alpha = 1 (the model predicted it well): the
    # next QP subproblem is solved to the end, else inexactly (dilqr_rl.qp.solve_qp)
    full: Tensor

    def write(self, idx: Tensor | None, **parts: Tensor) -> None:
        for name, part in parts.items():
            setattr(self, name, _put(getattr(self, name), idx, part))


def _start(dynamics: Dynamics, cost: Cost, pr: _Problem, u_init: Tensor, cfg: ILQRConfig
           ) -> _State:
    """The initial rollout, checked finite: a sample whose rollout or cost is not finite
    raises, or with ``on_nonfinite="isolate"`` starts out failed (``_State.failed``)."""
    u = clamp(u_init, pr.lower, pr.upper)
    x = rollout(dynamics, pr.x0, u, pr.theta)
    J = cost.total(x, u, pr.P)
    bad = ~(torch.isfinite(x).all(-1).all(-1) & torch.isfinite(J))
    if cfg.on_nonfinite == "raise" and bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        raise NonFiniteError(f"the initial rollout is not finite for {int(bad.sum())} of "
                         f"{u.shape[0]} samples (first: sample {i}, cost {float(J[i])}): the "
                         "dynamics or the cost return NaN/inf at x0 with u_init; check the "
                         "model's parameters, x0 and the bounds",
                         samples=torch.nonzero(bad)[:, 0].tolist())
    B = u.shape[0]
    nan = torch.full_like(J, math.nan)
    no = torch.zeros(B, dtype=torch.bool, device=u.device)
    zero = torch.zeros(B, dtype=torch.long, device=u.device)
    return _State(x, u, J, torch.full_like(J, cfg.mu_init), no, no, zero, zero, nan, nan, bad,
                  ~no)


def _finish(dynamics, cost, full: _Problem, st: _State, hist: list[Tensor],
            cfg: ILQRConfig) -> Solution:
    """The diagnostics of the samples that did not converge (at the returned point) and the
    :class:`Solution`."""
    x, u, lower, upper = st.x, st.u, full.lower, full.upper
    if cfg.tol > 0 and not bool((st.converged | st.failed).all()):
        # (a failed sample's derivatives are not finite: it keeps NaN)
        r = torch.nonzero(~st.converged & ~st.failed)[:, 0]
        kkt, pivot = _diagnose(dynamics, cost, full.take(r), x[r], u[r])
        st.write(r, kkt=kkt, pivot=pivot)
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
                    history=torch.stack(hist, 1).detach() if hist else None,
                    failed=st.failed)


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
        Newton step, is not finite (with ``config.on_nonfinite="isolate"``: those samples
        are set apart instead, ``Solution.failed``)
    """
    cfg = config
    full = _Problem(x0, theta, P, lower, upper)
    st = _start(dynamics, cost, full, u_init, cfg)
    alphas = 0.5 ** torch.arange(cfg.n_alpha, dtype=x0.dtype, device=x0.device)
    idx: Tensor | None = None  # the working samples; None: all
    if cfg.on_nonfinite == "isolate" and bool(st.failed.any()):
        idx = torch.nonzero(~st.failed)[:, 0]
    any_exact = False
    hist: list[Tensor] = []
    for _ in range(cfg.max_iter if idx is None or idx.numel() else 0):
        pr = full if idx is None else full.take(idx)
        xs, us, Js, mus, nws, fulls = (v if idx is None else v[idx]
                                       for v in (st.x, st.u, st.J, st.mu, st.newton, st.full))
        # 1-2. derivatives and the projected Newton step
        gains, model = _newton_step(dynamics, cost, pr, xs, us, nws, any_exact, mus)
        # 3. certified: exact Hessian, negligible regularization, positive definite reduced
        # Hessian on the free controls, Newton step below tolerance (docs/solver.md)
        small, cert = _certify(gains, us, mus, nws, cfg)
        # 4. the step; a certified sample still takes its last (tiny) Newton step when it is
        # accepted: the fixed point, hence the implicit gradient, is then exact to O(tol^2)
        step, inner = _step(dynamics, cost, pr, xs, us, Js, nws, gains, model, small, alphas,
                            cfg, ~fulls)
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
                 mu=mus_new, converged=cert, full=acc & (step.alpha == alphas[0]),
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
            if cfg.on_nonfinite == "raise":
                raise NonFiniteError(_nonfinite_message(f_host, st.iterations),
                                     samples=torch.nonzero(~f_host)[:, 0].tolist())
            # isolate: set apart at their last (finite) iterate; the others go on
            out = ~f_host.to(st.failed.device)
            st.failed = st.failed | out
            w_host = w_host & f_host
            st.converged = st.converged & ~out
            st.kkt = torch.where(out, math.nan, st.kkt)
            st.pivot = torch.where(out, math.nan, st.pivot)
        if not bool(w_host.any()):
            break
        any_exact = bool((n_host & w_host).any())
        idx = None if bool(w_host.all()) else torch.nonzero(w_host)[:, 0].to(x0.device)
    return _finish(dynamics, cost, full, st, hist, cfg)
