"""The box-constrained linear-quadratic problem solved by an outside QP solver (an oracle of
tests/oracles.py, which re-exports it).

:func:`solve_box_lq_qp` solves it as one sparse QP by cvxpy + Clarabel (an interior-point
method), then polishes the result on its active set by an exact dense KKT solve (kept only if
it is feasible and satisfies the KKT sign conditions; otherwise Clarabel's point is returned
unchanged). Nothing here uses the solver's internals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["QPSolution", "lq_unconstrained_u", "solve_box_lq_qp"]


@dataclass
class QPSolution:
    """``cost``: optimal value; ``u (T, m)``; ``x (T+1, n)``; ``active (T, m)`` bool (on a
    bound); ``polished``: the exact active-set solve was accepted; ``clarabel_cost``: the
    objective at Clarabel's own point (before polishing); ``clarabel_tol``: the tolerance
    Clarabel reported optimal at."""

    cost: float
    u: np.ndarray
    x: np.ndarray
    active: np.ndarray
    polished: bool
    clarabel_cost: float
    clarabel_tol: float

    def __iter__(self):  # ``cost, u, x = solve_box_lq_qp(...)``
        return iter((self.cost, self.u, self.x))


def _weights(w, k: int) -> np.ndarray:
    w = np.broadcast_to(np.asarray(w, dtype=np.float64), (k,)).copy()
    if (w < 0).any():
        raise ValueError("weights must be non-negative")
    return w


def _lq_cost(x: np.ndarray, u: np.ndarray, wx, wu, gx, gu) -> float:
    """``sum_{t<T} 1/2 wx |x_t - gx|^2 + 1/2 wu |u_t - gu|^2 + 1/2 wx |x_T - gx|^2``, i.e.
    ``dl.QuadraticCost.tracking(concat(wx, wu), concat(gx, gu))`` with the default terminal
    weights ``weights[:n]``."""
    return float(0.5 * (wx * (x - gx) ** 2).sum() + 0.5 * (wu * (u - gu) ** 2).sum())


def _condensed(A, Bm, c, x0, T, with_S: bool = True):
    """``x_{1..T} = S0 + S u`` with ``u`` flattened time-major: ``S0 (T*n,)`` (the free
    response from ``x0``) and ``S (T*n, T*m)`` (``None`` unless ``with_S``)."""
    n, m = Bm.shape
    S = np.zeros((T * n, T * m)) if with_S else None
    S0 = np.zeros(T * n)
    xt = x0.copy()
    for t in range(T):
        xt = A @ xt + c
        S0[t * n:(t + 1) * n] = xt
        if with_S:
            for s in range(t + 1):
                # d x_{t+1} / d u_s = A^(t-s) Bm
                blk = Bm if s == t else A @ S[(t - 1) * n:t * n, s * m:(s + 1) * m]
                S[t * n:(t + 1) * n, s * m:(s + 1) * m] = blk
    return S0, S


def lq_unconstrained_u(A, Bm, c, x0s, T: int, wx, wu, goal=None) -> np.ndarray:
    """The unconstrained optimum ``u (B, T, m)`` of the same LQ problem for starts
    ``x0s (B, n)``, by the exact condensed solve (used to size tight bounds)."""
    A, Bm, c, x0s = (np.asarray(v, dtype=np.float64) for v in (A, Bm, c, x0s))
    n, m = Bm.shape
    wx, wu = _weights(wx, n), _weights(wu, m)
    g = np.zeros(n + m) if goal is None else np.asarray(goal, dtype=np.float64)
    _, S = _condensed(A, Bm, c, np.zeros(n), T)
    Wx = np.tile(wx, T)
    H = S.T @ (Wx[:, None] * S) + np.diag(np.tile(wu, T))
    q = np.stack([S.T @ (Wx * (_condensed(A, Bm, c, x0, T, with_S=False)[0] -
                                np.tile(g[:n], T))) for x0 in x0s])
    q = q - np.tile(wu, T) * np.tile(g[n:], T)
    return -np.linalg.solve(H, q.T).T.reshape(len(x0s), T, m)


class _CompiledQP:
    """The cvxpy problem of one box-LQ instance with ``x0`` as a Parameter (compiled once,
    re-solved per start), and the condensed ``J(u) = 1/2 u^T H u + q(x0)^T u + const`` used by
    the polish."""

    def __init__(self, A, Bm, c, T, lo, hi, wx, wu, gx, gu):
        import cvxpy as cp

        n, m = Bm.shape
        self.A, self.Bm, self.c, self.T = A, Bm, c, T
        self.x0 = cp.Parameter(n)
        self.x = cp.Variable((T + 1, n))
        self.u = cp.Variable((T, m))
        x, u = self.x, self.u
        cons = [x[0] == self.x0, x[1:] == x[:-1] @ A.T + u @ Bm.T + np.tile(c, (T, 1))]
        fin_lo, fin_hi = np.isfinite(lo), np.isfinite(hi)
        if fin_lo.any():
            cons.append(u[fin_lo] >= lo[fin_lo])
        if fin_hi.any():
            cons.append(u[fin_hi] <= hi[fin_hi])
        sx = np.sqrt(np.tile(wx, (T + 1, 1)))
        su = np.sqrt(np.tile(wu, (T, 1)))
        obj = 0.5 * cp.sum_squares(cp.multiply(sx, x - gx)) + \
            0.5 * cp.sum_squares(cp.multiply(su, u - gu))
        self.prob = cp.Problem(cp.Minimize(obj), cons)
        _, S = _condensed(A, Bm, c, np.zeros(n), T)
        self.S, self.Wx = S, np.tile(wx, T)
        self.H = S.T @ (self.Wx[:, None] * S) + np.diag(np.tile(wu, T))
        self.q_const = -np.tile(wu, T) * np.tile(gu, T)
        self.gx_t = np.tile(gx, T)

    def q(self, x0):
        S0, _ = _condensed(self.A, self.Bm, self.c, x0, self.T, with_S=False)
        return self.S.T @ (self.Wx * (S0 - self.gx_t)) + self.q_const


_QP_CACHE: dict = {}


def solve_box_lq_qp(A, Bm, c, x0, T: int, lower, upper, wx, wu, goal=None, *,
                    tol: float = 1e-12, polish: bool = True) -> QPSolution:
    """Solve, for one sample (numpy float64),

        min  sum_{t<T} 1/2 sum_i wx_i (x_t,i - g_i)^2 + 1/2 sum_j wu_j (u_t,j - g_n+j)^2
             + 1/2 sum_i wx_i (x_T,i - g_i)^2
        s.t. x_0 = x0,  x_{t+1} = A x_t + Bm u_t + c,  lower <= u_t <= upper,

    which is exactly the problem ``dl.QuadraticCost.tracking(concat(wx, wu), goal,
    n_state=n)`` (default terminal weights) poses for the linear model (checked against
    ``cost.total`` in the tests). The cvxpy problem is compiled once per problem data and
    re-solved for each ``x0`` (consecutive calls with the same data reuse it).

    :param A: ``(n, n)``; :param Bm: ``(n, m)``; :param c: ``(n,)``; :param x0: ``(n,)``
    :param lower: float, ``(m,)`` or ``(T, m)``; :param upper: as ``lower``
    :param wx: float or ``(n,)``; :param wu: float or ``(m,)`` (must be > 0)
    :param goal: ``(n+m,)`` or ``None`` (zero)
    :param tol: Clarabel's gap / feasibility tolerances (retried at 1e-10, then 1e-8, if it
        fails numerically)
    :param polish: refine on Clarabel's active set by an exact KKT solve (kept only if it is
        feasible, satisfies the multiplier signs and does not increase the cost)
    :return: :class:`QPSolution` (unpacks as ``cost, u, x``)
    :raises RuntimeError: if Clarabel does not report an optimal solution
    """
    A, Bm, c, x0 = (np.asarray(v, dtype=np.float64) for v in (A, Bm, c, x0))
    lo, hi, wx, wu, g = _problem_data(Bm, T, lower, upper, wx, wu, goal)
    gx, gu = g[:Bm.shape[0]], g[Bm.shape[0]:]
    qp = _compiled(A, Bm, c, T, lo, hi, wx, wu, g)
    qp.x0.value = x0
    used_tol = _clarabel(qp, tol)
    u_qp = np.clip(np.asarray(qp.u.value), lo, hi)  # interior-point iterates sit just inside
    x_qp = _roll(A, Bm, c, x0, u_qp)
    cost_qp = _lq_cost(x_qp, u_qp, wx, wu, gx, gu)
    if abs(cost_qp - qp.prob.value) > 1e-7 * (1 + abs(qp.prob.value)):
        raise RuntimeError(f"cost convention mismatch: {cost_qp} vs cvxpy's {qp.prob.value}")
    at_lo, at_hi = _on_bounds(u_qp, lo, hi)
    u_pol = _polish(qp, x0, u_qp, cost_qp, lo, hi, at_lo, at_hi, wx, wu, gx, gu) if polish \
        else None
    u_out = u_qp if u_pol is None else u_pol
    x_out = _roll(A, Bm, c, x0, u_out)
    cost = _lq_cost(x_out, u_out, wx, wu, gx, gu)
    return QPSolution(cost=cost, u=u_out, x=x_out, active=(at_lo | at_hi).reshape(u_qp.shape),
                      polished=u_pol is not None, clarabel_cost=cost_qp,
                      clarabel_tol=used_tol)


def _problem_data(Bm, T: int, lower, upper, wx, wu, goal):
    """The checked problem data: bounds ``lo``, ``hi`` ``(T, m)``, weights ``wx (n,)``,
    ``wu (m,)`` (``> 0``), goal ``g (n+m,)``."""
    n, m = Bm.shape
    wx, wu = _weights(wx, n), _weights(wu, m)
    if (wu <= 0).any():
        raise ValueError("control weights must be positive (strictly convex problem)")
    g = np.zeros(n + m) if goal is None else np.asarray(goal, dtype=np.float64)
    lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), (T, m))
    hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), (T, m))
    if (lo > hi).any():
        raise ValueError("lower > upper")
    return lo, hi, wx, wu, g


def _compiled(A, Bm, c, T: int, lo, hi, wx, wu, g) -> _CompiledQP:
    """The compiled problem of this data (the last one is cached: consecutive calls with the
    same data re-solve it for another ``x0``)."""
    key = tuple(np.ascontiguousarray(v).tobytes() for v in (A, Bm, c, lo, hi, wx, wu, g)) + \
        (T,)
    qp = _QP_CACHE.get(key)
    if qp is None:
        n = Bm.shape[0]
        _QP_CACHE.clear()
        qp = _QP_CACHE[key] = _CompiledQP(A, Bm, c, T, lo, hi, wx, wu, g[:n], g[n:])
    return qp


def _clarabel(qp: _CompiledQP, tol: float) -> float:
    """Solve ``qp`` (its ``x0`` set) by Clarabel; :return: the tolerance it solved at.

    Tight tolerances first; on the badly scaled (strongly unstable) instances Clarabel can
    fail numerically at 1e-12, so it retries looser (the polish restores full accuracy and is
    itself checked for feasibility and the KKT signs)."""
    import cvxpy as cp

    status = None
    for tl in (tol, 1e-10, 1e-8):
        try:
            qp.prob.solve(solver=cp.CLARABEL, canon_backend=cp.SCIPY_CANON_BACKEND,
                          tol_gap_abs=tl, tol_gap_rel=tl, tol_feas=tl,
                          tol_ktratio=min(1e-6, 100 * tl), max_iter=400)
            status = qp.prob.status
        except cp.error.SolverError as e:
            status = f"SolverError: {e}"
        if status == cp.OPTIMAL:
            return tl
    raise RuntimeError(f"Clarabel did not solve the QP: status {status!r}")


def _on_bounds(u, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``(T*m,)`` masks of the controls within ``1e-7 max(1, |u|)`` of their lower / upper
    bound (Clarabel's active set; a control at both counts as at the lower one)."""
    uf, lof, hif = u.reshape(-1), lo.reshape(-1), hi.reshape(-1)
    span = np.maximum(1.0, np.abs(uf))
    at_lo = np.isfinite(lof) & (uf - lof <= 1e-7 * span)
    at_hi = np.isfinite(hif) & (hif - uf <= 1e-7 * span) & ~at_lo
    return at_lo, at_hi


