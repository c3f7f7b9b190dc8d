"""6-DoF rocket landing, stepping :class:`dilqr_rl.Rocket` (the PDP / Safe-PDP rocket)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces

from dilqr_rl.tasks.rocket import COST_WEIGHTS, LANDING, ROCKET, ROCKET_TIMED, final_cost, tilt

from .base import DynamicsEnv
from .mjcf import rocket_mjcf
from .rendering import SceneRenderer

__all__ = ["RocketEnv", "TimedRocketEnv"]


class RocketEnv(DynamicsEnv):
    """## Description

    Land a 6-DoF rocket upright at the origin: the rocket of PDP / Safe-PDP / DiLQR
    (docs/rocket.md), stepping :class:`dilqr_rl.Rocket` (explicit Euler) with true
    parameters ``(Jx, Jy, Jz, m, l)`` as constructor arguments. The inertial x-axis points up;
    gravity is ``(-10, 0, 0)``. After each step the quaternion is renormalized to unit length
    (``renormalize=True``; the model itself does not, so with ``renormalize=False`` a step is
    exactly one model step).

    ## Action space

    ``Box(-1, 1, (3,), float32)``: body-frame thrust ``T = u_max a`` (the model's bound; ``Tx``
    along the long axis); out-of-box actions are clipped, a NaN action raises ``ValueError``.
    ``normalize_actions=False``: the action is ``T``.

    ## Observation space

    The model state ``(r (3), v (3), q (4), w (3))``, float32; ``q`` in ``[-1, 1]``, the rest
    unbounded (``+-float32 max``). With ``renormalize=False`` ``|q|`` drifts from 1 (the model's
    Euler step does not keep it), so ``q`` is unbounded too.

    ## Rewards

    Minus the task's landing cost (:mod:`dilqr_rl.tasks.rocket`: docs/rocket.md with the
    Safe-PDP weights ``(w_r, w_v, w_tilt, w_w, w_side, w_thrust)``): each step
    ``-(w_r |r|^2 + w_v |v|^2 + w_w |w|^2 + w_tilt tilt(q) + w_side (Ty^2 + Tz^2) +
    w_thrust |T|^2)`` of the state before the step; at touchdown the final cost of the
    touchdown state is subtracted as well. :meth:`task_cost` is the same cost (a
    :class:`dilqr_rl.FunctionCost` with learnable ``weights``).

    ## Starting state

    The task's: around the published start, nearly upright and at rest; or
    ``options={"state": x0}`` (``q`` must be a unit quaternion, within ``unit_tol``; it is then
    normalized).

    ## Episode end

    Terminated on touchdown (altitude ``r_x <= 0``); ``info`` then holds ``"landed"`` (within the
    task's ``LANDING`` distance of the origin and tilt, pointing up), ``"distance"``,
    ``"tilt_deg"`` and ``"speed"``; the task's ``success`` also asks for its landing speed.
    Truncated after the task's ``episode_steps`` by the registered ``TimeLimit``.

    ## Arguments

    ``gymnasium.make("dilqr_rl/Rocket-v0", m=1.2)`` (any of ``Jx, Jy, Jz, m, l``; default the
    task's), plus
    ``renormalize``, ``dt``, ``randomize``, ``render_mode``, ``normalize_actions``,
    ``render_width``, ``render_height`` as for ``PendulumEnv``.

    ## Version History

    - v0: initial version
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["human", "rgb_array"],
                                          "render_fps": 10}
    task = ROCKET
    _camera: ClassVar[dict[str, Any]] = {"lookat": (-4.0, 2.5, 4.0), "distance": 22.0,
                                         "azimuth": 60.0, "elevation": -15.0}
    #: a touchdown counts as a landing within this distance of the origin and tilt angle
    land_radius = LANDING["distance"]
    land_tilt_deg = LANDING["tilt_deg"]

    def __init__(self, *, renormalize: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.renormalize = bool(renormalize)
        if not self.renormalize:  # |q| drifts: only a unit q is bounded by [-1, 1]
            big = np.float32(np.finfo(np.float32).max)
            lo, hi = self.observation_space.low.copy(), self.observation_space.high.copy()
            lo[6:10], hi[6:10] = -big, big
            self.observation_space = spaces.Box(lo, hi, dtype=np.float32)

    def _advance(self, u: np.ndarray) -> None:
        super()._advance(u)
        if self.renormalize:
            q = self._x[6:10]
            self._x[6:10] = q / torch.linalg.vector_norm(q)

    def _terminal(self, x: np.ndarray) -> tuple[bool, dict[str, Any]]:
        if x[0] > 0.0:
            return False, {}
        dist = float(np.linalg.norm(x[0:3]))
        s2 = float(tilt(x[6:10]) / (x[6:10] ** 2).sum() ** 2)
        tilt_deg = math.degrees(math.asin(min(1.0, math.sqrt(max(s2, 0.0)))))
        body_x_up = 1 - 2 * (x[8] ** 2 + x[9] ** 2) > 0  # pointing up, not down
        return True, {
            "terminal_cost": float(final_cost(x[:13], np.asarray(COST_WEIGHTS))),
            "landed": bool(dist <= self.land_radius and tilt_deg <= self.land_tilt_deg
                           and body_x_up),
            "distance": dist, "tilt_deg": tilt_deg, "speed": float(np.linalg.norm(x[3:6])),
        }

    def _scene_xml(self) -> str:
        return rocket_mjcf(l=self.episode_params["l"], timestep=self.dt,
                           gravity=self.dynamics.gravity, width=self.render_width,
                           height=self.render_height)

    def _pose_scene(self, scene: SceneRenderer) -> None:
        x = self._x.numpy()
        q = x[6:10] / np.linalg.norm(x[6:10])
        # inertial (x, y, z) -> MuJoCo (Z, X, Y): a cyclic relabelling P; the body frame is
        # relabelled the same way, so the MuJoCo attitude is P R(q) P^T = quat (q0, q2, q3, q1)
        scene.pose(mocap_pos=np.array([x[1], x[2], x[0]]),
                   mocap_quat=np.array([q[0], q[2], q[3], q[1]]))


class TimedRocketEnv(RocketEnv):
    """``dilqr_rl/RocketTimed-v0``: :class:`RocketEnv` (the same physics, reward, touchdown
    and success) whose observation also holds the steps to the landing time ``k``.

    ``k`` starts at the task's horizon (40 steps, 4 s) and falls by 1 per step, but not below
    the task's ``min_horizon`` (5): a rocket still flying then keeps a landing time 5 steps
    ahead, as the rocket's shrinking-horizon MPC does. It is the state of
    :class:`dilqr_rl.models.TimedRocket`, whose plans of one fixed length land (the task
    ``rocket_timed``): what an SB3 actor needs, since all its plans have the same length. The
    observation is ``(r, v, q, w, k)`` (14); ``options={"state": x0}`` takes 14 values.
    """

    task = ROCKET_TIMED

    def _advance(self, u: np.ndarray) -> None:
        super()._advance(u)
        self._x[13] = max(float(self._x[13]), float(self.task.min_horizon))
