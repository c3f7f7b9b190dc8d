"""The solver's types: :class:`ILQRConfig` (settings), :class:`Solution` (result),
:class:`NonFiniteError`, and the working samples' data of one iteration (``_Problem``).

The solver itself is :func:`dilqr_rl.ilqr.ilqr_solve`; these names are re-exported there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor

from .derivatives import take_theta

__all__ = ["ILQRConfig", "NonFiniteError", "Solution"]


class NonFiniteError(ValueError):
    """A NaN or inf appeared in the solve or its gradient although the inputs were finite
    (the model or the cost returns NaN/inf there): raised with what and where, never passed
    on as a number, and distinct from \"did not converge\".

    :ivar samples: the batch indices of the samples where it appeared, when the solver knows
        them (``None`` otherwise): a caller may set those samples apart and solve the rest
    """

    def __init__(self, message: str, samples: list[int] | None = None):
        super().__init__(message)
        self.samples = samples


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
    :param on_nonfinite: what to do when a sample's initial rollout (or its cost) or one of
        its Newton steps is not finite (the model or the cost returns NaN/inf there):
        ``"raise"`` (default) raises :class:`NonFiniteError` for the batch; ``"isolate"``
        sets such samples apart, solves the others to the end and reports the set-apart ones
        in ``Solution.failed``. A set-apart sample keeps its last finite iterate (its initial
        controls, with a non-finite ``x``, when the first rollout already failed), is not
        converged and gets no gradient; in the backward, a sample whose own implicit
        gradient is not finite (converged or not) is left out of it, with a warning. For
        callers that need an answer for every healthy sample whatever happens to the others
        (a receding-horizon loop, an RL rollout or update under a wrong model). With
        ``grad="unroll"`` the layer then records the other samples again on their own (a
        set-apart sample's NaN would reach the shared gradients).
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
    on_nonfinite: Literal["raise", "isolate"] = "raise"

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
        if self.on_nonfinite not in ("raise", "isolate"):
            raise ValueError("ILQRConfig.on_nonfinite must be 'raise' or 'isolate', got "
                             f"{self.on_nonfinite!r}")


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
    :ivar failed: ``(B,)`` bool, the samples set apart because their initial rollout or a
        Newton step was not finite (``ILQRConfig.on_nonfinite="isolate"``; all False
        otherwise). Not converged, no gradient; ``kkt`` and ``pivot`` are NaN there
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
    failed: Tensor | None = None


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


def _step_tol(tol: float, dtype: torch.dtype) -> float:
    """The relative step tolerance, floored at what the dtype resolves (64 eps: 7.6e-6 in
    float32, where 1e-7 is below rounding and would never be reached); 0 stays 0."""
    return 0.0 if tol == 0 else max(tol, 64 * torch.finfo(dtype).eps)
