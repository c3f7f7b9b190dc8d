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


def success(x: np.ndarray, info: dict) -> bool:
    """Swung up and balanced: the pole within 0.1 rad of upright and nearly at rest at the
    episode's end (the cart may sit anywhere on the rail)."""
    return abs(math.atan2(x[3], x[2])) < 0.1 and abs(float(x[4])) < 0.5


CARTPOLE = Task(
    name="cartpole", model=CartPole, cost=COST, sample_start=sample_start,
    # 1 s plans cannot swing the pole up from hanging (0 of 8 in closed loop), 1.5 s can (8/8);
    # the imitation experiment keeps DiffMPC's T = 20
    sample_demo_start=sample_demo_start, horizon=30, demo_horizon=20,
    learn_init={"g": 9.8, "m_cart": 3.0, "m_pole": 0.1, "l": 1.0},  # DiffMPC's initial guess
    unit_blocks=((2, 4, "cos th, sin th"),),
    state_names=("x", "xdot", "cos th", "sin th", "thdot"), env_id="dilqr_rl/CartPole-v0",
    episode_steps=100, success=success)
