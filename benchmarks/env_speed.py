"""Steps per second of every registered env: single env, and ``SubprocVecEnv`` with 2 workers.

Random actions, episodes reset on their end. Writes ``benchmarks/results/env_speed.json`` and
``env_speed.png``.

    python benchmarks/env_speed.py [--steps 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import dilqr_rl.envs as envs

RESULTS = Path(__file__).resolve().parent / "results"


def _make(env_id: str, threads: int):
    def thunk() -> gym.Env:
        torch.set_num_threads(threads)  # in the worker process too
        import dilqr_rl.envs  # noqa: F401  (registers the ids in a spawned worker)

        return gym.make(env_id)

    return thunk


def single_env_speed(env_id: str, steps: int) -> float:
    """Steps per second of one env (``gym.make``, wrappers included)."""
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps)]
    for a in actions[:50]:  # warm-up
        if any(env.step(a)[2:4]):
            env.reset()
    t0 = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    dt = time.perf_counter() - t0
    env.close()
    return steps / dt


def vec_env_speed(env_id: str, steps: int, n_envs: int, threads: int) -> float:
    """Env steps per second (summed over workers) of an SB3 ``SubprocVecEnv``."""
    from stable_baselines3.common.vec_env import SubprocVecEnv

    venv = SubprocVecEnv([_make(env_id, threads) for _ in range(n_envs)])
    venv.seed(0)
    venv.reset()
    rng = np.random.default_rng(0)
    shape = (n_envs, *venv.action_space.shape)
    for _ in range(20):
        venv.step(rng.uniform(-1, 1, shape).astype(np.float32))
    n = max(1, steps // n_envs)
    acts = rng.uniform(-1, 1, (n, *shape)).astype(np.float32)
    t0 = time.perf_counter()
    for a in acts:
        venv.step(a)  # auto-resets finished episodes
    dt = time.perf_counter() - t0
    venv.close()
    return n * n_envs / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=2000, help="steps timed per measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--workers", type=int, default=2, help="SubprocVecEnv workers")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for env_id in envs.ENV_IDS:
        single = single_env_speed(env_id, args.steps)
        vec = vec_env_speed(env_id, args.steps, args.workers, args.threads)
        rows.append({"env": env_id, "single_steps_per_s": single,
                     f"subproc{args.workers}_steps_per_s": vec})
        print(f"{env_id:30s} single {single:9.0f} steps/s   SubprocVecEnv({args.workers}) "
              f"{vec:9.0f} steps/s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "gymnasium": gym.__version__, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "steps": args.steps, "workers": args.workers,
            "actions": "uniform random", "float": "float64 dynamics, float32 observations"}
    (RESULTS / "env_speed.json").write_text(json.dumps({"meta": meta, "results": rows},
                                                       indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    idx = np.arange(len(rows))
    ax.barh(idx + 0.2, [r["single_steps_per_s"] for r in rows], 0.4, label="single env")
    ax.barh(idx - 0.2, [r[f"subproc{args.workers}_steps_per_s"] for r in rows], 0.4,
            label=f"SubprocVecEnv ({args.workers} workers)")
    ax.set_yticks(idx, [r["env"].split("/")[1] for r in rows])
    ax.set_xlabel("env steps / s")
    ax.set_title(f"env speed (torch threads = {meta['torch_threads']}, "
                 f"{meta['cpu_count']} CPUs)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / "env_speed.png", dpi=120)
    print(f"wrote {RESULTS / 'env_speed.json'} and {RESULTS / 'env_speed.png'}")


if __name__ == "__main__":
    main()
