"""Torque-limited pendulum swing-up, stepping :class:`dilqr_rl.Pendulum`."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from dilqr_rl.tasks.pendulum import PENDULUM

from .base import DynamicsEnv
from .mjcf import pendulum_mjcf
from .rendering import SceneRenderer

__all__ = ["PendulumEnv"]


class PendulumEnv(DynamicsEnv):
    """## Description

    Swing a torque-limited pendulum up and hold it upright: Gymnasium's ``Pendulum-v1`` task,
    with the physics of :class:`dilqr_rl.Pendulum` (``mpc.pytorch``'s ``PendulumDx``), whose
    true parameters ``(g, m, l)`` are constructor arguments. A uniform rod of mass ``m``, length
    ``l`` hinged at one end; ``th = 0`` is upright. Semi-implicit Euler::

        thdot' = thdot + dt * (3 g / (2 l) sin th + 3 u / (m l^2));  th' = th + dt * thdot'

    Unlike ``Pendulum-v1`` the angular velocity is not clipped to ``[-8, 8]`` (the model does
    not clip it, and the env must equal the model); with the model's torque bound that clip is
    rarely reached in a swing-up.

    ## Action space

    ``Box(-1, 1, (1,), float32)``: the torque is ``u = u_max a`` (``u_max`` the model's bound);
    out-of-box actions are clipped, a NaN action raises ``ValueError``.
    ``normalize_actions=False`` makes the action the torque itself. :meth:`control_to_action`
    maps a controller's torque.

    ## Observation space

    The model state ``(cos th, sin th, thdot)``, float32, bounds ``[-1, 1], [-1, 1]`` and
    ``+-float32 max`` (the model does not bound ``thdot``).

    ## Rewards

    The task's reward (:mod:`dilqr_rl.tasks.pendulum`): minus ``Pendulum-v1``'s cost of the
    state before the step and the applied torque, with the angle wrapped to ``[-pi, pi)``, so
    returns compare directly with published ``Pendulum-v1`` results. :meth:`task_cost` is the
    task's smooth quadratic controller cost, equal to it to second order at upright.

    ## Starting state

    The task's (as ``Pendulum-v1``); or ``options={"state": x0}`` (``cos th, sin th`` must have
    unit norm, within ``unit_tol``; they are then normalized).

    ## Episode end

    No termination; truncated after the task's ``episode_steps`` by the registered
    ``TimeLimit``.

    ## Arguments

    ``gymnasium.make("dilqr_rl/Pendulum-v0", m=1.3)``

    - ``g``, ``m``, ``l``: true gravity, mass, length (> 0; default the task's)
    - ``dt``: time step (default the task's)
    - ``randomize``: per-episode uniform ranges, e.g. ``{"m": (0.8, 1.2)}``, drawn from the
      ``reset(seed=...)`` generator
    - ``render_mode``: ``"rgb_array"`` (headless, MuJoCo) or ``"human"`` (needs a display)
    - ``normalize_actions``, ``render_width``, ``render_height``

    ``reset(options={"params": {"m": 1.5}})`` sets parameters for one episode. ``info["params"]``
    holds the current true parameters; ``info["control"]`` the applied torque.

    ## Version History

    - v0: initial version
    """

    task = PENDULUM
    _camera: ClassVar[dict[str, Any]] = {"lookat": (0, 0, 0), "distance": 3.2,
                                         "azimuth": 90.0, "elevation": 0.0}

    def _scene_xml(self) -> str:
        p = self.episode_params
        return pendulum_mjcf(g=p["g"], m=p["m"], l=p["l"], timestep=self.dt,
                             width=self.render_width, height=self.render_height)

    def _pose_scene(self, scene: SceneRenderer) -> None:
        x = self._x.numpy()
        scene.pose(qpos=np.array([math.atan2(x[1], x[0])]))
