"""Shared machinery of the MuJoCo-simulated envs: the true system is a MuJoCo model.

A MuJoCo env keeps the observation, action, reward and initial states of its analytic
counterpart (so the same controller and cost apply), but :meth:`_advance` steps a MuJoCo
model compiled from the MJCF of :mod:`dilqr_rl.envs.mjcf` with the true parameters. The model
is recompiled only when the episode's parameters change.

An unstable simulation (MuJoCo's warnings of a NaN, Inf or huge ``qpos``/``qvel``/``qacc``)
raises ``RuntimeError`` in ``step``, as a non-finite state does in the analytic envs; MuJoCo's
auto-reset, which would silently put the system back at ``qpos = 0`` (the goal), is disabled.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from .rendering import import_mujoco

__all__ = ["MujocoSimMixin"]

INTEGRATORS = ("Euler", "RK4", "implicit", "implicitfast")
#: MuJoCo's instability warnings (``mjtWarning``): NaN, Inf or huge (> ``mjMAXVAL``) value in
#: qpos, qvel, qacc
_UNSTABLE = {"mjWARN_BADQPOS": "qpos", "mjWARN_BADQVEL": "qvel", "mjWARN_BADQACC": "qacc"}


class MujocoSimMixin:
    """Mixed in before a :class:`~dilqr_rl.envs.base.DynamicsEnv` subclass.

    Subclasses implement :meth:`_sim_xml`, :meth:`_state_to_q` and :meth:`_q_to_state`.
    """

    episode_params: dict[str, float]
    dt: float
    _x: torch.Tensor
    nonnegative: ClassVar[frozenset[str]] = frozenset({"damping"})

    def _init_sim(self, n_substeps: int, integrator: str) -> None:
        if isinstance(n_substeps, bool) or not isinstance(n_substeps, int) or n_substeps < 1:
            raise ValueError(f"n_substeps must be an int >= 1, got {n_substeps!r}")
        if integrator not in INTEGRATORS:
            raise ValueError(f"integrator must be one of {INTEGRATORS}, got {integrator!r}")
        self.n_substeps, self.integrator = n_substeps, integrator
        self._mj = import_mujoco()
        self._sim_key: Any = None
        self.sim_model: Any = None
        self.sim_data: Any = None
        self._build_sim()

    def _build_sim(self) -> None:
        key = tuple(sorted(self.episode_params.items()))
        if key != self._sim_key:
            xml = self._sim_xml(self.dt / self.n_substeps)
            self.sim_model = self._mj.MjModel.from_xml_string(xml)
            # MuJoCo's auto-reset would put an unstable simulation back at qpos0 (upright, at
            # rest: the goal); keep the bad values instead, and raise in _advance
            autoreset = getattr(self._mj.mjtDisableBit, "mjDSBL_AUTORESET", None)
            if autoreset is not None:
                self.sim_model.opt.disableflags |= int(autoreset)
            self.sim_data = self._mj.MjData(self.sim_model)
            self._sim_key = key
            self._warn_idx = {int(getattr(self._mj.mjtWarning, k)): v
                              for k, v in _UNSTABLE.items()}

    def _set_state(self, x0: np.ndarray) -> None:
        self._build_sim()
        mj, d = self._mj, self.sim_data
        mj.mj_resetData(self.sim_model, d)
        qpos, qvel = self._state_to_q(np.asarray(x0, dtype=np.float64))
        d.qpos[:], d.qvel[:] = qpos, qvel
        mj.mj_forward(self.sim_model, d)
        self._x = torch.from_numpy(self._q_to_state(d.qpos, d.qvel))

    def _advance(self, u: np.ndarray) -> None:
        d = self.sim_data
        d.ctrl[:] = u
        before = {i: int(d.warning[i].number) for i in self._warn_idx}
        self._mj.mj_step(self.sim_model, d, nstep=self.n_substeps)
        bad = [v for i, v in self._warn_idx.items() if int(d.warning[i].number) > before[i]]
        if bad:
            raise RuntimeError(
                f"{type(self).__name__}: the MuJoCo simulation became unstable (NaN, Inf or huge "
                f"value in {', '.join(bad)}); parameters {self.episode_params}, integrator "
                f"{self.integrator!r}, timestep {self.dt / self.n_substeps:g} s. A smaller "
                "timestep (more n_substeps) or integrator='implicit' may help")
        self._x = torch.from_numpy(self._q_to_state(d.qpos, d.qvel))

    # subclass hooks
    def _sim_xml(self, timestep: float) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _state_to_q(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def _q_to_state(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError
