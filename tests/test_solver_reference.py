"""Reference tests of the iLQR solver against independent oracles (tests/oracles.py).

The specification of the solver, not a regression record: every sample the solver reports as
converged must be a verified strict local minimum of the box-constrained problem (first- and
second-order conditions from autograd on a plain rollout), and on box-constrained linear-
quadratic problems (strictly convex: one optimum) it must be the outside QP solver's optimum.

Problems are drawn from fixed seeds over several sizes, with open-loop unstable dynamics, an
affine term and tight bounds (a large share of the optimal controls on a bound). All in float64.
Iteration counts are printed (``pytest -s``), never asserted: they are benchmark targets.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import dilqr_rl as dl

from .oracles import (
    LinearModel,
    hessian_one,
    lq_unconstrained_u,
    objective,
    reduced_hessian,
    solve_box_lq_qp,
    verify_local_min,
)

F64 = torch.float64
CFG = dl.ILQRConfig(max_iter=100, tol=1e-7)


@pytest.fixture(autouse=True)
def _quiet_unconverged():
    # unconverged samples are counted and asserted on here, not warned about
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.UnconvergedWarning)
        yield


# ---------------------------------------------------------------------------------- problems
def random_lq(seed: int, n: int, m: int, B: int, T: int, *, s: float | None = None,
              bound: float | None = None, active_share: float = 0.3, c_scale: float = 0.5,
              rho_max: float = 1.5, weights: str = "random"):
    """A random box-constrained LQ problem.

    ``A = I + s randn`` (``s = 0.45 / sqrt(n)`` by default: the eigenvalues spread ~0.45
    around 1, so most draws are open-loop unstable), redrawn while its spectral radius exceeds
    ``rho_max`` (beyond ~1.5 at T = 20 the problem is no longer an honest control problem: costs
    of 1e11, Hessian condition 1e12, and Clarabel itself fails); ``Bm = randn``; an affine term
    ``c = c_scale randn``; ``B`` starts ``x0 = randn``; tracking weights drawn in ``[0.5, 2]``
    (states) and ``[0.2, 1]`` (controls) with a random goal, or ``Q = R = I`` and goal 0
    (``weights="unit"``). The bound ``|u| <= bound``: given, or tight by construction, the
    ``1 - active_share`` quantile of the unconstrained optimum's ``|u|`` over the batch, so that
    roughly ``active_share`` of the unconstrained optimal controls or more violate it."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=F64)

    s = 0.45 / math.sqrt(n) if s is None else s
    for _ in range(100):
        A = torch.eye(n, dtype=F64) + s * randn(n, n)
        if float(torch.linalg.eigvals(A).abs().max()) <= rho_max:
            break
    else:
        raise RuntimeError("no draw of A with a spectral radius below rho_max")
    Bm = randn(n, m)
    c = c_scale * randn(n)
    if weights == "unit":
        wx, wu = torch.ones(n, dtype=F64), torch.ones(m, dtype=F64)
        goal = torch.zeros(n + m, dtype=F64)
    else:
        wx, wu = 0.5 + 1.5 * rand(n), 0.2 + 0.8 * rand(m)
        goal = torch.cat([0.3 * randn(n), 0.05 * randn(m)])
    x0 = randn(B, n)
    if bound is None:
        u_unc = lq_unconstrained_u(A, Bm, c, x0, T, wx, wu, goal)
        bound = float(np.quantile(np.abs(u_unc), 1 - active_share))
    rho = float(torch.linalg.eigvals(A).abs().max())
    return dict(A=A, Bm=Bm, c=c, x0=x0, bound=bound, wx=wx, wu=wu, goal=goal, rho=rho)


def lq_controller(p, T: int, config: dl.ILQRConfig = CFG) -> dl.DiLQR:
    n = p["A"].shape[0]
    cost = dl.QuadraticCost.tracking(torch.cat([p["wx"], p["wu"]]), p["goal"],
                                     n_state=n).double()
    with torch.no_grad():  # tracking() builds in the default dtype: restore the float64 values
        cost.weights.copy_(torch.cat([p["wx"], p["wu"]]))
        cost.goal.copy_(p["goal"])
        cost.terminal_weights.copy_(p["wx"])
    return dl.DiLQR(LinearModel(p["A"], p["Bm"], p["c"]), cost, horizon=T,
                    u_lower=-p["bound"], u_upper=p["bound"], config=config)


