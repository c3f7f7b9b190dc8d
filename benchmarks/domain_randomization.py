"""Domain randomization: the DiLQR controller that re-identifies its model online, per episode,
against MLP policies trained on randomized physics, evaluated on held-out parameter draws.

Training distribution: the env's ``randomize=`` ranges (per episode, uniform; pendulum ``g in
[7, 13], m in [0.6, 1.4], l in [0.6, 1.4]``). Held out: ``--draws`` parameter vectors drawn
from the same ranges with their own generator (never seen in training), one env each, with
fixed starts (seeds ``20000 + i``). Methods, all on the same held-out envs:

- ``mpc_oracle``: MPC with each env's true parameters (the reference);
- ``mpc_nominal``: MPC with the task's nominal parameters, no adaptation;
- ``dilqr_adaptive``: :class:`dilqr_rl.agents.adaptive.AdaptiveMPC` from the nominal model, a
  refit of each env's model to its episode's transitions every ``--refit-every`` steps;
- ``dilqr_adaptive_wrong``: the same from a model 40 % off (``benchmarks/rl_methods.py``);
- ``mlp_ppo``, ``mlp_sac``: SB3 MLP policies trained on the randomized env (``--seeds``,
  ``--ppo-budget`` / ``--sac-budget`` env steps, rl-zoo's Pendulum-v1 settings).

Reported: return (mean +- std over draws) and the task's success rate per method, the return
gap to the oracle per draw, training and acting wall time. Writes
``benchmarks/results/domain_randomization.{json,png}``; one torch thread per process.

Usage::

    python benchmarks/domain_randomization.py               # pendulum, 3 seeds
    python benchmarks/domain_randomization.py --sac-budget 2048 --ppo-budget 4096 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RANGES = {"dilqr_rl/Pendulum-v0": {"g": (7.0, 13.0), "m": (0.6, 1.4), "l": (0.6, 1.4)},
          "dilqr_rl/CartPole-v0": {"m_cart": (0.6, 1.4), "m_pole": (0.06, 0.14),
                                   "l": (0.3, 0.7)}}


def heldout(env: str, opt: argparse.Namespace) -> list[dict[str, float]]:
    """The held-out parameter draws (a generator of their own: ``--heldout-seed``)."""
    rng = np.random.default_rng(opt.heldout_seed)
    return [{k: float(rng.uniform(lo, hi)) for k, (lo, hi) in RANGES[env].items()}
            for _ in range(opt.draws)]


def _envs(env: str, draws: list[dict[str, float]]) -> list[Any]:
    import gymnasium as gym

    import dilqr_rl.envs  # noqa: F401  (registers the ids)

    return [gym.make(env, **d) for d in draws]


def _outcome(envs: list[Any], rets: list[float], trace: dict[str, Any], wall: float
             ) -> dict[str, Any]:
    from dilqr_rl.agents.episodes import episode_success

    return {"returns": rets, "success": episode_success(envs, trace["infos"]),
            "act_s_per_step": wall / max(max(trace["steps"]), 1)}


def run_mpc(job: tuple[str, str, argparse.Namespace]) -> dict[str, Any]:
    """One MPC method on the held-out envs, all in one batch."""
    import torch

    torch.set_num_threads(1)
    from rl_methods import wrong_params

    from dilqr_rl import tasks
    from dilqr_rl.agents.adaptive import AdaptiveMPC
    from dilqr_rl.agents.episodes import run_episodes

    method, env, opt = job
    task, draws = tasks.for_env(env), heldout(env, opt)
    envs = _envs(env, draws)
    start = wrong_params(env) if method == "dilqr_adaptive_wrong" else None
    refit = opt.refit_every if method.startswith("dilqr_adaptive") else 0
    policy = AdaptiveMPC(task, start, max_iter=opt.max_iter, refit_every=refit)
    full = [{**task.params, **d} for d in draws]
    theta = torch.tensor([[p[k] for k in task.params] for p in full], dtype=torch.float64)
    policy.reset(theta if method == "mpc_oracle" else None)
    to_action = envs[0].unwrapped.control_to_action

    def act(obs: np.ndarray, live: np.ndarray) -> np.ndarray:
        x = torch.tensor(np.stack([e.unwrapped.state for e in envs]), dtype=torch.float64)
        return np.stack([to_action(u) for u in policy(x, torch.as_tensor(live))])

    trace: dict[str, Any] = {}
    t0 = time.perf_counter()
    rets = run_episodes(envs, 20_000, act, trace, pass_live=True)
    out = _outcome(envs, rets, trace, time.perf_counter() - t0)
    out.update(method=method, seed=None, final_params=policy.params())
    return out


def run_mlp(job: tuple[str, str, int, argparse.Namespace]) -> dict[str, Any]:
    """Train one MLP baseline on the randomized env, then evaluate it on the held-out envs."""
    import torch

    torch.set_num_threads(1)
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.env_util import make_vec_env

    import dilqr_rl.envs  # noqa: F401
    from dilqr_rl.agents.episodes import run_episodes

    method, env, seed, opt = job
    venv = make_vec_env(env, n_envs=1, seed=seed, env_kwargs={"randomize": RANGES[env]})
    if method == "mlp_ppo":  # rl-zoo's Pendulum-v1 settings
        model = PPO("MlpPolicy", venv, n_steps=1024, batch_size=64, n_epochs=10,
                    learning_rate=1e-3, gamma=0.9, gae_lambda=0.95, seed=seed)
        budget = opt.ppo_budget
    else:
        model = SAC("MlpPolicy", venv, learning_rate=1e-3, gamma=0.99, batch_size=256,
                    learning_starts=500, seed=seed)
        budget = opt.sac_budget
    t0 = time.perf_counter()
    model.learn(budget)
    train_s = time.perf_counter() - t0
    envs = _envs(env, heldout(env, opt))
    trace: dict[str, Any] = {}
    t0 = time.perf_counter()
    rets = run_episodes(envs, 20_000, lambda o: model.predict(o, deterministic=True)[0], trace)
    out = _outcome(envs, rets, trace, time.perf_counter() - t0)
    out.update(method=method, seed=seed, budget=budget, train_s_per_step=train_s / budget)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="dilqr_rl/Pendulum-v0", choices=sorted(RANGES))
    p.add_argument("--draws", type=int, default=20, help="held-out parameter draws")
    p.add_argument("--heldout-seed", type=int, default=2026)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ppo-budget", type=int, default=51_200)
    p.add_argument("--sac-budget", type=int, default=10_240)
    p.add_argument("--refit-every", type=int, default=10)
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=os.path.join(HERE, "results", "domain_randomization"))
    return p.parse_args(argv)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: return mean +- std over draws (and seeds), success rate, gap to the oracle."""
    oracle = np.array(next(r for r in results if r["method"] == "mpc_oracle")["returns"])
    out: dict[str, Any] = {}
    for m in dict.fromkeys(r["method"] for r in results):
        rs = [r for r in results if r["method"] == m]
        R = np.array([r["returns"] for r in rs])  # (seeds, draws)
        ok = [x for r in rs for x in (r["success"] or [])]
        out[m] = {"return_mean": float(R.mean()), "return_std": float(R.std()),
                  "seed_means": R.mean(1).tolist(),
                  "success": float(np.mean(ok)) if ok else None,
                  "gap_to_oracle_median": float(np.median(oracle[None] - R)),
                  "act_s_per_step": float(np.mean([r["act_s_per_step"] for r in rs]))}
        if "train_s_per_step" in rs[0]:
            out[m]["train_s_per_step"] = float(np.mean([r["train_s_per_step"] for r in rs]))
    return out


