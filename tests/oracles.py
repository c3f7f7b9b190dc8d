"""Independent reference oracles for the solver's tests.

Nothing here uses the solver's internals (no Riccati pass, no box QP, no ``free`` mask, no
line search): the oracles only roll the model out and differentiate the plain objective.

- :func:`solve_box_lq_qp` (tests/oracle_qp.py): the box-constrained linear-quadratic problem,
  solved as one sparse QP by an outside solver (cvxpy + Clarabel, an interior-point method),
  then polished on its active set by an exact dense KKT solve (which is kept only if it is
  feasible and satisfies the KKT sign conditions; otherwise Clarabel's point is returned
  unchanged).
- :class:`LinearModel`: a user-defined :class:`dilqr_rl.Dynamics` ``x' = A x + B u + c``.
- :func:`verify_local_min`: first- and second-order sufficient conditions of a strict local
  minimum of ``J(u)`` over the box, from autograd on a plain rollout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

import dilqr_rl as dl

from .oracle_qp import QPSolution, lq_unconstrained_u, solve_box_lq_qp

__all__ = ["LinearModel", "LocalMinReport", "QPSolution", "hessian_one", "lq_unconstrained_u",
           "objective", "reduced_hessian", "solve_box_lq_qp", "verify_local_min"]


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
    pg = torch.where(on_lo | on_hi, wrong, g.abs()).amax((1, 2))
    pg_unit = (u - torch.minimum(torch.maximum(u - g, lo), hi)).abs().amax((1, 2))
    free = (~on_lo & ~on_hi).reshape(B, T * m)
    eig_min, eig_max = _free_eigenvalues(H, free)
    pg_tol = rtol * gscale + atol + _rounding_floor(H, u)
    kkt = pg <= pg_tol
    signs = (wrong <= pg_tol[:, None, None]).all(2).all(1)
    pd = eig_min > eig_margin * eig_max
    return LocalMinReport(ok=kkt & signs & pd, kkt=kkt, signs=signs, pd=pd, pg=pg,
                          pg_tol=pg_tol, gscale=gscale, pg_unit=pg_unit, eig_min=eig_min,
                          eig_max=eig_max, n_active=(~free).sum(-1),
                          J=objective(ctrl, x0, u).detach())


def _free_eigenvalues(H: Tensor, free: Tensor) -> tuple[Tensor, Tensor]:
    """Smallest and largest-magnitude eigenvalue ``(B,)`` of each sample's Hessian ``H (B, N,
    N)`` restricted to its free controls ``free (B, N)``; ``+inf`` / ``0`` when none is free."""
    B = H.shape[0]
    eig_min = torch.full((B,), torch.inf, dtype=H.dtype)
    eig_max = torch.zeros(B, dtype=H.dtype)
    for b in range(B):
        f = free[b]
        if f.any():
            ev = torch.linalg.eigvalsh(H[b][f][:, f])
            eig_min[b], eig_max[b] = ev[0], ev.abs().max()
    return eig_min, eig_max


def _rounding_floor(H: Tensor, u: Tensor) -> Tensor:
    """The floating-point floor of the gradient ``(B,)``: one ulp of ``u`` moves ``g`` by up
    to ``~eps |H| |u|`` (measured: a 1-ulp random perturbation of a converged ``u`` moved
    ``pg`` by 0.3-0.8 of this on the rho = 1.7 draw, whose Hessian reaches 2e10); 32x that is
    still far below the false convergences (``pg / gscale >= 0.03``)."""
    h_norm = torch.linalg.eigvalsh(H).abs().amax(-1)  # over all controls, free or not
    return 32 * torch.finfo(u.dtype).eps * h_norm * (1 + u.abs().amax((1, 2)))


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