def qp_reference(p, T: int):
    """The QP optimum of every sample: costs ``(B,)``, ``u (B, T, m)``, ``active (B, T, m)``."""
    A, Bm, c = (p[k].numpy() for k in ("A", "Bm", "c"))
    sols = [solve_box_lq_qp(A, Bm, c, x0.numpy(), T, -p["bound"], p["bound"], p["wx"].numpy(),
                            p["wu"].numpy(), p["goal"].numpy()) for x0 in p["x0"]]
    return (torch.tensor([q.cost for q in sols], dtype=F64),
            torch.tensor(np.stack([q.u for q in sols]), dtype=F64),
            torch.tensor(np.stack([q.active for q in sols])))


def iteration_stats(sol) -> str:
    it = sol.iterations.double()
    return f"iterations median {float(it.median()):.0f}, max {int(it.max())}"


# ---------------------------------------------------------------------- the oracles themselves
def test_qp_oracle_matches_the_tracking_cost_convention():
    """The QP's optimal value equals ``QuadraticCost.tracking(...).total`` on the QP's own
    trajectory (random weights and goal, default terminal weights), and polishing on the
    active set only refines Clarabel's point."""
    T = 12
    p = random_lq(7, 5, 2, 6, T)
    ctrl = lq_controller(p, T)
    A, Bm, c = (p[k].numpy() for k in ("A", "Bm", "c"))
    n_active = 0
    for x0 in p["x0"]:
        q = solve_box_lq_qp(A, Bm, c, x0.numpy(), T, -p["bound"], p["bound"], p["wx"].numpy(),
                            p["wu"].numpy(), p["goal"].numpy())
        x = torch.tensor(q.x, dtype=F64)[None]
        u = torch.tensor(q.u, dtype=F64)[None]
        # the trajectory is the linear model's own rollout (fast step and generic vmap path)
        theta = ctrl.dynamics.theta().detach()[None]
        xr = dl.rollout(ctrl.dynamics, x0[None], u, theta)
        torch.testing.assert_close(xr.detach(), x, rtol=1e-12, atol=1e-12)
        xg = dl.Dynamics.step(ctrl.dynamics, x[:, :-1], u, theta[:, None])
        torch.testing.assert_close(xg.detach(), x[:, 1:], rtol=1e-12, atol=1e-12)
        P = {k: v.detach()[None] for k, v in ctrl.cost.params().items()}
        total = float(ctrl.cost.total(x, u, P))
        assert abs(total - q.cost) <= 1e-12 * (1 + abs(q.cost)), (total, q.cost)
        assert q.polished
        assert q.cost <= q.clarabel_cost + 1e-12 * abs(q.cost)
        assert q.clarabel_cost - q.cost <= 1e-8 * (1 + abs(q.cost))
        n_active += int(q.active.sum())
    assert n_active > 0


def test_reduced_hessian_matches_autograd_functional_hessian():
    """The batched Hessian of :func:`verify_local_min` equals
    ``torch.autograd.functional.hessian`` of one sample's ``J(u)`` (pendulum: nonlinear)."""
    ctrl = dl.tasks.get("pendulum").controller(8, config=CFG)
    gen = torch.Generator().manual_seed(0)
    th = torch.rand(3, generator=gen, dtype=F64) * 6
    x0 = torch.stack([th.cos(), th.sin(), torch.randn(3, generator=gen, dtype=F64)], -1)
    u = torch.randn(3, 8, 1, generator=gen, dtype=F64)
    g, H = reduced_hessian(ctrl, x0, u)
    for b in range(3):
        torch.testing.assert_close(H[b], hessian_one(ctrl, x0[b], u[b]), rtol=1e-10,
                                   atol=1e-12)
        ub = u[b:b + 1].clone().requires_grad_(True)
        (gb,) = torch.autograd.grad(objective(ctrl, x0[b:b + 1], ub).sum(), ub)
        torch.testing.assert_close(g[b], gb.reshape(-1), rtol=1e-12, atol=1e-14)


