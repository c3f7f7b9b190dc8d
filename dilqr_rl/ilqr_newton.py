"""Steps 1-3 of an iteration of :func:`dilqr_rl.ilqr.ilqr_solve`: the derivatives, the
projected Newton step, and the certification of convergence.

A sample is certified (a verified strict local minimum, docs/solver.md) when its Newton step
with the exact Lagrangian Hessian and negligible regularization is below ``tol`` and the
reduced Hessian on its free controls is positive definite. The same pass at the returned
point gives the diagnostics (``kkt``, ``pivot``) of the samples that did not converge.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cost import Cost
from .derivatives import derivatives, lagrangian_hessian, projected_gradient
from .ilqr_types import ILQRConfig, _Problem, _step_tol
from .lqr import LQRGains, costates
from .models import Dynamics
from .qp import LQModel

__all__: list[str] = []

#: ``None``: :func:`use_closed_loop` decides; ``True`` / ``False`` force it (tests, benchmarks)
CLOSED_LOOP: bool | None = None
#: from this horizon on the solver uses the closed loop's gradients (docs/solver.md, "Long
#: horizons"): at T = 400 through the pendulum's upright hold the open-loop costates were
#: 1.5e7 at the MPC start and 4e26 two iterations later, against value-function gradients
#: of 25 (measured); at T = 200 from u = 0 they were 6e2
CLOSED_LOOP_MIN_T = 256


def use_closed_loop(T: int) -> bool:
    """Whether the solver's gradients, held set and multipliers come from the closed loop
    (value functions) instead of the open-loop costate recursion."""
    return (T >= CLOSED_LOOP_MIN_T) if CLOSED_LOOP is None else CLOSED_LOOP


def _newton_step(dynamics: Dynamics, cost: Cost, pr: _Problem, x: Tensor, u: Tensor,
                 exact: Tensor, any_exact: bool, mu: Tensor | None
                 ) -> tuple[LQRGains, LQModel]:
    """Derivatives at ``(x, u)`` and the projected Riccati pass (steps 1-2 of the module
    docstring). ``exact (b,)``: samples that use the exact Lagrangian Hessian.

    :return: the gains at ``u`` and the LQ model of the problem around ``(x, u)``"""
    d = derivatives(dynamics, cost, x, u, pr.theta, pr.P)
    C = d.C
    lo, hi = (None, None) if pr.lower is None else (pr.lower - u, pr.upper - u)
    closed = use_closed_loop(u.shape[1])
    if any_exact:
        if closed:  # the multipliers of the Gauss-Newton step: lam = v (value functions)
            lam = LQModel(d.F, C, d.c, d.CT, d.cT, mu, lo, hi, True).newton(
                torch.zeros_like(u), torch.zeros_like(x)).lam
        else:
            lam = costates(d.F, d.c, d.cT)
        Hf = lagrangian_hessian(dynamics, x[:, :-1], u, pr.theta, lam[:, 1:])
        C = C + exact.to(C.dtype)[:, None, None, None] * Hf
    model = LQModel(d.F, C, d.c, d.CT, d.cT, mu, lo, hi, closed)
    box = pr.lower is not None and u.shape[-1] == 1
    return model.newton(torch.zeros_like(u), torch.zeros_like(x), box=box), model



def _certify(gains: LQRGains, u: Tensor, mu: Tensor, newton: Tensor, cfg: ILQRConfig
             ) -> tuple[Tensor, Tensor]:
    """Step 3, per sample ``(b,)``: ``small``, the Newton step moves no control by more than
    ``tol * (1 + max|u|)``; ``cert``, certified: exact Hessian (``newton``), negligible
    regularization, positive definite reduced Hessian on the free controls and a small
    Newton step (docs/solver.md). ``tol = 0`` certifies nothing."""
    small = gains.k.abs().amax((1, 2)) <= _step_tol(cfg.tol, u.dtype) * (
        1 + u.abs().amax((1, 2)))
    cert = newton & small & gains.ok & (gains.pivot > 0) & (mu <= 1e-3 * gains.pivot)
    cert = cert & (cfg.tol > 0)
    if gains.boxed is not None:  # (m = 1) a step clamped per step: not the projected one
        cert = cert & ~gains.boxed
    return small, cert


def _diagnose(dynamics: Dynamics, cost: Cost, pr: _Problem, x: Tensor, u: Tensor
              ) -> tuple[Tensor, Tensor]:
    """The first-order residual ``kkt (b,)`` and the smallest exact reduced-Hessian pivot
    ``pivot (b,)`` at ``(x, u)`` (see :class:`dilqr_rl.Solution`)."""
    g, _ = _newton_step(dynamics, cost, pr, x, u, torch.ones(u.shape[0], dtype=torch.bool,
                                                            device=u.device), True, None)
    return projected_gradient(u, g.gu, pr.lower, pr.upper), g.pivot
