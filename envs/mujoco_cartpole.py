"""Cart-pole swing-up whose true system is a MuJoCo model."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from .cartpole import CartPoleEnv
from .mjcf import cartpole_mjcf
from .mujoco_base import MujocoSimMixin

__all__ = ["MujocoCartPoleEnv"]


class MujocoCartPoleEnv(MujocoSimMixin, CartPoleEnv):
    """## Description

    :class:`CartPoleEnv` (same task, observation, action, reward, starting state) with a
    MuJoCo model as the true system: a cart of mass ``m_cart`` on a rail, a uniform pole of
    mass ``m_pole`` and half-length ``l``, viscous ``damping`` on both joints, gravity ``g``,
    simulated with ``integrator`` at ``dt / n_substeps``; the force is held for ``dt``. The
    analytic :class:`dilqr_rl.CartPole` is the same physics (the MJCF reproduces its
    accelerations to float precision, tested) integrated by one explicit Euler step of ``dt``
    and without damping, so it is only approximately right.

    How close (measured with ``n_substeps=10``, RK4, at matched parameters, no damping; 20
    episodes of 20 steps = 1 s from the env's starting states under uniform random forces;
    asserted with a margin in ``tests/test_envs.py::test_mujoco_gap``): with ``|u| <= 20`` N
    the analytic one-step prediction is off by at most ``0.025`` m in ``x``, ``0.04`` in
    ``cos th`` / ``sin th`` and ``0.12`` rad/s in ``thdot``, and run open loop for 1 s it
    drifts by up to ``0.13`` m, ``0.28`` in ``cos``/``sin`` and ``1.1`` rad/s. With the full
    ``|u| <= 100`` N the one-step error reaches ``1.3`` m/s in ``xdot`` and ``2.6`` rad/s in
    ``thdot``: explicit Euler at the task's ``dt`` is a poor model of violent motion, which is
    exactly the gap a learned model has to close.

    ## Arguments

    ``gymnasium.make("dilqr_rl/MujocoCartPole-v0", m_pole=0.2, damping=0.05)``

    - ``g``, ``m_cart``, ``m_pole``, ``l``: as :class:`CartPoleEnv`; ``damping`` (>= 0) joint
      damping. All may be randomized per episode and set by ``reset(options={"params": ...})``.
    - ``dt``: control period (default the task's); ``n_substeps`` (default 10) MuJoCo steps per
      control period; ``integrator``: MuJoCo's ``"RK4"`` (default), ``"Euler"``,
      ``"implicit"`` or ``"implicitfast"``
    - ``randomize``, ``render_mode``, ``normalize_actions``, ``render_width``,
      ``render_height``: as :class:`CartPoleEnv`

    ## Version History

    - v0: initial version
    """

    extra_params: ClassVar[dict[str, float]] = {"damping": 0.0}

    def __init__(self, *, n_substeps: int = 10, integrator: str = "RK4", **kwargs: Any):
        super().__init__(**kwargs)
        self._init_sim(n_substeps, integrator)

    def _sim_xml(self, timestep: float) -> str:
        p = self.episode_params
        return cartpole_mjcf(g=p["g"], m_cart=p["m_cart"], m_pole=p["m_pole"], l=p["l"],
                             damping=p["damping"], timestep=timestep,
                             integrator=self.integrator)

    def _state_to_q(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.array([x[0], math.atan2(x[3], x[2])]), np.array([x[1], x[4]])

    def _q_to_state(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        return np.array([qpos[0], qvel[0], math.cos(qpos[1]), math.sin(qpos[1]), qvel[1]])
