"""Cart-pole swing-up and balance, stepping :class:`dilqr_rl.CartPole`."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from dilqr_rl.tasks.cartpole import CARTPOLE

from .base import DynamicsEnv
from .mjcf import cartpole_mjcf
from .rendering import SceneRenderer

__all__ = ["CartPoleEnv"]

class CartPoleEnv(DynamicsEnv):
    """## Description

    Swing a pole up from hanging and balance it on a cart, with the physics of
    :class:`dilqr_rl.CartPole` (``mpc.pytorch``'s ``CartpoleDx``: the classic Barto / Gym
    equations, explicit Euler) and true parameters ``(g, m_cart, m_pole, l)``
    as constructor arguments (``l`` is the pole's **half**-length). ``th = 0`` is upright.

    ## Action space

    ``Box(-1, 1, (1,), float32)``: the force on the cart is ``u = u_max a`` (the model's bound);
    out-of-box actions are clipped, a NaN action raises ``ValueError``.
    ``normalize_actions=False``: the action is the force.

    ## Observation space

    The model state ``(x, xdot, cos th, sin th, thdot)``, float32; ``cos``/``sin`` in
    ``[-1, 1]``, the others unbounded (``+-float32 max``; the rail is unbounded).

    ## Rewards

    Minus the task's swing-up cost (:mod:`dilqr_rl.tasks.cartpole`, a tracking cost over
    ``(x, xdot, cos th, sin th, thdot, u)``) of the state before the step and the applied force;
    :meth:`task_cost` is exactly this cost as a :class:`dilqr_rl.QuadraticCost`.

    ## Starting state

    The task's: hanging down near the origin; or ``options={"state": x0}`` (``cos th, sin th``
    must have unit norm, within ``unit_tol``; they are then normalized).

    ## Episode end

    No termination; truncated after the task's ``episode_steps`` by the registered
    ``TimeLimit``.

    ## Arguments

    ``gymnasium.make("dilqr_rl/CartPole-v0", m_pole=0.2)`` (any of ``g``, ``m_cart``,
    ``m_pole``, ``l``; default the task's), plus
    ``dt``, ``randomize`` (e.g. ``{"m_pole": (0.05, 0.2)}``), ``render_mode``,
    ``normalize_actions``, ``render_width``, ``render_height`` as for ``PendulumEnv``.
    ``info["params"]`` holds the current true parameters, ``info["control"]`` the force.

    ## Version History

    - v0: initial version
    """

    task = CARTPOLE
    _camera: ClassVar[dict[str, Any]] = {"lookat": (0, 0, 0.2), "distance": 5.0,
                                         "azimuth": 90.0, "elevation": -5.0}

    def _scene_xml(self) -> str:
        p = self.episode_params
        return cartpole_mjcf(g=p["g"], m_cart=p["m_cart"], m_pole=p["m_pole"], l=p["l"],
                             timestep=self.dt, width=self.render_width,
                             height=self.render_height)

    def _pose_scene(self, scene: SceneRenderer) -> None:
        x = self._x.numpy()
        scene.camera.lookat[0] = x[0]  # follow the cart
        scene.pose(qpos=np.array([x[0], math.atan2(x[3], x[2])]))
