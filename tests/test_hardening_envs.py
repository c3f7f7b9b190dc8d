"""Hardening of the environments (issue "Hardening", items 7-9): MuJoCo instabilities, float32
overflow of observations and rewards, and validation of reset options and arguments."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest

import dilqr_rl.envs  # noqa: F401  (registers the ids)

F32_MAX = float(np.finfo(np.float32).max)


def _make(env_id: str, **kw):
    # the unwrapped env: Gymnasium's passive checker would only warn about what we test
    return gym.make(env_id, **kw).unwrapped


# ------------------------------------------------------------------ item 7
@pytest.mark.parametrize("env_id", ["dilqr_rl/MujocoPendulum-v0", "dilqr_rl/MujocoCartPole-v0"])
def test_mujoco_instability_raises_instead_of_auto_reset(env_id: str, tmp_path,
                                                         monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo logs its warnings to ./MUJOCO_LOG.TXT
    # RK4 integrates the damping explicitly: unstable at dt / n_substeps = 5 ms
    env = _make(env_id, damping=1e6, integrator="RK4")
    env.reset(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="unstable"):
            for _ in range(5):
                env.step(np.full(env.action_space.shape, 0.5, np.float32))


def test_mujoco_stable_run_still_steps() -> None:
    env = _make("dilqr_rl/MujocoPendulum-v0", damping=0.5)
    env.reset(seed=0)
    for _ in range(50):
        obs, r, *_ = env.step(np.full(env.action_space.shape, 0.5, np.float32))
    assert np.isfinite(obs).all() and math.isfinite(r)
    assert env.sim_data.time == pytest.approx(50 * env.dt)  # never reset by MuJoCo


# ------------------------------------------------------------------ item 8
def _run_until_error(env, steps: int) -> None:
    """Step with constant actions; every returned observation and reward must be a finite
    float32 (else the test fails with an AssertionError, not the expected RuntimeError)."""
    for _ in range(steps):
        obs, r, *_ = env.step(np.full(env.action_space.shape, 1.0, np.float32))
        assert obs.dtype == np.float32 and np.isfinite(obs).all(), obs
        assert math.isfinite(r) and abs(r) <= F32_MAX, r


def test_float32_overflow_of_observation_raises() -> None:
    env = _make("dilqr_rl/Pendulum-v0", m=1e-300)
    env.reset(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's overflow warnings
        with pytest.raises(RuntimeError, match="float32"):
            _run_until_error(env, 5)


def test_float32_overflow_of_reward_raises() -> None:
    env = _make("dilqr_rl/Rocket-v0", renormalize=False)
    env.reset(seed=0)
    x = env.state
    x[10:13] = 1e3  # a fast spin: the unnormalized quaternion explodes
    env.reset(options={"state": x})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(RuntimeError, match="float32"):
            _run_until_error(env, 20)


def test_rocket_without_renormalize_observation_stays_in_space() -> None:
    env = _make("dilqr_rl/Rocket-v0", renormalize=False)
    env.reset(seed=0)
    x = env.state
    x[10:13] = [5.0, 0.0, 0.0]  # |q| grows ~3 % per step; q1 passes 1 after a few steps
    env.reset(options={"state": x})
    for _ in range(10):
        obs, *_ = env.step(np.zeros(3, np.float32))
        assert env.observation_space.contains(obs), obs
    assert np.linalg.norm(env.state[6:10]) > 1.0  # the model lets |q| grow


# ------------------------------------------------------------------ item 9
@pytest.mark.parametrize("env_id, x0", [
    ("dilqr_rl/Pendulum-v0", [2.0, 0.0, 0.0]),
    ("dilqr_rl/Pendulum-v0", [0.5, 0.5, 0.0]),
    ("dilqr_rl/MujocoPendulum-v0", [0.0, 3.0, 0.0]),
    ("dilqr_rl/CartPole-v0", [0.0, 0.0, 0.5, 0.5, 0.0]),
    ("dilqr_rl/MujocoCartPole-v0", [0.0, 0.0, -1.5, 0.0, 0.0]),
    ("dilqr_rl/Rocket-v0", [10, -8, 5, 0, 0, 0, 2.0, 0, 0, 0, 0, 0, 0]),
    ("dilqr_rl/Rocket-v0", [10, -8, 5, 0, 0, 0, 0.5, 0.5, 0, 0, 0, 0, 0]),
])
def test_reset_state_off_manifold_rejected(env_id: str, x0: list[float]) -> None:
    env = _make(env_id)
    with pytest.raises(ValueError, match=r"options\['state'\].*(unit|norm)"):
        env.reset(options={"state": x0})


@pytest.mark.parametrize("env_id", ["dilqr_rl/Pendulum-v0", "dilqr_rl/Rocket-v0"])
def test_reset_state_overflowing_float32_rejected(env_id: str) -> None:
    env = _make(env_id)
    env.reset(seed=0)
    x = env.state
    x[-1] = 1e300  # finite in float64, inf as a float32 observation
    with pytest.raises(ValueError, match=r"options\['state'\].*float32"):
        env.reset(options={"state": x})


@pytest.mark.parametrize("env_id", ["dilqr_rl/Pendulum-v0", "dilqr_rl/CartPole-v0",
                                    "dilqr_rl/Rocket-v0"])
def test_reset_state_near_manifold_gives_observation_in_space(env_id: str) -> None:
    env = _make(env_id)
    env.reset(seed=0)
    x = env.state
    for lo, hi, _ in env.unit_blocks:
        x[lo:hi] = 0.0
        x[lo] = 1.0 + 4e-7  # within rounding of a float32 observation of a unit vector
    obs, _ = env.reset(options={"state": x})
    assert env.observation_space.contains(obs), obs
    for lo, hi, _ in env.unit_blocks:
        assert np.linalg.norm(env.state[lo:hi]) == pytest.approx(1.0, abs=1e-15)


def test_reset_state_from_float32_observation_accepted() -> None:
    env = _make("dilqr_rl/Rocket-v0")
    obs, _ = env.reset(seed=3)
    obs2, _ = env.reset(options={"state": obs})
    np.testing.assert_allclose(obs2, obs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("params", [[1.0], 3.0, "m=2"])
def test_reset_params_option_must_be_mapping(params) -> None:
    env = _make("dilqr_rl/Pendulum-v0")
    with pytest.raises(ValueError, match=r"options\['params'\]"):
        env.reset(options={"params": params})


def test_reset_options_must_be_mapping() -> None:
    env = _make("dilqr_rl/Pendulum-v0")
    with pytest.raises(ValueError, match="options"):
        env.reset(options=[("state", [1.0, 0.0, 0.0])])


@pytest.mark.parametrize("kw, name", [
    ({"dt": "x"}, "dt"), ({"dt": [0.1]}, "dt"), ({"dt": -0.1}, "dt"),
    ({"render_width": "wide"}, "render_width"), ({"render_height": 0}, "render_height"),
    ({"randomize": [("m", (1, 2))]}, "randomize"),
])
def test_bad_constructor_arguments_named(kw: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        _make("dilqr_rl/Pendulum-v0", **kw)
