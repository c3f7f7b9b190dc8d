"""Sample efficiency on every env id: the DiLQR actor (PPO and SAC, each with and without
system identification) against SB3's MLP PPO and SAC, starting from a wrong model.

Methods (settings in ``benchmarks/rl_methods.py``):

- ``dilqr_ppo`` / ``dilqr_sac``: the RL loss alone trains the model's physical parameters,
  through the layer's implicit gradient;
- ``dilqr_ppo_sysid`` / ``dilqr_sac_sysid``: the same plus
  :class:`dilqr_rl.sb3.SystemIdCallback` (every 128 env steps, a fit of the physical
  parameters to the one-step transitions collected so far);
- ``mlp_ppo`` / ``mlp_sac``: SB3's ``MlpPolicy`` with rl-zoo's Pendulum-v1 settings.

The controller's model starts with every physical parameter 40 % off (signs per task in
``rl_methods.SIGNS``: pendulum ``g, m, l = 14, 1.4, 0.6`` against ``10, 1, 1``). The MLP
baselines get a larger budget (``--mlp-budget``), so that how many steps they need is measured
rather than censored.
Every ``--eval-freq`` env steps: a deterministic evaluation on fixed starts (seeds ``10000 +
seed + episode``, the same for every method), with the task's success rule.

References, on the same starts: closed-loop MPC (``dilqr_rl.agents.mpc.MPCPolicy``: the task's
horizon rule, the same iteration cap) with the true model (``R*``, the target: a return within
10 %, ``R >= R* - 0.1 |R*|``, per seed) and with the wrong model (where the DiLQR actor
starts). The rocket's task plans to a fixed landing time (a shrinking horizon); the SB3 actor
plans over a fixed horizon, so the rocket also reports true-model MPC with the fixed horizon:
the best the actor's controller can do with a perfect model.

Reported per env (``benchmarks/rl_report.py``): per method the mean +- std over seeds of the
curves, the success rate, the first env step within 10 % of ``R*`` per seed, the ratio of the
best DiLQR variant's steps to the best MLP baseline's per seed (target <= 1/10), the model's
parameter error before and after, and the training wall time per env step (evaluations
excluded), all measured in the same run.

Usage (default: 3 seeds, all five envs; one torch thread per worker)::

    python benchmarks/rl_sample_efficiency.py --workers 2
    python benchmarks/rl_sample_efficiency.py --envs dilqr_rl/CartPole-v0 --reuse
    python benchmarks/rl_sample_efficiency.py --replot

Finished runs are cached (``runs/rl_sample_efficiency/<run>/result.json``); ``--reuse`` takes
them instead of retraining, so a killed benchmark resumes and envs can be run in parts. The
JSON merges earlier invocations: envs not run now are kept, and a method run now on some seeds
joins the same method's other seeds (each method's record keeps its seeds' curves). Writes
``benchmarks/results/rl_sample_efficiency.{json,png,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np
from rl_methods import ENVS, METHODS, run_args, true_params, wrong_params
from rl_report import env_report, markdown, merge_env, plot, print_table

import dilqr_rl.envs  # noqa: F401  (registers the ids: tasks.for_env knows them)
from dilqr_rl import tasks

HERE = os.path.dirname(os.path.abspath(__file__))


def _one(job: tuple[str, str, int, dict[str, Any], bool]) -> dict[str, Any]:
    """One training run (or its cached result)."""
    import torch

    torch.set_num_threads(1)
    from dilqr_rl.agents.rl import TrainArgs, train

    method, env, seed, kw, reuse = job
    res = _cached(kw) if reuse else None
    if res is not None:
        return res
    summary = train(TrainArgs(**kw))
    with open(os.path.join(summary["run_dir"], "evaluations.jsonl")) as f:
        recs = sorted((json.loads(line) for line in f if line.strip()),
                      key=lambda r: r["timesteps"])
    eval_s = sum(r["eval_s"] for r in recs)
    res = {"method": method, "env": env, "seed": seed, "summary": summary, "kw": kw,
           "timesteps": [r["timesteps"] for r in recs], "mean": [r["mean"] for r in recs],
           "success": [float(np.mean(r["success"])) if "success" in r else None
                       for r in recs],
           "params": [r.get("params") for r in recs],
           "train_s_per_step": max(summary["wall_s"] - eval_s, 0.0) / kw["total_timesteps"]}
    with open(_cache_path(kw), "w") as f:
        json.dump(res, f)
    return res


def _cache_path(kw: dict[str, Any]) -> str:
    return os.path.join(kw["out_dir"], kw["run_name"], "result.json")


def _cached(kw: dict[str, Any]) -> dict[str, Any] | None:
    """The cached result of the finished run of ``kw`` (with the same arguments), or None."""
    cache = _cache_path(kw)
    if not os.path.exists(cache):
        return None
    with open(cache) as f:
        res = json.load(f)
    return res if res.get("kw") == kw else None


def _mpc(job: tuple[str, str, dict[str, float], bool, int, argparse.Namespace]
         ) -> dict[str, Any]:
    """Returns and success of closed-loop MPC with the given model on the evaluation starts of
    every seed (``which``: ``true``, ``wrong`` or ``true_fixed``, the fixed-horizon variant)."""
    import gymnasium as gym
    import torch

    torch.set_num_threads(1)
    from dilqr_rl.agents.episodes import episode_success
    from dilqr_rl.agents.mpc import MPCPolicy, mpc_episodes

    env_id, which, params, fixed, seed, opt = job
    cache = os.path.join(opt.work_dir, "mpc", f"{env_id.split('/')[-1]}_{which}_s{seed}.json")
    key = {"params": params, "eval_episodes": opt.eval_episodes, "max_iter": opt.max_iter}
    if os.path.exists(cache):
        with open(cache) as f:
            res = json.load(f)
        if res.get("key") == key:
            return res
    task = tasks.for_env(env_id)
    if fixed:
        task = dataclasses.replace(task, shrink_horizon=False)
    envs = [gym.make(env_id) for _ in range(opt.eval_episodes)]
    policy = MPCPolicy(task, None, params, opt.max_iter)
    trace: dict[str, Any] = {}
    t0 = time.perf_counter()
    rets = mpc_episodes(envs, policy, 10_000 + seed, trace)
    ok = episode_success(envs, trace["infos"])
    res = {"env": env_id, "which": which, "seed": seed, "params": params, "key": key,
           "returns": rets, "success": ok, "plan_failures": policy.failures,
           "s_per_step": (time.perf_counter() - t0) / max(max(trace["steps"]), 1)}
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache, "w") as f:
        json.dump(res, f)
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=int, default=1024, help="env steps per DiLQR run")
    p.add_argument("--rocket-budget", type=int, default=1024,
                   help="env steps per DiLQR run on the rocket")
    p.add_argument("--mlp-budget", type=int, default=10_240,
                   help="env steps per MLP-baseline run (larger, to see where they get)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--envs", nargs="+", default=list(ENVS))
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--eval-freq", type=int, default=256)
    p.add_argument("--eval-episodes", type=int, default=2)
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--replot", action="store_true",
                   help="only redraw the PNG from the JSON of a finished run")
    p.add_argument("--reuse", action="store_true",
                   help="reuse the result.json of finished runs with the same arguments "
                        "(re-aggregate without retraining; resume a killed benchmark)")
    p.add_argument("--report-only", action="store_true",
                   help="no training: report the finished runs of the grid found in --work-dir "
                        "(a partial benchmark: methods with fewer seeds say so)")
    p.add_argument("--work-dir", default=os.path.join("runs", "rl_sample_efficiency"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "rl_sample_efficiency"))
    return p.parse_args(argv)


def run_all(opt: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every training run and every MPC reference, in one process pool (the dearest first)."""
    # seed by seed, so that a benchmark stopped early has whole comparisons for its first seeds
    jobs = [(m, e, s, run_args(m, e, s, opt), opt.reuse) for s in opt.seeds
            for e in opt.envs for m in opt.methods]
    if opt.report_only:  # finished runs only; the MPC references are computed if missing
        jobs = [(m, e, s, kw, True) for m, e, s, kw, _ in jobs if _cached(kw) is not None]
    mpc_jobs = []
    for e in opt.envs:
        refs = [("true", true_params(e), False), ("wrong", wrong_params(e), False)]
        if tasks.for_env(e).shrink_horizon:  # the SB3 actor's plans have one length
            refs.append(("true_fixed", true_params(e), True))
        mpc_jobs += [(e, w, p, f, s, opt) for (w, p, f) in refs for s in opt.seeds]
    ctx = mp.get_context("spawn")
    with ctx.Pool(opt.workers, maxtasksperchild=1) as pool:
        mpc_res = pool.map_async(_mpc, mpc_jobs, chunksize=1)
        runs = pool.map(_one, jobs, chunksize=1)
        mpc_out = mpc_res.get()
    return runs, mpc_out


