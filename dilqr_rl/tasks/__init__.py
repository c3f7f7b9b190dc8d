"""The task registry: one :class:`Task` per system (``pendulum``, ``cartpole``, ``rocket``,
``rocket_timed``).

``get(name)`` returns a task; ``register(task)`` adds one (and its Gymnasium id, served by the
generic :class:`dilqr_rl.envs.DynamicsEnv`, unless ``entry_point`` names an env class of its
own); ``for_env(env_id)`` maps a Gymnasium id to its task. A new system is one task file
(model, cost, starts) plus, optionally, an env class for rendering. See the README's "Your own
system" for a two-link arm.
"""

from __future__ import annotations

from typing import Any

from .base import Task, Tracking, uniform
from .cartpole import CARTPOLE
from .pendulum import PENDULUM
from .rocket import ROCKET, ROCKET_TIMED

__all__ = ["TASKS", "Task", "Tracking", "for_env", "get", "names", "register", "uniform"]

#: name -> task
TASKS: dict[str, Task] = {}
#: Gymnasium id -> task name (filled by :func:`register` and by ``dilqr_rl.envs``)
ENV_TASKS: dict[str, str] = {}


def register(task: Task, *, entry_point: str | None = None, replace: bool = False) -> Task:
    """Add ``task`` to the registry; with ``task.env_id`` also register that Gymnasium id
    (when Gymnasium is installed): the generic :class:`dilqr_rl.envs.DynamicsEnv` on this task,
    or the env class at ``entry_point`` (``"module:Class"``).

    :param replace: allow replacing a task of the same name
    """
    if not isinstance(task, Task):
        raise ValueError(f"register needs a dilqr_rl.tasks.Task, got {type(task).__name__}")
    if task.name in TASKS and TASKS[task.name] is not task and not replace:
        raise ValueError(f"a task named {task.name!r} is already registered (replace=True to "
                         "replace it)")
    TASKS[task.name] = task
    if task.env_id is not None:
        register_env(task.env_id, task.name, entry_point, task.episode_steps, replace)
    return task


def register_env(env_id: str, task: str, entry_point: str | None = None,
                 max_episode_steps: int | None = None, replace: bool = False) -> None:
    """Register the Gymnasium id ``env_id`` for the task named ``task`` (idempotent)."""
    import importlib.util

    ENV_TASKS[env_id] = task
    if importlib.util.find_spec("gymnasium") is None:
        return
    import gymnasium as gym

    if env_id in gym.registry and not replace:
        return
    kwargs: dict[str, Any] = {}
    if entry_point is None:
        entry_point, kwargs = "dilqr_rl.envs.base:DynamicsEnv", {"task": task}
    steps = max_episode_steps or get(task).episode_steps
    gym.register(id=env_id, entry_point=entry_point, max_episode_steps=steps, kwargs=kwargs)


def get(name: str | Task) -> Task:
    """The task registered as ``name`` (a :class:`Task` is returned as is); a Gymnasium id of
    a task's env also works."""
    if isinstance(name, Task):
        return name
    if name in TASKS:
        return TASKS[name]
    if name in ENV_TASKS:
        return TASKS[ENV_TASKS[name]]
    raise ValueError(f"unknown task {name!r}; registered tasks: {names()}")


def for_env(env_id: str) -> Task:
    """The task of the Gymnasium id ``env_id``."""
    if env_id not in ENV_TASKS:
        raise ValueError(f"{env_id!r} is not the env of a registered task (the envs of tasks: "
                         f"{sorted(ENV_TASKS)})")
    return TASKS[ENV_TASKS[env_id]]


def names() -> list[str]:
    """Registered task names."""
    return list(TASKS)


for _t in (PENDULUM, CARTPOLE, ROCKET, ROCKET_TIMED):
    TASKS[_t.name] = _t
