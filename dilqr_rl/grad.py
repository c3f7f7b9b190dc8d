"""Gradients of the converged iLQR solution: ``"implicit"`` (exact) and ``"last_lqr"`` (DiffMPC).

Derivation (docs/gradient.md; the paper's eq. 8-12). At the fixed point
``w* = (z*, lam*)`` the optimality (KKT) conditions hold:

    R(w, theta) = [ grad_z c_t(z_t; phi) + F_t^T lam_{t+1} - [lam_t; 0]   (stationarity, t < T)
                    grad_x c_T(x_T; phi) - lam_T                          (terminal)
                    f(z_t; theta) - x_{t+1}                               (dynamics)
                    x0 - x_0 ]                                            (initial state)
                 = 0,

with controls on a bound replaced by ``u_i - bound = 0``. Any Newton-type iLQR map has this
fixed point, and the terms with the derivative of its step matrix vanish there, so by the
implicit-function theorem ``dw/dtheta = -K^-1 dR/dtheta``, where ``K = dR/dw`` is the KKT matrix
of an LQR with the *exact* Lagrangian Hessian

    C~_t = hess c_t + sum_i lam_{t+1,i} hess f_i(z_t)        (the term iLQR drops).

For an incoming gradient ``g = dL/dw`` (``dL/dx``, ``dL/du``), ``K [dz; nu] = [-g; 0]`` is the
KKT system of the LQR ``min 1/2 dz^T C~ dz + g^T dz, dx_{t+1} = F_t dz_t, dx_0 = 0`` with the
bound-active controls held at zero, so one Riccati pass (the forward's own code) gives
``(dz, nu)``, and ``dL/dtheta = [dz; nu]^T dR/dtheta``: one autograd VJP of ``R`` at ``w*``. The
cost is one LQR solve plus one linearization, whatever the number of iLQR iterations.

``"last_lqr"`` (DiffMPC, Amos et al. 2018) differentiates the last LQR with its linearization
held constant: the same computation with ``hess c`` in place of ``C~``. At the fixed point the
direct dependence of that LQR's ``(F, f, C, c)`` on ``theta`` gives exactly the same
``dR/dtheta`` (the ``- F z_bar`` of the affine term cancels ``F z``), so only the Hessian differs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .cost import Cost
from .derivatives import derivatives, lagrangian_hessian, stage_params
from .ilqr import ILQRConfig, NonFiniteError, Solution, ilqr_solve
from .ilqr_newton import use_closed_loop
from .lqr import costates, lqr_solve
from .lqr_scan import riccati_pass
from .models import Dynamics
from .scan import lqr_solve_scan

__all__ = ["fixed_point_vjp", "solve_implicit", "GRAD_MODES"]


GRAD_MODES = ("implicit", "last_lqr", "unroll")


def use_scan(B: int, T: int, n: int, device: torch.device) -> bool:
    """Whether the parallel-in-time LQR (:func:`dilqr_rl.scan.lqr_solve_scan`) beats the
    sequential pass, from benchmarks/long_horizon.py on a 2-core CPU, one thread (crossover
    T* ~ 10-20 at B = 1, n = 3-5; ~30-50 at B = 32, n = 3; none up to T = 5000 at B = 32,
    n = 5). The same rule is used on other devices until measured there."""
    work = B * n * n
    return (work <= 25 and T >= 20) or (work <= 300 and T >= 50)


def _adjoint_lqr(F, H, gz, CT, gT, x0, free):
    """The adjoint LQR of the implicit gradient (fixed active set): by the associative scan
    where it is faster (:func:`use_scan`), else sequentially. The scan also keeps the
    multipliers exact over long horizons (``lam = S x + s`` instead of a backward recursion
    through an unstable open loop); a scan that cannot run (a singular ``C_uu``) or returns a
    non-finite value falls back to the sequential pass."""
    B, T, n = F.shape[0], F.shape[1], F.shape[2]
    if use_scan(B, T, n, F.device):
        try:
            out = lqr_solve_scan(F, H, gz, CT, gT, x0, free=free)
        except (ValueError, RuntimeError):
            out = None
        if out is not None and all(bool(torch.isfinite(v).all()) for v in out):
            return out
    return lqr_solve(F, H, gz, CT, gT, x0, free=free)


def _multipliers(d, free: Tensor) -> Tensor:
    """The costates ``lam (B, T+1, n)`` at the fixed point: by the open-loop recursion, or on
    long horizons (:func:`dilqr_rl.ilqr_newton.use_closed_loop`) as the value functions'
    gradients of the Riccati pass with the held set ``free``: equal at a fixed point, and the
    latter a recursion through the stable closed loop instead of the (unstable) open loop
    (docs/solver.md, "Long horizons")."""
    if not use_closed_loop(d.F.shape[1]):
        return costates(d.F, d.c, d.cT)
    return riccati_pass(d.F, d.C, d.c, d.CT, d.cT, free=free, closed_loop=True).lam


def fixed_point_vjp(dynamics: Dynamics, cost: Cost, x0: Tensor, theta: Tensor,
                    P: dict[str, Tensor], x: Tensor, u: Tensor, free: Tensor,
                    gx: Tensor, gu: Tensor, exact: bool = True
                    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """``dL/d(x0, theta, phi)`` of the converged solution for incoming ``dL/dx``, ``dL/du``.

    :param x0: ``(B, n)``; :param theta: ``(p,)`` shared or ``(B, p)``
    :param P: cost parameters ``(B, ...)``
    :param x: ``(B, T+1, n)``, :param u: ``(B, T, m)``: the fixed point
    :param free: ``(B, T, m)`` bool, controls not on a bound
    :param gx: ``(B, T+1, n)``; :param gu: ``(B, T, m)``
    :param exact: ``True``: exact Lagrangian Hessian (DiLQR); ``False``: DiffMPC's
    :return: gradients for ``x0 (B, n)``, ``theta`` (its shape), ``P`` (same shapes)
    """
    x, u = x.detach(), u.detach()
    x0, theta = x0.detach(), theta.detach()
    P = {k: v.detach() for k, v in P.items()}
    B, T, m = u.shape
    n = x.shape[-1]
    with torch.no_grad():
        d = derivatives(dynamics, cost, x, u, theta, P)
        lam = _multipliers(d, free)
        H = d.C + lagrangian_hessian(dynamics, x[:, :-1], u, theta, lam[:, 1:]) if exact \
            else d.C
        gz = torch.cat([gx[:, :-1], gu], -1)
        dx, du, dlam = _adjoint_lqr(d.F, H, gz, d.CT, gx[:, -1], torch.zeros_like(x0), free)
    # one VJP of the KKT residual, vector (dz, dlam); z*, lam* are constants here
    with torch.enable_grad():
        x0r = x0.clone().requires_grad_(True)
        thr = theta.clone().requires_grad_(True)
        Pr = {k: v.clone().requires_grad_(True) for k, v in P.items()}
        z = torch.cat([x[:, :-1], u], -1).requires_grad_(True)
        xT = x[:, -1].clone().requires_grad_(True)
        dz = torch.cat([dx[:, :-1], du], -1)
        stage = cost.stage(z[..., :n], z[..., n:], stage_params(cost, Pr, (B, T))).sum()
        term = cost.terminal(xT, stage_params(cost, Pr, (B,))).sum()
        fz = dynamics.step(z[..., :n], z[..., n:], thr if thr.dim() == 1 else thr[:, None])
        lagr = stage + (lam[:, 1:] * fz).sum()
        g_z, g_T = torch.autograd.grad((lagr, term), (z, xT), create_graph=True)
        S = (g_z * dz).sum() + (g_T * dx[:, -1]).sum() + (dlam[:, 1:] * fz).sum() + \
            (dlam[:, 0] * x0r).sum()
        names = list(Pr)
        grads = torch.autograd.grad(S, [x0r, thr, *[Pr[k] for k in names]], allow_unused=True)
    out = [torch.zeros_like(v) if g is None else g
           for g, v in zip(grads, [x0, theta, *[P[k] for k in names]], strict=True)]
    return out[0], out[1], dict(zip(names, out[2:], strict=True))


@dataclass
class _Spec:
    """Non-tensor inputs of the autograd Function."""

    dynamics: Dynamics
    cost: Cost
    names: Sequence[str]
    u_init: Tensor
    lower: Tensor | None
    upper: Tensor | None
    config: ILQRConfig
    exact: bool
    solution: Any = None


class _FixedPointFn(torch.autograd.Function):
    """``(x0, theta, *phi) -> (x, u)`` of the converged iLQR, differentiated at the fixed point.

    Backward: see the module docstring (one adjoint LQR + one VJP of the KKT residual).
    """

    @staticmethod
    def forward(ctx, spec: _Spec, x0: Tensor, theta: Tensor, *pvals: Tensor):
        P = dict(zip(spec.names, pvals, strict=True))
        with torch.no_grad():
            sol = ilqr_solve(spec.dynamics, spec.cost, x0, theta, P, spec.u_init, spec.lower,
                             spec.upper, spec.config)
        spec.solution = sol
        ctx.spec = spec
        ctx.save_for_backward(x0, theta, sol.x, sol.u, sol.free, sol.converged, sol.failed,
                              *pvals)
        return sol.x, sol.u

    @staticmethod
    def backward(ctx, gx: Tensor | None, gu: Tensor | None):
        if torch.is_grad_enabled():
            # create_graph=True (a second derivative, torch.autograd.functional.hessian): the
            # backward is not itself differentiable; say so instead of returning zeros
            raise RuntimeError("DiLQR's implicit gradient is once differentiable: "
                               "create_graph=True / second derivatives through the layer are "
                               "not supported (use grad='unroll' for them)")
        spec = ctx.spec
        x0, theta, x, u, free, converged, failed, *pvals = ctx.saved_tensors
        gx = torch.zeros_like(x) if gx is None else gx
        gu = torch.zeros_like(u) if gu is None else gu
        if spec.config.on_unconverged == "detach":
            # the user asked for it explicitly (ILQRConfig.on_unconverged): no gradient
            # through samples that did not reach the fixed point
            keep = converged.to(gx.dtype)
            gx, gu = gx * keep[:, None, None], gu * keep[:, None, None]
        P = dict(zip(spec.names, pvals, strict=True))
        if bool(failed.any()):  # set apart by the solve (on_nonfinite="isolate"): no gradient
            g0, gth, gP = _vjp_on(spec, ~failed, x0, theta, P, x, u, free, gx, gu)
        else:
            g0, gth, gP = fixed_point_vjp(spec.dynamics, spec.cost, x0, theta, P, x, u, free,
                                          gx, gu, exact=spec.exact)
        isolate = spec.config.on_nonfinite == "isolate"
        if (spec.config.on_unconverged != "raise" or isolate) and \
                not _all_finite(g0, gth, gP):
            # with isolate, converged samples too (the caller asked for a gradient from the
            # healthy samples whatever happens to the others)
            g0, gth, gP = _without_unconverged_failures(spec, x0, theta, P, x, u, free,
                                                        converged, failed, gx, gu, g0, gth, gP,
                                                        isolate=isolate)
        for name, g in (("x0", g0), ("the dynamics parameters", gth), *gP.items()):
            if not bool(torch.isfinite(g).all()):
                bad = ~torch.isfinite(g.reshape(g.shape[0], -1) if g.dim() > 1 else g[None])
                raise NonFiniteError(
                    f"the implicit gradient for {name} is not finite (rows "
                    f"{torch.nonzero(bad.any(-1))[:, 0].tolist()[:8]}): the derivatives of the "
                    "model or the cost are not finite at the solution, or its reduced Hessian "
                    "is singular (check Solution.pivot)")
        return (None, g0, gth, *[gP[k] for k in spec.names])


def _all_finite(g0: Tensor, gth: Tensor, gP: dict[str, Tensor]) -> bool:
    return all(bool(torch.isfinite(g).all()) for g in (g0, gth, *gP.values()))


def _without_unconverged_failures(spec: _Spec, x0: Tensor, theta: Tensor, P: dict[str, Tensor],
                                  x: Tensor, u: Tensor, free: Tensor, converged: Tensor,
                                  failed: Tensor, gx: Tensor, gu: Tensor, g0: Tensor, gth: Tensor,
                                  gP: dict[str, Tensor], isolate: bool = False
                                  ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The gradient again without the unconverged samples whose own gradient is not finite
    (with ``isolate``: without any sample whose own gradient is not finite).

    An unconverged sample is differentiated at its last iterate (``on_unconverged="warn"``),
    where the reduced Hessian may be singular: its adjoint solve, hence its gradient, is then
    not finite, and summed into shared parameters it would poison the whole batch's gradient.
    Such samples (found by their per-sample gradient rows: ``x0``'s, and ``theta``'s and the
    cost parameters' where per sample) get a zero gradient, with a warning. When a converged
    sample's gradient is not finite (unless ``isolate``), or no sample can be blamed (no
    per-sample row is non-finite: a shared parameter's gradient is), the gradient is returned
    as is (the caller raises). Without ``isolate`` it is also returned as is when every
    sample's row is non-finite, rather than becoming zero; with ``isolate`` those samples all
    get no gradient, like samples the solve set apart (a cold re-solve of a single sample in
    an RL update is such a batch)."""
    B = x0.shape[0]
    bad = ~torch.isfinite(g0).all(-1)
    if _per_sample(spec, theta, None):
        bad |= ~torch.isfinite(gth).all(-1)
    for k, v in gP.items():
        if _per_sample(spec, P[k], k):
            bad |= ~torch.isfinite(v.reshape(B, -1)).all(-1)
    if not bool(bad.any()):  # no sample's own row explains it
        return g0, gth, gP
    if not isolate and (bool((bad | failed).all()) or bool((bad & converged).any())):
        return g0, gth, gP
    out = _vjp_on(spec, ~bad & ~failed, x0, theta, P, x, u, free, gx, gu)
    n_conv = int((bad & converged).sum())
    what = (f"{int(bad.sum())} sample(s) ({n_conv} converged, on_nonfinite='isolate')"
            if n_conv else f"{int(bad.sum())} unconverged sample(s)")
    warnings.warn(f"DiLQR: the implicit gradient of {what} is not finite (a singular reduced "
                  "Hessian at the last iterate, or derivatives that overflow there); they get "
                  "no gradient", UnconvergedGradientWarning, stacklevel=2)
    return out


