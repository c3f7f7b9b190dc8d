"""The forward solver's Riccati pass as a scan (dilqr_rl/lqr_scan.py) against the sequential
pass, and ilqr_solve with the scan on and off."""

import dataclasses
import math

import pytest
import torch

from dilqr_rl import lqr_scan, tasks
from dilqr_rl.ilqr import ILQRConfig, ilqr_solve
from dilqr_rl.lqr import lqr_backward
from dilqr_rl.lqr_scan import lqr_backward_scan, riccati_pass

from .test_lqr import random_lqr

F64 = torch.float64


def _proximal(C, mu, n):
    """``C`` with ``mu I`` added to its control block: the problem the scan regularizes."""
    C = C.clone()
    C[..., n:, n:] += mu[:, None, None, None] * torch.eye(C.shape[-1] - n, dtype=C.dtype)
    return C


def _problem(B, T, n, m, seed, bounds):
    F, _, C, c, CT, cT, _ = random_lqr(B, T, n, m, seed)
    F = F / 2  # a stable-ish open loop, so the costates stay of order 1 over T
    g = torch.Generator().manual_seed(seed + 1)
    mu = 10.0 ** torch.empty(B, dtype=F64).uniform_(-9, -1, generator=g)
    kw = {"mu": mu}
    if bounds:
        r = torch.rand(B, T, m, generator=g, dtype=F64)
        kw["at_lower"], kw["at_upper"] = r < 0.2, r > 0.8
        kw["free"] = torch.rand(B, T, m, generator=g, dtype=F64) > 0.1
    return F, C, c, CT, cT, kw


def _close(got, ref, tol=1e-10):
    scale = max(1.0, float(ref.abs().max()))
    assert float((got - ref).abs().max()) <= tol * scale


@pytest.mark.parametrize("n, m", [(3, 1), (4, 2), (5, 3)])
@pytest.mark.parametrize("bounds", [False, True])
def test_scan_pass_equals_sequential_pass_on_the_proximal_problem(n, m, bounds):
    """Gains, held set, costates, gradients, value functions and pivots: the scan with ``mu``
    equals the sequential pass on ``C_uu + mu I`` (mu None), to 1e-10 in float64."""
    B, T = 4, 37
    F, C, c, CT, cT, kw = _problem(B, T, n, m, 7 * n + m, bounds)
    mu = kw.pop("mu")
    got, applies = lqr_backward_scan(F, C, c, CT, cT, mu=mu, **kw)
    ref = lqr_backward(F, _proximal(C, mu, n), c, CT, cT, costates=True, **kw)
    assert bool(applies.all()) and bool(got.ok.all())
    assert torch.equal(got.free, ref.free)
    if bounds:
        assert not bool(got.free.all())  # the held set is exercised
    for name in ("K", "k", "lam", "gu", "V", "v"):
        _close(getattr(got, name), getattr(ref, name))
    # the sequential pivots on the proximal problem include mu; the scan's do not
    _close(got.pivot + mu, ref.pivot)
    _close(got.Quu + mu[:, None, None, None] * torch.eye(m, dtype=F64), ref.Quu)


@pytest.mark.parametrize("n, m", [(3, 1), (4, 2)])
def test_scan_pass_without_regularization_equals_the_default_pass(n, m):
    F, C, c, CT, cT, kw = _problem(3, 50, n, m, 11 + n, True)
    kw.pop("mu")
    got, applies = lqr_backward_scan(F, C, c, CT, cT, **kw)
    ref = lqr_backward(F, C, c, CT, cT, costates=True, **kw)
    assert bool(applies.all())
    for name in ("K", "k", "lam", "gu", "V", "v", "pivot", "Quu"):
        _close(getattr(got, name), getattr(ref, name))


