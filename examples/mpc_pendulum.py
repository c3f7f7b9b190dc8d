"""Receding-horizon DiLQR on the pendulum env, with a wrong and a right model.

The controller plans with the pendulum task's model and its own guess of the mass; the env's
true mass is a keyword. Prints the episode returns side by side and saves a GIF of each run.

Claim (printed, and checked by tests/test_examples.py): the right model's return beats the
wrong one's (measured: -130 against -479 over 100 steps).

    python examples/mpc_pendulum.py            # 29 s on 2 CPU cores
    python examples/mpc_pendulum.py --steps 200 --gif runs/mpc_pendulum.gif
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import torch

import dilqr_rl as dl
from dilqr_rl.envs import record_episode


def make_policy(env, model_mass: float, horizon: int, iters: int):
    # the task's controller (its cost and bounds) with the model's own guess of the mass
    ctrl = env.unwrapped.task.controller(
        horizon, model_params={"m": model_mass},
        config=dl.ILQRConfig(max_iter=iters, tol=1e-6, on_unconverged="detach"))

    @torch.no_grad()
    def policy(obs):
        import warnings

        with warnings.catch_warnings():  # a capped receding-horizon solve need not converge
            warnings.simplefilter("ignore", dl.UnconvergedWarning)
            u = ctrl.act(torch.as_tensor(obs, dtype=torch.float64))
        return env.unwrapped.control_to_action(u)

    return policy


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--true-mass", type=float, default=dl.tasks.get("pendulum").params["m"])
    ap.add_argument("--wrong-mass", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--horizon", type=int, default=dl.tasks.get("pendulum").horizon)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gif", default="runs/mpc_pendulum.gif")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for label, mass in (("wrong model", args.wrong_mass), ("right model", args.true_mass)):
        env = gym.make("dilqr_rl/Pendulum-v0", m=args.true_mass, render_mode="rgb_array")
        Path(args.gif).parent.mkdir(parents=True, exist_ok=True)
        path = Path(args.gif).with_stem(Path(args.gif).stem + ("" if mass == args.true_mass
                                                                 else "_wrong"))
        out = record_episode(env, make_policy(env, mass, args.horizon, args.iters), path,
                             seed=args.seed, max_steps=args.steps)
        results[label] = out["return"]
        print(f"{label:12} (model m={mass:.2f}, true m={args.true_mass:.2f}): return "
              f"{out['return']:9.2f} over {out['steps']} steps -> {out['path']}")
        env.close()
    return results


if __name__ == "__main__":
    main()
