"""Tests of the environments (``dilqr_rl.envs``): API checks, equality with the dynamics
modules, seeding, parameters, the MuJoCo gap, rendering, and a DiLQR controller that solves
each task with the true parameters and fails with badly wrong ones."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import dilqr_rl as dl
import dilqr_rl.envs as envs
from dilqr_rl.envs.rendering import RenderError, display_available

torch.set_num_threads(1)

ANALYTIC = ["dilqr_rl/Pendulum-v0", "dilqr_rl/CartPole-v0", "dilqr_rl/Rocket-v0",
            "dilqr_rl/RocketTimed-v0"]
MUJOCO = ["dilqr_rl/MujocoPendulum-v0", "dilqr_rl/MujocoCartPole-v0"]
#: several true-parameter settings per analytic env
SETTINGS = {
    "dilqr_rl/Pendulum-v0": [{}, {"m": 1.3}, {"g": 9.0, "l": 0.7}],
    "dilqr_rl/CartPole-v0": [{}, {"m_pole": 0.3}, {"g": 9.0, "m_cart": 2.0, "l": 0.8}],
    "dilqr_rl/Rocket-v0": [{}, {"m": 1.5}, {"Jx": 0.7, "Jy": 2.0, "Jz": 1.5, "l": 1.4}],
    "dilqr_rl/RocketTimed-v0": [{}, {"Jx": 0.7, "Jy": 2.0, "Jz": 1.5, "l": 1.4}],
}


def test_registered_ids() -> None:
    assert set(envs.ENV_IDS) == set(ANALYTIC + MUJOCO)
    for env_id in envs.ENV_IDS:
        assert gym.spec(env_id).max_episode_steps is not None


@pytest.mark.parametrize("env_id", ANALYTIC + MUJOCO)
def test_check_env(env_id: str) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(env_id)
        check_env(env.unwrapped)
        sb3_check_env(gym.make(env_id).unwrapped, warn=True)
        env.close()


@pytest.mark.slow
def test_make_in_fresh_interpreter() -> None:
    code = ("import gymnasium, sys; e = gymnasium.make('dilqr_rl.envs:dilqr_rl/Pendulum-v0');"
            "e.reset(seed=0); e.step(e.action_space.sample());"
            "assert 'mujoco' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    code = ("import sys, dilqr_rl, gymnasium; assert 'mujoco' not in sys.modules;"
            "e = gymnasium.make('dilqr_rl/Rocket-v0', m=1.2); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("env_id", ANALYTIC)
def test_step_equals_dynamics(env_id: str) -> None:
    """Every env step is one step of its Dynamics module with the true parameters."""
    for i, params in enumerate(SETTINGS[env_id]):
        kwargs = dict(params, renormalize=False) if "Rocket" in env_id else params
        env = gym.make(env_id, **kwargs)
        un = env.unwrapped
        true = {**un.param_defaults, **params}
        dyn = un.task.dynamics()
        theta = torch.tensor([true[k] for k in dyn.param_names()], dtype=torch.float64)
        assert torch.equal(theta, un.theta)
        obs, info = env.reset(seed=i)
        assert info["params"] == {**un.param_defaults, **params}
        x = torch.tensor(un.state)
        rng = np.random.default_rng(i)
        for _ in range(15):
            a = rng.uniform(-1.2, 1.2, env.action_space.shape).astype(np.float32)
            obs, r, term, trunc, info = env.step(a)
            u = torch.tensor(np.clip(a, -1, 1).astype(np.float64) * un.u_max)
            with torch.no_grad():
                x = dyn.step(x, u, theta)
            np.testing.assert_allclose(un.state, x.numpy(), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(obs, x.numpy().astype(np.float32), rtol=1e-6)
            np.testing.assert_array_equal(info["control"], u.numpy())
            if term:
                break


def test_rocket_renormalizes_quaternion() -> None:
    env = gym.make("dilqr_rl/Rocket-v0")
    env.reset(seed=0)
    for _ in range(10):
        env.step(env.action_space.sample())
        assert abs(np.linalg.norm(env.unwrapped.state[6:10]) - 1) < 1e-12


def test_rewards_match_task_costs() -> None:
    # pendulum: Pendulum-v1's cost at th = pi - 0.5 (wrapped), thdot = 2, u = -1
    env = gym.make("dilqr_rl/Pendulum-v0").unwrapped
    th = math.pi + 0.5  # wraps to -(pi - 0.5)
    env.reset(options={"state": [math.cos(th), math.sin(th), 2.0]})
    _, r, *_ = env.step(np.array([-0.5], np.float32))
    assert r == pytest.approx(-((math.pi - 0.5) ** 2 + 0.1 * 4 + 0.001 * 1))
    # cart-pole and rocket: minus the task cost of the state before the step
    for env_id in ["dilqr_rl/CartPole-v0", "dilqr_rl/Rocket-v0"]:
        env = gym.make(env_id).unwrapped
        env.reset(seed=3)
        x = torch.tensor(env.state)[None, None]
        a = np.full(env.action_space.shape, 0.3, np.float32)
        _, r, *_ = env.step(a)
        cost = env.task_cost().double()
        u = torch.tensor(env.action_to_control(a))[None, None]
        P = {k: v.detach() for k, v in cost.params().items()}
        expected = cost.stage(x, u, P).item()  # (cost params are stored in float32)
        assert r == pytest.approx(-expected, rel=1e-6)
    # rocket cost on hand-computed values: r = (1, 2, 0), v = (0, 0, 3), 90 deg about z
    from dilqr_rl.tasks.rocket import stage_cost
    x = torch.zeros(13, dtype=torch.float64)
    x[0:3] = torch.tensor([1.0, 2.0, 0.0])
    x[5] = 3.0
    x[6], x[9] = math.cos(math.pi / 4), math.sin(math.pi / 4)  # tilt(q) = 4 q0^2 q3^2 = 1
    x[10] = 0.5
    u = torch.tensor([10.0, 1.0, 2.0], dtype=torch.float64)
    w = torch.tensor([10.0, 1.0, 50.0, 1.0, 1.0, 0.4], dtype=torch.float64)
    expected = 10 * 5 + 1 * 9 + 50 * 1 + 1 * 0.25 + 1 * 5 + 0.4 * 105
    assert float(stage_cost(x, u, w)) == pytest.approx(expected)


@pytest.mark.parametrize("env_id", ANALYTIC + MUJOCO)
def test_seeding(env_id: str) -> None:
    env = gym.make(env_id, randomize={"l": (0.8, 1.2)})
    acts = np.random.default_rng(0).uniform(-1, 1, (5, *env.action_space.shape))

    def episode(seed: int) -> tuple[np.ndarray, list, dict]:
        obs, info = env.reset(seed=seed)
        traj = [obs] + [env.step(a.astype(np.float32))[0] for a in acts]
        return obs, traj, info

    o1, t1, i1 = episode(7)
    o2, t2, i2 = episode(7)
    o3, _, i3 = episode(8)
    np.testing.assert_array_equal(np.stack(t1), np.stack(t2))
    assert i1["params"] == i2["params"]
    assert not np.array_equal(o1, o3)
    assert i1["params"]["l"] != i3["params"]["l"]
    assert 0.8 <= i3["params"]["l"] <= 1.2


def test_params_options_and_errors() -> None:
    env = gym.make("dilqr_rl/Pendulum-v0", m=1.3)
    _, info = env.reset(seed=0)
    true = dict(dl.tasks.get("pendulum").params)
    assert info["params"] == {**true, "m": 1.3}
    _, info = env.reset(options={"params": {"g": 9.0}})
    assert info["params"] == {**true, "g": 9.0, "m": 1.3}
    assert env.unwrapped.theta.tolist() == [9.0, 1.3, true["l"]]
    _, info = env.reset()  # options apply to one episode only
    assert info["params"]["g"] == true["g"]
    with pytest.raises(ValueError, match="'mass'"):
        gym.make("dilqr_rl/Pendulum-v0", mass=1.0)
    with pytest.raises(ValueError, match="'m'.*> 0"):
        gym.make("dilqr_rl/Pendulum-v0", m=-1.0)
    with pytest.raises(ValueError, match="'m_pole'"):
        gym.make("dilqr_rl/CartPole-v0", m_pole=0.0)
    with pytest.raises(ValueError, match="'Jq'"):
        gym.make("dilqr_rl/Rocket-v0", randomize={"Jq": (1, 2)})
    with pytest.raises(ValueError, match="low <= high"):
        gym.make("dilqr_rl/Rocket-v0", randomize={"m": (2, 1)})
    with pytest.raises(ValueError, match="'gravity'"):
        env.reset(options={"params": {"gravity": 1.0}})
    with pytest.raises(ValueError, match="damping"):
        gym.make("dilqr_rl/MujocoPendulum-v0", damping=-0.1)
    gym.make("dilqr_rl/MujocoPendulum-v0", damping=0.0)  # zero damping is fine


@pytest.mark.parametrize("env_id", ANALYTIC + MUJOCO)
def test_actions_clipped_and_nan_rejected(env_id: str) -> None:
    env = gym.make(env_id)
    un = env.unwrapped
    env.reset(seed=0)
    state = un.state
    env.step(np.full(env.action_space.shape, 5.0, np.float32))
    big = un.state
    env.reset(seed=0)
    env.step(np.ones(env.action_space.shape, np.float32))
    np.testing.assert_array_equal(big, un.state)
    env.reset(seed=0)
    np.testing.assert_array_equal(state, un.state)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full(env.action_space.shape, np.nan, np.float32))
    np.testing.assert_allclose(un.control_to_action(un.action_to_control(
        np.full(env.action_space.shape, 0.25))), 0.25)
    phys = gym.make(env_id, normalize_actions=False)
    assert np.all(phys.action_space.high == un.u_max.astype(np.float32))


def test_mujoco_matches_model_physics() -> None:
    """The MJCF is the analytic system: pendulum with one Euler substep equals the model;
    cart-pole accelerations (MuJoCo's semi-implicit Euler vs the model's explicit Euler
    differ only in the position update) are equal."""
    params = {"g": 9.0, "m": 1.4, "l": 0.8}
    mj = gym.make("dilqr_rl/MujocoPendulum-v0", n_substeps=1, integrator="Euler", **params)
    an = gym.make("dilqr_rl/Pendulum-v0", **params)
    for env in (mj, an):
        env.reset(seed=1)
    for a in np.random.default_rng(0).uniform(-1, 1, (20, 1)).astype(np.float32):
        mj.step(a)
        an.step(a)
    np.testing.assert_allclose(mj.unwrapped.state, an.unwrapped.state, atol=1e-10)

    params = {"g": 9.0, "m_cart": 1.5, "m_pole": 0.3, "l": 0.7}
    mj = gym.make("dilqr_rl/MujocoCartPole-v0", n_substeps=1, integrator="Euler",
                  **params).unwrapped
    rng = np.random.default_rng(1)
    for _ in range(10):
        x0 = np.array([rng.normal(), rng.normal(), 0, 0, rng.normal() * 2])
        th = rng.uniform(-math.pi, math.pi)
        x0[2:4] = math.cos(th), math.sin(th)
        mj.reset(options={"state": x0})
        a = rng.uniform(-1, 1, (1,)).astype(np.float32)
        mj.step(a)
        with torch.no_grad():
            xa = mj.dynamics.step(torch.tensor(x0), torch.tensor(mj.action_to_control(a)),
                                  mj.theta).numpy()
        np.testing.assert_allclose(mj.state[[1, 4]], xa[[1, 4]], rtol=1e-9, atol=1e-9)


def _gap(env_id: str, scale: float, seeds: range) -> tuple[np.ndarray, np.ndarray]:
    """Max one-step prediction error and 1-s open-loop drift of the analytic model."""
    one, drift = [], []
    for s in seeds:
        env = gym.make(env_id).unwrapped
        rng = np.random.default_rng(s)
        env.reset(seed=s)
        xa = torch.tensor(env.state)
        for _ in range(20):
            a = rng.uniform(-scale, scale, env.action_space.shape)
            u = torch.tensor(env.action_to_control(a))
            prev = torch.tensor(env.state)
            env.step(a.astype(np.float32))
            with torch.no_grad():
                pred = env.dynamics.step(prev, u, env.theta)
                xa = env.dynamics.step(xa, u, env.theta)
            one.append(np.abs(pred.numpy() - env.state))
            drift.append(np.abs(xa.numpy() - env.state))
    return np.max(one, 0), np.max(drift, 0)


def test_mujoco_gap() -> None:
    """The documented analytic-vs-MuJoCo gap (see the MuJoCo envs' docstrings)."""
    one, drift = _gap("dilqr_rl/MujocoPendulum-v0", 1.0, range(5))
    assert np.all(one <= [0.03, 0.03, 0.2]) and np.all(drift <= [0.4, 0.4, 0.4])
    assert one[2] > 1e-3  # a real gap, not zero
    one, drift = _gap("dilqr_rl/MujocoCartPole-v0", 0.2, range(5))
    assert np.all(one <= [0.04, 0.02, 0.05, 0.05, 0.2])
    assert np.all(drift <= [0.2, 0.1, 0.35, 0.35, 1.5])
    assert one[4] > 1e-3


@pytest.mark.parametrize("env_id", ANALYTIC + MUJOCO)
def test_render_rgb_array(env_id: str) -> None:
    env = gym.make(env_id, render_mode="rgb_array", render_width=96, render_height=64)
    env.reset(seed=0)
    f0 = env.render()
    for _ in range(3):
        env.step(np.ones(env.action_space.shape, np.float32))
    f1 = env.render()
    env.close()
    assert f0.shape == (64, 96, 3) and f0.dtype == np.uint8
    assert f0.std() > 1.0  # not a blank frame
    assert not np.array_equal(f0, f1)  # the frame follows the state


def test_render_human_headless_and_video(tmp_path) -> None:
    if not display_available():
        with pytest.raises(RenderError, match="display"):
            gym.make("dilqr_rl/Pendulum-v0", render_mode="human")
    env = gym.make("dilqr_rl/Pendulum-v0", render_mode="rgb_array", render_width=64,
                   render_height=64)
    out = envs.record_episode(env, None, tmp_path / "ep.gif", seed=0, max_steps=5)
    assert out["steps"] == 5 and (tmp_path / "ep.gif").stat().st_size > 100
    import imageio.v3 as iio

    assert iio.imread(tmp_path / "ep.gif").shape[0] == 6
    with pytest.raises(ValueError, match="gif or .mp4"):
        envs.save_video([np.zeros((8, 8, 3), np.uint8)], tmp_path / "ep.avi")


# ------------------------------------------------------------------ controllers
def _closed_loop(env_id: str, x0: list[float], ctrl_params: dict, horizon: int,
                 steps: int, max_iter: int) -> tuple[float, np.ndarray]:
    """Receding-horizon DiLQR on the env; returns ``(return, final state)``."""
    env = gym.make(env_id)
    un = env.unwrapped
    env.reset(seed=0, options={"state": x0})
    ctrl = un.task.controller(horizon, model_params=ctrl_params,
                              config=dl.ILQRConfig(max_iter=max_iter, tol=1e-6))
    ret = 0.0
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", RuntimeWarning)  # unconverged MPC steps are expected
        for _ in range(steps):
            u = ctrl.act(torch.tensor(un.state))
            _, r, term, trunc, _ = env.step(un.control_to_action(u))
            ret += r
            if term or trunc:
                break
    return ret, un.state


@pytest.mark.slow
def test_dilqr_swings_up_pendulum() -> None:
    x0 = [math.cos(3.0), math.sin(3.0), 0.0]  # near hanging
    ret, x = _closed_loop("dilqr_rl/Pendulum-v0", x0, {}, 20, 100, 10)
    assert abs(math.atan2(x[1], x[0])) < 0.05 and abs(x[2]) < 0.1  # upright, held
    ret_bad, x_bad = _closed_loop("dilqr_rl/Pendulum-v0", x0, {"m": 5.0}, 20, 100, 10)
    assert abs(math.atan2(x_bad[1], x_bad[0])) > 1.0
    assert ret_bad < 1.5 * ret  # measured: -389 (true) vs -851 (m x 5)


@pytest.mark.slow
def test_dilqr_swings_up_cartpole() -> None:
    x0 = [0.0, 0.0, math.cos(3.0), math.sin(3.0), 0.0]
    ret, x = _closed_loop("dilqr_rl/CartPole-v0", x0, {}, 30, 60, 3)
    assert abs(math.atan2(x[3], x[2])) < 0.1 and abs(x[4]) < 0.3
    ret_bad, x_bad = _closed_loop("dilqr_rl/CartPole-v0", x0, {"l": 1.5}, 30, 60, 3)
    assert abs(math.atan2(x_bad[3], x_bad[2])) > 1.0
    assert ret_bad < 1.2 * ret  # measured: -192 (true) vs -257 (l x 3)


def _rocket_landing(ctrl_params: dict, max_iter: int) -> tuple[bool, float, dict]:
    """The published setting: one 40-step DiLQR plan from ``X0``, executed in the env."""
    from dilqr_rl.tasks.rocket import ROCKET, X0

    ctrl = ROCKET.controller(40, model_params=ctrl_params,
                             config=dl.ILQRConfig(max_iter=max_iter, tol=1e-6))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", RuntimeWarning)
        u = ctrl(torch.tensor(X0)[None]).u[0]
    env = gym.make("dilqr_rl/Rocket-v0")
    un = env.unwrapped
    env.reset(options={"state": X0})
    info: dict = {}
    for k in range(40):
        _, _, term, _, info = env.step(un.control_to_action(u[k]))
        if term:
            break
    return bool(info.get("landed", False)), float(np.linalg.norm(un.state[:3])), info


@pytest.mark.slow
def test_dilqr_lands_rocket() -> None:
    landed, dist, info = _rocket_landing({}, 60)
    assert landed and dist < 0.5 and info["tilt_deg"] < 10.0  # measured: 0.18 m, ~0.4 deg
    landed_bad, dist_bad, _ = _rocket_landing({"m": 3.0}, 30)
    assert not landed_bad and dist_bad > 5.0  # measured: 84 m away after 4 s
