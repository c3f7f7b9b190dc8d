"""Independent reference oracles for the solver's tests.

Nothing here uses the solver's internals (no Riccati pass, no box QP, no ``free`` mask, no
line search): the oracles only roll the model out and differentiate the plain objective.

- :func:`solve_box_lq_qp`: the box-constrained linear-quadratic problem, solved as one sparse QP
  by an outside solver (cvxpy + Clarabel, an interior-point method), then polished on its
  active set by an exact dense KKT solve (which is kept only if it is feasible and satisfies
  the KKT sign conditions; otherwise Clarabel's point is returned unchanged).
- :class:`LinearModel`: a user-defined :class:`dilqr_rl.Dynamics` ``x' = A x + B u + c``.
- :func:`verify_local_min`: first- and second-order sufficient conditions of a strict local
  minimum of ``J(u)`` over the box, from autograd on a plain rollout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

import dilqr_rl as dl

__all__ = ["LinearModel", "LocalMinReport", "QPSolution", "hessian_one", "lq_unconstrained_u",
           "objective", "reduced_hessian", "solve_box_lq_qp", "verify_local_min"]


# ---------------------------------------------------------------------------------------------
# Box-constrained LQ problem by an outside QP solver
# ---------------------------------------------------------------------------------------------
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
    import cvxpy as cp

    A, Bm, c, x0 = (np.asarray(v, dtype=np.float64) for v in (A, Bm, c, x0))
    n, m = Bm.shape
    wx, wu = _weights(wx, n), _weights(wu, m)
    if (wu <= 0).any():
        raise ValueError("control weights must be positive (strictly convex problem)")
    g = np.zeros(n + m) if goal is None else np.asarray(goal, dtype=np.float64)
    gx, gu = g[:n], g[n:]
    lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), (T, m))
    hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), (T, m))
    if (lo > hi).any():
        raise ValueError("lower > upper")

    key = tuple(np.ascontiguousarray(v).tobytes() for v in (A, Bm, c, lo, hi, wx, wu, g)) + \
        (T,)
    qp = _QP_CACHE.get(key)
    if qp is None:
        _QP_CACHE.clear()
        qp = _QP_CACHE[key] = _CompiledQP(A, Bm, c, T, lo, hi, wx, wu, gx, gu)
    qp.x0.value = x0
    # Tight tolerances first; on the badly scaled (strongly unstable) instances Clarabel can
    # fail numerically at 1e-12, so it retries looser (the polish below restores full accuracy
    # and is itself checked for feasibility and the KKT signs).
    status, used_tol = None, None
    for tl in (tol, 1e-10, 1e-8):
        try:
            qp.prob.solve(solver=cp.CLARABEL, canon_backend=cp.SCIPY_CANON_BACKEND,
                          tol_gap_abs=tl, tol_gap_rel=tl, tol_feas=tl,
                          tol_ktratio=min(1e-6, 100 * tl), max_iter=400)
            status = qp.prob.status
        except cp.error.SolverError as e:
            status = f"SolverError: {e}"
        if status == cp.OPTIMAL:
            used_tol = tl
            break
    if status != cp.OPTIMAL:
        raise RuntimeError(f"Clarabel did not solve the QP: status {status!r}")
    u_qp = np.clip(np.asarray(qp.u.value), lo, hi)  # interior-point iterates sit just inside
    x_qp = _roll(A, Bm, c, x0, u_qp)
    cost_qp = _lq_cost(x_qp, u_qp, wx, wu, gx, gu)
    if abs(cost_qp - qp.prob.value) > 1e-7 * (1 + abs(qp.prob.value)):
        raise RuntimeError(f"cost convention mismatch: {cost_qp} vs cvxpy's {qp.prob.value}")

    # Polish on Clarabel's active set: fix those controls at their bound, solve the equality-
    # constrained QP in the others exactly, keep it only if it is a KKT point.
    uf, lof, hif = u_qp.reshape(-1), lo.reshape(-1), hi.reshape(-1)
    span = np.maximum(1.0, np.abs(uf))
    at_lo = np.isfinite(lof) & (uf - lof <= 1e-7 * span)
    at_hi = np.isfinite(hif) & (hif - uf <= 1e-7 * span) & ~at_lo
    act = at_lo | at_hi
    u_out, polished = u_qp, False
    if polish:
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
        x_p = _roll(A, Bm, c, x0, up.reshape(T, m))
        cost_p = _lq_cost(x_p, up.reshape(T, m), wx, wu, gx, gu)
        if feas and signs and cost_p <= cost_qp + 1e-9 * (1 + abs(cost_qp)):
            u_out, polished = up.reshape(T, m), True
    x_out = _roll(A, Bm, c, x0, u_out)
    cost = _lq_cost(x_out, u_out, wx, wu, gx, gu)
    return QPSolution(cost=cost, u=u_out, x=x_out, active=act.reshape(T, m),
                      polished=polished, clarabel_cost=cost_qp, clarabel_tol=used_tol)


def _roll(A, Bm, c, x0, u):
    xs = [x0]
    for t in range(u.shape[0]):
        xs.append(A @ xs[-1] + Bm @ u[t] + c)
    return np.stack(xs)


# ---------------------------------------------------------------------------------------------
# A user-defined linear model
# ---------------------------------------------------------------------------------------------
class LinearModel(dl.Dynamics):
    """``x' = A x + Bm u + c``, a user model: ``forward`` is what a user writes; ``step`` is the
    same map with an explicit (possibly per-sample) parameter vector, batched directly instead
    of through the base class's ``vmap`` (2x faster solves; the tests check that both agree).
    Derivatives come from the generic autograd machinery either way."""

    def __init__(self, A, Bm, c):
        super().__init__()
        A, Bm, c = (torch.as_tensor(v, dtype=torch.float64) for v in (A, Bm, c))
        self.n_state, self.n_ctrl = Bm.shape
        self.A = nn.Parameter(A.clone())
        self.Bm = nn.Parameter(Bm.clone())
        self.c = nn.Parameter(c.clone())

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return x @ self.A.T + u @ self.Bm.T + self.c

    def step(self, x: Tensor, u: Tensor, theta: Tensor) -> Tensor:
        n, m = self.n_state, self.n_ctrl
        lead = theta.shape[:-1]
        A = theta[..., : n * n].reshape(*lead, n, n)
        Bm = theta[..., n * n : n * n + n * m].reshape(*lead, n, m)
        c = theta[..., n * n + n * m :]
        return (A @ x[..., None])[..., 0] + (Bm @ u[..., None])[..., 0] + c


# ---------------------------------------------------------------------------------------------
# Strict local minimum of the box-constrained problem over u
# ---------------------------------------------------------------------------------------------
def objective(ctrl: dl.DiLQR, x0: Tensor, u: Tensor) -> Tensor:
    """``J(u) (B,)``: roll ``ctrl.dynamics`` out from ``x0 (B, n)`` with ``u (B, T, m)`` and sum
    ``ctrl.cost`` (stage costs of ``x_0..x_{T-1}`` and the terminal cost of ``x_T``), with the
    module's own parameters. Differentiable in ``u``."""
    B = x0.shape[0]
    theta = ctrl.dynamics.theta().to(x0).expand(B, -1)
    P = {k: v.to(x0).expand(B, *v.shape) for k, v in ctrl.cost.params().items()}
    x = dl.rollout(ctrl.dynamics, x0, u, theta)
    return ctrl.cost.total(x, u, P)