def plot(report: dict[str, Any], path: str) -> None:
    """Return per held-out draw, one column of points per method (the oracle as a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    methods = list(report["summary"])
    for i, m in enumerate(methods):
        R = np.array([r["returns"] for r in report["results"] if r["method"] == m])
        a1.plot(np.full(R.size, i) + np.random.default_rng(i).uniform(-0.2, 0.2, R.size),
                R.ravel(), "o", ms=3, color=f"C{i}")
        a1.errorbar(i, R.mean(), R.std(), fmt="s", color="k", capsize=4)
    a1.set_xticks(range(len(methods)), methods, rotation=20, fontsize=8)
    a1.set_ylabel("return on a held-out draw")
    a1.set_title(f"{report['env']}: {report['draws']} held-out parameter draws")
    a1.grid(alpha=0.3)
    a2.bar(range(len(methods)), [report["summary"][m]["success"] or 0 for m in methods],
           color=[f"C{i}" for i in range(len(methods))])
    a2.set_xticks(range(len(methods)), methods, rotation=20, fontsize=8)
    a2.set_ylim(0, 1.05)
    a2.set_ylabel("success rate (the task's rule)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    opt = parse_args(argv)
    t0 = time.perf_counter()
    mpc_jobs = [(m, opt.env, opt) for m in ("mpc_oracle", "mpc_nominal", "dilqr_adaptive",
                                              "dilqr_adaptive_wrong")]
    mlp_jobs = [(m, opt.env, s, opt) for m in ("mlp_sac", "mlp_ppo") for s in opt.seeds]
    with mp.get_context("spawn").Pool(opt.workers, maxtasksperchild=1) as pool:
        mlp = pool.map_async(run_mlp, mlp_jobs, chunksize=1)
        results = pool.map(run_mpc, mpc_jobs, chunksize=1) + mlp.get()
    report = {"env": opt.env, "ranges": RANGES[opt.env], "draws": opt.draws,
              "heldout": heldout(opt.env, opt), "seeds": opt.seeds, "threads": 1,
              "ppo_budget": opt.ppo_budget, "sac_budget": opt.sac_budget,
              "refit_every": opt.refit_every, "max_iter": opt.max_iter,
              "summary": summarize(results), "results": results,
              "wall_s": time.perf_counter() - t0}
    os.makedirs(os.path.dirname(opt.out), exist_ok=True)
    with open(opt.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    plot(report, opt.out + ".png")
    for m, s in report["summary"].items():
        print(f"{m:<22} return {s['return_mean']:9.1f} +- {s['return_std']:7.1f}  success "
              f"{s['success']}  median gap to oracle {s['gap_to_oracle_median']:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
