"""Aggregation, table and figure of ``benchmarks/rl_sample_efficiency.py``."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from rl_methods import SUCCESS_TARGET, is_dilqr, true_params, wrong_params

from dilqr_rl import tasks


def within_10pct(R: float) -> float:
    """The lowest return within 10 % of the reference return ``R``."""
    return R - 0.1 * abs(R)


def first_reach(t: list[int], curve: list[float] | np.ndarray, threshold: float,
                success: list[float | None] | None = None, min_success: float | None = None
                ) -> int | None:
    """The first evaluation step at which ``curve >= threshold`` (and, with ``min_success``,
    ``success >= min_success`` there) (``None``: never)."""
    for i, (ti, v) in enumerate(zip(t, curve, strict=True)):
        ok = min_success is None or (success is not None and success[i] is not None
                                     and success[i] >= min_success - 1e-9)
        if v >= threshold and ok:
            return int(ti)
    return None


def _rel(v: np.ndarray, t: np.ndarray) -> float:
    return float(np.linalg.norm(v - t) / np.linalg.norm(t))


def param_errors(env: str, rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Relative error ``|theta - theta*| / |theta*|`` of the model's parameters at the first and
    last evaluation (mean over seeds), and of the identifiable combinations where the task
    declares them (the pendulum's ``g / l`` and ``m l^2``)."""
    task, truth = tasks.for_env(env), true_params(env)
    names = list(truth)
    th = np.array([truth[k] for k in names])

    def combos(p: dict[str, float]) -> np.ndarray | None:
        if task.identifiable is None:
            return None
        c = task.combinations(torch.tensor([p[k] for k in names], dtype=torch.float64))
        return np.array([float(v) for v in c.values()])

    def err(p: dict[str, float]) -> float:  # the identifiable error where declared
        if task.identifiable is None:
            return _rel(np.array([p[k] for k in names]), th)
        return _rel(combos(p), combos(truth))

    curves = np.array([[err(p) for p in r["params"]] for r in rs])
    out: dict[str, Any] = {"params_end": [r["params"][-1] for r in rs],
                           "model_error_curve": curves.mean(0).tolist()}
    for when, i in (("start", 0), ("end", -1)):
        out[f"param_error_{when}"] = float(np.mean(
            [_rel(np.array([r["params"][i][k] for k in names]), th) for r in rs]))
        if task.identifiable is not None:
            out[f"identifiable_error_{when}"] = float(curves[:, i].mean())
    return out


def method_record(env: str, m: str, rs: list[dict[str, Any]], thr: dict[str, float],
                  min_success: dict[str, float] | None = None) -> dict[str, Any]:
    """Seed-mean curve of one method on one env, its success rate, its per-seed steps to the
    seed's threshold ``thr[seed]`` (and success rate ``min_success[seed]``, where given) and,
    for the DiLQR methods, the parameter errors."""
    t = rs[0]["timesteps"]
    curves = np.array([r["mean"] for r in rs])
    mu, sd = curves.mean(0), curves.std(0)
    succ = [r.get("success") or [] for r in rs]
    rec: dict[str, Any] = {
        "seeds": [r["seed"] for r in rs], "timesteps": t, "mean": mu.tolist(),
        "std": sd.tolist(),
        "final_mean": float(mu[-1]), "final_std": float(sd[-1]),
        "seed_steps_to_target": {str(r["seed"]): first_reach(
            r["timesteps"], r["mean"], thr[str(r["seed"])], r.get("success"),
            None if min_success is None else min_success[str(r["seed"])]) for r in rs},
        "train_s_per_step": float(np.mean([r["train_s_per_step"] for r in rs])),
    }
    if all(s and s[-1] is not None for s in succ):
        rec["final_success"] = float(np.mean([s[-1] for s in succ]))
        rec["success_curve"] = np.mean(np.array(succ, dtype=float), 0).tolist()
    if is_dilqr(m):
        rec.update(param_errors(env, rs))
    # each seed's own curves, so that a later invocation can add seeds (merge_env)
    rec["runs"] = [{k: r.get(k) for k in RUN_KEYS} for r in rs]
    return rec


