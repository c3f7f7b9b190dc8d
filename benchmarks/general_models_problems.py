"""Problem definitions of benchmarks/general_models.py: the user-defined models, both
libraries' controllers for them, the built-in cart-pole swing-up (from the task registry), and
the reference solutions (cvxpy QP optimum, projected gradient through the true model).

The conventions that make the two libraries' problems identical are in general_models.py's
docstring.
"""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import dilqr_rl as dl
from dilqr_rl import tasks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_mpc_pytorch import _patch_mpc  # noqa: E402  (mpc 0.0.6's uint8-mask fix)

DT = torch.float64


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


def linear_spec(n: int, m: int) -> tuple[list, list, list]:
    """The linear problems' ``(weights, goal, terminal weights)``: ``1/2 |x|^2 + 1/2 |u|^2`` per
    step plus ``1/2 |x_T|^2``."""
    return [1.0] * (n + m), [0.0] * (n + m), [1.0] * n


def tracking_cost(spec, n: int) -> dl.QuadraticCost:
    """DiLQR's cost of a ``(weights, goal, terminal weights)`` spec:
    ``dl.QuadraticCost.tracking`` (the ``1/2 w`` convention), float64."""
    w, goal, wT = (torch.tensor(v, dtype=DT) for v in spec)
    return dl.QuadraticCost.tracking(w, goal, wT, n_state=n).to(DT)


def problem(kind: str, B: int, T: int, seed: int = 0):
    """``(dynamics, cost, x0, bound, (weights, goal, terminal weights))`` for (a) or (b)."""
    g = torch.Generator().manual_seed(1000 + seed)
    if kind == "linear":
        n, m = 6, 3
        dyn = LinearModel(n, m, seed)
        spec = linear_spec(n, m)
        x0 = torch.randn(B, n, generator=g, dtype=DT)
        bound = 0.5
    else:
        dyn = TwoLinkArm()
        n = 4
        spec = (ARM_W, ARM_GOAL + [0.0, 0.0], ARM_WT)
        r = torch.rand(B, 4, generator=g, dtype=DT) * 2 - 1
        x0 = torch.stack([-math.pi / 2 + 0.3 * r[:, 0], 0.3 * r[:, 1], 0.5 * r[:, 2],
                          0.5 * r[:, 3]], -1)  # hanging down, perturbed
        bound = ARM_BOUND
    return dyn, tracking_cost(spec, n), x0, bound, spec


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


def cartpole_problem(B: int, seed: int = 0) -> tuple[tasks.Task, Tensor]:
    """The cart-pole swing-up task (its model, bounds and cost: :func:`dilqr_rl.tasks.get`)
    and ``B`` start states ``(B, n)`` float64 from its start distribution (``sample_start``,
    the env's), drawn with ``numpy.random.default_rng(seed)``."""
    task = tasks.get("cartpole")
    rng = np.random.default_rng(seed)
    x0 = torch.tensor(np.stack([task.sample_start(rng) for _ in range(B)]), dtype=DT)
    return task, x0


# ---------------------------------------------------------------------------------- references
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
