"""Torque-limited pendulum swing-up, stepping :class:`dilqr_rl.Pendulum`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from dilqr_rl.cost import QuadraticCost
from dilqr_rl.dynamics import Pendulum

from .base import DynamicsEnv
from .mjcf import pendulum_mjcf
from .rendering import SceneRenderer

__all__ = ["PendulumEnv"]


def angle_normalize(th: float) -> float:
    """Wrap an angle to ``[-pi, pi)``."""
    return ((th + math.pi) % (2 * math.pi)) - math.pi


class PendulumEnv(DynamicsEnv):
    """## Description

    Swing a torque-limited pendulum up and hold it upright: Gymnasium's ``Pendulum-v1`` task,
    with the physics of :class:`dilqr_rl.Pendulum` (``mpc.pytorch``'s ``PendulumDx``), whose
    true parameters ``(g, m, l)`` are constructor arguments. A uniform rod of mass ``m``, length
    ``l`` hinged at one end; ``th = 0`` is upright. Semi-implicit Euler, ``dt = 0.05``::

        thdot' = thdot + dt * (3 g / (2 l) sin th + 3 u / (m l^2));  th' = th + dt * thdot'

    Unlike ``Pendulum-v1`` the angular velocity is not clipped to ``[-8, 8]`` (the model does
    not clip it, and the env must equal the model); with ``|u| <= 2`` that clip is rarely
    reached in a swing-up.

    ## Action space

    ``Box(-1, 1, (1,), float32)``: the torque is ``u = 2 a`` (``|u| <= 2``); out-of-box actions
    are clipped, a NaN action raises ``ValueError``. ``normalize_actions=False`` makes the action
    the torque itself, ``Box(-2, 2)``. :meth:`control_to_action` maps a controller's torque.

    ## Observation space

    The model state ``(cos th, sin th, thdot)``, float32, bounds ``[-1, 1], [-1, 1]`` and
    ``+-float32 max`` (the model does not bound ``thdot``).

    ## Rewards

    Minus ``Pendulum-v1``'s cost of the state before the step and the applied torque,
    ``th^2 + 0.1 thdot^2 + 0.001 u^2`` with ``th`` wrapped to ``[-pi, pi)``; so returns compare
    directly with published ``Pendulum-v1`` results (at ``g = 10``, ``m = l = 1``, ``-1`` to
    ``-16.27`` per step). :meth:`task_cost` is a quadratic controller cost that matches it near
    upright.

    ## Starting state

    ``th ~ U[-pi, pi]``, ``thdot ~ U[-1, 1]`` (as ``Pendulum-v1``); or ``options={"state": x0}``
    (``cos th, sin th`` must have unit norm, within ``1e-6``; they are then normalized).

    ## Episode end

    No termination; truncated after 200 steps by the registered ``TimeLimit``.

    ## Arguments

    ``gymnasium.make("dilqr_rl/Pendulum-v0", g=10.0, m=1.0, l=1.0)``

    - ``g``, ``m``, ``l``: true gravity, mass, length (> 0)
    - ``dt``: time step (default ``0.05``)
    - ``randomize``: per-episode uniform ranges, e.g. ``{"m": (0.8, 1.2)}``, drawn from the
      ``reset(seed=...)`` generator
    - ``render_mode``: ``"rgb_array"`` (headless, MuJoCo) or ``"human"`` (needs a display)
    - ``normalize_actions``, ``render_width``, ``render_height``

    ``reset(options={"params": {"m": 1.5}})`` sets parameters for one episode. ``info["params"]``
    holds the current true parameters; ``info["control"]`` the applied torque.

    ## Version History

    - v0: initial version
    """

    dynamics_cls = Pendulum
    param_defaults: ClassVar[dict[str, float]] = {"g": 10.0, "m": 1.0, "l": 1.0}
    obs_bounds: ClassVar[list[tuple[float, float] | None]] = [(-1.0, 1.0), (-1.0, 1.0), None]
    unit_blocks: ClassVar[tuple[tuple[int, int, str], ...]] = ((0, 2, "cos th, sin th"),)
    default_dt = 0.05
    _camera: ClassVar[dict[str, Any]] = {"lookat": (0, 0, 0), "distance": 3.2,
                                         "azimuth": 90.0, "elevation": 0.0}

    def __init__(self, g: float = 10.0, m: float = 1.0, l: float = 1.0, *,
                 dt: float | None = None,
                 randomize: Mapping[str, tuple[float, float]] | None = None,
                 render_mode: str | None = None, normalize_actions: bool = True,
                 render_width: int = 480, render_height: int = 480, **unknown: Any):
        super().__init__({"g": g, "m": m, "l": l}, dt=dt, randomize=randomize,
                         render_mode=render_mode, normalize_actions=normalize_actions,
                         render_width=render_width, render_height=render_height,
                         unknown=unknown)

    @staticmethod
    def task_cost() -> QuadraticCost:
        """A controller cost for this task: ``(1 - cos th)^2 + sin^2 th + 0.1 thdot^2 + 0.001
        u^2`` (``= th^2 + ...`` to second order at upright, smooth everywhere)."""
        w = torch.tensor([1.0, 1.0, 0.1, 0.001]) * 2.0  # tracking costs are 1/2 w (z - g)^2
        goal = torch.tensor([1.0, 0.0, 0.0, 0.0])
        return QuadraticCost.tracking(w, goal, n_state=3)

    def _sample_state(self) -> np.ndarray:
        th = self.np_random.uniform(-math.pi, math.pi)
        thdot = self.np_random.uniform(-1.0, 1.0)
        return np.array([math.cos(th), math.sin(th), thdot])

    def _cost(self, x: np.ndarray, u: np.ndarray) -> float:
        th = angle_normalize(math.atan2(x[1], x[0]))
        return th**2 + 0.1 * x[2] ** 2 + 0.001 * float(u[0]) ** 2

    def _scene_xml(self) -> str:
        p = self.episode_params
        return pendulum_mjcf(g=p["g"], m=p["m"], l=p["l"], width=self.render_width,
                             height=self.render_height)

    def _pose_scene(self, scene: SceneRenderer) -> None:
        x = self._x.numpy()
        scene.pose(qpos=np.array([math.atan2(x[1], x[0])]))
