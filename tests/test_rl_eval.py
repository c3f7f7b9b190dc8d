"""The trainer's evaluation: episodes run in lockstep as one batch give the returns of
running them one by one, and the reference (true-model MPC) is what a learned model is
measured against."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
from stable_baselines3 import PPO  # noqa: E402

import dilqr_rl.envs  # noqa: E402,F401
from dilqr_rl import sb3  # noqa: E402
from dilqr_rl.agents import rl  # noqa: E402
from dilqr_rl.agents.rl_args import parse_args  # noqa: E402
from dilqr_rl.agents.rl_reference import identifiable, reference_returns, true_params  # noqa


def _envs(n: int, steps: int = 25) -> list:
    return [gym.make("dilqr_rl/Pendulum-v0", max_episode_steps=steps) for _ in range(n)]


@pytest.mark.filterwarnings("ignore:DiLQR actor")  # capped solves are expected here
def test_batched_evaluation_equals_one_by_one() -> None:
    spec = sb3.controller_spec("pendulum", {"m": 1.3}, horizon=8, max_iter=6)
    model = PPO(sb3.DiLQRActorCriticPolicy, _envs(1)[0], n_steps=32, batch_size=16, seed=0,
                policy_kwargs={"controller": spec})
    batched = rl.evaluate(model, _envs(3), seed=7)
    one_by_one = rl.evaluate(model, _envs(1)[0], 3, seed=7)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-9)
    assert len(set(np.round(batched, 6))) == 3  # three different starts


@pytest.mark.slow
def test_reference_is_the_true_model() -> None:
    flags = ["--env", "pendulum", "--horizon", "20", "--max-iter", "10", "--eval-episodes", "2"]
    args = parse_args([*flags, "--env-kwargs", "m=1.2"])
    truth = true_params(args)
    assert truth == {"g": 10.0, "m": 1.2, "l": 1.0}
    assert identifiable(args, truth) == pytest.approx({"g/l": 10.0, "m l^2": 1.2})
    envs = [gym.make("dilqr_rl/Pendulum-v0", m=1.2, max_episode_steps=100) for _ in range(2)]
    ref = reference_returns(args, envs, seed=3)
    # the same controller planning with m = 6 in the same m = 1.2 envs does worse
    bad = reference_returns(parse_args([*flags, "--env-kwargs", "m=6.0"]), envs, seed=3)
    assert np.mean(ref) > np.mean(bad) + 50, (ref, bad)


@pytest.mark.filterwarnings("ignore:DiLQR actor")
def test_evaluation_reports_the_task_success() -> None:
    """``outcome["success"]`` is the task's verdict on each episode: the true model swings the
    pendulum up from these starts within 100 steps, a far wrong model (m = 6: its torque is
    too weak in its own eyes, l = 0.3) does not; an env outside the tasks gets no verdict."""
    def model(params: dict[str, float]) -> PPO:
        spec = sb3.controller_spec("pendulum", params, horizon=20, max_iter=10)
        return PPO(sb3.DiLQRActorCriticPolicy, _envs(1)[0], n_steps=32, batch_size=16, seed=0,
                   policy_kwargs={"controller": spec})

    good, bad = {}, {}
    rl.evaluate(model({}), _envs(2, 100), seed=3, outcome=good)
    rl.evaluate(model({"m": 6.0, "l": 0.3}), _envs(2, 100), seed=3, outcome=bad)
    assert good["success"] == [True, True]
    assert bad["success"] == [False, False]
    other = {}
    mlp = PPO("MlpPolicy", gym.make("Pendulum-v1"), n_steps=32, batch_size=16, seed=0)
    rl.evaluate(mlp, [gym.make("Pendulum-v1", max_episode_steps=5)], seed=0, outcome=other)
    assert other == {}


@pytest.mark.filterwarnings("ignore:DiLQR actor")
def test_evaluation_ignores_the_plan_cache() -> None:
    """An evaluation neither reads nor fills the actor's plan cache: a plan cached for a start
    (at a previous evaluation, under another model) is no warm start, so the returns are those
    of an actor with an empty cache; training solves still use the cache afterwards."""
    spec = sb3.controller_spec("pendulum", {"m": 1.3}, horizon=8, max_iter=2)
    model = PPO(sb3.DiLQRActorCriticPolicy, _envs(1)[0], n_steps=32, batch_size=16, seed=0,
                policy_kwargs={"controller": spec})
    actor = model.policy.actor
    clean = rl.evaluate(model, _envs(2), seed=7)
    assert len(actor.plans) == 0
    starts = np.stack([e.reset(seed=7 + i)[0] for i, e in enumerate(_envs(2))])
    obs = torch.as_tensor(starts)
    actor.plans.store(obs, torch.full((2, 8, 1), 2.0, dtype=torch.float64))  # max torque
    init = actor.initial_plans(obs, actor.state(obs))  # the poisoned warm start is there...
    assert init is not None and bool((init == 2.0).all())
    assert rl.evaluate(model, _envs(2), seed=7) == pytest.approx(clean, rel=1e-12)
    assert len(actor.plans) == 2 and actor.use_plan_cache  # ... and left alone
