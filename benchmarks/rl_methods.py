"""The methods and settings of ``benchmarks/rl_sample_efficiency.py``: which env, which wrong
model, which SB3 hyperparameters, as ``TrainArgs`` keywords of one run."""

from __future__ import annotations

import argparse
from typing import Any

from dilqr_rl import tasks

#: the env of every built-in system (pendulum, cart-pole, rocket and the MuJoCo twins). The
#: rocket's is ``RocketTimed-v0``: ``Rocket-v0`` (the same physics, reward and success) with
#: the steps to the landing time in the observation. The rocket lands only when its plans end
#: at the landing time (a shrinking horizon); an SB3 actor's plans all have one length, and
#: with the clock in its state (``tasks.rocket.ROCKET_TIMED``) a fixed-length plan is the
#: shrinking one. On ``Rocket-v0`` the same actor, without the time, lands from none of the
#: evaluation starts even with the true model (docs/rl.md, "The rocket").
ENVS = ("dilqr_rl/Pendulum-v0", "dilqr_rl/MujocoPendulum-v0", "dilqr_rl/CartPole-v0",
        "dilqr_rl/MujocoCartPole-v0", "dilqr_rl/RocketTimed-v0")
#: tasks whose target also asks for the true-model MPC's success rate on the seed's starts:
#: the rocket's return barely tells a landing from a crash (a crash ends the episode early
#: and so accumulates less cost: -30788 against the landing's -30538 on one start)
SUCCESS_TARGET = frozenset({"rocket", "rocket_timed"})
METHODS = ("dilqr_ppo_sysid", "dilqr_ppo", "dilqr_sac_sysid", "dilqr_sac", "mlp_ppo",
           "mlp_sac")
#: variants for the RL-loss-only study (``--methods``): PPO with the physical parameters' lr
#: 0.01 instead of 0.1 (Adam takes ~lr-sized steps whatever the gradient's noise: 20 steps per
#: rollout at 0.1 random-walk a parameter by ~2 when the estimate's sign flips, see
#: benchmarks/rl_gradient_signal.py)
VARIANTS = ("dilqr_ppo_lr10", "dilqr_sac_4x")
#: budget factor of a variant: ``dilqr_sac_4x`` is ``dilqr_sac`` (RL loss only) with 4x the env
#: steps, whether the RL gradient fixes the model when its critic has had the steps the MLP
#: baselines need (MLP SAC: 2816-3072 on the pendulum)
BUDGET_FACTOR = {"dilqr_sac_4x": 4}
#: the model mismatch: every physical parameter off by this fraction (signs: SIGNS)
MISMATCH = 0.4


def true_params(env: str) -> dict[str, float]:
    """The true physical parameters of ``env`` (its task's; for a MuJoCo env, those of the
    analytic model it is built from)."""
    return dict(tasks.for_env(env).params)


#: per task, the sign of each parameter's error, in the model's order: chosen so that the
#: combinations the dynamics depend on are wrong too (the pendulum's ``+, +, -`` makes
#: ``g / l`` 2.3x and ``m l^2`` 0.5x the truth; ``+, -, +`` would leave ``g / l`` exact)
SIGNS = {"pendulum": (1, 1, -1), "cartpole": (1, 1, -1, -1), "rocket": (1, -1, 1, 1, -1)}
SIGNS["rocket_timed"] = SIGNS["rocket"]  # the same physical parameters


def wrong_params(env: str) -> dict[str, float]:
    """The controller's initial model: every true parameter 40 % off, with the signs of
    ``SIGNS`` (pendulum ``g, m, l = 14, 1.4, 0.6`` against ``10, 1, 1``)."""
    task = tasks.for_env(env)
    return {k: v * (1 + MISMATCH * s)
            for (k, v), s in zip(true_params(env).items(), SIGNS[task.name], strict=True)}


def is_dilqr(method: str) -> bool:
    return method.startswith("dilqr")


def budget(method: str, env: str, opt: argparse.Namespace) -> int:
    """Env steps of one run: ``--budget`` for the DiLQR actor (``--rocket-budget`` on the
    rocket, whose solves are ~20x dearer), ``--mlp-budget`` for the MLP baselines (larger, so
    that how many steps they need is measured rather than censored)."""
    if not is_dilqr(method):
        return opt.mlp_budget
    return BUDGET_FACTOR.get(method, 1) * (opt.rocket_budget if "Rocket" in env else opt.budget)


def run_args(method: str, env: str, seed: int, opt: argparse.Namespace) -> dict[str, Any]:
    """``TrainArgs`` keywords of one run."""
    steps = budget(method, env, opt)
    common: dict[str, Any] = {
        "env": env, "seed": seed, "total_timesteps": steps, "eval_freq": opt.eval_freq,
        "eval_episodes": opt.eval_episodes, "checkpoint_freq": steps, "out_dir": opt.work_dir,
        "progress_bar": False, "run_name": f"{method}_{env.split('/')[-1]}_s{seed}",
        "resume": False, "max_iter": opt.max_iter, "reference": False, "tensorboard": False}
    if is_dilqr(method):
        common.update(policy="dilqr", learn="dynamics",
                      model_params=",".join(f"{k}={v:g}" for k, v in wrong_params(env).items()),
                      sysid_every=128 if method.endswith("sysid") else 0)
    if method.startswith("dilqr_ppo"):
        # lr 0.1 for the physical parameters (O(1-10)); n_steps 512 with 10 epochs
        return dict(common, algo="ppo", n_steps=512, batch_size=256, n_epochs=10,
                    learning_rate=1e-3, gamma=0.9,
                    controller_lr_scale=10.0 if method.endswith("lr10") else 100.0)
    if method.startswith("dilqr_sac"):
        # one update every 4 env steps (each is a batched solve and its implicit backward),
        # lr 0.01 for the physical parameters
        return dict(common, algo="sac", learning_rate=1e-3, controller_lr_scale=10.0,
                    gamma=0.99, batch_size=64, learning_starts=256, train_freq=4)
    if method == "mlp_ppo":  # rl-zoo's Pendulum-v1 settings, one env
        return dict(common, algo="ppo", policy="mlp", n_steps=1024, batch_size=64,
                    n_epochs=10, learning_rate=1e-3, gamma=0.9)
    if method == "mlp_sac":  # rl-zoo's Pendulum-v1 settings
        return dict(common, algo="sac", policy="mlp", learning_rate=1e-3, gamma=0.99,
                    batch_size=256, learning_starts=500)
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")
