"""DiLQR versus ``mpc.pytorch`` on USER-DEFINED models, and DiLQR's iteration counts.

The built-in models ship analytic derivatives; a user model does not. Here both libraries get
a model written the way a user writes it (a ``dl.Dynamics`` subclass with ``nn.Parameter`` s
and only a batched ``forward(x, u)``), float64, one thread, side by side in one run.

(a) Linear model ``f(x, u) = A x + Bm u + c`` (n = 6, m = 3, ``|u| <= 0.5``, T = 20,
    ``A = I + 0.2 randn``: open-loop unstable on purpose), cost ``1/2 |x|^2 + 1/2 |u|^2`` per step
    plus ``1/2 |x_T|^2`` (``dl.QuadraticCost.tracking(ones, zeros)``). ``mpc.pytorch`` gets the
    same model as ``LinDx(F, f)`` built from the same parameters.
(b) Two-link planar arm (gravity, semi-implicit Euler, dt = 0.05, ``|tau| <= 5``), reaching a
    goal configuration, T = 20. ``mpc.pytorch`` gets the same module instance with
    ``GradMethods.AUTO_DIFF``; DiLQR takes its derivatives from autograd.

    Per row (B in {1, 32, 256}): forward time per iteration at equal iteration counts (DiLQR
    ``ILQRConfig(max_iter=K, tol=0)``, ``mpc.pytorch`` ``lqr_iter=K``, ``eps=1e-300``, no early
    exit), backward time of a random linear loss of ``x`` and ``u`` (``.backward()`` into
    ``x0``, the model's parameters and the cost's; DiLQR's default ``grad="implicit"``), their
    ratios and whether they meet the targets (forward/iter <= 0.2x, backward <= 0.5x). Nothing
    is tuned to meet them. Medians over repeats, the two libraries alternating (other load on
    the machine then hits both alike), after a warm-up run each.

    Making the problems identical: ``mpc.pytorch``'s cost is ``sum_t 1/2 tau_t^T C_t tau_t +
    c_t^T tau_t`` over ``T_mpc`` time-major steps ``tau_t = [x_t; u_t]``, every step with a
    control, and ``T_mpc - 1`` transitions. It runs with ``T_mpc = T + 1``: the same ``T``
    transitions and states ``x_0 .. x_T``; its last step carries DiLQR's terminal weights on
    ``x_T`` and the stage control weight on an extra control ``u_T`` that enters nothing else
    (its optimum is 0; it is dropped from the comparison). ``C = diag(w)``, ``c = -w * goal``
    (the constant ``1/2 w goal^2`` does not change the solution). The agreement check solves
    both to convergence (B = 32) and reports the largest difference in ``u`` and ``x`` over the
    samples where both converged: DiLQR by its own flag, ``mpc.pytorch`` (which does not
    return one) by a solver-independent test, the projected gradient of the trajectory cost
    ``max |u - clamp(u - dJ/du)|`` below ``1e-6 (1 + max |dJ/du(0)|)``.

(c) Iteration counts of DiLQR at its DEFAULT tolerance:
    - random box-constrained LQ problems: the model of (a) with 128 random ``x0``, and
      n = 8, m = 4, ``|u| <= 1`` for 3 random-``A`` seeds (128 ``x0`` each): iterations
      median / max, fraction converged, and for each converged sample the relative cost
      difference to the QP optimum (cvxpy + Clarabel, tight tolerances); samples DiLQR calls
      converged whose cost is more than 1e-6 above the optimum are listed (``--quick``: 32
      ``x0`` per problem);
    - cart-pole swing-ups (``dl.CartPole()``, B = 32, T = 30, ``|u| <= 100``,
      ``CartPoleEnv.task_cost()`` in float64, start states from the env's start distribution)
      with ``max_iter`` 100 and 400: iterations median / max, fraction converged (within 100),
      and how far the cost capped at 100 iterations is above the cost after up to 400.

Usage::

    pip install -e ".[bench,dev]"
    python benchmarks/general_models.py [--quick] [--iters 10] [--threads 1]

Writes ``benchmarks/results/general_models.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import dilqr_rl as dl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backward import SavedBytes  # noqa: E402  (the tape meter of the backward benchmark)
from vs_mpc_pytorch import _patch_mpc  # noqa: E402  (mpc 0.0.6's uint8-mask fix)

DT = torch.float64
FWD_TARGET, BWD_TARGET = 0.2, 0.5
CONV_TOL = 1e-6  # projected-gradient test of convergence (relative), both libraries


def code_version() -> dict:
    """The git commit of the ``dilqr_rl`` being measured and whether its files (``dilqr_rl/``,
    ``envs/``) differ from it (the solver core changes between runs)."""
    root = Path(dl.__file__).resolve().parent.parent

    def git(*a):
        r = subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,
                           timeout=30)
        return r.stdout.strip() if r.returncode == 0 else None

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no", "--", "dilqr_rl", "envs")
    except (OSError, subprocess.SubprocessError):
        commit = status = None
    return {"dilqr_rl_commit": commit,
            "dilqr_rl_uncommitted_changes": None if status is None else bool(status)}


# ---------------------------------------------------------------------------------- models
class LinearModel(dl.Dynamics):
    """User-defined linear model ``x' = A x + Bm u + c``; only ``forward`` is written."""

    def __init__(self, n: int, m: int, seed: int):
        super().__init__()
        self.n_state, self.n_ctrl = n, m
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.eye(n, dtype=DT) + 0.2 * torch.randn(n, n, generator=g,
                                                                            dtype=DT))
        self.Bm = nn.Parameter(torch.randn(n, m, generator=g, dtype=DT))
        self.c = nn.Parameter(0.1 * torch.randn(n, generator=g, dtype=DT))

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return x @ self.A.T + u @ self.Bm.T + self.c


class TwoLinkArm(dl.Dynamics):
    """User-defined two-link planar arm in a vertical plane; only ``forward`` is written.

    State ``(q1, q2, dq1, dq2)`` (``q1`` from the horizontal, ``q2`` relative), torques
    ``(t1, t2)``; uniform links (centre of mass at ``l/2``, inertia ``m l^2 / 12``);
    ``M(q) ddq + C(q, dq) dq + G(q) = tau``; semi-implicit Euler (velocities first).
    """

    positive_params = True

    def __init__(self, m1=0.3, m2=0.3, l1=0.5, l2=0.5, g=9.81, dt=0.05):
        super().__init__()
        self.n_state, self.n_ctrl = 4, 2
        self.m1, self.m2, self.l1, self.l2 = (nn.Parameter(torch.tensor(v, dtype=DT))
                                              for v in (m1, m2, l1, l2))
        self.g, self.dt = float(g), float(dt)

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        q1, q2, dq1, dq2 = x.unbind(-1)
        t1, t2 = u.unbind(-1)
        m1, m2, l1, l2 = self.m1, self.m2, self.l1, self.l2
        lc1, lc2 = l1 / 2, l2 / 2
        i1, i2 = m1 * l1**2 / 12, m2 * l2**2 / 12
        c2, s2 = torch.cos(q2), torch.sin(q2)
        m11 = i1 + i2 + m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * c2)
        m12 = i2 + m2 * (lc2**2 + l1 * lc2 * c2)
        m22 = i2 + m2 * lc2**2
        h = m2 * l1 * lc2 * s2
        cor1, cor2 = -h * (2 * dq1 * dq2 + dq2**2), h * dq1**2
        c12 = torch.cos(q1 + q2)
        g1 = (m1 * lc1 + m2 * l1) * self.g * torch.cos(q1) + m2 * lc2 * self.g * c12
        g2 = m2 * lc2 * self.g * c12
        r1, r2 = t1 - cor1 - g1, t2 - cor2 - g2
        det = m11 * m22 - m12**2
        dd1, dd2 = (m22 * r1 - m12 * r2) / det, (m11 * r2 - m12 * r1) / det
        dq1n, dq2n = dq1 + self.dt * dd1, dq2 + self.dt * dd2
        return torch.stack([q1 + self.dt * dq1n, q2 + self.dt * dq2n, dq1n, dq2n], -1)


ARM_GOAL = [math.pi / 4, math.pi / 3, 0.0, 0.0]
ARM_W = [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]  # stage weights over [q, dq, tau]
ARM_WT = [10.0, 10.0, 1.0, 1.0]  # terminal weights
ARM_BOUND = 5.0


def problem(kind: str, B: int, T: int, seed: int = 0):
    """``(dynamics, cost, x0, bound, (weights, goal, terminal weights))`` for (a) or (b)."""
    g = torch.Generator().manual_seed(1000 + seed)
    if kind == "linear":
        n, m = 6, 3
        dyn = LinearModel(n, m, seed)
        w, goal, wT = [1.0] * (n + m), [0.0] * (n + m), [1.0] * n
        cost = dl.QuadraticCost.tracking(torch.ones(n + m, dtype=DT),
                                         torch.zeros(n + m, dtype=DT), n_state=n)
        x0 = torch.randn(B, n, generator=g, dtype=DT)
        bound = 0.5
    else:
        dyn = TwoLinkArm()
        n, m = 4, 2
        w, goal, wT = ARM_W, ARM_GOAL + [0.0, 0.0], ARM_WT
        cost = dl.QuadraticCost.tracking(torch.tensor(w, dtype=DT), torch.tensor(goal, dtype=DT),
                                         torch.tensor(wT, dtype=DT), n_state=n)
        r = torch.rand(B, 4, generator=g, dtype=DT) * 2 - 1
        x0 = torch.stack([-math.pi / 2 + 0.3 * r[:, 0], 0.3 * r[:, 1], 0.5 * r[:, 2],
                          0.5 * r[:, 3]], -1)  # hanging down, perturbed
        bound = ARM_BOUND
    cost = cost.to(DT)
    return dyn, cost, x0, bound, (w, goal, wT)


def mpc_cost(spec, n: int, T: int, B: int):
    """``mpc.pytorch``'s ``C (T+1, B, n+m, n+m)``, ``c (T+1, B, n+m)``: DiLQR's tracking cost
    with its terminal step folded into an extra (T+1-th) step (see the module docstring)."""
    w, goal, wT = (torch.tensor(v, dtype=DT) for v in spec)
    wlast = torch.cat([wT, w[n:]])
    W = torch.cat([w.expand(T, -1), wlast[None]])  # (T+1, n+m)
    glast = torch.cat([goal[:n], torch.zeros_like(goal[n:])])
    G = torch.cat([goal.expand(T, -1), glast[None]])
    C = torch.diag_embed(W)[:, None].expand(T + 1, B, -1, -1).clone().requires_grad_(True)
    c = (-W * G)[:, None].expand(T + 1, B, -1).clone().requires_grad_(True)
    return C, c


def dilqr_ctrl(dyn, cost, T, bound, config):
    return dl.DiLQR(dyn, cost, horizon=T, u_lower=-bound, u_upper=bound, config=config)


def mpc_ctrl(kind, dyn, n, m, T, B, bound, iters, eps, not_improved_lim=10**9):
    """``mpc.pytorch``'s controller and its dynamics object for the same model ``dyn``."""
    from mpc import mpc
    from mpc.mpc import GradMethods

    _patch_mpc()
    lo = -bound * torch.ones(T + 1, B, m, dtype=DT)
    ctrl = mpc.MPC(n, m, T + 1, u_lower=lo, u_upper=-lo, lqr_iter=iters, verbose=-1,
                   exit_unconverged=False, detach_unconverged=False, eps=eps, n_batch=B,
                   not_improved_lim=not_improved_lim, grad_method=GradMethods.AUTO_DIFF)

    def dynamics():  # built inside the timed forward, differentiably from the parameters
        if kind == "linear":
            F = torch.cat([dyn.A, dyn.Bm], 1).expand(T, B, n, n + m)
            return mpc.LinDx(F, dyn.c.expand(T, B, n))
        return dyn

    return ctrl, dynamics


class PnqpWarnings(io.TextIOBase):
    """stdout sink for ``mpc.pytorch`` calls: its box-QP solver prints ``[WARNING] pnqp
    warning: Did not converge`` (even with ``verbose=-1``); counted here instead of printed."""

    def __init__(self):
        self.count = 0

    def write(self, s: str) -> int:
        self.count += s.count("pnqp warning")
        return len(s)


# ---------------------------------------------------------------------------------- timing
def _run_once(solve, leaves, x0, wx, wu, meter=None):
    """One forward + ``.backward()`` of the linear loss: ``(forward s, backward s)``.

    ``solve(x0) -> (x (B, T+1, n), u (B, T, m))``; with a ``meter`` (``backward.SavedBytes``)
    the forward records the bytes that the tape holds for the backward."""
    for p in leaves:
        p.grad = None
    x0r = x0.clone().requires_grad_(True)
    ctx = (torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t) if meter
           else contextlib.nullcontext())
    t0 = time.perf_counter()
    with ctx:
        x, u = solve(x0r)
        loss = (wx * x).sum() + (wu * u).sum()
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def _time_pair(solvers, x0, wx, wu, repeats, budget_s):
    """Median forward / backward seconds of each ``(solve, leaves)`` in ``solvers``, run
    alternately (so that load from other processes hits both alike), after one warm-up run
    each that also measures the tape. Stops early once ``budget_s`` is spent (>= 1 repeat).

    :return: per solver ``(median forward s, median backward s, tape bytes, all forward s,
        all backward s)``
    """
    tapes = []
    for solve, leaves in solvers:
        meter = SavedBytes()
        _run_once(solve, leaves, x0, wx, wu, meter)
        tapes.append(meter.total)
    times = [([], []) for _ in solvers]
    start = time.perf_counter()
    for _ in range(repeats):
        for (solve, leaves), (fw, bw) in zip(solvers, times, strict=True):
            f, b = _run_once(solve, leaves, x0, wx, wu)
            fw.append(f)
            bw.append(b)
        if time.perf_counter() - start > budget_s:
            break
    return [(statistics.median(fw), statistics.median(bw), tape, fw, bw)
            for (fw, bw), tape in zip(times, tapes, strict=True)]


def speed_row(kind, B, T, iters, repeats, budget_s):
    dyn, cost, x0, bound, spec = problem(kind, B, T)
    n, m = dyn.n_state, dyn.n_ctrl
    g = torch.Generator().manual_seed(7)
    wx = torch.randn(B, T + 1, n, generator=g, dtype=DT)
    wu = torch.randn(B, T, m, generator=g, dtype=DT)

    ours = dilqr_ctrl(dyn, cost, T, bound, dl.ILQRConfig(max_iter=iters, tol=0.0))

    def solve_ours(x0r):
        sol = ours(x0r)
        return sol.x, sol.u

    C, c = mpc_cost(spec, n, T, B)
    ctrl, dynamics = mpc_ctrl(kind, dyn, n, m, T, B, bound, iters, eps=1e-300)
    from mpc.mpc import QuadCost

    sink = PnqpWarnings()

    def solve_theirs(x0r):
        with contextlib.redirect_stdout(sink):
            x, u, _ = ctrl(x0r, QuadCost(C, c), dynamics())
        return x.transpose(0, 1), u[:T].transpose(0, 1)

    (f1, b1, tape1, fw1, bw1), (f2, b2, tape2, fw2, bw2) = _time_pair(
        [(solve_ours, [*dyn.parameters(), *cost.parameters()]),
         (solve_theirs, [*dyn.parameters(), C, c])], x0, wx, wu, repeats, budget_s)
    fr, br = f1 / f2, b1 / b2
    return {"model": kind, "B": B, "T": T, "n": n, "m": m, "iters": iters,
            "dilqr_forward_s": f1, "dilqr_forward_per_iter_s": f1 / iters,
            "dilqr_backward_s": b1, "dilqr_tape_bytes": tape1,
            "mpc_forward_s": f2, "mpc_forward_per_iter_s": f2 / iters,
            "mpc_backward_s": b2, "mpc_tape_bytes": tape2, "repeats": len(fw1),
            "all_runs_s": {"dilqr_forward": fw1, "dilqr_backward": bw1, "mpc_forward": fw2,
                           "mpc_backward": bw2},
            "mpc_pnqp_not_converged_prints": sink.count,
            "forward_per_iter_ratio": fr, "backward_ratio": br,
            "meets_forward_target": bool(fr <= FWD_TARGET),
            "meets_backward_target": bool(br <= BWD_TARGET)}


def solver_diagnostics(sol) -> dict:
    """Stats of the solver's own certificates where the ``Solution`` has them (``kkt``: first-
    order residual, ``pivot``: smallest reduced-Hessian pivot; absent before commit ac0bf6e)."""
    out = {}
    for name, fns in (("kkt", ("median", "max")), ("pivot", ("min",))):
        v = getattr(sol, name, None)
        if isinstance(v, Tensor) and v.numel():
            v = v.detach().double()
            for fn in fns:
                out[f"{name}_{fn}"] = float(getattr(v, fn)() if fn != "median" else v.median())
    return out


# ---------------------------------------------------------------------------------- agreement
def projected_gradient(dyn, spec, x0, u, bound):
    """Per sample ``max |u - clamp(u - dJ/du, -b, b)|`` of the trajectory cost (DiLQR's
    convention, terminal included) through the true model, and ``max |dJ/du|`` at ``u = 0``
    (the scale of the relative test)."""
    w, goal, wT = (torch.tensor(v, dtype=DT) for v in spec)
    n = x0.shape[-1]

    def grad(uu):
        uu = uu.detach().requires_grad_(True)
        with torch.enable_grad():
            x, J = x0.detach(), 0.0
            for t in range(uu.shape[1]):
                z = torch.cat([x, uu[:, t]], -1)
                J = J + 0.5 * (w * (z - goal) ** 2).sum(-1)
                x = dyn(x, uu[:, t])
            J = J + 0.5 * (wT * (x - goal[:n]) ** 2).sum(-1)
            (gu,) = torch.autograd.grad(J.sum(), uu)
        return gu

    gu = grad(u)
    res = (u - torch.clamp(u - gu, -bound, bound)).abs().amax((1, 2))
    scale = grad(torch.zeros_like(u)).abs().amax((1, 2))
    return res.detach(), scale.detach()


def agreement(kind: str, B: int = 32, T: int = 20) -> dict:
    """Both libraries run to convergence on the same problems; largest difference of the
    solutions over the samples where both converged."""
    from mpc.mpc import QuadCost

    dyn, cost, x0, bound, spec = problem(kind, B, T, seed=0)
    n, m = dyn.n_state, dyn.n_ctrl
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        with torch.no_grad():
            sol = dilqr_ctrl(dyn, cost, T, bound, dl.ILQRConfig())(x0)
        t1 = time.perf_counter()
        C, c = mpc_cost(spec, n, T, B)
        ctrl, dynamics = mpc_ctrl(kind, dyn, n, m, T, B, bound, iters=100, eps=1e-10)
        sink = PnqpWarnings()
        with contextlib.redirect_stdout(sink):  # AUTO_DIFF needs grad mode
            xm, um, _ = ctrl(x0, QuadCost(C.detach(), c.detach()), dynamics())
        t2 = time.perf_counter()
    xm, um_all = xm.transpose(0, 1).detach(), um.transpose(0, 1).detach()
    um = um_all[:, :T]
    res_o, scale = projected_gradient(dyn, spec, x0, sol.u.detach(), bound)
    res_m, _ = projected_gradient(dyn, spec, x0, um, bound)
    ours_conv = sol.converged
    mpc_conv = res_m <= CONV_TOL * (1 + scale)
    both = ours_conv & mpc_conv
    du = (um - sol.u.detach()).abs().amax((1, 2))
    dx = (xm - sol.x.detach()).abs().amax((1, 2))
    J_o = cost.total(sol.x.detach(), sol.u.detach(), {k: v.detach() for k, v in
                                                      cost.params().items()}).detach()
    J_m = cost.total(xm, um, {k: v.detach() for k, v in cost.params().items()}).detach()
    sel = both if bool(both.any()) else torch.zeros_like(both)
    return {
        "model": kind, "B": B, "T": T,
        "dilqr_converged": int(ours_conv.sum()), "mpc_converged_by_projected_gradient":
            int(mpc_conv.sum()), "both_converged": int(both.sum()),
        "dilqr_projected_gradient_max_over_converged":
            float(res_o[ours_conv].max()) if bool(ours_conv.any()) else None,
        "projected_gradient_median_dilqr": float(res_o.median()),
        "projected_gradient_median_mpc": float(res_m.median()),
        "convergence_test": f"max|u - clamp(u - dJ/du)| <= {CONV_TOL} (1 + max|dJ/du(u=0)|)",
        "max_u_diff_both_converged": float(du[sel].max()) if bool(sel.any()) else None,
        "max_x_diff_both_converged": float(dx[sel].max()) if bool(sel.any()) else None,
        "agree_1e-6": bool(sel.any()) and float(du[sel].max()) <= 1e-6,
        "max_u_diff_all": float(du.max()),
        "samples_u_diff_above_1e-6": int((du > 1e-6).sum()),
        "mpc_extra_control_max_abs": float(um_all[:, T].abs().max()),
        "mean_cost_dilqr": float(J_o.mean()), "mean_cost_mpc": float(J_m.mean()),
        "samples_where_mpc_cost_higher_by_1e-6": int((J_m - J_o > 1e-6 * (1 + J_o.abs()))
                                                     .sum()),
        "samples_where_dilqr_cost_higher_by_1e-6": int((J_o - J_m > 1e-6 * (1 + J_m.abs()))
                                                       .sum()),
        "active_fraction_dilqr": float((~sol.free).float().mean()),
        "dilqr_iterations_median": float(sol.iterations.double().median()),
        "dilqr_iterations_max": int(sol.iterations.max()),
        "dilqr_diagnostics": solver_diagnostics(sol),
        "dilqr_s": t1 - t0, "mpc_s": t2 - t1, "mpc_lqr_iter": 100, "mpc_eps": 1e-10,
        "mpc_pnqp_not_converged_prints": sink.count,
    }


# ---------------------------------------------------------------------------------- (c)
def qp_optimum(dyn: LinearModel, x0: Tensor, T: int, bound: float, tol: float = 1e-12):
    """Optimal cost of every ``x0`` row by cvxpy + Clarabel (one DPP problem re-solved per
    sample): ``min 1/2 sum_{t<=T} |x_t|^2 + 1/2 sum_{t<T} |u_t|^2`` s.t. the linear dynamics and
    ``|u| <= bound``. The returned cost is re-evaluated by a rollout of the (clipped) QP
    controls, so it is the cost of a feasible control sequence."""
    import cvxpy as cp

    A, Bm, c = (p.detach().numpy() for p in (dyn.A, dyn.Bm, dyn.c))
    n, m = Bm.shape
    x = cp.Variable((T + 1, n))
    u = cp.Variable((T, m))
    x0p = cp.Parameter(n)
    cons = [x[0] == x0p, x[1:] == x[:-1] @ A.T + u @ Bm.T + np.tile(c, (T, 1)),
            u <= bound, u >= -bound]
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + 0.5 * cp.sum_squares(u)), cons)
    costs, statuses = [], []
    for xi in x0.numpy():
        x0p.value = xi
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol,
                   tol_ktratio=1e-10, max_iter=400)
        statuses.append(prob.status)
        if u.value is None:
            costs.append(math.nan)
            continue
        uq = np.clip(u.value, -bound, bound)
        xs, J = xi, 0.0
        for t in range(T):
            J += 0.5 * (xs @ xs + uq[t] @ uq[t])
            xs = A @ xs + Bm @ uq[t] + c
        costs.append(J + 0.5 * xs @ xs)
    return np.array(costs), statuses