def _per_sample(spec: _Spec, v: Tensor, k: str | None) -> bool:
    """Whether ``theta`` (``k=None``) or the cost parameter ``k`` is given per sample."""
    return v.dim() == 2 if k is None else v.dim() == len(spec.cost.param_shapes()[k]) + 1


def _vjp_on(spec: _Spec, keep: Tensor, x0: Tensor, theta: Tensor, P: dict[str, Tensor],
            x: Tensor, u: Tensor, free: Tensor, gx: Tensor, gu: Tensor
            ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """:func:`fixed_point_vjp` of the samples ``keep (B,) bool`` only; the others get zero
    rows (per-sample gradients) and add nothing to shared parameters' gradients."""
    good = torch.nonzero(keep)[:, 0]
    if good.numel() == 0:
        return (torch.zeros_like(x0), torch.zeros_like(theta),
                {k: torch.zeros_like(v) for k, v in P.items()})
    sub = {k: v[good] if _per_sample(spec, v, k) else v for k, v in P.items()}
    th = theta[good] if _per_sample(spec, theta, None) else theta
    s0, sth, sP = fixed_point_vjp(spec.dynamics, spec.cost, x0[good], th, sub, x[good],
                                  u[good], free[good], gx[good], gu[good], exact=spec.exact)

    def put(full: Tensor, part: Tensor) -> Tensor:
        return full.new_zeros(full.shape).index_copy(0, good, part)

    return (put(x0, s0), put(theta, sth) if _per_sample(spec, theta, None) else sth,
            {k: put(P[k], v) if _per_sample(spec, P[k], k) else v for k, v in sP.items()})


class UnconvergedGradientWarning(UserWarning):
    """Samples whose implicit gradient is not finite were left out of it: unconverged ones
    (``on_unconverged`` ``"warn"``/``"detach"``), and with ``on_nonfinite="isolate"``
    converged ones too."""


def solve_implicit(dynamics: Dynamics, cost: Cost, x0: Tensor, theta: Tensor,
                   P: dict[str, Tensor], u_init: Tensor, lower: Tensor | None,
                   upper: Tensor | None, config: ILQRConfig, exact: bool = True
                   ) -> tuple[Tensor, Tensor, Solution]:
    """Solve and attach the fixed-point gradient. Shapes as :func:`dilqr_rl.ilqr.ilqr_solve`.

    :return: ``x (B, T+1, n)``, ``u (B, T, m)`` (differentiable) and the raw :class:`Solution`
    """
    names = list(P)
    spec = _Spec(dynamics, cost, names, u_init.detach(), lower, upper, config, exact)
    x, u = _FixedPointFn.apply(spec, x0, theta, *[P[k] for k in names])
    # take the solution off the spec the autograd node keeps (ctx.spec): its x and u are the
    # node's outputs, so node -> spec -> solution -> x -> node would be a reference cycle
    # through C++ that Python's GC cannot collect, and every training step's graph and
    # solution would leak (about 150 MB a minute in a batched imitation unit)
    sol, spec.solution = spec.solution, None
    return x, u, sol
