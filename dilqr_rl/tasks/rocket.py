"""The 6-DoF rocket landing on :class:`dilqr_rl.Rocket` (PDP / Safe-PDP, docs/rocket.md)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..cost import FunctionCost
from ..models import Rocket, TimedRocket
from .base import Task, Tracking, uniform

__all__ = ["ROCKET", "ROCKET_TIMED", "COST_WEIGHTS", "final_cost", "stage_cost", "tilt",
           "timed_final_cost", "timed_stage_cost"]

#: ``(w_r, w_v, w_tilt, w_w, w_side, w_thrust)``: Safe-PDP / DiLQR's (docs/rocket.md) except
#: ``w_v = 4`` (theirs: 1). With 1, closed-loop MPC touches down at 1.5 m/s; with 4, at 0.9
#: (docs/rocket.md, "Closed-loop landing")
COST_WEIGHTS = (10.0, 4.0, 50.0, 1.0, 1.0, 0.4)
#: a landing: touchdown within this distance of the pad, tilt and speed
LANDING = {"distance": 0.5, "tilt_deg": 10.0, "speed": 1.0}
#: the published initial state ``r0, v0, q0, w0``
X0 = (10.0, -8.0, 5.0, -0.1, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _sq(a: Any) -> Any:
    return (a * a).sum(-1)


def tilt(q: Any) -> Any:
    """``4 (q1 q2 + q0 q3)^2 + 4 (q1 q3 - q0 q2)^2``: the squared side components of the body
    axis in inertial coordinates (``sin^2`` of the tilt for a unit ``q``), ``q (..., 4)``.
    Works on tensors and numpy arrays alike (the env's reward uses it too)."""
    q0, q1, q2, q3 = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return 4 * (q1 * q2 + q0 * q3) ** 2 + 4 * (q1 * q3 - q0 * q2) ** 2


def final_cost(x: Any, weights: Any) -> Any:
    """``w_r |r|^2 + w_v |v|^2 + w_w |w|^2 + w_tilt tilt(q)``, ``x (..., 13)``,
    ``weights (..., 6)`` -> ``(...)`` (tensors or numpy)."""
    return (weights[..., 0] * _sq(x[..., 0:3]) + weights[..., 1] * _sq(x[..., 3:6])
            + weights[..., 3] * _sq(x[..., 10:13]) + weights[..., 2] * tilt(x[..., 6:10]))


def stage_cost(x: Any, u: Any, weights: Any) -> Any:
    """The final cost plus ``w_side (Ty^2 + Tz^2) + w_thrust |T|^2``, ``u (..., 3)``."""
    return (final_cost(x, weights) + weights[..., 4] * _sq(u[..., 1:])
            + weights[..., 5] * _sq(u))


def make_cost() -> FunctionCost:
    """The landing cost with learnable ``weights (6,)``."""
    return FunctionCost(stage_cost, final_cost, {"weights": torch.tensor(COST_WEIGHTS)},
                        n_state=13, n_ctrl=3, positive=("weights",))


def reward(x: np.ndarray, u: np.ndarray) -> float:
    """Minus the stage cost of ``(x, u)`` with the task weights."""
    return -float(stage_cost(x, u, np.asarray(COST_WEIGHTS)))


def sample_start(rng: np.random.Generator) -> np.ndarray:
    """Around the published start: ``r0 + U[-1, 1]^3``, ``v0 + U[-0.5, 0.5]^3``, tilted by up
    to 0.1 rad about a random horizontal axis, ``w ~ U[-0.1, 0.1]^3``."""
    x = np.array(X0)
    x[0:3] += rng.uniform(-1.0, 1.0, 3)
    x[3:6] += rng.uniform(-0.5, 0.5, 3)
    angle = rng.uniform(0.0, 0.1)
    phi = rng.uniform(0.0, 2 * math.pi)  # horizontal axis (0, cos phi, sin phi)
    x[6:10] = [math.cos(angle / 2), 0.0, math.sin(angle / 2) * math.cos(phi),
               math.sin(angle / 2) * math.sin(phi)]
    x[10:13] = rng.uniform(-0.1, 0.1, 3)
    return x


def sample_demo_start(gen: torch.Generator, n: int) -> Tensor:
    """Imitation starts (ours): ``r ~ U([3, 8], [-3, 3], [-3, 3])``, ``v ~ U(-0.5, 0.5)^3``,
    tilt up to 0.3 rad about a random axis, ``w ~ U(-0.1, 0.1)^3``."""
    r = torch.stack([uniform(gen, n, 3.0, 8.0), uniform(gen, n, -3.0, 3.0),
                     uniform(gen, n, -3.0, 3.0)], -1)
    v = uniform(gen, n, -0.5, 0.5, 3)
    axis = torch.nn.functional.normalize(
        torch.randn(n, 3, generator=gen, dtype=torch.float64), dim=-1)
    half = uniform(gen, n, 0.0, 0.3) / 2
    q = torch.cat([half.cos()[:, None], half.sin()[:, None] * axis], -1)
    return torch.cat([r, v, q, uniform(gen, n, -0.1, 0.1, 3)], -1)


def success(x: np.ndarray, info: dict) -> bool:
    """Landed: touched down (``info["distance"]`` etc. are set by the env at touchdown) within
    ``LANDING`` of the pad, upright."""
    return bool(info.get("landed")) and all(info[k] <= v for k, v in LANDING.items())


def identifiable(theta: Tensor) -> dict[str, Tensor]:
    """The dynamics depend on ``(Jx, Jy, Jz, m, l)`` only through ``m`` and the inertias per
    lever arm ``J / l``: scaling ``(Jx, Jy, Jz, l)`` by one factor leaves every ``w`` rate
    (``(Jy - Jz) / Jx``, ``l / (2 Jy)``, ...) unchanged."""
    Jx, Jy, Jz, m, l = theta.unbind(-1)
    return {"m": m, "Jx/l": Jx / l, "Jy/l": Jy / l, "Jz/l": Jz / l}


#: the imitation expert's tracking cost (ours): ``r 1, v 0.1, q 1, w 0.1, T 0.01`` (in the
#: ``1/2 w`` convention of ``QuadraticCost.tracking``, hence the halves), hovering thrust goal
DEMO_COST = Tracking(weights=(0.5,) * 3 + (0.05,) * 3 + (0.5,) * 4 + (0.05,) * 3 + (0.005,) * 3,
                     goal=(0.0,) * 6 + (1.0, 0.0, 0.0, 0.0) + (0.0,) * 3 + (10.0, 0.0, 0.0))

#: the cost learners' initial guess (ours): every weight 0.1 (no idea which term matters), goal
#: the landing equilibrium the known model gives (at rest upright on the pad, hovering thrust
#: ``m g``). DiffMPC's guess (weights 0.5, goal 0: zero thrust wanted, a zero quaternion) is far
#: off: in 220 steps its hover-thrust goal crept from 0 to 3 (docs/rocket.md, "Imitation").
#: The cost learners learn the weights only: with the goal free too, it drifted (position
#: goal off by 2 m) to make up for wrong weights and the imitation loss stalled
COST_LEARN_INIT = Tracking(weights=(0.1,) * 16, goal=DEMO_COST.goal)

ROCKET = Task(
    name="rocket", model=Rocket, cost=make_cost, reward=reward, sample_start=sample_start,
    sample_demo_start=sample_demo_start, horizon=40, demo_cost=DEMO_COST,
    cost_learn_init=COST_LEARN_INIT, cost_learn="weights",
    learn_init={"Jx": 1.0, "Jy": 2.0, "Jz": 0.5, "m": 2.0, "l": 0.5},  # ours
    unit_blocks=((6, 10, "quaternion q"),),
    state_names=("altitude r_x", "r_y", "r_z", "v_x", "v_y", "v_z", "q0", "q1", "q2", "q3",
                 "w_x", "w_y", "w_z"), env_id="dilqr_rl/Rocket-v0", episode_steps=100,
    # a receding fixed-length horizon chases a target that moves with it and dives into the
    # ground 1.1 m short at 18 deg tilt; planning to a fixed landing time lands
    shrink_horizon=True, min_horizon=5, success=success, identifiable=identifiable)


# ----------------------------------------------------------------------------- the timed rocket
# The same landing for an actor whose plans all have one length (an SB3 policy): the state
# carries the steps to the landing time ``k`` (TimedRocket), and the cost charges the state
# only up to the landing time. A plan of length ``T >= k`` then has the same optimal first
# ``k`` controls as the shrinking-horizon plan of length ``k`` (the later controls move only
# states that cost nothing, so they just minimize the thrust terms): fixed-horizon MPC on
# the timed task is the rocket's closed-loop MPC (tests/test_rocket_timed.py).


def _on(k: Tensor) -> Tensor:
    """Whether a stage is at or before the landing time (``k >= 0``; ``k`` is integral)."""
    return k > -0.5


def timed_final_cost(x: Tensor, weights: Tensor) -> Tensor:
    """The landing cost of ``x (..., 14)`` where its clock ``k = x[..., 13]`` is ``>= 0``,
    else 0; ``weights (..., 6)`` -> ``(...)``."""
    return torch.where(_on(x[..., 13]), final_cost(x[..., :13], weights), 0.0)


def timed_stage_cost(x: Tensor, u: Tensor, weights: Tensor) -> Tensor:
    """:func:`timed_final_cost` plus the thrust terms of :func:`stage_cost` (every stage): at
    ``k > 0`` it is the rocket's stage cost, at ``k = 0`` its final cost (``u`` then moves
    only states past the landing time)."""
    return (timed_final_cost(x, weights) + weights[..., 4] * _sq(u[..., 1:])
            + weights[..., 5] * _sq(u))


def make_timed_cost() -> FunctionCost:
    """The timed landing cost with learnable ``weights (6,)`` (the rocket's)."""
    return FunctionCost(timed_stage_cost, timed_final_cost,
                        {"weights": torch.tensor(COST_WEIGHTS)}, n_state=14, n_ctrl=3,
                        positive=("weights",))


def timed_reward(x: np.ndarray, u: np.ndarray) -> float:
    """The rocket's reward of the 13 physical states (the clock does not count)."""
    return reward(x[:13], u)


def timed_sample_start(rng: np.random.Generator) -> np.ndarray:
    """The rocket's start with the clock at the landing time: ``k = ROCKET.horizon``."""
    return np.append(sample_start(rng), float(ROCKET.horizon))


def timed_sample_demo_start(gen: torch.Generator, n: int) -> Tensor:
    """The rocket's imitation starts with the clock at ``ROCKET.horizon``."""
    x = sample_demo_start(gen, n)
    return torch.cat([x, x.new_full((n, 1), float(ROCKET.horizon))], -1)


ROCKET_TIMED = Task(
    name="rocket_timed", model=TimedRocket, cost=make_timed_cost, reward=timed_reward,
    sample_start=timed_sample_start, sample_demo_start=timed_sample_demo_start,
    # the plan covers the whole descent (k starts at 40); the env's clock stops at
    # min_horizon, so that a rocket still flying after the landing time keeps planning 5
    # steps ahead, as the rocket's shrinking horizon does
    horizon=ROCKET.horizon, min_horizon=ROCKET.min_horizon, learn_init=ROCKET.learn_init,
    unit_blocks=ROCKET.unit_blocks, state_names=(*ROCKET.state_names, "steps to landing k"),
    env_id="dilqr_rl/RocketTimed-v0", episode_steps=ROCKET.episode_steps,
    success=success, identifiable=identifiable)
