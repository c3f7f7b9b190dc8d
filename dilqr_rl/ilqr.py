"""Batched box-constrained iLQR (the forward solve; no autograd graph unless ``grad="unroll"``).

Each iteration (paper section 3): linearize the dynamics and quadratize the cost at all
``B*T`` pairs in one vectorized call, run the Riccati pass with a projected-Newton box QP
(:func:`dilqr_rl.lqr.lqr_backward`), then a line search whose candidate step sizes are rolled
out through the true dynamics in one batched rollout (paper eq. 5). Levenberg-Marquardt
regularization on ``Quu`` is adapted per sample; samples that converge stop changing and are
dropped from the working batch. One host synchronisation per iteration (the convergence check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .cost import Cost
from .dynamics import Dynamics
from .lqr import LQRGains, costates, lqr_backward

__all__ = ["ILQRConfig", "Solution", "ilqr_solve", "rollout", "linearize"]


@dataclass(frozen=True)
class ILQRConfig:
    """Solver settings.

    :param max_iter: iteration cap
    :param tol: relative step tolerance: a sample converges when an accepted step moves the
        controls, and the full iLQR step ``k`` would move them, by at most
        ``tol * (1 + max|u|)``. ``0`` never declares convergence, so exactly
        ``max_iter`` iterations run (benchmarks compare at equal iteration counts this way).
    :param mu_init: initial Levenberg-Marquardt regularization of ``Quu``
    :param mu_min: regularization floor (the regularization decays towards it on success)
    :param mu_max: a sample whose regularization exceeds this has stalled (not converged)
    :param mu_factor: multiplicative increase / decrease of the regularization
    :param n_alpha: number of line-search step sizes ``1, 1/2, ..., 2^-(n_alpha-1)``, all
        evaluated in one batched rollout
    :param armijo: accept a step whose actual decrease is at least this fraction of the
        predicted one
    :param boxqp_iters: projected-Newton iterations of the box QP (``m > 1`` only)
    :param newton_tol: once an accepted step is below ``newton_tol * (1 + max|u|)``, the sample
        switches from Gauss-Newton to the exact Lagrangian Hessian (the ``C~`` of the implicit
        gradient, which adds ``sum_i lam_i hess f_i``): regularized Newton, quadratically
        convergent, so the fixed point (hence the gradient) is reached to rounding instead
        of creeping (DESIGN.md "Slow Gauss-Newton"). ``0`` disables it (pure iLQR).
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
    boxqp_iters: int = 20
    newton_tol: float = 1e-3
    record_history: bool = False
    batched_line_search: bool = True
    on_unconverged: Literal["warn", "raise", "detach"] = "warn"

    def __post_init__(self) -> None:
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"ILQRConfig.max_iter must be an int >= 1, got {self.max_iter!r}")
        if not (self.tol >= 0 and math.isfinite(self.tol)):
            raise ValueError(f"ILQRConfig.tol must be finite and >= 0, got {self.tol!r}")
        if not 0 < self.mu_min <= self.mu_init < self.mu_max:
            raise ValueError("ILQRConfig needs 0 < mu_min <= mu_init < mu_max, got "
                             f"{self.mu_min}, {self.mu_init}, {self.mu_max}")
        if self.mu_factor <= 1:
            raise ValueError(f"ILQRConfig.mu_factor must be > 1, got {self.mu_factor}")
        if self.n_alpha < 1 or self.boxqp_iters < 1:
            raise ValueError("ILQRConfig.n_alpha and boxqp_iters must be >= 1")
        if self.on_unconverged not in ("warn", "raise", "detach"):
            raise ValueError("ILQRConfig.on_unconverged must be 'warn', 'raise' or 'detach', "
                             f"got {self.on_unconverged!r}")


