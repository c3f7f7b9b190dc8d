"""6-DoF rocket landing, stepping :class:`dilqr_rl.Rocket` (the PDP / Safe-PDP rocket)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from dilqr_rl.cost import FunctionCost
from dilqr_rl.dynamics import Rocket

from .base import DynamicsEnv
from .mjcf import rocket_mjcf
from .rendering import SceneRenderer

__all__ = ["RocketEnv", "rocket_stage_cost", "rocket_final_cost", "tilt"]

#: ``(w_r, w_v, w_tilt, w_w, w_side, w_thrust)`` of Safe-PDP / DiLQR (docs/rocket.md)
COST_WEIGHTS = (10.0, 1.0, 50.0, 1.0, 1.0, 0.4)
#: the published initial state ``r0, v0, q0, w0``
X0 = np.array([10.0, -8.0, 5.0, -0.1, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])


def tilt(q: Tensor) -> Tensor:
    """``4 (q1 q2 + q0 q3)^2 + 4 (q1 q3 - q0 q2)^2``: the squared side components of the body
    axis in inertial coordinates (``sin^2`` of the tilt angle for a unit ``q``), ``(..., 4)``."""
    q0, q1, q2, q3 = q.unbind(-1)
    return 4 * (q1 * q2 + q0 * q3) ** 2 + 4 * (q1 * q3 - q0 * q2) ** 2


def rocket_final_cost(x: Tensor, weights: Tensor) -> Tensor:
    """Final cost ``w_r |r|^2 + w_v |v|^2 + w_w |w|^2 + w_tilt tilt(q)``, ``x: (..., 13)``,
    ``weights: (..., 6)`` -> ``(...)``."""
    w_r, w_v, w_tilt, w_w = (weights[..., i] for i in range(4))
    r, v, q, w = x[..., 0:3], x[..., 3:6], x[..., 6:10], x[..., 10:13]
    return (w_r * (r**2).sum(-1) + w_v * (v**2).sum(-1) + w_w * (w**2).sum(-1)
            + w_tilt * tilt(q))


def rocket_stage_cost(x: Tensor, u: Tensor, weights: Tensor) -> Tensor:
    """Stage cost: the final cost plus ``w_side (Ty^2 + Tz^2) + w_thrust |T|^2``,
    ``u: (..., 3)``."""
    w_side, w_thrust = weights[..., 4], weights[..., 5]
    return (rocket_final_cost(x, weights) + w_side * (u[..., 1:] ** 2).sum(-1)
            + w_thrust * (u**2).sum(-1))


class RocketEnv(DynamicsEnv):
    """## Description

    Land a 6-DoF rocket upright at the origin: the rocket of PDP / Safe-PDP / DiLQR
    (docs/rocket.md), stepping :class:`dilqr_rl.Rocket` (explicit Euler, ``dt = 0.1``) with true
    parameters ``(Jx, Jy, Jz, m, l)`` as constructor arguments. The inertial x-axis points up;
    gravity is ``(-10, 0, 0)``. After each step the quaternion is renormalized to unit length
    (``renormalize=True``; the model itself does not, so with ``renormalize=False`` a step is
    exactly one model step).

    ## Action space

    ``Box(-1, 1, (3,), float32)``: body-frame thrust ``T = 20 a`` (``|T_i| <= 20``; ``Tx`` along
    the long axis); out-of-box actions are clipped, a NaN action raises ``ValueError``.
    ``normalize_actions=False``: the action is ``T``, ``Box(-20, 20)``.

    ## Observation space

    The model state ``(r (3), v (3), q (4), w (3))``, float32; ``q`` in ``[-1, 1]``, the rest
    unbounded (``+-float32 max``). With ``renormalize=False`` ``|q|`` drifts from 1 (the model's
    Euler step does not keep it), so ``q`` is unbounded too.

    ## Rewards

    Minus the landing cost of docs/rocket.md with the Safe-PDP weights
    ``(w_r, w_v, w_tilt, w_w, w_side, w_thrust) = (10, 1, 50, 1, 1, 0.4)``: each step
    ``-(w_r |r|^2 + w_v |v|^2 + w_w |w|^2 + w_tilt tilt(q) + w_side (Ty^2 + Tz^2) +
    w_thrust |T|^2)`` of the state before the step; at touchdown the final cost of the
    touchdown state is subtracted as well. :meth:`task_cost` is the same cost (a
    :class:`dilqr_rl.FunctionCost` with learnable ``weights``).

    ## Starting state

    Around the published ``r0 = (10, -8, 5)``, ``v0 = (-0.1, 0, 0)``, upright, at rest:
    ``r0 + U[-1, 1]^3``, ``v0 + U[-0.5, 0.5]^3``, attitude tilted by up to 0.1 rad about a
    random horizontal axis, ``w ~ U[-0.1, 0.1]^3``; or ``options={"state": x0}`` (``q`` must be a
    unit quaternion, within ``1e-6``; it is then normalized).

    ## Episode end

    Terminated on touchdown (altitude ``r_x <= 0``); ``info`` then holds ``"landed"`` (within
    ``0.5`` of the origin and tilted less than ``10`` degrees), ``"distance"``, ``"tilt_deg"``
    and ``"speed"``. Truncated after 100 steps (10 s) by the registered ``TimeLimit``.

    ## Arguments

    ``gymnasium.make("dilqr_rl/Rocket-v0", Jx=0.5, Jy=1.0, Jz=1.0, m=1.0, l=1.0)``, plus
    ``renormalize``, ``dt``, ``randomize``, ``render_mode``, ``normalize_actions``,
    ``render_width``, ``render_height`` as for ``PendulumEnv``.

    ## Version History

    - v0: initial version
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["human", "rgb_array"],
                                          "render_fps": 10}
    dynamics_cls = Rocket
    param_defaults: ClassVar[dict[str, float]] = {"Jx": 0.5, "Jy": 1.0, "Jz": 1.0, "m": 1.0,
                                                  "l": 1.0}
    obs_bounds: ClassVar[list[tuple[float, float] | None]] = (
        [None] * 6 + [(-1.0, 1.0)] * 4 + [None] * 3)
    unit_blocks: ClassVar[tuple[tuple[int, int, str], ...]] = ((6, 10, "quaternion q"),)
    default_dt = 0.1
    _camera: ClassVar[dict[str, Any]] = {"lookat": (-4.0, 2.5, 4.0), "distance": 22.0,
                                         "azimuth": 60.0, "elevation": -15.0}
    #: a touchdown counts as a landing within this distance of the origin and tilt angle
    land_radius = 0.5
    land_tilt_deg = 10.0

    def __init__(self, Jx: float = 0.5, Jy: float = 1.0, Jz: float = 1.0, m: float = 1.0,
                 l: float = 1.0, *, renormalize: bool = True, dt: float | None = None,
                 randomize: Mapping[str, tuple[float, float]] | None = None,
                 render_mode: str | None = None, normalize_actions: bool = True,
                 render_width: int = 480, render_height: int = 480, **unknown: Any):
        super().__init__({"Jx": Jx, "Jy": Jy, "Jz": Jz, "m": m, "l": l}, dt=dt,
                         randomize=randomize, render_mode=render_mode,
                         normalize_actions=normalize_actions, render_width=render_width,
                         render_height=render_height, unknown=unknown)
        self.renormalize = bool(renormalize)
        if not self.renormalize:  # |q| drifts: only a unit q is bounded by [-1, 1]
            big = np.float32(np.finfo(np.float32).max)
            lo, hi = self.observation_space.low.copy(), self.observation_space.high.copy()
            lo[6:10], hi[6:10] = -big, big
            self.observation_space = spaces.Box(lo, hi, dtype=np.float32)
        self._weights = np.array(COST_WEIGHTS)

    @staticmethod
    def task_cost(weights: tuple[float, ...] = COST_WEIGHTS) -> FunctionCost:
        """The landing cost as a controller cost, ``weights (6,)`` learnable."""
        return FunctionCost(rocket_stage_cost, rocket_final_cost,
                            {"weights": torch.tensor(weights)}, n_state=13, n_ctrl=3)

    def _advance(self, u: np.ndarray) -> None:
        super()._advance(u)
        if self.renormalize:
            q = self._x[6:10]
            self._x[6:10] = q / torch.linalg.vector_norm(q)

    def _sample_state(self) -> np.ndarray:
        rng = self.np_random
        x = X0.copy()
        x[0:3] += rng.uniform(-1.0, 1.0, 3)
        x[3:6] += rng.uniform(-0.5, 0.5, 3)
        angle = rng.uniform(0.0, 0.1)
        phi = rng.uniform(0.0, 2 * math.pi)  # horizontal axis (0, cos phi, sin phi)
        x[6:10] = [math.cos(angle / 2), 0.0, math.sin(angle / 2) * math.cos(phi),
                   math.sin(angle / 2) * math.sin(phi)]
        x[10:13] = rng.uniform(-0.1, 0.1, 3)
        return x

    def _cost(self, x: np.ndarray, u: np.ndarray) -> float:
        # rocket_stage_cost in numpy (per-step speed); equality is tested
        w_r, w_v, w_tilt, w_w, w_side, w_thrust = self._weights
        q0, q1, q2, q3 = x[6:10]
        tilt_q = 4 * (q1 * q2 + q0 * q3) ** 2 + 4 * (q1 * q3 - q0 * q2) ** 2
        return float(w_r * x[0:3] @ x[0:3] + w_v * x[3:6] @ x[3:6] + w_w * x[10:13] @ x[10:13]
                     + w_tilt * tilt_q + w_side * u[1:] @ u[1:] + w_thrust * u @ u)

    def _terminal(self, x: np.ndarray) -> tuple[bool, dict[str, Any]]:
        if x[0] > 0.0:
            return False, {}
        xt = torch.from_numpy(x)
        dist = float(np.linalg.norm(x[0:3]))
        s2 = float(tilt(xt[6:10]) / (xt[6:10] ** 2).sum() ** 2)
        tilt_deg = math.degrees(math.asin(min(1.0, math.sqrt(max(s2, 0.0)))))
        body_x_up = 1 - 2 * (x[8] ** 2 + x[9] ** 2) > 0  # pointing up, not down
        return True, {
            "terminal_cost": float(rocket_final_cost(xt, torch.from_numpy(self._weights))),
            "landed": bool(dist <= self.land_radius and tilt_deg <= self.land_tilt_deg
                           and body_x_up),
            "distance": dist, "tilt_deg": tilt_deg, "speed": float(np.linalg.norm(x[3:6])),
        }

    def _scene_xml(self) -> str:
        return rocket_mjcf(l=self.episode_params["l"], width=self.render_width,
                           height=self.render_height)

    def _pose_scene(self, scene: SceneRenderer) -> None:
        x = self._x.numpy()
        q = x[6:10] / np.linalg.norm(x[6:10])
        # inertial (x, y, z) -> MuJoCo (Z, X, Y): a cyclic relabelling P; the body frame is
        # relabelled the same way, so the MuJoCo attitude is P R(q) P^T = quat (q0, q2, q3, q1)
        scene.pose(mocap_pos=np.array([x[1], x[2], x[0]]),
                   mocap_quat=np.array([q[0], q[2], q[3], q[1]]))