def lq_distribution(name: str, n: int, m: int, bound: float, seed: int, n_x0: int,
                    T: int = 20) -> dict:
    dyn = LinearModel(n, m, seed)
    cost = dl.QuadraticCost.tracking(torch.ones(n + m, dtype=DT), torch.zeros(n + m, dtype=DT),
                                     n_state=n).to(DT)
    x0 = torch.randn(n_x0, n, generator=torch.Generator().manual_seed(2000 + seed), dtype=DT)
    cfg = dl.ILQRConfig()
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", dl.UnconvergedWarning)
        sol = dilqr_ctrl(dyn, cost, T, bound, cfg)(x0)
    t1 = time.perf_counter()
    J_qp, statuses = qp_optimum(dyn, x0, T, bound)
    t2 = time.perf_counter()
    J = sol.cost.detach().numpy()
    conv = sol.converged.numpy()
    rel = (J - J_qp) / np.maximum(np.abs(J_qp), 1e-300)
    relc = rel[conv & np.isfinite(J_qp)]
    it = sol.iterations.numpy()
    spec = ([1.0] * (n + m), [0.0] * (n + m), [1.0] * n)
    pg = projected_gradient(dyn, spec, x0, sol.u.detach(), bound)[0].numpy()
    # converged by DiLQR's flag but not optimal: cost above the QP optimum by > 1e-6
    false_conv = [{"index": int(i), "rel_cost_diff": float(rel[i]), "iterations": int(it[i]),
                   "projected_gradient": float(pg[i])}
                  for i in range(n_x0) if conv[i] and np.isfinite(J_qp[i]) and rel[i] > 1e-6]
    unconv = [{"index": int(i), "iterations": int(it[i]), "rel_cost_diff_to_qp": float(rel[i]),
               "projected_gradient": float(pg[i])} for i in range(n_x0) if not conv[i]]
    return {
        "problem": name, "n": n, "m": m, "bound": bound, "A_seed": seed, "T": T,
        "samples": n_x0, "max_iter": cfg.max_iter, "tol": cfg.tol,
        "spectral_radius_A": float(torch.linalg.eigvals(dyn.A.detach()).abs().max()),
        "iterations_median": float(np.median(it)), "iterations_max": int(it.max()),
        "iterations": it.tolist(),
        "converged_fraction": float(conv.mean()),
        "active_fraction": float((~sol.free).double().mean()),
        "rel_cost_diff_to_qp_converged": {
            "count": int(relc.size),
            "max_abs": float(np.abs(relc).max()) if relc.size else None,
            "median_abs": float(np.median(np.abs(relc))) if relc.size else None,
            "min_signed": float(relc.min()) if relc.size else None,
            "max_signed": float(relc.max()) if relc.size else None},
        "converged_but_cost_above_qp_by_1e-6": false_conv,
        "unconverged": unconv,
        "dilqr_diagnostics": solver_diagnostics(sol),
        "projected_gradient_converged": {
            "median": float(np.median(pg[conv])) if conv.any() else None,
            "max": float(pg[conv].max()) if conv.any() else None},
        "qp_statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "qp_solver": "cvxpy CLARABEL, tol_gap_abs = tol_gap_rel = tol_feas = 1e-12",
        "dilqr_s": t1 - t0, "qp_s": t2 - t1,
    }


def cartpole_starts(B: int, seed: int) -> Tensor:
    """The env's start distribution (``CartPoleEnv._sample_state``) drawn with torch:
    ``x, xdot, dth, thdot ~ U[-0.1, 0.1]``, ``th = pi + dth``."""
    r = (torch.rand(B, 4, generator=torch.Generator().manual_seed(seed), dtype=DT) * 2 - 1) * 0.1
    th = math.pi + r[:, 2]
    return torch.stack([r[:, 0], r[:, 1], th.cos(), th.sin(), r[:, 3]], -1)


