"""The parts of the SB3 policies that need no training: the controller spec (it names a task,
validates each field, is plain data, and reads the format before tasks, ``env_id``, that
models saved then hold), the cost network's rule for positive cost parameters, and the
optimizer groups."""

from __future__ import annotations

import json
import math
import pickle
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

pytest.importorskip("stable_baselines3")
from stable_baselines3 import PPO, TD3  # noqa: E402

import dilqr_rl  # noqa: E402
from dilqr_rl import sb3  # noqa: E402

BOX = spaces.Box(-1.0, 1.0, (1,))


def sample_obs(n: int, seed: int = 0) -> np.ndarray:
    """Pendulum observations near upright."""
    th = np.random.default_rng(seed).uniform(-0.4, 0.4, n)
    return np.stack([np.cos(th), np.sin(th), 0 * th], -1).astype(np.float32)


#: a spec in the format before specs named a task (what models saved then hold)
OLD_SPEC = {"env_id": "dilqr_rl/Pendulum-v0", "model": "Pendulum",
            "model_params": {"g": 7.0, "m": 1.3}, "horizon": 6,
            "config": {"max_iter": 10, "tol": 1e-6, "on_unconverged": "warn"},
            "grad": "implicit"}


def test_spec_names_a_task() -> None:
    by_env = sb3.controller_spec("dilqr_rl/Pendulum-v0", {"g": 7.0}, horizon=6, max_iter=10)
    by_name = sb3.controller_spec("pendulum", {"g": 7.0}, horizon=6, max_iter=10)
    assert by_env == by_name and by_env.task == "pendulum"
    assert sb3.ControllerSpec.coerce(OLD_SPEC) == sb3.controller_spec(
        "pendulum", {"g": 7.0, "m": 1.3}, horizon=6, max_iter=10)
    # defaults: the task's horizon and solver settings, on_unconverged="warn"
    task = dilqr_rl.tasks.get("pendulum")
    default = sb3.controller_spec("pendulum")
    assert default.horizon is None and default.build().horizon == task.horizon
    assert default.config == {**task.solver, "on_unconverged": "warn"}
    # the old format's own defaults (horizon 15, max_iter 15)
    old = sb3.ControllerSpec.coerce({"env_id": "dilqr_rl/CartPole-v0"})
    assert old.task == "cartpole" and old.horizon == 15 and old.config["max_iter"] == 15
    # plain data, picklable, round trips
    spec_ = sb3.controller_spec("rocket", {"m": 1.3}, cost_params={"weights": [1.0] * 6},
                                u_lower=[0.0, -1.0, -1.0], u_upper=(20.0, 1.0, 1.0), dt=0.05)
    assert sb3.ControllerSpec.coerce(json.loads(json.dumps(spec_.to_dict()))) == spec_
    assert pickle.loads(pickle.dumps(spec_)) == spec_
    ctrl = spec_.build()
    assert ctrl.dynamics.dt == 0.05 and float(ctrl.dynamics.m.detach()) == pytest.approx(1.3)
    assert ctrl.cost.weights.tolist() == [1.0] * 6 and ctrl.cost.weights.dtype == torch.float64


@pytest.mark.parametrize(("kw", "field"), [
    ({"task": "acrobot"}, "task"),
    ({"model_params": {"mass": 1.0}}, "model_params"),
    ({"model_params": {"m": -1.0}}, "model_params"),
    ({"model_params": {"m": float("nan")}}, "model_params"),
    ({"horizon": 0}, "horizon"),
    ({"config": {"max_iter": 0}}, "config"),
    ({"config": {"max_iterations": 3}}, "config"),
    ({"grad": "fd"}, "grad"),
    ({"cost_params": {"weight": [1.0]}}, "cost_params"),
    ({"cost_params": {"weights": [1.0, 2.0]}}, "cost_params"),
    ({"dt": 0.0}, "dt"),
    ({"u_lower": [-1.0, -1.0]}, "u_lower"),
    ({"u_upper": "2"}, "u_upper"),
    ({"dtype": "float16"}, "dtype"),
])
def test_spec_errors_name_the_field(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"controller spec '{field}'") as e:
        sb3.ControllerSpec(**{"task": "pendulum", **kw})
    assert e.value.field == field


def test_old_spec_model_must_be_the_tasks() -> None:
    with pytest.raises(ValueError, match="'model'"):
        sb3.ControllerSpec.coerce({**OLD_SPEC, "model": "CartPole"})
    with pytest.raises(ValueError, match="'env_id'"):
        sb3.ControllerSpec.coerce({**OLD_SPEC, "env_id": "Pendulum-v1"})
    with pytest.raises(ValueError, match="needs 'task'"):
        sb3.ControllerSpec.coerce({"model": "Pendulum"})