def test_riccati_pass_redoes_inapplicable_samples_sequentially(monkeypatch):
    """A sample with an indefinite ``Quu`` and one whose ``m = 1`` step leaves the box are
    redone by the sequential pass (exactly its result); the others keep the scan's."""
    B, T, n = 3, 20, 3
    F, C, c, CT, cT, kw = _problem(B, T, n, 1, 5, False)
    mu = kw["mu"]
    C[1, 7, n, n] = -50.0  # sample 1: Quu + mu not positive definite at step 7
    lo = torch.full((B, T, 1), -math.inf, dtype=F64)
    hi = torch.full((B, T, 1), math.inf, dtype=F64)
    seq = lqr_backward(F, C, c, CT, cT, mu=mu, box_lower=lo, box_upper=hi)
    lo[2], hi[2] = -1e-3 * seq.k[2].abs().amax(), 1e-3 * seq.k[2].abs().amax()  # sample 2
    monkeypatch.setattr(lqr_scan, "FORWARD_SCAN", True)
    got = riccati_pass(F, C, c, CT, cT, mu=mu, box_lower=lo, box_upper=hi)
    ref = lqr_backward(F, C, c, CT, cT, mu=mu, box_lower=lo, box_upper=hi, costates=True)
    scan, applies = lqr_backward_scan(F, C, c, CT, cT, mu=mu, box_lower=lo, box_upper=hi)
    assert applies.tolist() == [True, False, False]
    assert not bool(ref.ok[1]) and bool(ref.boxed[2])
    for name in ("K", "k", "free", "ok", "pivot", "boxed"):
        assert torch.equal(getattr(got, name)[1:], getattr(ref, name)[1:]), name
        assert torch.equal(getattr(got, name)[:1], getattr(scan, name)[:1]), name


def _same_solution_both_ways(monkeypatch, task_name: str, T: int, seed: int, module,
                             flag: str) -> None:
    """Solve 4 problems of the task with ``module.flag`` off and on: both certified, same
    controls to 1e-6 and same cost to 1e-9 relative."""
    task = tasks.get(task_name)
    ctrl = task.controller(horizon=T)
    x0 = task.sample_demo_start(torch.Generator().manual_seed(seed), 4).to(F64)
    out = {}
    with torch.no_grad():
        theta, P = ctrl._params(4, x0, None, {})
        lo, hi = ctrl._bounds(4, F64, x0.device)
        for on in (False, True):
            monkeypatch.setattr(module, flag, on)
            out[on] = ilqr_solve(ctrl.dynamics, ctrl.cost, x0, theta, P,
                                 torch.zeros(4, T, task.n_ctrl, dtype=F64), lo, hi,
                                 ILQRConfig(max_iter=200))
    a, b = out[False], out[True]
    assert bool(a.converged.all()) and bool(b.converged.all())
    assert float((a.u - b.u).abs().max()) <= 1e-6
    assert float(((a.cost - b.cost) / a.cost.abs()).abs().max()) <= 1e-9


@pytest.mark.parametrize("task_name, T", [("pendulum", 40), ("cartpole", 30)])
def test_ilqr_solve_same_solution_with_scan_on_and_off(monkeypatch, task_name, T):
    """Same certified solutions with every forward Riccati pass a scan and with none."""
    _same_solution_both_ways(monkeypatch, task_name, T, 3, lqr_scan, "FORWARD_SCAN")


# -------------------------------------------------------------- closed-loop gradients (long T)

@pytest.mark.parametrize("n, m", [(3, 1), (4, 2)])
def test_closed_loop_scan_equals_sequential_closed_loop_pass(n, m):
    """The closed-loop pass (held set from the value functions) by the scan, its held set
    found by the fixed-point iteration, equals the sequential one on the proximal problem."""
    B, T = 4, 33
    F, C, c, CT, cT, kw = _problem(B, T, n, m, 3 * n + m, True)
    mu = kw.pop("mu")
    got, applies = lqr_backward_scan(F, C, c, CT, cT, mu=mu, closed_loop=True, **kw)
    ref = lqr_backward(F, _proximal(C, mu, n), c, CT, cT, closed_loop=True, **kw)
    assert bool(applies.any())
    a = applies
    assert torch.equal(got.free[a], ref.free[a])
    for name in ("K", "k", "lam", "gu", "V", "v", "Kg"):
        _close(getattr(got, name)[a], getattr(ref, name)[a])


@pytest.mark.parametrize("closed_loop", [False, True])
@pytest.mark.parametrize("m", [1, 2])
def test_predicted_change_is_the_exact_first_order_change(closed_loop, m):
    """``predicted_change(g, du, dx)`` equals the linear term ``sum c . dz + cT . dx_T`` of the
    LQ cost for any control change ``du`` and its linear state response ``dx`` (no
    regularization, where both gradients are exact), with the held set of the pass."""
    from dilqr_rl.lqr import lqr_rollout
    from dilqr_rl.lqr_gains import predicted_change

    B, T, n = 3, 25, 3
    F, C, c, CT, cT, kw = _problem(B, T, n, m, 40 + m, True)
    kw.pop("mu")
    g = lqr_backward(F, C, c, CT, cT, costates=True, closed_loop=closed_loop, **kw)
    du = torch.randn(B, T, m, generator=torch.Generator().manual_seed(1), dtype=F64)
    zero = torch.zeros(B, T, m, n, dtype=F64)
    dx, _ = lqr_rollout(F, zero, du, torch.zeros(B, n, dtype=F64))
    dz = torch.cat([dx[:, :-1], du], -1)
    exact = (c * dz).sum((1, 2)) + (cT * dx[:, -1]).sum(-1)
    _close(predicted_change(g, du, dx), exact, 1e-11)
    if closed_loop:  # and the open-loop formula with closed-loop gradients is not it
        assert float((predicted_change(dataclasses.replace(g, Kg=None), du, dx) - exact).abs(
        ).max()) > 1e-6


