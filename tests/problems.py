"""Shared test problems (float64) and the finite-difference checker."""

from __future__ import annotations

import math

import torch

import dilqr_rl as dl

F64 = torch.float64


def task_problem(name: str) -> tuple[dl.Dynamics, dl.Cost]:
    """The registered task's true model and task cost, float64."""
    task = dl.tasks.get(name)
    return task.dynamics().double(), task.make_cost().double()


def pendulum(T: int = 15, bounded: bool = True, angles=(2.5, 1.0, 0.3)):
    dyn, cost = task_problem("pendulum")
    th = torch.tensor(angles, dtype=F64)
    x0 = torch.stack([th.cos(), th.sin(), 0.2 * torch.ones_like(th)], -1)
    task = dl.tasks.get("pendulum")
    lo, hi = (task.u_lower, task.u_upper) if bounded else (-math.inf, math.inf)
    return dyn, cost, x0, T, lo, hi


def cartpole(T: int = 15, bounded: bool = True):
    dyn, cost = task_problem("cartpole")
    th = torch.tensor([0.5, 1.5], dtype=F64)
    x0 = torch.stack([torch.tensor([0.3, -0.2], dtype=F64), torch.zeros(2, dtype=F64),
                      th.cos(), th.sin(), torch.zeros(2, dtype=F64)], -1)
    lo, hi = (-8.0, 8.0) if bounded else (-math.inf, math.inf)
    return dyn, cost, x0, T, lo, hi


def rocket(T: int = 12, bounded: bool = True):
    dyn = dl.Rocket(Jx=0.5, Jy=1.3, Jz=0.8, m=1.2, l=0.9).double()
    w = torch.zeros(16, dtype=F64)
    w[:3], w[3:6], w[6:10], w[10:13], w[13:] = 1.0, 0.1, 1.0, 0.1, 0.01
    goal = torch.zeros(16, dtype=F64)
    goal[6] = 1.0
    goal[13] = 12.0  # hover thrust ~ m g
    cost = dl.QuadraticCost.tracking(w, goal, n_state=13).double()
    x0 = torch.tensor([[3.0, -2, 1, -0.1, 0, 0, 1, 0, 0, 0, 0, 0.1, 0]], dtype=F64)
    lo, hi = (-11.0, 11.0) if bounded else (-math.inf, math.inf)
    return dyn, cost, x0, T, lo, hi


CFG = dl.ILQRConfig(max_iter=400, tol=1e-13)


def fd_check(dyn, cost, x0, T, lo, hi, grad="implicit", h=1e-6, directions=None, seed=0,
             config=CFG):
    """Relative errors of the layer's gradient against central differences of the converged
    solution, per parameter kind. Each re-solve warm-starts from the nominal solution (to
    stay on its branch) and must reproduce its active set (checked at theta +- h, +- 2h).

    ``directions``: parameter kinds checked along 2 random directions instead of every
    coordinate (for large parameter vectors).
    """
    directions = directions or ()
    ctrl = dl.DiLQR(dyn, cost, horizon=T, u_lower=lo, u_upper=hi, config=config, grad=grad)
    ref = dl.DiLQR(dyn, cost, horizon=T, u_lower=lo, u_upper=hi, config=CFG)
    x0 = x0.clone().requires_grad_(True)
    sol = ctrl(x0)
    assert bool(sol.converged.all()) or config.tol == 0
    gen = torch.Generator().manual_seed(seed)
    ax = torch.randn(sol.x.shape, generator=gen, dtype=F64)
    au = torch.randn(sol.u.shape, generator=gen, dtype=F64)

    def loss_of(s):
        return (ax * s.x).sum() + (au * s.u).sum()

    params = [("x0", x0), *dyn.named_parameters(), *cost.named_parameters()]
    grads = torch.autograd.grad(loss_of(sol), [p for _, p in params], allow_unused=True)
    nominal = ref(x0.detach())
    u_nom = nominal.u.detach()
    errors = {}
    for (name, p), g in zip(params, grads, strict=True):
        g = torch.zeros_like(p) if g is None else g
        if name in directions:
            vs = [torch.randn(p.shape, generator=gen, dtype=F64) for _ in range(2)]
        else:
            vs = list(torch.eye(p.numel(), dtype=F64).reshape(p.numel(), *p.shape))
        fd, an = [], []
        for v in vs:
            vals = {}
            for s in (2.0, 1.0, -1.0, -2.0):
                with torch.no_grad():
                    p.add_(s * h * v)
                    try:
                        so = ref(x0.detach(), u_init=u_nom)
                    finally:
                        p.sub_(s * h * v)
                assert torch.equal(so.free, nominal.free), f"active set changed for {name}"
                vals[s] = loss_of(so).item()
            # fourth-order central difference: truncation O(h^4), so small parameters (a
            # control weight of 1e-3) are not swamped by it
            fd.append((8 * (vals[1.0] - vals[-1.0]) - (vals[2.0] - vals[-2.0])) / (12 * h))
            an.append((g * v).sum().item())
        fd, an = torch.tensor(fd, dtype=F64), torch.tensor(an, dtype=F64)
        errors[name] = ((fd - an).norm() / fd.norm().clamp_min(1e-12)).item()
    return errors, sol
