"""Online re-identification per episode (agents.adaptive.AdaptiveMPC) and the lockstep episode
loop's live mask it relies on."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import dilqr_rl.envs  # noqa: F401
from dilqr_rl import tasks
from dilqr_rl.agents.adaptive import AdaptiveMPC
from dilqr_rl.agents.episodes import run_episodes

PENDULUM = tasks.get("pendulum")


def _episode(policy: AdaptiveMPC, envs: list, seed: int = 5) -> list[float]:
    to_action = envs[0].unwrapped.control_to_action

    def act(obs: np.ndarray, live: np.ndarray) -> np.ndarray:
        x = torch.tensor(np.stack([e.unwrapped.state for e in envs]), dtype=torch.float64)
        return np.stack([to_action(u) for u in policy(x, torch.as_tensor(live))])

    policy.reset()
    return run_episodes(envs, seed, act, pass_live=True)


def test_refits_each_env_to_its_own_physics() -> None:
    """Two envs with different true parameters in one batch: after one episode each model
    predicts its own env (the pendulum's dynamics see only g / l and m l^2, so those are what
    must match), while a controller that never refits keeps the nominal model."""
    truths = [{"m": 1.3, "l": 0.8}, {"g": 8.0, "m": 0.7}]
    envs = [gym.make("dilqr_rl/Pendulum-v0", max_episode_steps=30, **t) for t in truths]
    policy = AdaptiveMPC(PENDULUM, horizon=10, max_iter=5, refit_every=5, fit_steps=100,
                         lr=0.05)
    _episode(policy, envs)
    for fitted, t in zip(policy.params(), truths, strict=True):
        true = {**PENDULUM.params, **t}
        assert fitted["g"] / fitted["l"] == pytest.approx(true["g"] / true["l"], rel=0.02)
        assert fitted["m"] * fitted["l"] ** 2 == pytest.approx(true["m"] * true["l"] ** 2,
                                                               rel=0.02)
    fixed = AdaptiveMPC(PENDULUM, horizon=10, max_iter=5, refit_every=0)
    _episode(fixed, envs)
    assert fixed.params() == [dict(PENDULUM.params)] * 2


def test_finished_envs_are_not_fitted_to_a_fake_transition() -> None:
    """An env whose episode ended (not stepped any more) is masked out of its fit: its model
    is the one fitted to its real transitions only, whatever the other env goes on doing."""
    short = gym.make("dilqr_rl/Pendulum-v0", max_episode_steps=12, m=1.3)
    longer = gym.make("dilqr_rl/Pendulum-v0", max_episode_steps=30, m=1.3)
    seen: list[np.ndarray] = []
    policy = AdaptiveMPC(PENDULUM, horizon=10, max_iter=5, refit_every=4, fit_steps=100)

    def act(obs: np.ndarray, live: np.ndarray) -> np.ndarray:
        seen.append(live)
        x = torch.tensor(np.stack([e.unwrapped.state for e in (short, longer)]))
        return np.stack([short.unwrapped.control_to_action(u)
                         for u in policy(x, torch.as_tensor(live))])

    run_episodes([short, longer], 3, act, pass_live=True)
    assert [bool(v[0]) for v in seen] == [True] * 12 + [False] * 18
    assert all(bool(v[1]) for v in seen)
    m_l2 = [p["m"] * p["l"] ** 2 for p in policy.params()]
    assert m_l2 == pytest.approx([1.3, 1.3], rel=0.02)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="refit_every"):
        AdaptiveMPC(PENDULUM, refit_every=-1)
    with pytest.raises(ValueError, match="fit_steps"):
        AdaptiveMPC(PENDULUM, fit_steps=0)
    with pytest.raises(ValueError, match="lr"):
        AdaptiveMPC(PENDULUM, lr=0.0)
    with pytest.raises(ValueError, match="model_params"):
        AdaptiveMPC(PENDULUM, {"mass": 2.0})
    with pytest.raises(ValueError, match="theta must be"):
        AdaptiveMPC(PENDULUM).reset(torch.ones(2, 4))