@dataclass
class Solution:
    """The result of a solve.

    :ivar x: states ``(B, T+1, n)`` (differentiable)
    :ivar u: controls ``(B, T, m)`` (differentiable)
    :ivar cost: trajectory cost ``(B,)`` (differentiable)
    :ivar converged: ``(B,)`` bool
    :ivar iterations: ``(B,)`` int64, iterations each sample ran
    :ivar free: ``(B, T, m)`` bool, controls not on a bound at the solution
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
    history: Tensor | None = None


def rollout(dynamics: Dynamics, x0: Tensor, u: Tensor, theta: Tensor) -> Tensor:
    """Open-loop rollout.

    :param x0: ``(B, n)``; :param u: ``(B, T, m)``; :param theta: ``(B, p)``
    :return: ``x (B, T+1, n)``
    """
    xs = [x0]
    for t in range(u.shape[1]):
        xs.append(dynamics.step(xs[-1], u[:, t], theta))
    return torch.stack(xs, 1)


def linearize(dynamics: Dynamics, x: Tensor, u: Tensor, theta: Tensor) -> Tensor:
    """Jacobians ``F (B, T, n, n+m)`` of all ``B*T`` steps in one vectorized call.

    :param x: ``(B, T, n)`` (states ``x_0 .. x_{T-1}``); :param u: ``(B, T, m)``
    :param theta: ``(B, p)``
    """
    B, T, n = x.shape
    m = u.shape[-1]
    th = theta[:, None].expand(B, T, theta.shape[-1]).reshape(B * T, -1)
    _, F = dynamics.jacobians(x.reshape(B * T, n), u.reshape(B * T, m), th)
    return F.reshape(B, T, n, n + m)


def _take(P: dict[str, Tensor], idx: Tensor | None) -> dict[str, Tensor]:
    return P if idx is None else {k: v[idx] for k, v in P.items()}


def _repeat(P: dict[str, Tensor], A: int) -> dict[str, Tensor]:
    return {k: v.unsqueeze(0).expand(A, *v.shape).reshape(A * v.shape[0], *v.shape[1:])
            for k, v in P.items()}


def _take_gains(g: LQRGains, idx: Tensor) -> LQRGains:
    return LQRGains(g.K[idx], g.k[idx], g.free[idx], g.dV[idx], g.ok[idx])


def _put(full: Tensor, idx: Tensor | None, part: Tensor) -> Tensor:
    # out of place, so that grad="unroll" can record it
    return part if idx is None else full.index_copy(0, idx, part)


def _line_search(dynamics: Dynamics, cost: Cost, alphas: Tensor, x0: Tensor, theta: Tensor,
                 P: dict[str, Tensor], x: Tensor, u: Tensor, J: Tensor, gains,
                 lower: Tensor | None, upper: Tensor | None, eps: float, armijo: float):
    """Roll out the feedback policy ``u = u_bar + alpha k + K (x - x_bar)`` (paper eq. 5) for
    all step sizes ``alphas (A,)`` at once and pick, per sample, the largest acceptable one.

    :return: ``accepted (b,)``, index of the chosen step ``(b,)``, and the chosen
        ``x (b, T+1, n)``, ``u (b, T, m)``, cost ``(b,)``
    """
    A, (b, T, m) = alphas.shape[0], u.shape
    xa = x0.unsqueeze(0).expand(A, b, x0.shape[-1]).reshape(A * b, -1)
    tha = theta.unsqueeze(0).expand(A, *theta.shape).reshape(A * b, -1)
    xs_a, us_a = [xa], []
    ff = u + alphas[:, None, None, None] * gains.k  # (A, b, T, m) feedforward of every alpha
    for t in range(T):
        dx = xa.reshape(A, b, -1) - x[:, t]
        ua = ff[:, :, t] + (gains.K[:, t] @ dx[..., None])[..., 0]
        if lower is not None:
            ua = torch.minimum(torch.maximum(ua, lower[:, t]), upper[:, t])
        ua = ua.reshape(A * b, m)
        xa = dynamics.step(xa, ua, tha)
        xs_a.append(xa)
        us_a.append(ua)
    Xa = torch.stack(xs_a, 1)
    Ua = torch.stack(us_a, 1)
    Ja = cost.total(Xa, Ua, _repeat(P, A)).reshape(A, b)
    expected = alphas[:, None] * gains.dV[:, 0] + alphas[:, None] ** 2 * gains.dV[:, 1]
    actual = Ja - J
    # Accept a sufficient decrease; once the predicted decrease is below rounding, accept a
    # full step that does not increase J beyond rounding (otherwise the search stalls near
    # 1e-8 in u and the fixed point, hence the gradient, is inexact: DESIGN.md "Pitfalls").
    tiny = 100 * eps * (1 + J.abs())
    ok_a = (actual <= armijo * expected) & (expected < 0)
    ok_a = ok_a | ((-expected <= tiny) & (actual <= tiny))
    ok_a = ok_a & gains.ok & torch.isfinite(Ja)
    accepted = ok_a.any(0)
    first = torch.argmax(ok_a.to(torch.int8), 0)
    pick = first * b + torch.arange(b, device=u.device)  # Xa is (A*b), alpha-major
    return accepted, first, Xa[pick], Ua[pick], Ja.reshape(-1)[pick]


def ilqr_solve(dynamics: Dynamics, cost: Cost, x0: Tensor, theta: Tensor,
               P: dict[str, Tensor], u_init: Tensor, lower: Tensor | None,
               upper: Tensor | None, config: ILQRConfig) -> Solution:
    """Solve ``min_u J(u)`` by iLQR from ``u_init``.

    Differentiable by unrolling when called with inputs that require grad under grad mode;
    :class:`dilqr_rl.DiLQR` calls it under ``no_grad`` and differentiates the fixed point.

    :param x0: ``(B, n)``; :param theta: dynamics parameters ``(B, p)``
    :param P: cost parameters, values ``(B, ...)``
    :param u_init: ``(B, T, m)`` initial controls (projected onto the box)
    :param lower: ``(B, T, m)`` or ``None``; :param upper: ``(B, T, m)`` or ``None``
    :return: :class:`Solution` (``cost`` undifferentiated here; the layer recomputes it)
    """
    B, T, m = u_init.shape
    dev, dt = x0.device, x0.dtype
    cfg = config
    boxed = lower is not None
    u = torch.minimum(torch.maximum(u_init, lower), upper) if boxed else u_init
    x = rollout(dynamics, x0, u, theta)
    J = cost.total(x, u, P)
    mu = torch.full((B,), cfg.mu_init, dtype=dt, device=dev)
    active = torch.ones(B, dtype=torch.bool, device=dev)
    converged = torch.zeros(B, dtype=torch.bool, device=dev)
    iterations = torch.zeros(B, dtype=torch.long, device=dev)
    alphas = 0.5 ** torch.arange(cfg.n_alpha, dtype=dt, device=dev)
    A = cfg.n_alpha
    eps = torch.finfo(dt).eps
    idx = None  # None: the whole batch is active
    newton = torch.zeros(B, dtype=torch.bool, device=dev)
    newton_any = False
    hist: list[Tensor] = []

    for _ in range(cfg.max_iter):
        xs, us, Js, mus = (v if idx is None else v[idx] for v in (x, u, J, mu))
        x0s, ths, Ps = (x0, theta, P) if idx is None else (x0[idx], theta[idx], _take(P, idx))
        los = his = None
        if boxed:
            los, his = (lower, upper) if idx is None else (lower[idx], upper[idx])
        b = us.shape[0]

        # 1. linearize / quadratize all b*T pairs at once (paper sections 4.4-4.5)
        F = linearize(dynamics, xs[:, :-1], us, ths)
        c, C, cT, CT = cost.quadratize(xs, us, Ps)
        if newton_any:
            nw = newton if idx is None else newton[idx]
            lam = costates(F, c, cT)
            Hf = dynamics.weighted_hessian(xs[:, :-1].reshape(b * T, -1), us.reshape(b * T, m),
                                           ths[:, None].expand(b, T, -1).reshape(b * T, -1),
                                           lam[:, 1:].reshape(b * T, -1))
            C = C + nw.to(dt)[:, None, None, None] * Hf.reshape(C.shape)

        # 2. Riccati pass with the box QP on Quu (Tassa et al. 2014)
        gains = lqr_backward(F, C, c, CT, cT, mu=mus,
                             lower=None if not boxed else los - us,
                             upper=None if not boxed else his - us,
                             boxqp_iters=cfg.boxqp_iters)

        # 3. line search: all step sizes rolled out through the true dynamics at once
        if cfg.batched_line_search:
            # Two batched stages: the two largest steps for everyone (near convergence the full
            # step is accepted), then the remaining step sizes only for the samples that accepted
            # neither. The choice equals one rollout of all step sizes (the largest acceptable),
            # at a quarter of the rollout work when compute, not overhead, dominates (large B).
            A1 = min(2, A)
            accepted, first, Xn, Un, Jn = _line_search(dynamics, cost, alphas[:A1], x0s, ths,
                                                       Ps, xs, us, Js, gains, los, his, eps,
                                                       cfg.armijo)
            if A1 < A and not bool(accepted.all()):
                r = torch.nonzero(~accepted)[:, 0]
                res = _line_search(dynamics, cost, alphas[A1:], x0s[r], ths[r], _take(Ps, r),
                                   xs[r], us[r], Js[r], _take_gains(gains, r),
                                   None if los is None else los[r],
                                   None if his is None else his[r], eps, cfg.armijo)
                accepted = accepted.index_copy(0, r, res[0])
                first = first.index_copy(0, r, res[1] + A1)
                Xn, Un, Jn = (v.index_copy(0, r, w) for v, w in zip((Xn, Un, Jn), res[2:],
                                                                    strict=True))
        else:  # ablation: one rollout per step size, until every sample has accepted one
            for j in range(A):
                res = _line_search(dynamics, cost, alphas[j : j + 1], x0s, ths, Ps, xs, us, Js,
                                   gains, los, his, eps, cfg.armijo)
                if j == 0:
                    accepted, first, Xn, Un, Jn = res
                    first = torch.zeros_like(first)
                else:
                    new = res[0] & ~accepted
                    first = torch.where(new, j, first)
                    Xn = torch.where(new[:, None, None], res[2], Xn)
                    Un = torch.where(new[:, None, None], res[3], Un)
                    Jn = torch.where(new, res[4], Jn)
                    accepted = accepted | res[0]
                if bool(accepted.all()):
                    break

        step = (Un - us).abs().amax((1, 2))
        # A small accepted step is not enough: a short line-search step along a long Newton
        # direction also moves little. Converged means the full iLQR step k is small too.
        newton_step = torch.maximum(step, gains.k.abs().amax((1, 2)))
        acc3 = accepted[:, None, None]
        xs_new = torch.where(acc3, Xn, xs)
        us_new = torch.where(acc3, Un, us)
        Js_new = torch.where(accepted, Jn, Js)
        mus_new = torch.where(accepted, torch.clamp(mus / cfg.mu_factor, min=cfg.mu_min),
                              mus * cfg.mu_factor)
        if cfg.tol > 0:
            conv = accepted & (newton_step <= cfg.tol * (1 + us_new.abs().amax((1, 2))))
        else:
            conv = torch.zeros_like(accepted)
        stalled = ~accepted & (mus_new > cfg.mu_max)

        if cfg.newton_tol > 0:
            small = accepted & (newton_step <= cfg.newton_tol *
                                (1 + us_new.abs().amax((1, 2))))
            newton = _put(newton, idx, (newton if idx is None else newton[idx]) | small)
        if cfg.record_history:
            full = torch.full((B,), math.nan, dtype=dt, device=dev)
            hist.append(torch.stack([_put(full, idx, torch.where(accepted, step, math.nan)),
                                     _put(full, idx, mus_new),
                                     _put(full, idx, torch.where(accepted, alphas[first],
                                                                 0.0)),
                                     _put(full, idx, Js_new)], -1))
        x, u = _put(x, idx, xs_new), _put(u, idx, us_new)
        J, mu = _put(J, idx, Js_new), _put(mu, idx, mus_new)
        ones = torch.ones(b, dtype=torch.long, device=dev)
        iterations = iterations.index_add(0, idx, ones) if idx is not None else iterations + 1
        converged = _put(converged, idx, conv)
        active = _put(active, idx, ~conv & ~stalled)
        # the one host synchronisation of the iteration
        act_host, newton_host = torch.stack([active, newton]).cpu()
        if not bool(act_host.any()):
            break
        newton_any = bool((newton_host & act_host).any())
        idx = None if bool(act_host.all()) else torch.nonzero(act_host)[:, 0].to(dev)

    free = torch.ones_like(u, dtype=torch.bool)
    if boxed:
        # clamped controls sit exactly on the bound; allow a few ulps
        above = torch.where(torch.isfinite(lower), u > lower + 4 * eps * (1 + lower.abs()), True)
        below = torch.where(torch.isfinite(upper), u < upper - 4 * eps * (1 + upper.abs()), True)
        free = above & below
    history = torch.stack(hist, 1).detach() if hist else None
    return Solution(x=x, u=u, cost=J, converged=converged, iterations=iterations,
                    free=free.detach(), history=history)