def test_old_format_spec_saves_and_loads(tmp_path) -> None:
    """A policy built from an old-format dict, and a saved model whose file holds one (as
    models saved before specs named a task do), act as the same spec in the new format."""
    env_id = "dilqr_rl/Pendulum-v0"
    obs = sample_obs(4, seed=5)
    old = PPO(sb3.DiLQRActorCriticPolicy, gym.make(env_id), seed=0, n_steps=64,
              policy_kwargs={"controller": dict(OLD_SPEC), "learn": "both"})
    new_spec = sb3.ControllerSpec.coerce(OLD_SPEC)
    assert sb3.dilqr_actor(old.policy).spec == new_spec
    act, _ = old.predict(obs, deterministic=True)
    old.save(tmp_path / "old")
    back = PPO.load(tmp_path / "old", device="cpu")
    assert back.policy_kwargs["controller"] == OLD_SPEC  # what the file holds, unchanged
    np.testing.assert_array_equal(back.predict(obs, deterministic=True)[0], act)
    # SB3's policy file stores the spec as its new-format dict
    old.policy.save(tmp_path / "policy.pt")
    pol = sb3.DiLQRActorCriticPolicy.load(tmp_path / "policy.pt", device="cpu")
    assert pol.actor.spec == new_spec
    np.testing.assert_array_equal(pol.predict(obs, deterministic=True)[0], act)
    # a model saved with a new-format spec, its file edited back to the old format
    model = PPO(sb3.DiLQRActorCriticPolicy, gym.make(env_id), seed=0, n_steps=64,
                policy_kwargs={"controller": new_spec.to_dict(), "learn": "both"})
    model.save(tmp_path / "new.zip")
    with zipfile.ZipFile(tmp_path / "new.zip") as z:
        files = {n: z.read(n) for n in z.namelist()}
    data = json.loads(files["data"])
    data["policy_kwargs"]["controller"] = OLD_SPEC
    files["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(tmp_path / "edited.zip", "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    edited = PPO.load(tmp_path / "edited.zip", device="cpu")
    assert sb3.dilqr_actor(edited.policy).spec == new_spec
    np.testing.assert_array_equal(edited.predict(obs, deterministic=True)[0],
                                  model.predict(obs, deterministic=True)[0])


def test_cost_net_scales_positive_parameters() -> None:
    """The cost network multiplies what the cost declares positive and shifts the rest."""
    actor = sb3.DiLQRActor(sb3.controller_spec("pendulum", horizon=5), BOX, learn="cost_net")
    assert set(actor.ctrl.cost.positive_params()) == {"weights", "terminal_weights"}
    last = list(actor.cost_net.parameters())[-1]  # the output bias
    with torch.no_grad():
        last.fill_(0.5)
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    over = actor.cost_overrides(x0)
    base = actor.ctrl.cost.params()
    torch.testing.assert_close(over["weights"], base["weights"] * math.exp(0.5) + 0 * x0[:, :1])
    torch.testing.assert_close(over["goal"], base["goal"] + 0.5 + 0 * x0[:, :1])
    # the rocket's FunctionCost declares its weights positive
    rocket = dilqr_rl.tasks.get("rocket").make_cost()
    assert rocket.positive_params() == ("weights",) and rocket.lower_bounds()["weights"] > 0


def test_optimizer_groups_by_object() -> None:
    model = TD3(sb3.DiLQRTD3Policy, gym.make("dilqr_rl/Pendulum-v0"), policy_kwargs={
        "controller": sb3.controller_spec("pendulum", horizon=5),
        "learn": "dynamics+cost+cost_net"}, buffer_size=100)
    actor = sb3.dilqr_actor(model.policy)
    groups = model.policy.actor.optimizer.param_groups
    by_id = {id(p): g for g in groups for p in g["params"]}
    dyn, cost = actor.ctrl.dynamics, actor.ctrl.cost
    for module in (dyn, cost):
        for k, p in module.named_parameters():
            g = by_id[id(p)]
            assert g["lr_scale"] == 30.0 and g.get("lower") == module.lower_bounds().get(k), k
    for p in actor.cost_net_parameters():
        assert by_id[id(p)]["lr_scale"] == 30.0 and by_id[id(p)].get("lower") is None
    assert {id(p) for p in actor.physical_parameters()} == {id(p) for p in dyn.parameters()}
    assert {id(p) for p in actor.cost_parameters()} == {id(p) for p in cost.parameters()}
    # TD3's target actor shares the plan cache and never warm-starts sequentially
    target = model.policy.actor_target.mu
    assert target.plans is actor.plans and not target.use_sequential()