def _polish(qp: _CompiledQP, x0, u_qp, cost_qp: float, lo, hi, at_lo, at_hi, wx, wu, gx, gu):
    """Polish on Clarabel's active set: fix those controls at their bound, solve the equality-
    constrained QP in the others exactly; :return: its ``u (T, m)`` if it is a KKT point
    (feasible, multiplier signs right) no costlier than Clarabel's, else ``None``."""
    T, m = u_qp.shape
    uf, lof, hif = u_qp.reshape(-1), lo.reshape(-1), hi.reshape(-1)
    act = at_lo | at_hi
    H, q = qp.H, qp.q(x0)
    up = np.where(at_lo, lof, np.where(at_hi, hif, uf))
    fr = ~act
    if fr.any():
        rhs = -(q[fr] + H[np.ix_(fr, act)] @ up[act])
        up[fr] = np.linalg.solve(H[np.ix_(fr, fr)], rhs)
    grad = H @ up + q
    gs = 1e-9 * (1 + np.abs(grad).max())
    feas = bool((up[fr] >= lof[fr] - 1e-12).all() and (up[fr] <= hif[fr] + 1e-12).all())
    signs = bool((grad[at_lo] >= -gs).all() and (grad[at_hi] <= gs).all())
    up = np.clip(up, lof, hif)
    x_p = _roll(qp.A, qp.Bm, qp.c, x0, up.reshape(T, m))
    cost_p = _lq_cost(x_p, up.reshape(T, m), wx, wu, gx, gu)
    if feas and signs and cost_p <= cost_qp + 1e-9 * (1 + abs(cost_qp)):
        return up.reshape(T, m)
    return None


def _roll(A, Bm, c, x0, u):
    xs = [x0]
    for t in range(u.shape[0]):
        xs.append(A @ xs[-1] + Bm @ u[t] + c)
    return np.stack(xs)