def _render(report: dict[str, Any], out: str) -> None:
    """``out.png`` (the figure) and ``out.md`` (the table) of ``report``."""
    plot(report, out + ".png")
    with open(out + ".md", "w") as f:
        f.write(markdown(report))


def main(argv: list[str] | None = None) -> int:
    opt = parse_args(argv)
    if opt.replot:  # the figure and the table again from the JSON of a finished run
        with open(opt.out + ".json") as f:
            _render(json.load(f), opt.out)
        return 0
    t_start = time.perf_counter()
    runs, mpc_out = run_all(opt)
    previous: dict[str, Any] = {}
    if os.path.exists(opt.out + ".json"):  # envs of earlier invocations (run in parts)
        with open(opt.out + ".json") as f:
            previous = {e: r for e, r in json.load(f).get("envs", {}).items()
                        if "targets" in r}  # this format only
    report: dict[str, Any] = {
        "budget": opt.budget, "rocket_budget": opt.rocket_budget, "mlp_budget": opt.mlp_budget,
        "seeds": opt.seeds, "eval_freq": opt.eval_freq, "eval_episodes": opt.eval_episodes,
        "max_iter": opt.max_iter, "threads": 1, "workers": opt.workers,
        "wrong_params": {e: wrong_params(e) for e in opt.envs},
        "envs": dict(previous)}
    for e in opt.envs:
        if any(r["env"] == e for r in runs):
            er = env_report(e, opt, runs, mpc_out)
            report["envs"][e] = merge_env(e, previous[e], er, opt.mlp_budget) \
                if e in previous else er
    report["seeds"] = sorted({int(s) for er in report["envs"].values()
                              for s in er["targets"]} | set(opt.seeds))
    report["wall_s"] = time.perf_counter() - t_start
    if not report["envs"]:
        print("no finished runs yet (MPC references computed and cached)")
        return 0
    os.makedirs(os.path.dirname(opt.out), exist_ok=True)
    with open(opt.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    _render(report, opt.out)
    print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