def test_verify_local_min_accepts_the_qp_optimum_and_rejects_perturbations():
    """The local-minimum check is discriminating, independently of the solver: it accepts the
    outside QP's optimum of every sample, and rejects the same point with one free control
    moved by 1e-2 (first order) or one active control moved inside the box (sign)."""
    T = 10
    p = random_lq(11, 6, 3, 12, T)
    ctrl = lq_controller(p, T)
    _, u_qp, active = qp_reference(p, T)
    rep = verify_local_min(ctrl, p["x0"], u_qp)
    assert bool(rep.ok.all()), [rep.describe(b) for b in torch.nonzero(~rep.ok)[:, 0]]
    print(f"\nQP optima: pg/gscale max {float((rep.pg / rep.gscale).max()):.2g}, "
          f"eig_min/eig_max min {float((rep.eig_min / rep.eig_max).min()):.2g}")
    has_free = (~active).any(2).any(1)
    has_active = active.any(2).any(1)
    assert bool(has_free.all()) and int(has_active.sum()) >= 6
    moved_free, moved_active = u_qp.clone(), u_qp.clone()
    for b in range(u_qp.shape[0]):
        t, j = torch.nonzero(~active[b])[0]
        moved_free[b, t, j] -= 1e-2 if u_qp[b, t, j] >= 0 else -1e-2  # towards the inside
        if has_active[b]:
            t, j = torch.nonzero(active[b])[0]
            moved_active[b, t, j] *= 0.9
    rep = verify_local_min(ctrl, p["x0"], moved_free)
    assert not bool(rep.kkt.any()), [rep.describe(b) for b in torch.nonzero(rep.kkt)[:, 0]]
    x0a = p["x0"][has_active]
    rep2 = verify_local_min(ctrl, x0a, moved_active[has_active])
    assert not bool(rep2.kkt.any()), [rep2.describe(b) for b in torch.nonzero(rep2.kkt)[:, 0]]
    print(f"perturbed: pg/pg_tol min {float((rep.pg / rep.pg_tol).min()):.3g} (free control "
          f"moved), {float((rep2.pg / rep2.pg_tol).min()):.3g} (active control moved inside)")


# --------------------------------------------------------------- box-constrained LQ vs the QP
LQ_CASES = [(n, m, T) for n, m in ((4, 2), (6, 3), (8, 4)) for T in (10, 20)]
B_LQ = 32


def test_random_problems_are_open_loop_unstable_in_places():
    """The problem generator really produces open-loop unstable draws."""
    rhos = [random_lq(1000 * n + T, n, m, 1, T)["rho"] for n, m, T in LQ_CASES]
    print("\nspectral radii:", " ".join(f"{r:.3f}" for r in rhos))
    assert sum(r > 1.05 for r in rhos) >= 3


@pytest.mark.parametrize("n,m,T", LQ_CASES)
def test_box_lq_matches_qp_optimum(n, m, T):
    """One batched solve of ``B_LQ`` random starts: every sample converges, and every
    converged sample is the QP optimum (cost to 1e-6 relative, controls to 1e-5) and a
    verified strict local minimum."""
    p = random_lq(1000 * n + T, n, m, B_LQ, T)
    ctrl = lq_controller(p, T)
    sol = ctrl(p["x0"])
    J_qp, u_qp, active = qp_reference(p, T)
    frac_active = float(active.double().mean())
    conv = sol.converged
    J, u = sol.cost.detach(), sol.u.detach()
    rel = (J - J_qp) / J_qp.abs().clamp(min=1e-12)
    du = (u - u_qp).abs().amax((1, 2))
    rep = verify_local_min(ctrl, p["x0"], sol)
    print(f"\n(n, m, T) = ({n}, {m}, {T}): rho(A) = {p['rho']:.3f}, |u| <= {p['bound']:.2f}, "
          f"{frac_active:.0%} of optimal controls active, {int(conv.sum())}/{B_LQ} converged, "
          f"{iteration_stats(sol)}, J/J_qp - 1 max {float(rel[conv].max()):.2g}, "
          f"|u - u_qp| max {float(du[conv].max()):.2g}")
    assert frac_active >= 0.1, "too few active controls: the test would not exercise bounds"
    # the model is the problem: the first iteration's QP solves it (to the end: its subproblem
    # is never the inexact one, dilqr_rl.qp.solve_qp), the second switches to Newton mode,
    # the third certifies
    assert int(sol.iterations.max()) <= 3, iteration_stats(sol)

    failures = []
    if not bool(conv.all()):
        failures.append(f"{int((~conv).sum())}/{B_LQ} samples did not converge in "
                        f"{CFG.max_iter} iterations; their J/J_qp - 1: "
                        + ", ".join(f"{float(r):.2g}" for r in rel[~conv]))
    for b in torch.nonzero(conv)[:, 0].tolist():
        bad = []
        if not rel[b] <= 1e-6:
            bad.append(f"J/J_qp = {float(J[b] / J_qp[b]):.6g}")
        if not du[b] <= 1e-5:
            bad.append(f"|u - u_qp| = {float(du[b]):.2g}")
        if not bool(rep.ok[b]):
            bad.append("not a local min: " + rep.describe(b))
        if bad:
            failures.append(f"sample {b} (converged, {int(sol.iterations[b])} iterations): "
                            + "; ".join(bad))
    assert not failures, f"(n, m, T) = ({n}, {m}, {T}), rho = {p['rho']:.3f}:\n" + \
        "\n".join(failures)