@pytest.mark.parametrize("task_name, T", [("pendulum", 40), ("cartpole", 30)])
@pytest.mark.parametrize("scan", [False, True])
def test_ilqr_solve_same_solution_with_closed_loop_gradients(monkeypatch, task_name, T, scan):
    """Closed-loop gradients (used from CLOSED_LOOP_MIN_T on), by the sequential pass or by
    the scan, reach the same certified solutions as the open-loop ones on the horizons where
    both work."""
    from dilqr_rl import ilqr_newton

    monkeypatch.setattr(lqr_scan, "FORWARD_SCAN", scan)
    _same_solution_both_ways(monkeypatch, task_name, T, 5, ilqr_newton, "CLOSED_LOOP")


@pytest.mark.parametrize("B", [3, 70])  # batch-major and batch-last scalar paths
def test_closed_loop_scalar_paths_equal_the_reference_pass(B):
    from dilqr_rl import lqr

    F, C, c, CT, cT, kw = _problem(B, 30, 3, 1, B, True)
    fast = lqr_backward(F, C, c, CT, cT, closed_loop=True, **kw)
    ref = lqr._riccati_reference(F, C, c, CT, cT, None, kw["mu"], kw["free"], kw["at_lower"],
                                 kw["at_upper"], True, closed_loop=True)
    assert torch.equal(fast.free, ref.free)
    for name in ("K", "k", "lam", "gu", "V", "v", "Kg", "pivot"):
        _close(getattr(fast, name), getattr(ref, name))


def test_implicit_gradient_multipliers_closed_loop_equal_costates_at_a_solution(monkeypatch):
    """At a converged solution the value-function multipliers that the implicit gradient uses
    on long horizons equal the open-loop costates (pendulum, T = 40, bounds active)."""
    from dilqr_rl import grad, ilqr_newton
    from dilqr_rl.derivatives import derivatives

    task = tasks.get("pendulum")
    T = 40
    ctrl = task.controller(horizon=T)
    x0 = task.sample_demo_start(torch.Generator().manual_seed(2), 3).to(F64)
    with torch.no_grad():
        theta, P = ctrl._params(3, x0, None, {})
        lo, hi = ctrl._bounds(3, F64, x0.device)
        sol = ilqr_solve(ctrl.dynamics, ctrl.cost, x0, theta, P,
                         torch.zeros(3, T, 1, dtype=F64), lo, hi, ILQRConfig(max_iter=200))
        assert bool(sol.converged.all())
        free = (sol.u > lo + 1e-9) & (sol.u < hi - 1e-9)
        assert not bool(free.all())
        d = derivatives(ctrl.dynamics, ctrl.cost, sol.x, sol.u, theta, P)
        lam = {}
        for on in (False, True):
            monkeypatch.setattr(ilqr_newton, "CLOSED_LOOP", on)
            lam[on] = grad._multipliers(d, free)
    _close(lam[True], lam[False], 1e-6)


def test_gpu_benchmark_long_horizon_section_quick_on_cpu():
    """benchmarks/gpu.py's long-horizon section (CUDA-only by default) in its quick mode on the
    CPU: every part timed both ways, and the two passes agree."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    spec = importlib.util.spec_from_file_location("gpu_bench", path)
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    rows = gpu.long_horizon_sweep(["cpu"], quick=True)
    assert sorted((r["part"], r["T"]) for r in rows) == [
        (p, T) for p in ("backward", "iteration", "pass") for T in (8, 16)]
    for r in rows:
        assert r["sequential_s"] > 0 and r["scan_s"] > 0
    for r in rows:
        if r["part"] == "backward":
            assert max(r["max_rel_diff_x"], r["max_rel_diff_u"]) <= 1e-10
        if r["part"] == "pass":
            assert r["max_rel_diff_k"] <= 1e-10
