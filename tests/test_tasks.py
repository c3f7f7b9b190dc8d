"""The task registry: built-in tasks, validation, and a new system added through the registry
alone (solver, env, one SB3 update); the README's two-link arm is run by test_readme.py."""

from __future__ import annotations

import math
from typing import ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch

import dilqr_rl as dl
from dilqr_rl.tasks import Task, Tracking

F64 = torch.float64


class Glider(dl.Dynamics):
    """A toy fourth system: a point mass with drag on a line, ``x = (p, v)``, force ``u``."""

    n_state, n_ctrl, u_lower, u_upper = 2, 1, -2.0, 2.0
    positive_params = True
    param_defaults: ClassVar[dict[str, float]] = {"mass": 1.0, "drag": 0.5}
    default_dt: ClassVar[float] = 0.1

    def step(self, x, u, theta):
        mass, drag = theta[..., 0], theta[..., 1]
        v = x[..., 1] + self.dt * (u[..., 0] - drag * x[..., 1]) / mass
        return torch.stack([x[..., 0] + self.dt * v, v], -1)


def _glider_task() -> Task:
    return Task(name="glider", model=Glider, env_id="test/Glider-v0", episode_steps=30,
                horizon=15, cost=Tracking(weights=(1.0, 0.1, 0.01), goal=(1.0, 0.0, 0.0)),
                sample_start=lambda rng: np.array([rng.uniform(-1, 1), 0.0]))


@pytest.fixture(scope="module")
def glider() -> Task:
    task = _glider_task()
    dl.tasks.register(task, replace=True)
    return task


def test_builtin_tasks_are_consistent() -> None:
    for name in ("pendulum", "cartpole", "rocket"):
        task = dl.tasks.get(name)
        assert dl.tasks.get(task.env_id) is task and dl.tasks.for_env(task.env_id) is task
        dyn = task.dynamics()
        assert dyn.param_names() == list(task.params) and dyn.dt == task.dt
        torch.testing.assert_close(dyn.theta().double(), task.theta())
        ctrl = task.controller(dtype=F64)
        lo, hi = ctrl.bounds(1, F64, "cpu")
        assert float(hi.max()) == task.u_upper and float(lo.min()) == task.u_lower
        x0 = task.sample_start(np.random.default_rng(0))
        assert x0.shape == (task.n_state,)
        demo = task.demo_starts(torch.Generator().manual_seed(0), 5)
        assert demo.shape == (5, task.n_state) and demo.dtype == F64
        for lo_, hi_, _ in task.unit_blocks:  # cos/sin pairs, quaternions
            torch.testing.assert_close(demo[:, lo_:hi_].norm(dim=-1), torch.ones(5, dtype=F64))
    assert dl.tasks.for_env("dilqr_rl/MujocoPendulum-v0").name == "pendulum"


def test_tracking_cost_is_reward_scale() -> None:
    """One scaling: the controller cost of a Tracking task equals minus its env reward."""
    task = dl.tasks.get("cartpole")
    rng = np.random.default_rng(1)
    x, u = rng.normal(size=task.n_state), rng.normal(size=task.n_ctrl)
    cost = task.make_cost().double()
    P = {k: v.detach() for k, v in cost.params().items()}
    stage = cost.stage(torch.tensor(x), torch.tensor(u), P)
    assert float(stage) == pytest.approx(-task.reward(x, u), rel=1e-6)


def test_model_declares_parameters_and_floors() -> None:
    arm = Glider(mass=3.0)
    assert arm.param_names() == ["mass", "drag"] and arm.theta().tolist()[0] == 3.0
    assert arm.dt == 0.1 and Glider(dt=0.2).dt == 0.2
    assert arm.lower_bounds() == {"mass": pytest.approx(0.01), "drag": pytest.approx(0.005)}
    with torch.no_grad():
        arm.mass.fill_(-1.0)
    arm.project_()
    assert arm.theta().tolist() == pytest.approx([0.01, 0.5])
    with pytest.raises(TypeError, match="masss"):
        Glider(masss=1.0)


