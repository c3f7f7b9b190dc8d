"""The cart-pole swing-up on :class:`dilqr_rl.CartPole` (``mpc.pytorch``'s experiment)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..models import CartPole
from .base import Task, Tracking, uniform

__all__ = ["CARTPOLE"]

#: over ``(x, xdot, cos th, sin th, thdot, u)``: ``mpc.pytorch``'s goal weights and control
#: penalty, goal upright at the origin; the env's reward is minus this cost
COST = Tracking(weights=(0.1, 0.1, 1.0, 1.0, 0.1, 0.001), goal=(0.0, 0.0, 1.0, 0.0, 0.0, 0.0))


def sample_start(rng: np.random.Generator) -> np.ndarray:
    """Hanging near the origin: ``x, xdot, thdot ~ U[-0.1, 0.1]``, ``th ~ pi + U[-0.1, 0.1]``."""
    x, xdot, dth, thdot = rng.uniform(-0.1, 0.1, size=4)
    th = math.pi + dth
    return np.array([x, xdot, math.cos(th), math.sin(th), thdot])


def sample_demo_start(gen: torch.Generator, n: int) -> Tensor:
    """DiffMPC's imitation starts: ``x, xdot ~ U(-0.5, 0.5)``, ``th ~ U(-pi, pi)``,
    ``thdot ~ U(-1, 1)``."""
    x, dx = uniform(gen, n, -0.5, 0.5), uniform(gen, n, -0.5, 0.5)
    th, dth = uniform(gen, n, -math.pi, math.pi), uniform(gen, n, -1.0, 1.0)
    return torch.stack([x, dx, th.cos(), th.sin(), dth], -1)


CARTPOLE = Task(
    name="cartpole", model=CartPole, cost=COST, sample_start=sample_start,
    sample_demo_start=sample_demo_start, horizon=20,
    learn_init={"g": 9.8, "m_cart": 3.0, "m_pole": 0.1, "l": 1.0},  # DiffMPC's initial guess
    unit_blocks=((2, 4, "cos th, sin th"),), env_id="dilqr_rl/CartPole-v0", episode_steps=100)
