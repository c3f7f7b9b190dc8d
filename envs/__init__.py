"""Gymnasium environments whose true systems are the models the controller differentiates.

Importing this package registers, in the ``dilqr_rl/`` namespace:

============================== ============================================== ==============
id                             true system                                    episode limit
============================== ============================================== ==============
``dilqr_rl/Pendulum-v0``       :class:`dilqr_rl.Pendulum` (Pendulum-v1 task)  200 steps
``dilqr_rl/CartPole-v0``       :class:`dilqr_rl.CartPole` (swing-up)          100 steps
``dilqr_rl/Rocket-v0``         :class:`dilqr_rl.Rocket` (6-DoF landing)       100 steps
``dilqr_rl/MujocoPendulum-v0`` MuJoCo pendulum (same task)                    200 steps
``dilqr_rl/MujocoCartPole-v0`` MuJoCo cart-pole (same task)                   100 steps
============================== ============================================== ==============

True parameters are keyword arguments (``gymnasium.make("dilqr_rl/Pendulum-v0", m=1.3)``);
``randomize={"m": (0.8, 1.2)}`` draws them per episode. ``gymnasium.make(
"dilqr_rl.envs:dilqr_rl/Pendulum-v0")`` works without importing anything first. The env
classes are imported lazily (``mujoco`` only when a MuJoCo env or rendering is used).
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

__all__ = [
    "CartPoleEnv", "ENV_IDS", "MujocoCartPoleEnv", "MujocoPendulumEnv", "PendulumEnv",
    "RenderError", "RocketEnv", "record_episode", "register_envs", "save_video",
]

#: id -> (entry point, max_episode_steps)
_SPECS: dict[str, tuple[str, int]] = {
    "dilqr_rl/Pendulum-v0": ("dilqr_rl.envs.pendulum:PendulumEnv", 200),
    "dilqr_rl/CartPole-v0": ("dilqr_rl.envs.cartpole:CartPoleEnv", 100),
    "dilqr_rl/Rocket-v0": ("dilqr_rl.envs.rocket:RocketEnv", 100),
    "dilqr_rl/MujocoPendulum-v0": ("dilqr_rl.envs.mujoco_pendulum:MujocoPendulumEnv", 200),
    "dilqr_rl/MujocoCartPole-v0": ("dilqr_rl.envs.mujoco_cartpole:MujocoCartPoleEnv", 100),
}
ENV_IDS: tuple[str, ...] = tuple(_SPECS)

_LAZY = {
    "PendulumEnv": "pendulum", "CartPoleEnv": "cartpole", "RocketEnv": "rocket",
    "MujocoPendulumEnv": "mujoco_pendulum", "MujocoCartPoleEnv": "mujoco_cartpole",
    "RenderError": "rendering", "record_episode": "rendering", "save_video": "rendering",
}


def register_envs() -> None:
    """Register every id (idempotent; entry points are strings, so nothing is imported)."""
    for env_id, (entry_point, steps) in _SPECS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=steps)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_envs()