def test_task_validation() -> None:
    good = dict(name="x", model=Glider, cost=Tracking((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
                sample_start=lambda rng: np.zeros(2))
    with pytest.raises(ValueError, match="params must name"):
        Task(**good, params={"mass": 1.0})
    with pytest.raises(ValueError, match="horizon"):
        Task(**good, horizon=0)
    with pytest.raises(ValueError, match="reward"):
        Task(**{**good, "cost": Glider}, horizon=5)  # a cost factory needs a reward
    with pytest.raises(ValueError, match="Dynamics subclass"):
        Task(**{**good, "model": dict})
    with pytest.raises(ValueError, match="same length"):
        Tracking((1.0, 1.0), (0.0,))
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        dl.tasks.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        dl.tasks.register(Task(**{**good, "name": "pendulum"}))
    with pytest.raises(ValueError, match="unknown parameter"):
        dl.tasks.get("pendulum").dynamics(mass=2.0)


def test_generic_model_task_reads_its_parameters() -> None:
    """A user model that registers its own parameters (no param_defaults) works as a task."""

    class Decay(dl.Dynamics):
        n_state, n_ctrl, u_lower, u_upper = 1, 1, -1.0, 1.0

        def __init__(self):
            super().__init__()
            self.rate = torch.nn.Parameter(torch.tensor(0.3))

        def forward(self, x, u):
            return x - 0.1 * self.rate * x + 0.1 * u

    task = Task(name="decay", model=Decay, dt=0.1, cost=Tracking((1.0, 0.1), (0.0, 0.0)),
                sample_start=lambda rng: np.ones(1))
    assert dict(task.params) == {"rate": pytest.approx(0.3)}
    assert task.dynamics(rate=0.5).theta().tolist() == [0.5]
    sol = task.controller(horizon=5)(torch.ones(2, 1, dtype=F64))
    assert bool(sol.converged.all())


def test_fourth_system_solver_and_env(glider: Task) -> None:
    env = gym.make("test/Glider-v0", drag=0.7)
    un = env.unwrapped
    assert isinstance(un, dl.envs.DynamicsEnv) and un.task is glider
    assert env.spec.max_episode_steps == 30
    obs, info = env.reset(seed=3)
    assert info["params"] == {"mass": 1.0, "drag": 0.7}
    x = torch.tensor(un.state)
    dyn = glider.dynamics(drag=0.7).double()
    obs, r, *_ = env.step(np.array([0.5], np.float32))
    u = torch.tensor([0.5 * glider.u_upper], dtype=F64)
    np.testing.assert_allclose(un.state, dyn.step(x, u, dyn.theta()).detach().numpy())
    assert r == pytest.approx(glider.reward(x.numpy(), u.numpy()))
    # closed loop with the task's controller (wrong drag) reaches the goal position
    ctrl = glider.controller()
    obs, _ = env.reset(seed=0, options={"state": [-1.0, 0.0]})
    for _ in range(30):
        obs, *_ = env.step(un.control_to_action(ctrl.act(torch.as_tensor(obs, dtype=F64))))
    assert abs(obs[0] - glider.cost.goal[0]) < 0.1, obs
    with pytest.raises(ValueError, match="render_mode"):
        gym.make("test/Glider-v0", render_mode="rgb_array")
    with pytest.raises(ValueError, match="unknown argument"):
        gym.make("test/Glider-v0", mas=1.0)


def test_identifiable_combinations() -> None:
    """The pendulum's dynamics see (g, m, l) only through g / l and m l^2: parameter sets
    with equal combinations give equal steps, and the task reports those combinations."""
    task = dl.tasks.get("pendulum")
    a = torch.tensor([10.0, 1.0, 1.0], dtype=F64)
    b = torch.tensor([20.0, 0.25, 2.0], dtype=F64)  # g/l = 10, m l^2 = 1
    ca, cb = task.combinations(a), task.combinations(b)
    assert set(ca) == {"g/l", "m l^2"}
    for k in ca:
        torch.testing.assert_close(ca[k], cb[k])
    dyn = task.dynamics().double()
    x = task.demo_starts(torch.Generator().manual_seed(0), 4)
    u = torch.linspace(-1, 1, 4, dtype=F64)[:, None]
    torch.testing.assert_close(dyn.step(x, u, a), dyn.step(x, u, b))
    assert set(dl.tasks.get("cartpole").combinations(dl.tasks.get("cartpole").theta())) == \
        {"g", "m_cart", "m_pole", "l"}


def test_fourth_system_sb3_update(glider: Task) -> None:
    """One PPO update with a DiLQR actor on the new task: the spec names the task, the
    gradient reaches the model's parameters, and their declared floors hold."""
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    from dilqr_rl import sb3

    spec = sb3.controller_spec("glider", {"drag": 0.8}, horizon=8, max_iter=8)
    env = gym.make("test/Glider-v0")
    model = PPO(sb3.DiLQRActorCriticPolicy, env, n_steps=32, batch_size=16, n_epochs=1,
                learning_rate=1e-2, seed=0, policy_kwargs={"controller": spec})
    before = sb3.physical_params(model.policy)
    assert before == pytest.approx({"mass": 1.0, "drag": 0.8})
    model.learn(32)
    after = sb3.physical_params(model.policy)
    assert after != before and all(math.isfinite(v) for v in after.values())
    floors = sb3.dilqr_actor(model.policy).ctrl.dynamics.lower_bounds()
    assert all(after[k] >= floors[k] for k in floors)