RUN_KEYS = ("seed", "timesteps", "mean", "success", "params", "train_s_per_step")


def merge_env(env: str, old: dict[str, Any], new: dict[str, Any],
              mlp_budget: int) -> dict[str, Any]:
    """One env's report of an earlier invocation ``old`` updated with the runs of ``new``.

    A method's runs are merged seed by seed (a seed in ``new`` replaces the same seed in
    ``old``) where ``old`` kept them (``rec["runs"]``); a method of ``old`` without them is
    replaced whole when ``new`` has it (its seeds could not be re-aggregated), and kept as it
    is when ``new`` lacks it. The per-seed MPC thresholds are merged, the targets recomputed
    over every seed either report has."""
    thr = {**old["seed_threshold"], **new["seed_threshold"]}
    min_success = None
    if "seed_min_success" in new or "seed_min_success" in old:
        min_success = {**old.get("seed_min_success", {}), **new.get("seed_min_success", {})}
    er = {**new, "seed_threshold": thr, "methods": {}}
    if min_success is not None:
        er["seed_min_success"] = min_success
    for ref in ("mpc_true", "mpc_wrong", "mpc_true_fixed_horizon"):
        o, n = old.get(ref), new.get(ref)
        if o and (not n or not set(o["per_seed"]) <= set(n["per_seed"])):
            er[ref] = o  # the reference measured on more seeds
    for m in list(old["methods"]) + [m for m in new["methods"] if m not in old["methods"]]:
        o, n = old["methods"].get(m), new["methods"].get(m)
        if n is None or o is None or "runs" not in o:
            er["methods"][m] = o if n is None else n
            continue
        runs = {r["seed"]: r for r in o["runs"]}
        runs.update({r["seed"]: r for r in n["runs"]})
        rs = [dict(runs[s], env=env, method=m) for s in sorted(runs)]
        er["methods"][m] = method_record(env, m, rs, thr, min_success)
    seeds = sorted({int(s) for r in er["methods"].values() for s in r["seed_steps_to_target"]})
    er["targets"] = seed_targets(er, list(er["methods"]), seeds, mlp_budget)
    return er


def seed_targets(er: dict[str, Any], methods: list[str], seeds: list[int],
                 mlp_budget: int) -> dict[str, Any]:
    """Per seed: the best DiLQR variant's steps to target ``d``, the best MLP baseline's ``M``
    and whether ``d <= M / 10`` holds (``None``: undetermined, no MLP baseline reached the
    target within ``mlp_budget`` and ``d > mlp_budget / 10``; a censored ``M`` with ``d <=
    mlp_budget / 10`` holds, as ``M > mlp_budget``)."""
    out: dict[str, Any] = {}
    for s in map(str, seeds):
        def best(pred, s=s):
            got = [(er["methods"][m]["seed_steps_to_target"].get(s), m) for m in methods
                   if pred(m) and m in er["methods"]
                   and er["methods"][m]["seed_steps_to_target"].get(s) is not None]
            return min(got) if got else (None, None)

        ran = {m for m in methods if s in er["methods"].get(m, {}).get(
            "seed_steps_to_target", {})}
        if not any(map(is_dilqr, ran)) or all(map(is_dilqr, ran)):
            continue  # a partial benchmark: this seed has no comparison yet

        d, dm = best(is_dilqr)
        M, mm = best(lambda m: not is_dilqr(m))
        if d is None:
            holds = False
        elif M is not None:
            holds = bool(d <= M / 10)
        else:
            holds = True if d <= mlp_budget / 10 else None
        out[s] = {"dilqr_steps": d, "dilqr_method": dm, "mlp_steps": M, "mlp_method": mm,
                  "ratio": (d / M) if (d is not None and M) else None, "holds": holds}
    return out