# ------------------------------------------------------- converged => KKT, over many draws
# The solver issue's problem family: A = I + 0.2 randn, n = 8, m = 4, an affine term,
# Q = R = I, |u| <= 1, T = 20 (spectral radii ~1.3-1.8: strongly open-loop unstable).
KKT_DRAWS = range(3)
B_KKT = 64


@pytest.mark.slow
@pytest.mark.parametrize("draw", KKT_DRAWS)
def test_converged_is_never_a_non_kkt_point(draw):
    """Every sample reported ``converged=True`` passes :func:`verify_local_min`."""
    T = 20
    p = random_lq(5000 + draw, 8, 4, B_KKT, T, s=0.2, bound=1.0, c_scale=1.0, weights="unit",
                  rho_max=math.inf)
    ctrl = lq_controller(p, T)
    sol = ctrl(p["x0"])
    rep = verify_local_min(ctrl, p["x0"], sol)
    conv = sol.converged
    bad = torch.nonzero(conv & ~rep.ok)[:, 0].tolist()
    print(f"\ndraw {draw}: rho(A) = {p['rho']:.3f}, {int(conv.sum())}/{B_KKT} converged, "
          f"{iteration_stats(sol)}, {len(bad)} converged non-minima")
    if bad:  # the QP optimum of the flagged samples, for the record
        A, Bm, c = (p[k].numpy() for k in ("A", "Bm", "c"))
        ratio = {}
        for b in bad:
            try:
                q = solve_box_lq_qp(A, Bm, c, p["x0"][b].numpy(), T, -1.0, 1.0, 1.0, 1.0)
                ratio[b] = f"J/J_qp = {float(sol.cost.detach()[b]) / q.cost:.6g}"
            except RuntimeError as e:
                ratio[b] = f"QP: {e}"
    assert not bad, f"draw {draw}, rho = {p['rho']:.3f}: {len(bad)}/{int(conv.sum())} " \
        "converged samples are not local minima:\n" + "\n".join(
            f"sample {b} ({int(sol.iterations[b])} iterations): {ratio[b]}; {rep.describe(b)}"
            for b in bad)


# ------------------------------------------------------------------------- the saddle start
def test_pendulum_hanging_at_rest_is_not_a_converged_saddle():
    """README's example from exactly hanging down at rest: ``u = 0`` is a stationary point
    (a saddle: the reduced Hessian has a negative eigenvalue). A converged answer must be a
    strict local minimum, below the ``u = 0`` cost, and the swing-up found from a start nudged
    by 1e-6 (the same cost by symmetry)."""
    T = 20
    ctrl = dl.tasks.get("pendulum").controller(T, config=CFG)
    x0 = torch.tensor([[-1.0, 0.0, 0.0]], dtype=F64)
    J_zero = float(objective(ctrl, x0, torch.zeros(1, T, 1, dtype=F64)).detach())
    rep_zero = verify_local_min(ctrl, x0, torch.zeros(1, T, 1, dtype=F64))
    assert not bool(rep_zero.pd[0]) and float(rep_zero.eig_min[0]) < 0  # u = 0: a saddle

    d = 1e-6
    x0n = torch.tensor([[math.cos(math.pi - d), math.sin(math.pi - d), 0.0]], dtype=F64)
    ref = ctrl(x0n)
    assert bool(ref.converged[0])
    rep_ref = verify_local_min(ctrl, x0n, ref)
    assert bool(rep_ref.ok[0]), rep_ref.describe(0)
    J_ref = float(ref.cost.detach())

    sol = ctrl(x0)
    rep = verify_local_min(ctrl, x0, sol)
    J = float(sol.cost.detach())
    print(f"\nu = 0: J = {J_zero:.6g}, eig_min {float(rep_zero.eig_min[0]):.3g}; nudged start: "
          f"J = {J_ref:.10g}, {int(ref.iterations[0])} iterations; exact start: converged "
          f"{bool(sol.converged[0])}, {int(sol.iterations[0])} iterations, {rep.describe(0)}")
    if bool(sol.converged[0]):
        failures = []
        if not bool(rep.ok[0]):
            failures.append("converged to a point that is not a strict local minimum: "
                            + rep.describe(0))
        if not J < J_zero:
            failures.append(f"cost {J:.10g} not below the u = 0 cost {J_zero:.10g}")
        if not abs(J - J_ref) <= 1e-6 * abs(J_ref):
            failures.append(f"cost {J:.10g} vs {J_ref:.10g} from the nudged start")
        assert not failures, "\n".join(failures)


