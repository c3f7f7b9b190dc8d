"""Gymnasium environments whose true systems are the models the controller differentiates.

Importing this package registers, in the ``dilqr_rl/`` namespace:

============================== ============================================== ==========
id                             true system                                    task
============================== ============================================== ==========
``dilqr_rl/Pendulum-v0``       :class:`dilqr_rl.Pendulum` (Pendulum-v1 task)  pendulum
``dilqr_rl/CartPole-v0``       :class:`dilqr_rl.CartPole` (swing-up)          cartpole
``dilqr_rl/Rocket-v0``         :class:`dilqr_rl.Rocket` (6-DoF landing)       rocket
``dilqr_rl/RocketTimed-v0``    the same, observing the steps to landing       rocket_timed
``dilqr_rl/MujocoPendulum-v0`` MuJoCo pendulum (same task)                    pendulum
``dilqr_rl/MujocoCartPole-v0`` MuJoCo cart-pole (same task)                   cartpole
============================== ============================================== ==========

Each env reads its system from its :mod:`dilqr_rl.tasks` task (parameters, ``dt``, bounds,
reward, start distribution, time limit ``episode_steps``). A task registered with
:func:`dilqr_rl.tasks.register` gets its id served by the generic :class:`DynamicsEnv`.

True parameters are keyword arguments (``gymnasium.make("dilqr_rl/Pendulum-v0", m=1.3)``);
``randomize={"m": (0.8, 1.2)}`` draws them per episode. ``gymnasium.make(
"dilqr_rl.envs:dilqr_rl/Pendulum-v0")`` works without importing anything first. The env
classes are imported lazily (``mujoco`` only when a MuJoCo env or rendering is used).
"""

from __future__ import annotations

import importlib
from typing import Any

from dilqr_rl.tasks import register_env

__all__ = [
    "CartPoleEnv", "DynamicsEnv", "ENV_IDS", "MujocoCartPoleEnv", "MujocoPendulumEnv",
    "PendulumEnv", "PixelObservation", "RenderError", "RocketEnv", "TimedRocketEnv",
    "record_episode",
    "register_envs", "render_pendulum", "save_video",
]

#: id -> (entry point, task name); the time limit is the task's ``episode_steps``
_SPECS: dict[str, tuple[str, str]] = {
    "dilqr_rl/Pendulum-v0": ("dilqr_rl.envs.pendulum:PendulumEnv", "pendulum"),
    "dilqr_rl/CartPole-v0": ("dilqr_rl.envs.cartpole:CartPoleEnv", "cartpole"),
    "dilqr_rl/Rocket-v0": ("dilqr_rl.envs.rocket:RocketEnv", "rocket"),
    "dilqr_rl/RocketTimed-v0": ("dilqr_rl.envs.rocket:TimedRocketEnv", "rocket_timed"),
    "dilqr_rl/MujocoPendulum-v0": ("dilqr_rl.envs.mujoco_pendulum:MujocoPendulumEnv", "pendulum"),
    "dilqr_rl/MujocoCartPole-v0": ("dilqr_rl.envs.mujoco_cartpole:MujocoCartPoleEnv",
                                   "cartpole"),
}
ENV_IDS: tuple[str, ...] = tuple(_SPECS)

_LAZY = {
    "DynamicsEnv": "base", "PendulumEnv": "pendulum", "CartPoleEnv": "cartpole",
    "RocketEnv": "rocket", "TimedRocketEnv": "rocket",
    "MujocoPendulumEnv": "mujoco_pendulum", "MujocoCartPoleEnv": "mujoco_cartpole",
    "RenderError": "rendering", "record_episode": "rendering", "save_video": "rendering",
    "PixelObservation": "pixels", "render_pendulum": "pixels",
}


def register_envs() -> None:
    """Register every id (idempotent; entry points are strings, so nothing is imported)."""
    for env_id, (entry_point, task) in _SPECS.items():
        register_env(env_id, task, entry_point)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_envs()
