"""Pendulum swing-up whose true system is a MuJoCo model."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from .mjcf import pendulum_mjcf
from .mujoco_base import MujocoSimMixin
from .pendulum import PendulumEnv

__all__ = ["MujocoPendulumEnv"]


class MujocoPendulumEnv(MujocoSimMixin, PendulumEnv):
    """## Description

    :class:`PendulumEnv` (same task, observation, action, reward, starting state) with a
    MuJoCo model as the true system: a uniform rod of mass ``m``, length ``l`` on a hinge with
    viscous ``damping`` (N m s/rad), gravity ``g``, simulated with ``integrator`` at
    ``dt / n_substeps``; the control is held for ``dt``. The analytic :class:`dilqr_rl.Pendulum`
    a controller uses is then only approximately right: it is one semi-implicit Euler step of
    ``dt`` and has no damping.

    How close (measured with ``n_substeps=10``, RK4, at matched parameters, no damping; 20
    episodes of 20 steps = 1 s from the env's starting states under uniform random torques
    ``|u| <= 2``; asserted with a margin in ``tests/test_envs.py::test_mujoco_gap``): the
    analytic model's one-step prediction from the MuJoCo state is off by at most ``0.025``
    in ``cos th`` / ``sin th`` and ``0.15`` rad/s in ``thdot``; run open loop for 1 s it drifts
    by up to ``0.3`` in ``cos``/``sin`` and ``0.3`` rad/s. With ``n_substeps=1`` and
    ``integrator="Euler"`` MuJoCo integrates exactly the analytic model (equal to float
    precision, tested), which checks that the MJCF is the same pendulum.

    ## Arguments

    ``gymnasium.make("dilqr_rl/MujocoPendulum-v0", m=1.3, damping=0.05)``

    - ``g``, ``m``, ``l``: as :class:`PendulumEnv`; ``damping`` (>= 0) joint damping. All four
      may be randomized per episode and set by ``reset(options={"params": ...})``.
    - ``dt``: control period (default the task's); ``n_substeps`` (default 10) MuJoCo steps per
      control period; ``integrator``: MuJoCo's ``"RK4"`` (default), ``"Euler"``,
      ``"implicit"`` or ``"implicitfast"``
    - ``randomize``, ``render_mode``, ``normalize_actions``, ``render_width``,
      ``render_height``: as :class:`PendulumEnv`

    ## Version History

    - v0: initial version
    """

    extra_params: ClassVar[dict[str, float]] = {"damping": 0.0}

    def __init__(self, *, n_substeps: int = 10, integrator: str = "RK4", **kwargs: Any):
        super().__init__(**kwargs)
        self._init_sim(n_substeps, integrator)

    def _sim_xml(self, timestep: float) -> str:
        p = self.episode_params
        return pendulum_mjcf(g=p["g"], m=p["m"], l=p["l"], damping=p["damping"],
                             timestep=timestep, integrator=self.integrator)

    def _state_to_q(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.array([math.atan2(x[1], x[0])]), np.array([x[2]])

    def _q_to_state(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        return np.array([math.cos(qpos[0]), math.sin(qpos[0]), qvel[0]])