def _mpc_summary(mpc_out: list[dict[str, Any]], env: str, which: str) -> dict[str, Any] | None:
    rs = sorted((r for r in mpc_out if r["env"] == env and r["which"] == which),
                key=lambda r: r["seed"])
    if not rs:
        return None
    rets = [x for r in rs for x in r["returns"]]
    ok = [x for r in rs for x in (r["success"] or [])]
    return {"params": rs[0]["params"], "mean": float(np.mean(rets)), "std": float(np.std(rets)),
            "per_seed": {str(r["seed"]): float(np.mean(r["returns"])) for r in rs},
            "per_seed_success": {str(r["seed"]): float(np.mean(r["success"]))
                                 for r in rs if r["success"]},
            "success": float(np.mean(ok)) if ok else None,
            "s_per_step": float(np.mean([r["s_per_step"] for r in rs]))}


def env_report(env: str, opt: argparse.Namespace, runs: list[dict[str, Any]],
               mpc_out: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of one env: the MPC references, every method, the per-seed targets."""
    true_mpc = _mpc_summary(mpc_out, env, "true")
    thr = {s: within_10pct(v) for s, v in true_mpc["per_seed"].items()}
    er: dict[str, Any] = {"true_params": true_params(env), "wrong_params": wrong_params(env),
                          "mpc_true": true_mpc, "mpc_wrong": _mpc_summary(mpc_out, env, "wrong"),
                          "mpc_true_fixed_horizon": _mpc_summary(mpc_out, env, "true_fixed"),
                          "threshold": within_10pct(true_mpc["mean"]), "seed_threshold": thr,
                          "methods": {}}
    min_success = None
    if tasks.for_env(env).name in SUCCESS_TARGET:
        min_success = er["seed_min_success"] = true_mpc["per_seed_success"]
    for m in opt.methods:
        rs = [r for r in runs if r["env"] == env and r["method"] == m]
        if rs:  # a partial benchmark may lack methods
            er["methods"][m] = method_record(env, m, rs, thr, min_success)
    er["targets"] = seed_targets(er, opt.methods, opt.seeds, opt.mlp_budget)
    return er


def markdown(report: dict[str, Any]) -> str:
    """The results as Markdown: per env the references, then one row per method (seeds, steps
    to target per seed, final return, success, model error, ms per training env step), then
    the per-seed verdicts of the target."""
    out = ["# RL sample efficiency (`benchmarks/rl_sample_efficiency.py`)\n",
           f"DiLQR runs: {report['budget']} env steps (rocket {report['rocket_budget']}; "
           f"`*_4x`: 4x); MLP runs: {report['mlp_budget']}; an evaluation every "
           f"{report['eval_freq']} steps on {report['eval_episodes']} fixed starts per seed; "
           f"{report['max_iter']} iLQR iterations per solve; 1 torch thread per run.\n"]
    for env, er in report["envs"].items():
        mt, mw = er["mpc_true"], er["mpc_wrong"]
        out.append(f"\n## {env.split('/')[-1]}\n")
        out.append(f"References on the same starts: MPC with the true model {mt['mean']:.1f} "
                   f"(success {mt['success']:.2f}); with the initial model {mw['mean']:.1f} "
                   f"(success {mw['success']:.2f}). Target per seed: a return within 10 % of "
                   "the true model's"
                   + (", and its success rate on that seed's starts" if er.get(
                       "seed_min_success") else "") + ".\n")
        out.append("| method | seeds | steps to target, per seed | final return | final "
                   "success | model error start -> end | ms per env step |")
        out.append("|---|---|---|---|---|---|---|")
        for m, r in er["methods"].items():
            steps = ", ".join(str(v) if v is not None else "never"
                              for v in r["seed_steps_to_target"].values())
            err = ""
            if "param_error_start" in r:
                key = "identifiable_error" if "identifiable_error_start" in r else "param_error"
                err = f"{r[key + '_start']:.3f} -> {r[key + '_end']:.3g}"
            succ = r.get("final_success")
            out.append(f"| {m} | {', '.join(map(str, r['seeds']))} | {steps} | "
                       f"{r['final_mean']:.1f} +- {r['final_std']:.1f} | "
                       f"{'' if succ is None else f'{succ:.2f}'} | {err} | "
                       f"{1e3 * r['train_s_per_step']:.0f} |")
        def verdict(s: str, t: dict[str, Any]) -> str:
            ratio = f"ratio {t['ratio']:.3f}, " if t["ratio"] else ""
            mlp = (f"{t['mlp_method']} {t['mlp_steps']}" if t["mlp_method"] else
                   f"no MLP baseline within {report['mlp_budget']}")
            return (f"seed {s}: {t['dilqr_method']} {t['dilqr_steps']} against {mlp} "
                    f"({ratio}holds: {t['holds']})")

        verdicts = [verdict(s, t) for s, t in er["targets"].items()]
        if verdicts:
            out.append("\nTarget (best DiLQR variant within 1/10 of the best MLP's steps): "
                       + "; ".join(verdicts) + ".")
    out.append("\nModel error: relative, on the identifiable combinations where the task "
               "declares them (pendulum `g/l`, `m l^2`; rocket `m`, `J/l`), else on the "
               "parameters. ms per env step: training wall time without evaluations, runs "
               "sharing 2 cores with other jobs.")
    return "\n".join(out) + "\n"


def print_table(report: dict[str, Any]) -> None:
    print(f"DiLQR budget {report['budget']} env steps (rocket {report['rocket_budget']}), MLP "
          f"{report['mlp_budget']}, seeds {report['seeds']}, wall {report['wall_s'] / 60:.1f} min")
    for env, er in report["envs"].items():
        mt, mw = er["mpc_true"], er["mpc_wrong"]
        print(f"\n{env}: MPC true model {mt['mean']:.1f} +- {mt['std']:.1f} (success "
              f"{mt['success']}), wrong model {mw['mean']:.1f} +- {mw['std']:.1f} (success "
              f"{mw['success']}); target >= R* - 10 % per seed")
        if er.get("mpc_true_fixed_horizon"):
            f = er["mpc_true_fixed_horizon"]
            print(f"  true model, fixed horizon (the SB3 actor's controller): {f['mean']:.1f} "
                  f"(success {f['success']})")
        print(f"  {'method':<16} {'final return':>18} {'success':>8} {'steps to target':>22} "
              f"{'ms/step':>8}  seeds")
        for m, r in er["methods"].items():
            steps = ",".join(str(v) if v is not None else "-"
                             for v in r["seed_steps_to_target"].values())
            print(f"  {m:<16} {r['final_mean']:>9.1f} +- {r['final_std']:>6.1f} "
                  f"{r.get('final_success', float('nan')):>8.2f} {steps:>22} "
                  f"{1e3 * r['train_s_per_step']:>8.1f}  {r['seeds']}")
            if "param_error_start" in r:
                ident = (f"; identifiable {r['identifiable_error_start']:.3f} -> "
                         f"{r['identifiable_error_end']:.3f}"
                         if "identifiable_error_start" in r else "")
                print(f"  {'':<6} model error {r['param_error_start']:.3f} -> "
                      f"{r['param_error_end']:.3f}{ident}")
        for s, t in er["targets"].items():
            print(f"  seed {s}: best DiLQR {t['dilqr_method']} {t['dilqr_steps']}, best MLP "
                  f"{t['mlp_method']} {t['mlp_steps']}, ratio {t['ratio']}, target holds "
                  f"{t['holds']}")


def plot(report: dict[str, Any], path: str) -> None:
    """Per env: every method's learning curve (mean +- std over seeds) with the MPC returns of
    the true and the initial model as reference lines; top row the full range, bottom row
    zoomed on the range of the references, where the target lives."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(report["envs"])
    # one color per method across every panel
    names = list(dict.fromkeys(m for er in report["envs"].values() for m in er["methods"]))
    color = {m: f"C{i % 10}" for i, m in enumerate(names)}
    fig, axes = plt.subplots(4, len(envs), figsize=(5.5 * len(envs), 15), squeeze=False)
    for col, env in enumerate(envs):
        er = report["envs"][env]
        refs = [er["mpc_true"]["mean"], er["mpc_wrong"]["mean"], er["threshold"]]
        for row in (0, 1):
            ax = axes[row, col]
            for m, r in er["methods"].items():
                t, mu, sd = (np.array(r[k]) for k in ("timesteps", "mean", "std"))
                seeds = r.get("seeds", report["seeds"])
                ax.plot(t, mu, "o-" if is_dilqr(m) else "-", ms=3, color=color[m],
                        label=f"{m} (seeds {','.join(map(str, seeds))})")
                ax.fill_between(t, mu - sd, mu + sd, alpha=0.12, color=color[m])
            ax.axhline(refs[0], color="k", ls="--", label="MPC, true model")
            ax.axhline(refs[2], color="k", ls=":", label="within 10 % (target)")
            ax.axhline(refs[1], color="r", ls="--", lw=0.8, label="MPC, initial model")
            if er.get("mpc_true_fixed_horizon"):
                ax.axhline(er["mpc_true_fixed_horizon"]["mean"], color="g", ls="-.", lw=0.8,
                           label="MPC, true model, fixed horizon")
            ax.set_xscale("symlog", linthresh=256)
            ax.set_xlim(left=0)
            ax.set_xlabel("env steps")
            ax.set_ylabel("deterministic return")
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"{env.split('/')[-1]}: mean +- std over each method's seeds")
            else:
                lo, hi = min(refs), max(refs)
                pad = 0.25 * (hi - lo)
                ax.set_ylim(lo - pad, hi + pad)
                ax.set_title("zoom on the references")
        axes[0, col].legend(fontsize=7)
        _extra_rows(axes[2, col], axes[3, col], env, er, color)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _extra_rows(ax_s: Any, ax_m: Any, env: str, er: dict[str, Any],
                color: dict[str, str]) -> None:
    """Row 3: the success rate of each method's evaluations (the task's rule; the rocket's
    return barely tells a landing from a crash), with the true-model MPC's. Row 4: the DiLQR
    model's error relative to the truth, on the combinations the dynamics depend on where the
    task declares them (the pendulum's ``g / l`` and ``m l^2``, the rocket's ``m`` and
    ``J / l``), else on the parameters."""
    for m, r in er["methods"].items():
        t = np.array(r["timesteps"])
        if "success_curve" in r:
            ax_s.plot(t, r["success_curve"], "o-" if is_dilqr(m) else "-", ms=3,
                      color=color[m], label=m)
        if "model_error_curve" in r:
            ax_m.plot(t, r["model_error_curve"], "o-", ms=3, color=color[m], label=m)
    if er["mpc_true"].get("success") is not None:
        ax_s.axhline(er["mpc_true"]["success"], color="k", ls="--", label="MPC, true model")
    ax_s.set_ylim(-0.05, 1.05)
    ax_s.set_ylabel("evaluation success rate")
    ax_s.set_title("success (mean over seeds)")
    ident = tasks.for_env(env).identifiable is not None
    ax_m.set_yscale("log")
    ax_m.set_ylabel("|model - truth| / |truth|" + (" (identifiable)" if ident else ""))
    ax_m.set_title("DiLQR model error" + (" on the identifiable combinations" if ident else ""))
    for ax in (ax_s, ax_m):
        ax.set_xscale("symlog", linthresh=256)
        ax.set_xlim(left=0)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