def cartpole_distribution(B: int = 32, T: int = 30, seed: int = 0) -> list[dict]:
    from dilqr_rl.envs.cartpole import CartPoleEnv

    dyn = dl.CartPole().to(DT)
    cost = CartPoleEnv.task_cost().to(DT)
    x0 = cartpole_starts(B, seed)
    out, costs = [], {}
    for max_iter in (100, 400):
        t0 = time.perf_counter()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", dl.UnconvergedWarning)
            sol = dilqr_ctrl(dyn, cost, T, 100.0, dl.ILQRConfig(max_iter=max_iter))(x0)
        it = sol.iterations.numpy()
        conv = sol.converged.numpy()
        costs[max_iter] = sol.cost.numpy()
        out.append({
            "problem": f"cartpole swing-up max_iter={max_iter}", "B": B, "T": T,
            "bound": 100.0, "max_iter": max_iter, "tol": dl.ILQRConfig().tol, "seed": seed,
            "iterations_median": float(np.median(it)), "iterations_max": int(it.max()),
            "iterations": it.tolist(),
            "converged_fraction": float(conv.mean()),
            "converged_within_100_fraction": float((conv & (it <= 100)).mean()),
            "cost_median": float(sol.cost.median()),
            "upright_final_fraction": float((sol.x[:, -1, 2] > 0.9).double().mean()),
            "active_fraction": float((~sol.free).double().mean()),
            "dilqr_diagnostics": solver_diagnostics(sol),
            "seconds": time.perf_counter() - t0})
    gap = (costs[100] - costs[400]) / np.abs(costs[400])
    out[0]["rel_cost_above_max_iter_400_run"] = {"median": float(np.median(gap)),
                                                 "max": float(gap.max())}
    return out


