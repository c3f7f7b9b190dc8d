"""Episodes of several envs in lockstep, so that a batched controller acts for all at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["episode_success", "run_episodes"]


def run_episodes(envs: Sequence[Any], seed: int, act: Callable[..., np.ndarray],
                 trace: dict[str, Any] | None = None, pass_live: bool = False) -> list[float]:
    """One episode per env (seeds ``seed, seed+1, ...``), stepped in lockstep: ``act`` maps
    the observations of all envs ``(E, obs_dim)`` to actions ``(E, act_dim)`` in one call (a
    DiLQR actor solves them as one batch); an env whose episode ended keeps its last
    observation and is not stepped. Returns the episode returns.

    :param pass_live: call ``act(obs, live)`` instead, with ``live (E,)`` bool: the envs
        whose episode is still running (stepped since the previous call)
    :param trace: if given, filled with ``"obs"`` (a list, per step, of ``(E, obs_dim)``
        observations, the first being the starts), ``"infos"`` (each env's last ``info``),
        ``"steps"`` (each env's episode length) and ``"frames"`` (env 0's rendered frames, if
        it renders ``rgb_array``)
    """
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    rets, live = np.zeros(len(envs)), np.ones(len(envs), dtype=bool)
    infos: list[dict[str, Any]] = [{} for _ in envs]
    steps = np.zeros(len(envs), dtype=int)
    frames = [] if trace is not None and envs[0].render_mode == "rgb_array" else None
    history = [obs.copy()]
    while live.any():
        if frames is not None and live[0]:
            frames.append(envs[0].render())
        actions = act(obs, live.copy()) if pass_live else act(obs)
        for i in np.flatnonzero(live):
            obs[i], r, term, trunc, infos[i] = envs[i].step(actions[i])
            rets[i] += float(r)
            steps[i] += 1
            live[i] = not (term or trunc)
        history.append(obs.copy())
    if frames is not None:
        frames.append(envs[0].render())
    if trace is not None:
        trace.update(obs=history, infos=infos, steps=steps.tolist(), frames=frames)
    return [float(r) for r in rets]


def episode_success(envs: list[Any], infos: list[dict[str, Any]]) -> list[bool] | None:
    """The task's ``success`` verdict on each finished episode of ``envs`` (their last
    ``infos``), or ``None`` where the env is not a task's or the task declares no rule."""
    from dilqr_rl import tasks

    try:
        task = tasks.for_env(envs[0].spec.id)
    except (ValueError, AttributeError):
        return None
    if task.success is None:
        return None
    return [bool(task.success(e.unwrapped.state, info)) for e, info in zip(envs, infos,
                                                                            strict=True)]
