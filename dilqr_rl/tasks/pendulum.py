"""The pendulum swing-up: Gymnasium's ``Pendulum-v1`` task on :class:`dilqr_rl.Pendulum`."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..models import Pendulum
from .base import Task, Tracking, uniform

__all__ = ["PENDULUM"]

#: over ``(cos th, sin th, thdot, u)``, goal upright; ``(1 - cos th)^2 + sin^2 th = th^2`` to
#: second order, so near upright the cost is ``Pendulum-v1``'s ``th^2 + 0.1 thdot^2 + 0.001 u^2``
COST = Tracking(weights=(1.0, 1.0, 0.1, 0.001), goal=(1.0, 0.0, 0.0, 0.0))


def reward(x: np.ndarray, u: np.ndarray) -> float:
    """Minus ``Pendulum-v1``'s cost with the task weights: the angle wrapped to ``[-pi, pi)``
    in place of the smooth ``cos``/``sin`` terms, so returns compare with published results."""
    w = COST.weights
    th = (math.atan2(x[1], x[0]) + math.pi) % (2 * math.pi) - math.pi
    return -(w[0] * th**2 + w[2] * float(x[2]) ** 2 + w[3] * float(u[0]) ** 2)


def sample_start(rng: np.random.Generator) -> np.ndarray:
    """``Pendulum-v1``'s: ``th ~ U[-pi, pi]``, ``thdot ~ U[-1, 1]``."""
    th, thdot = rng.uniform(-math.pi, math.pi), rng.uniform(-1.0, 1.0)
    return np.array([math.cos(th), math.sin(th), thdot])


def sample_demo_start(gen: torch.Generator, n: int) -> Tensor:
    """DiffMPC's imitation starts: ``th ~ U(-pi/2, pi/2)``, ``thdot ~ U(-1, 1)``."""
    th = uniform(gen, n, -math.pi / 2, math.pi / 2)
    dth = uniform(gen, n, -1.0, 1.0)
    return torch.stack([th.cos(), th.sin(), dth], -1)


def success(x: np.ndarray, info: dict) -> bool:
    """Swung up and held: within 0.1 rad of upright and nearly at rest at the episode's end."""
    return abs(math.atan2(x[1], x[0])) < 0.1 and abs(float(x[2])) < 0.5


def identifiable(theta: Tensor) -> dict[str, Tensor]:
    """The dynamics depend on ``(g, m, l)`` only through ``g / l`` and ``m l^2``."""
    g, m, l = theta[..., 0], theta[..., 1], theta[..., 2]
    return {"g/l": g / l, "m l^2": m * l * l}


PENDULUM = Task(
    name="pendulum", model=Pendulum, cost=COST, reward=reward, sample_start=sample_start,
    sample_demo_start=sample_demo_start, horizon=20,
    learn_init={"g": 15.0, "m": 3.0, "l": 0.5},  # DiffMPC's initial guess
    unit_blocks=((0, 2, "cos th, sin th"),), state_names=("cos th", "sin th", "thdot"),
    env_id="dilqr_rl/Pendulum-v0", episode_steps=200,
    identifiable=identifiable, success=success)