# ------------------------------------------------------------ nonlinear, m = 2, tight bounds
class TwoLinkArm(dl.Dynamics):
    """Planar two-link arm under gravity (uniform rods, joint friction), torques at both
    joints, semi-implicit Euler. State ``(q1, q2, dq1, dq2)``, ``q1`` from hanging down."""

    n_state, n_ctrl = 4, 2

    def __init__(self, m1=1.0, m2=1.0, l1=1.0, l2=1.0, g=9.81, b=0.1, dt=0.05):
        super().__init__()

        def param(v):
            return torch.nn.Parameter(torch.tensor(float(v), dtype=F64))

        self.m1, self.m2, self.l1, self.l2 = param(m1), param(m2), param(l1), param(l2)
        self.grav, self.fric = param(g), param(b)
        self.dt = dt

    def forward(self, x, u):
        q1, q2, w1, w2 = x.unbind(-1)
        m1, m2, l1, l2, g, b = self.m1, self.m2, self.l1, self.l2, self.grav, self.fric
        c1, c2 = l1 / 2, l2 / 2
        I1, I2 = m1 * l1**2 / 12, m2 * l2**2 / 12
        co, si = torch.cos(q2), torch.sin(q2)
        M11 = m1 * c1**2 + m2 * (l1**2 + c2**2 + 2 * l1 * c2 * co) + I1 + I2
        M12 = m2 * (c2**2 + l1 * c2 * co) + I2
        M22 = m2 * c2**2 + I2
        h = m2 * l1 * c2 * si
        G1 = (m1 * c1 + m2 * l1) * g * torch.sin(q1) + m2 * c2 * g * torch.sin(q1 + q2)
        G2 = m2 * c2 * g * torch.sin(q1 + q2)
        r1 = u[..., 0] + h * (2 * w1 * w2 + w2**2) - G1 - b * w1
        r2 = u[..., 1] - h * w1**2 - G2 - b * w2
        det = M11 * M22 - M12**2
        a1 = (M22 * r1 - M12 * r2) / det
        a2 = (M11 * r2 - M12 * r1) / det
        w1n, w2n = w1 + self.dt * a1, w2 + self.dt * a2
        return torch.stack([q1 + self.dt * w1n, q2 + self.dt * w2n, w1n, w2n], -1)


def test_two_link_arm_converged_samples_are_local_minima():
    """Nonlinear, m = 2: reach the arm out horizontally (gravity torque ~20 at the shoulder)
    with torques limited to 3, from random poses and velocities. Every converged sample is a
    verified strict local minimum."""
    T, B, ub = 15, 32, 3.0
    cost = dl.QuadraticCost.tracking([1, 1, 0.1, 0.1, 0.01, 0.01], [math.pi / 2, 0, 0, 0, 0, 0],
                                     n_state=4).double()
    ctrl = dl.DiLQR(TwoLinkArm(), cost, horizon=T, u_lower=-ub, u_upper=ub, config=CFG)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.cat([(2 * torch.rand(B, 2, generator=gen, dtype=F64) - 1) * math.pi,
                    0.5 * torch.randn(B, 2, generator=gen, dtype=F64)], -1)
    sol = ctrl(x0)
    rep = verify_local_min(ctrl, x0, sol)
    conv = sol.converged
    frac_active = float((sol.u.detach().abs() >= ub).double().mean())
    bad = torch.nonzero(conv & ~rep.ok)[:, 0].tolist()
    print(f"\ntwo-link arm: {int(conv.sum())}/{B} converged, {iteration_stats(sol)}, "
          f"{frac_active:.0%} of controls on a bound, {len(bad)} converged non-minima")
    assert frac_active >= 0.1
    assert not bad, "\n".join(f"sample {b}: {rep.describe(b)}" for b in bad)