def reduced_hessian(ctrl: dl.DiLQR, x0: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient ``(B, T*m)`` and dense Hessian ``(B, T*m, T*m)`` of ``J(u)`` per sample.

    The samples are independent, so ``sum_b J_b`` has a block-diagonal Hessian and row ``k``
    of every sample's Hessian is the gradient of ``sum_b g_b[k]``: ``T*m`` double-backward
    passes for the whole batch (the tests check this against
    ``torch.autograd.functional.hessian`` of one sample)."""
    B, T, m = u.shape
    with torch.enable_grad():
        uu = u.detach().clone().reshape(B, T * m).requires_grad_(True)
        J = objective(ctrl, x0.detach(), uu.reshape(B, T, m)).sum()
        (g,) = torch.autograd.grad(J, uu, create_graph=True)
        rows = []
        for k in range(T * m):
            (h,) = torch.autograd.grad(g[:, k].sum(), uu, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(uu) if h is None else h)
    H = torch.stack(rows, 1).detach()
    return g.detach(), 0.5 * (H + H.transpose(1, 2))


def hessian_one(ctrl: dl.DiLQR, x0: Tensor, u: Tensor) -> Tensor:
    """Dense Hessian ``(T*m, T*m)`` of one sample's ``J`` by ``torch.autograd.functional``
    (``x0 (n,)``, ``u (T, m)``): the plain reference for :func:`reduced_hessian`."""
    T, m = u.shape

    def J(v: Tensor) -> Tensor:
        return objective(ctrl, x0[None].detach(), v.reshape(1, T, m))[0]

    return torch.autograd.functional.hessian(J, u.detach().reshape(-1).clone())


@dataclass
class LocalMinReport:
    """Per sample ``(B,)``: ``ok = kkt & signs & pd``; ``kkt``: projected gradient below
    ``pg_tol``; ``signs``: every control on a bound has a multiplier of the right sign;
    ``pd``: the Hessian over the free controls is positive definite with margin; the numbers
    ``pg`` (projected gradient, gradient units), ``pg_tol``, ``gscale`` (the gradient's scale),
    ``pg_unit`` (the unit-step projected gradient ``|u - clamp(u - g)|_inf``, for information),
    ``eig_min`` / ``eig_max`` (of the free block; ``+inf`` / ``0`` when no control is free),
    ``n_active``; ``J`` the cost."""

    ok: Tensor
    kkt: Tensor
    signs: Tensor
    pd: Tensor
    pg: Tensor
    pg_tol: Tensor
    gscale: Tensor
    pg_unit: Tensor
    eig_min: Tensor
    eig_max: Tensor
    n_active: Tensor
    J: Tensor

    def describe(self, b: int) -> str:
        return (f"pg={self.pg[b]:.3g} (tol {self.pg_tol[b]:.2g}, gscale {self.gscale[b]:.3g}, "
                f"pg/gscale {self.pg[b] / max(float(self.gscale[b]), 1e-300):.2g}, "
                f"unit-step {self.pg_unit[b]:.3g}), "
                f"signs={bool(self.signs[b])}, "
                f"eig_min={self.eig_min[b]:.3g}, eig_max={self.eig_max[b]:.3g}, "
                f"active={int(self.n_active[b])}, J={self.J[b]:.10g}")


def verify_local_min(ctrl: dl.DiLQR, x0: Tensor, sol_or_u, *, rtol: float = 1e-6,
                     atol: float = 1e-12, eig_margin: float = 1e-12) -> LocalMinReport:
    """Check, per sample and without the solver's internals, that ``u`` is a strict local
    minimum of ``J(u)`` over the box ``ctrl.bounds``:

    (i) first order: the projected gradient is small, ``pg <= pg_tol``;
    (ii) at every control on a bound the multiplier has the right sign (``g >= -pg_tol`` on
         the lower bound, ``g <= pg_tol`` on the upper one: the gradient pushes outward);
    (iii) second order: the Hessian of ``J`` restricted to the free controls (those not on a
          bound) has ``eig_min > eig_margin * max|eig|``.

    ``J`` is a plain function of ``u`` (rollout of ``ctrl.dynamics``, sum of ``ctrl.cost``);
    its gradient and Hessian come from autograd (:func:`reduced_hessian`).

    Projected gradient, in gradient units: ``pg = |u - clamp(u - s g, lo, hi)|_inf / s`` for
    ``s -> 0``, i.e. ``|g_k|`` on a free control and only the inward-pulling (wrong-sign) part
    of ``g_k`` on a control at a bound. The unit-step form ``|u - clamp(u - g, lo, hi)|_inf``
    is also reported (``pg_unit``) but is not used to decide: it mixes the units of ``u`` and
    ``g`` and saturates at the box width, so on the badly scaled unstable problems (gradients
    ~1e5) a grossly non-KKT point (50x the optimal cost) measures ``pg_unit ~ 2``, the same as
    the correct answer of a differently scaled problem.

    Tolerance, ``pg_tol = rtol * gscale + atol + 32 eps eig_max (1 + max|u|)``: the gradient
    ``g = d(stage cost)/du + (df/du)^T lambda`` is a sum of two terms that cancel on the free
    controls at a stationary point; ``gscale`` is the larger of their inf-norms over the sample
    (the direct term by autograd with the states held fixed, the dynamics term as the rest), so
    ``pg / gscale`` is the relative imbalance of the optimality conditions, independent of the
    cost's units and of the problem's conditioning. (Hessian norm times the solver's step
    tolerance was tried first: the unstable linear problems have Hessian norms ~1e10 and that
    tolerance accepted anything.) Measured on the random LQ problems against the exact QP
    optimum: correctly converged samples and the polished QP optima sit at
    ``pg / gscale ~ 1e-11`` or below (rounding of a Newton fixed point), the solver's false
    convergences at ``0.03 .. 1`` (e.g. a control held at a bound against a gradient as large
    as the largest multiplier). ``rtol = 1e-6`` lies between, with over four decades to spare
    on each side; ``atol = 1e-12`` only covers ``g = 0`` exactly (a start at rest at the goal).
    The last term is the floating-point floor of ``g`` on badly conditioned problems (a
    change of ``u`` by one ulp moves ``g`` by up to ``eps |H| |u|``: ~4e-6 at ``|H| = 2e10``).
    A saddle or maximum with zero gradient passes (i) and is caught by (iii).

    A control is "on a bound" when it is within ``1e-9 (1 + |bound|)`` of it (the solver
    clamps, so its active controls sit exactly there).

    Eigenvalue margin: ``eigvalsh``'s error is ~``eps * eig_max`` and the autograd Hessian's
    rounding ~``N eps |H|`` (``N = T m <= 80`` here), so ``1e-12 * eig_max`` is ~100x above
    rounding; the honest test problems are conditioned at ``eig_min / eig_max >= 1e-11``
    (open-loop unstable linear systems with spectral radius up to ~1.7 at T = 20 reach 1e10).

    :param sol_or_u: a :class:`dilqr_rl.Solution` or controls ``(B, T, m)``
    """
    u = (sol_or_u.u if hasattr(sol_or_u, "u") else sol_or_u).detach()
    x0 = x0.detach().to(u)
    B, T, m = u.shape
    lo, hi = ctrl.bounds(B, u.dtype, u.device)
    if lo is None:
        lo = torch.full_like(u, -torch.inf)
        hi = torch.full_like(u, torch.inf)
    g, H = reduced_hessian(ctrl, x0, u)
    g = g.reshape(B, T, m)
    direct = _direct_gradient(ctrl, x0, u)
    gscale = torch.maximum(direct.abs().amax((1, 2)), (g - direct).abs().amax((1, 2)))
    on_lo = torch.isfinite(lo) & (u - lo <= 1e-9 * (1 + lo.abs()))
    on_hi = torch.isfinite(hi) & (hi - u <= 1e-9 * (1 + hi.abs()))
    # inward-pulling part of g at a bound (a descent direction that stays feasible), all of
    # it on a free control
    wrong = torch.where(on_lo, (-g).clamp(min=0), torch.where(on_hi, g.clamp(min=0), 0.0))
    proj = torch.where(on_lo | on_hi, wrong, g.abs())
    pg = proj.amax((1, 2))
    pg_unit = (u - torch.minimum(torch.maximum(u - g, lo), hi)).abs().amax((1, 2))
    free = (~on_lo & ~on_hi).reshape(B, T * m)
    eig_min = torch.full((B,), torch.inf, dtype=u.dtype)
    eig_max = torch.zeros(B, dtype=u.dtype)
    for b in range(B):
        f = free[b]
        if f.any():
            ev = torch.linalg.eigvalsh(H[b][f][:, f])
            eig_min[b], eig_max[b] = ev[0], ev.abs().max()
    # the floating-point floor: one ulp of u moves g by up to ~eps |H| |u| (measured: a 1-ulp
    # random perturbation of a converged u moved pg by 0.3-0.8 of this on the rho = 1.7 draw,
    # whose Hessian reaches 2e10); 32x that is still far below the false convergences
    # (pg / gscale >= 0.03)
    h_norm = torch.linalg.eigvalsh(H).abs().amax(-1)  # over all controls, free or not
    floor = 32 * torch.finfo(u.dtype).eps * h_norm * (1 + u.abs().amax((1, 2)))
    pg_tol = rtol * gscale + atol + floor
    kkt = pg <= pg_tol
    signs = (wrong <= pg_tol[:, None, None]).all(2).all(1)
    pd = eig_min > eig_margin * eig_max
    return LocalMinReport(ok=kkt & signs & pd, kkt=kkt, signs=signs, pd=pd, pg=pg,
                          pg_tol=pg_tol, gscale=gscale, pg_unit=pg_unit, eig_min=eig_min,
                          eig_max=eig_max, n_active=(~free).sum(-1),
                          J=objective(ctrl, x0, u).detach())


def _direct_gradient(ctrl: dl.DiLQR, x0: Tensor, u: Tensor) -> Tensor:
    """``d J / d u`` with the states held fixed (the stage costs' own control gradient)."""
    B = x0.shape[0]
    theta = ctrl.dynamics.theta().to(x0).expand(B, -1)
    P = {k: v.to(x0).expand(B, *v.shape) for k, v in ctrl.cost.params().items()}
    with torch.no_grad():
        x = dl.rollout(ctrl.dynamics, x0, u, theta)
    with torch.enable_grad():
        uu = u.detach().clone().requires_grad_(True)
        (d,) = torch.autograd.grad(ctrl.cost.total(x, uu, P).sum(), uu, allow_unused=True)
    return torch.zeros_like(u) if d is None else d
