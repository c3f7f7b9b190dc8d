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
    - cart-pole swing-ups (the ``cartpole`` task of :mod:`dilqr_rl.tasks`: its model, bounds
      and cost, in float64; B = 32, T = 30, start states from its ``sample_start``, the env's
      start distribution) with ``max_iter`` 100 and 400: iterations median / max, fraction
      converged (within 100), and how far the cost capped at 100 iterations is above the cost
      after up to 400.

Usage::

    pip install -e ".[bench,dev]"
    python benchmarks/general_models.py [--quick] [--iters 10] [--threads 1]

Writes ``benchmarks/results/general_models.json`` and ``.png``. The problems are defined in
``general_models_problems.py``, the tables and the figure in ``general_models_report.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import dilqr_rl as dl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backward import SavedBytes  # noqa: E402  (the tape meter of the backward benchmark)
from general_models_problems import (  # noqa: E402
    DT,
    LinearModel,
    PnqpWarnings,
    cartpole_problem,
    dilqr_ctrl,
    linear_spec,
    mpc_cost,
    mpc_ctrl,
    problem,
    projected_gradient,
    qp_optimum,
    tracking_cost,
)
from general_models_report import (  # noqa: E402
    BWD_TARGET,
    FWD_TARGET,
    finite_json,
    plot,
    print_summary,
    run_meta,
    solver_diagnostics,
)

CONV_TOL = 1e-6  # projected-gradient test of convergence (relative), both libraries


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


# ---------------------------------------------------------------------------------- agreement
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
def lq_distribution(name: str, n: int, m: int, bound: float, seed: int, n_x0: int,
                    T: int = 20) -> dict:
    dyn = LinearModel(n, m, seed)
    spec = linear_spec(n, m)
    cost = tracking_cost(spec, n)
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


def cartpole_distribution(B: int = 32, T: int = 30, seed: int = 0) -> list[dict]:
    task, x0 = cartpole_problem(B, seed)
    out, costs = [], {}
    for max_iter in (100, 400):
        t0 = time.perf_counter()
        # the task's model, cost and bounds; the solver's DEFAULT settings but max_iter
        ctrl = task.controller(T, dtype=DT, config=dl.ILQRConfig(max_iter=max_iter))
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", dl.UnconvergedWarning)
            sol = ctrl(x0)
        it = sol.iterations.numpy()
        conv = sol.converged.numpy()
        costs[max_iter] = sol.cost.numpy()
        out.append({
            "problem": f"cartpole swing-up max_iter={max_iter}", "B": B, "T": T,
            "bound": task.u_upper, "max_iter": max_iter, "tol": dl.ILQRConfig().tol, "seed": seed,
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


# ---------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="B in {1, 32}, fewer repeats")
    ap.add_argument("--iters", type=int, default=10, help="iterations K (both libraries)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return ap.parse_args(argv)


def speed_rows(Bs, T: int, iters: int, repeats: int, budget: float) -> list[dict]:
    """(a) and (b): one :func:`speed_row` per model and batch size, after a warm-up."""
    for kind in ("linear", "arm"):  # warm-up (first calls: vmap / functional_call tracing)
        speed_row(kind, 2, 5, 2, 1, 1.0)
    rows = []
    for kind in ("linear", "arm"):
        for B in Bs:
            rows.append(speed_row(kind, B, T, iters, repeats, budget))
            r = rows[-1]
            print(f"  {kind:6} B={B:<4} fwd/it {r['forward_per_iter_ratio']:.3f}  "
                  f"bwd {r['backward_ratio']:.3f}", flush=True)
    return rows


def iteration_rows(quick: bool) -> tuple[list[dict], list[dict]]:
    """(c): the random box-constrained LQ problems and the cart-pole swing-ups."""
    n_x0 = 32 if quick else 128
    lq = [lq_distribution("linear n6 m3 |u|<=0.5 (model of (a))", 6, 3, 0.5, 0, n_x0)]
    for seed in (1, 2, 3):
        lq.append(lq_distribution(f"linear n8 m4 |u|<=1 A seed {seed}", 8, 4, 1.0, seed, n_x0))
    print("  LQ distributions done", flush=True)
    return lq, cartpole_distribution()


def main(argv=None):
    args = parse_args(argv)
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

    rows = speed_rows(Bs, T, args.iters, repeats, budget)
    agree = [agreement(kind) for kind in ("linear", "arm")]
    print("  agreement done", flush=True)
    lq, cp_rows = iteration_rows(args.quick)

    meta = run_meta(args, repeats, budget, load0, t_start)
    (out / "general_models.json").write_text(json.dumps(finite_json(
        {"meta": meta, "speed": rows, "agreement": agree, "lq_iterations": lq,
         "cartpole_iterations": cp_rows}), indent=1, allow_nan=False))
    plot(rows, lq, cp_rows, out / "general_models.png")
    print_summary(meta, T, rows, agree, lq, cp_rows)


if __name__ == "__main__":
    main()