def finite_json(v):
    """``v`` with non-finite floats as the strings ``"inf"``, ``"-inf"``, ``"nan"`` (strict
    JSON has no such numbers)."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: finite_json(w) for k, w in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite_json(w) for w in v]
    return v


# ---------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="B in {1, 32}, fewer repeats")
    ap.add_argument("--iters", type=int, default=10, help="iterations K (both libraries)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # mpc's torch.lu deprecations
    Bs = (1, 32) if args.quick else (1, 32, 256)
    repeats = 3 if args.quick else 7
    budget = 5.0 if args.quick else 20.0
    T = 20
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load0 = os.getloadavg()  # other processes on the machine skew absolute times

    for kind in ("linear", "arm"):  # warm-up (first calls: vmap / functional_call tracing)
        speed_row(kind, 2, 5, 2, 1, 1.0)
    rows = []
    for kind in ("linear", "arm"):
        for B in Bs:
            rows.append(speed_row(kind, B, T, args.iters, repeats, budget))
            r = rows[-1]
            print(f"  {kind:6} B={B:<4} fwd/it {r['forward_per_iter_ratio']:.3f}  "
                  f"bwd {r['backward_ratio']:.3f}", flush=True)
    agree = [agreement(kind) for kind in ("linear", "arm")]
    print("  agreement done", flush=True)
    n_x0 = 32 if args.quick else 128
    lq = [lq_distribution("linear n6 m3 |u|<=0.5 (model of (a))", 6, 3, 0.5, 0, n_x0)]
    for seed in (1, 2, 3):
        lq.append(lq_distribution(f"linear n8 m4 |u|<=1 A seed {seed}", 8, 4, 1.0, seed, n_x0))
    print("  LQ distributions done", flush=True)
    cp_rows = cartpole_distribution()

    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch": torch.__version__, "mpc_pytorch": version("mpc"),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "dtype": "float64", "quick": args.quick,
            **code_version(),
            "iters": args.iters,
            "timing": f"median of up to {repeats} runs per library, the two libraries "
                      f"alternating, after one warm-up run each; at most {budget} s of repeats "
                      "per row",
            "load_average_at_start": load0, "load_average_at_end": os.getloadavg(),
            "mpc_settings": "lqr_iter=K, eps=1e-300, not_improved_lim=1e9, exit_unconverged="
                            "False, detach_unconverged=False, GradMethods.AUTO_DIFF (LinDx for"
                            " the linear model), default line search, T_mpc = T + 1",
            "dilqr_settings": "ILQRConfig(max_iter=K, tol=0), grad='implicit'",
            "targets": {"forward_per_iter_ratio": FWD_TARGET, "backward_ratio": BWD_TARGET},
            "arm": {"goal": ARM_GOAL, "weights": ARM_W, "terminal_weights": ARM_WT,
                    "bound": ARM_BOUND},
            "total_s": time.perf_counter() - t_start}
    (out / "general_models.json").write_text(json.dumps(finite_json(
        {"meta": meta, "speed": rows, "agreement": agree, "lq_iterations": lq,
         "cartpole_iterations": cp_rows}), indent=1, allow_nan=False))
    plot(rows, lq, cp_rows, out / "general_models.png")

    print(f"\nthreads={meta['threads']}, float64, K={args.iters} iterations, T={T}, "
          f"total {meta['total_s']:.0f} s")
    print(f"{'model':7} {'B':>4} {'ours ms/it':>10} {'mpc ms/it':>10} {'fwd ratio':>9} "
          f"{'<=0.2':>5} {'ours bwd ms':>11} {'mpc bwd ms':>10} {'bwd ratio':>9} {'<=0.5':>5}")
    for r in rows:
        print(f"{r['model']:7} {r['B']:>4} {r['dilqr_forward_per_iter_s'] * 1e3:>10.2f} "
              f"{r['mpc_forward_per_iter_s'] * 1e3:>10.2f} {r['forward_per_iter_ratio']:>9.3f} "
              f"{'yes' if r['meets_forward_target'] else 'no':>5} "
              f"{r['dilqr_backward_s'] * 1e3:>11.2f} {r['mpc_backward_s'] * 1e3:>10.2f} "
              f"{r['backward_ratio']:>9.3f} {'yes' if r['meets_backward_target'] else 'no':>5}")
    for a in agree:
        print(f"agreement {a['model']:6} B={a['B']}: converged DiLQR {a['dilqr_converged']}, "
              f"mpc {a['mpc_converged_by_projected_gradient']}, both {a['both_converged']}; "
              f"max |du| over both {a['max_u_diff_both_converged']}, max |dx| "
              f"{a['max_x_diff_both_converged']}; max |du| over all {a['max_u_diff_all']:.2e}; "
              f"cost higher than the other's on DiLQR "
              f"{a['samples_where_dilqr_cost_higher_by_1e-6']}"
              f", mpc {a['samples_where_mpc_cost_higher_by_1e-6']}")
    print(f"{'problem':42} {'it med':>6} {'it max':>6} {'conv':>5} {'max |rel dJ| vs QP':>18}")
    for r in lq:
        d = r["rel_cost_diff_to_qp_converged"]["max_abs"]
        fc = r["converged_but_cost_above_qp_by_1e-6"]
        print(f"{r['problem']:42} {r['iterations_median']:>6.1f} {r['iterations_max']:>6} "
              f"{r['converged_fraction']:>5.2f} {'-' if d is None else f'{d:.1e}':>18}"
              + (f"  ({len(fc)} converged but > 1e-6 above the QP optimum)" if fc else ""))
    for r in cp_rows:
        print(f"{r['problem']:42} {r['iterations_median']:>6.1f} {r['iterations_max']:>6} "
              f"{r['converged_fraction']:>5.2f}  (within 100: "
              f"{r['converged_within_100_fraction']:.2f})")


def plot(rows, lq, cp_rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    labels = [f"{r['model']} B{r['B']}" for r in rows]
    colors = ["C0" if r["model"] == "linear" else "C1" for r in rows]
    for ax, key, target, title in (
            (axes[0, 0], "forward_per_iter_ratio", FWD_TARGET,
             "forward time / iteration, DiLQR / mpc.pytorch"),
            (axes[0, 1], "backward_ratio", BWD_TARGET, "backward time, DiLQR / mpc.pytorch")):
        vals = [r[key] for r in rows]
        ax.barh(range(len(vals)), vals, color=colors)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
        ax.set_yticks(range(len(vals)), labels)
        ax.invert_yaxis()
        ax.axvline(target, color="r", ls="--", label=f"target {target}x")
        ax.axvline(1.0, color="gray", ls=":", lw=1)
        ax.set_xscale("log")
        lo, hi = min(vals + [target]) / 1.5, max(vals + [1.0]) * 1.5
        ax.set_xlim(lo, hi)
        ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20) if lo <= t <= hi]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    top = max(max(r["iterations"]) for r in lq)
    _iteration_hist(axes[1, 0], lq, np.arange(0.5, top + 1.5, 1 if top <= 40 else
                                                max(1, top // 40)),
                    lambda r: f"{r['problem']} (conv {r['converged_fraction']:.2f})",
                    "iterations to convergence (default tol)",
                    "DiLQR iterations, random box-constrained LQ (T=20)", 7)
    top = max(max(r["iterations"]) for r in cp_rows)
    _iteration_hist(axes[1, 1], cp_rows, np.linspace(0, top + 1, 31),
                    lambda r: f"max_iter={r['max_iter']} (conv {r['converged_fraction']:.2f})",
                    "iterations", "DiLQR iterations, cart-pole swing-up (B=32, T=30)", 8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()


def _iteration_hist(ax, rows, bins, label, xlabel: str, title: str, fontsize: int) -> None:
    """One panel of iteration-count histograms, a step outline per row."""
    for r in rows:
        ax.hist(r["iterations"], bins=bins, histtype="step", lw=1.5, label=label(r))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=fontsize)
