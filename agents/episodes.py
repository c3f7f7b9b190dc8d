"""Episodes of several envs in lockstep, so that a batched controller acts for all at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["run_episodes"]


def run_episodes(envs: Sequence[Any], seed: int,
                 act: Callable[[np.ndarray], np.ndarray]) -> list[float]:
    """One episode per env (seeds ``seed, seed+1, ...``), stepped in lockstep: ``act`` maps
    the observations of all envs ``(E, obs_dim)`` to actions ``(E, act_dim)`` in one call (a
    DiLQR actor solves them as one batch); an env whose episode ended keeps its last
    observation and is not stepped. Returns the episode returns."""
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    rets, live = np.zeros(len(envs)), np.ones(len(envs), dtype=bool)
    while live.any():
        actions = act(obs)
        for i in np.flatnonzero(live):
            obs[i], r, term, trunc, _ = envs[i].step(actions[i])
            rets[i] += float(r)
            live[i] = not (term or trunc)
    return [float(r) for r in rets]
