"""Cart-pole swing-up and balance, stepping :class:`dilqr_rl.CartPole`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from dilqr_rl.cost import QuadraticCost
from dilqr_rl.dynamics import CartPole

from .base import DynamicsEnv
from .mjcf import cartpole_mjcf
from .rendering import SceneRenderer

__all__ = ["CartPoleEnv"]

#: cost weights over ``(x, xdot, cos th, sin th, thdot, u)`` and their targets
#: (``mpc.pytorch``'s cart-pole experiment: goal weights ``(0.1, 0.1, 1, 1, 0.1)``, control
#: penalty ``0.001``, goal upright at the origin)
COST_WEIGHTS = np.array([0.1, 0.1, 1.0, 1.0, 0.1, 0.001])
COST_GOAL = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


class CartPoleEnv(DynamicsEnv):
    """## Description

    Swing a pole up from hanging and balance it on a cart, with the physics of
    :class:`dilqr_rl.CartPole` (``mpc.pytorch``'s ``CartpoleDx``: the classic Barto / Gym
    equations, explicit Euler, ``dt = 0.05``) and true parameters ``(g, m_cart, m_pole, l)``
    as constructor arguments (``l`` is the pole's **half**-length). ``th = 0`` is upright.

    ## Action space

    ``Box(-1, 1, (1,), float32)``: the force on the cart is ``u = 100 a``; out-of-box actions
    are clipped, a NaN action raises ``ValueError``. ``normalize_actions=False``: the action is
    the force, ``Box(-100, 100)``.

    ## Observation space

    The model state ``(x, xdot, cos th, sin th, thdot)``, float32; ``cos``/``sin`` in
    ``[-1, 1]``, the others unbounded (``+-float32 max``; the rail is unbounded).

    ## Rewards

    Minus the swing-up cost of the state before the step and the applied force,
    ``0.1 x^2 + 0.1 xdot^2 + (cos th - 1)^2 + sin^2 th + 0.1 thdot^2 + 0.001 u^2``
    (``COST_WEIGHTS``, ``COST_GOAL``); :meth:`task_cost` is exactly this cost as a
    :class:`dilqr_rl.QuadraticCost`.

    ## Starting state

    Hanging down near the origin: ``x, xdot ~ U[-0.1, 0.1]``, ``th ~ pi + U[-0.1, 0.1]``,
    ``thdot ~ U[-0.1, 0.1]``; or ``options={"state": x0}`` (``cos th, sin th`` must have unit
    norm, within ``1e-6``; they are then normalized).

    ## Episode end

    No termination; truncated after 100 steps (5 s) by the registered ``TimeLimit``.

    ## Arguments

    ``gymnasium.make("dilqr_rl/CartPole-v0", g=9.8, m_cart=1.0, m_pole=0.1, l=0.5)``, plus
    ``dt``, ``randomize`` (e.g. ``{"m_pole": (0.05, 0.2)}``), ``render_mode``,
    ``normalize_actions``, ``render_width``, ``render_height`` as for ``PendulumEnv``.
    ``info["params"]`` holds the current true parameters, ``info["control"]`` the force.

    ## Version History

    - v0: initial version
    """

    dynamics_cls = CartPole
    param_defaults: ClassVar[dict[str, float]] = {"g": 9.8, "m_cart": 1.0, "m_pole": 0.1,
                                                  "l": 0.5}
    obs_bounds: ClassVar[list[tuple[float, float] | None]] = [
        None, None, (-1.0, 1.0), (-1.0, 1.0), None]
    unit_blocks: ClassVar[tuple[tuple[int, int, str], ...]] = ((2, 4, "cos th, sin th"),)
    default_dt = 0.05
    _camera: ClassVar[dict[str, Any]] = {"lookat": (0, 0, 0.2), "distance": 5.0,
                                         "azimuth": 90.0, "elevation": -5.0}

    def __init__(self, g: float = 9.8, m_cart: float = 1.0, m_pole: float = 0.1,
                 l: float = 0.5, *, dt: float | None = None,
                 randomize: Mapping[str, tuple[float, float]] | None = None,
                 render_mode: str | None = None, normalize_actions: bool = True,
                 render_width: int = 480, render_height: int = 480, **unknown: Any):
        super().__init__({"g": g, "m_cart": m_cart, "m_pole": m_pole, "l": l}, dt=dt,
                         randomize=randomize, render_mode=render_mode,
                         normalize_actions=normalize_actions, render_width=render_width,
                         render_height=render_height, unknown=unknown)

    @staticmethod
    def task_cost() -> QuadraticCost:
        """The env's cost as a controller cost (``tracking`` costs are ``1/2 w (z - g)^2``)."""
        return QuadraticCost.tracking(torch.tensor(2.0 * COST_WEIGHTS),
                                      torch.tensor(COST_GOAL), n_state=5)

    def _sample_state(self) -> np.ndarray:
        x, xdot, dth, thdot = self.np_random.uniform(-0.1, 0.1, size=4)
        th = math.pi + dth
        return np.array([x, xdot, math.cos(th), math.sin(th), thdot])

    def _cost(self, x: np.ndarray, u: np.ndarray) -> float:
        z = np.concatenate([x, u])
        return float(np.dot(COST_WEIGHTS, (z - COST_GOAL) ** 2))

    def _scene_xml(self) -> str:
        p = self.episode_params
        return cartpole_mjcf(g=p["g"], m_cart=p["m_cart"], m_pole=p["m_pole"], l=p["l"],
                             width=self.render_width, height=self.render_height)

    def _pose_scene(self, scene: SceneRenderer) -> None:
        x = self._x.numpy()
        scene.camera.lookat[0] = x[0]  # follow the cart
        scene.pose(qpos=np.array([x[0], math.atan2(x[3], x[2])]))
