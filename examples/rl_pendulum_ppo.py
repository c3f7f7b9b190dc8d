"""PPO with a DiLQR actor on the pendulum, starting from a wrong model (< 1 min on 2 cores).

The controller's model starts with ``m = 1.4`` (true ``1.0``); PPO trains the physical
parameters through the exact fixed-point gradient of the iLQR solution. Prints the
deterministic return before and after, and the learned parameters. More steps:
``python examples/rl_pendulum_ppo.py --steps 4096``.
"""

from __future__ import annotations

import argparse
import warnings

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO

import dilqr_rl.envs  # noqa: F401  (registers the dilqr_rl/ ids)
from dilqr_rl.sb3 import DiLQRActorCriticPolicy, configure_threads, controller_spec, dilqr_actor


def evaluate(model: PPO, env: gym.Env, episodes: int = 2) -> float:
    rets = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=1000 + ep)
        dilqr_actor(model.policy).reset()
        done, ret = False, 0.0
        while not done:
            a, _ = model.predict(obs, deterministic=True)
            obs, r, term, trunc, _ = env.step(a)
            ret, done = ret + float(r), term or trunc
        rets.append(ret)
    return float(np.mean(rets))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=256)
    args = p.parse_args()
    configure_threads(1)  # one torch thread: tiny matrices, no oversubscription
    warnings.filterwarnings("ignore", message="DiLQR actor")
    env = gym.make("dilqr_rl/Pendulum-v0")
    spec = controller_spec("dilqr_rl/Pendulum-v0", {"m": 1.4}, horizon=10, max_iter=8)
    model = PPO(DiLQRActorCriticPolicy, env, n_steps=128, batch_size=128, n_epochs=4,
                learning_rate=1e-3, gamma=0.9, seed=0,
                policy_kwargs={"controller": spec, "learn": "dynamics",
                               "controller_lr_scale": 10.0})
    print(f"before: return {evaluate(model, env):.1f}, params "
          f"{dilqr_actor(model.policy).ctrl.dynamics.theta().tolist()}")
    model.learn(args.steps)
    theta = dilqr_actor(model.policy).ctrl.dynamics.theta().detach().tolist()
    print(f"after {args.steps} steps: return {evaluate(model, env):.1f}, params (g, m, l) = "
          f"{[round(t, 3) for t in theta]} (true 10, 1, 1)")


if __name__ == "__main__":
    main()
