"""The env of a task: true parameters, domain randomization, stepping a
:class:`dilqr_rl.Dynamics` module, action scaling and rendering.

Everything about the system (model, true parameters, ``dt``, bounds, reward, start
distribution) comes from its :class:`dilqr_rl.tasks.Task`. :class:`DynamicsEnv` serves any
registered task as is (``DynamicsEnv(task="pendulum")``, or ``gym.make`` of the id of a task
registered with :func:`dilqr_rl.tasks.register`); a subclass sets ``task`` and adds a
rendered scene (and, for the rocket, the touchdown), so the envs behave identically.

Actions: the action space is the normalized box ``[-1, 1]^m`` (what Gymnasium's and SB3's
checkers ask for); the control applied to the system is ``u = u_max * clip(a, -1, 1)``, with
``u_max`` the model's control bound. :meth:`DynamicsEnv.control_to_action` maps a
controller's ``u`` (e.g. ``DiLQR.act``) to an action. ``normalize_actions=False`` makes the
action space the physical control box instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from dilqr_rl import tasks as _tasks
from dilqr_rl.models import Dynamics
from dilqr_rl.tasks import Task

from .rendering import SceneRenderer, check_human_render, display_available

__all__ = ["DynamicsEnv"]

_F32_MAX = float(np.finfo(np.float32).max)


def _number(v: Any, name: str) -> float:
    """``float(v)``, or a ``ValueError`` that names the argument."""
    if isinstance(v, bool):
        raise ValueError(f"{name} must be a number, got {v!r}")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {v!r}") from None


def _positive_int(v: Any, name: str) -> int:
    """``v`` as an int >= 1, or a ``ValueError`` that names the argument."""
    ok = (not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating))
          and math.isfinite(v) and float(v).is_integer() and v >= 1)
    if not ok:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return int(v)


class DynamicsEnv(gym.Env[np.ndarray, np.ndarray]):
    """A Gymnasium env whose true system is the model of a :class:`dilqr_rl.tasks.Task`.

    The observation is the model state (``float32``; unit-norm blocks such as ``cos``/``sin``
    pairs bounded by ``[-1, 1]``), the reward is the task's, the start state is drawn from the
    task's start distribution, and the time limit is the task's ``episode_steps`` (set by the
    registered ``TimeLimit``). Actions are described in the module docstring.

    :param task: the task or its registered name (subclasses set the class attribute)
    :param dt: time step (default the task's)
    :param randomize: per-episode uniform ranges of true parameters, e.g. ``{"m": (0.8, 1.2)}``
    :param render_mode: ``"rgb_array"``, ``"human"`` (subclasses with a scene) or ``None``
    :param params: true physical parameters by name (default the task's), all ``> 0``
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["human", "rgb_array"],
                                          "render_fps": 20}
    #: the system (subclasses); a :class:`DynamicsEnv` built directly takes ``task=``
    task: ClassVar[Task | None] = None
    #: true parameters of the env beyond the model's (e.g. MuJoCo's damping) and defaults
    extra_params: ClassVar[dict[str, float]] = {}
    #: parameters that may be 0 (e.g. damping)
    nonnegative: ClassVar[frozenset[str]] = frozenset()
    #: a state block within this of unit norm is accepted (and projected onto the sphere)
    unit_tol: ClassVar[float] = 1e-6

    def __init__(self, task: Task | str | None = None, *, dt: float | None = None,
                 randomize: Mapping[str, tuple[float, float]] | None = None,
                 render_mode: str | None = None, normalize_actions: bool = True,
                 render_width: int = 480, render_height: int = 480, **params: Any):
        if task is not None:
            self.task = _tasks.get(task)  # type: ignore[misc]
        if self.task is None:
            raise ValueError("DynamicsEnv needs task= (a dilqr_rl.tasks.Task or a registered "
                             f"name: {_tasks.names()})")
        t = self.task
        #: true parameter names and default values (all must be > 0 unless ``nonnegative``)
        self.param_defaults: dict[str, float] = {**t.params, **self.extra_params}
        self.unit_blocks = t.unit_blocks
        unknown = set(params) - set(self.param_defaults)
        if unknown:
            raise ValueError(
                f"unknown argument(s) {sorted(unknown)} for {type(self).__name__}; its physical "
                f"parameters are {list(self.param_defaults)} (plus dt, randomize, render_mode, "
                "normalize_actions, render_width, render_height)")
        if render_mode is not None and type(self)._scene_xml is DynamicsEnv._scene_xml:
            raise ValueError(f"render_mode={render_mode!r}: the generic env of task {t.name!r} "
                             "has no scene to render; subclass DynamicsEnv with _scene_xml and "
                             "_pose_scene, or use render_mode=None")
        self.params = self._check_params(params, "parameter")
        self.randomize = self._check_randomize(randomize)
        self.dt = t.dt if dt is None else _number(dt, "dt")
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or "
                             f"None, got {render_mode!r}")
        if render_mode == "human":
            check_human_render()
        self.render_mode = render_mode
        self.render_width = _positive_int(render_width, "render_width")
        self.render_height = _positive_int(render_height, "render_height")
        # The modes this instance can produce (no window without a display), and its frame rate
        self.metadata = dict(self.metadata, render_fps=int(round(1.0 / self.dt)))
        if not display_available():
            self.metadata["render_modes"] = ["rgb_array"]

        self.dynamics: Dynamics = (t if self.dt == t.dt else
                                   dataclasses.replace(t, dt=self.dt)).dynamics()
        n, m = self.dynamics.n_state, self.dynamics.n_ctrl
        if t.u_upper is None or t.u_lower is None or not np.allclose(
                np.asarray(t.u_lower, dtype=float), -np.asarray(t.u_upper, dtype=float)):
            raise ValueError(f"task {t.name!r}: its env needs a symmetric finite control box "
                             f"(u_lower = -u_upper), got {t.u_lower} and {t.u_upper}")
        self.u_max = np.broadcast_to(np.asarray(t.u_upper, dtype=np.float64), (m,)).copy()
        if not (np.isfinite(self.u_max).all() and (self.u_max > 0).all()):
            raise ValueError(f"task {t.name!r}: its env needs finite control bounds > 0, got "
                             f"u_upper={t.u_upper}")
        self.normalize_actions = bool(normalize_actions)
        if self.normalize_actions:
            self.action_space = spaces.Box(-1.0, 1.0, shape=(m,), dtype=np.float32)
        else:
            self.action_space = spaces.Box(-self.u_max.astype(np.float32),
                                           self.u_max.astype(np.float32), dtype=np.float32)
        bounds = t.obs_bounds()
        lo = np.array([-_F32_MAX if b is None else b[0] for b in bounds], np.float32)
        hi = np.array([_F32_MAX if b is None else b[1] for b in bounds], np.float32)
        assert lo.shape == (n,)
        self.observation_space = spaces.Box(lo, hi, dtype=np.float32)

        self.episode_params: dict[str, float] = dict(self.params)
        self._theta = self._make_theta(self.episode_params)
        self._x = torch.zeros(n, dtype=torch.float64)
        self._renderer: SceneRenderer | None = None
        self._scene_key: Any = None

    # ------------------------------------------------------------------ parameters
    def _check_params(self, params: Mapping[str, Any], what: str,
                      base: Mapping[str, float] | None = None) -> dict[str, float]:
        out = dict(self.param_defaults if base is None else base)
        for k, v in params.items():
            if k not in self.param_defaults:
                raise ValueError(f"unknown {what} {k!r} for {type(self).__name__}; valid names: "
                                 f"{list(self.param_defaults)}")
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{what} {k!r} must be a number, got {v!r}") from None
            if k in self.nonnegative:
                if not (math.isfinite(f) and f >= 0):
                    raise ValueError(f"{what} {k!r} must be a finite number >= 0, got {v!r}")
            elif not (math.isfinite(f) and f > 0):
                raise ValueError(f"{what} {k!r} must be a finite number > 0, got {v!r}")
            out[k] = f
        return out

    def _check_randomize(self, randomize: Mapping[str, Any] | None
                         ) -> dict[str, tuple[float, float]]:
        out: dict[str, tuple[float, float]] = {}
        if randomize is not None and not isinstance(randomize, Mapping):
            raise ValueError(f"randomize must be a mapping {{name: (low, high)}}, got "
                             f"{randomize!r}")
        for k, rng in (randomize or {}).items():
            if k not in self.param_defaults:
                raise ValueError(f"unknown parameter {k!r} in randomize for "
                                 f"{type(self).__name__}; valid names: "
                                 f"{list(self.param_defaults)}")
            try:
                lo, hi = (float(r) for r in rng)
            except (TypeError, ValueError):
                raise ValueError(f"randomize[{k!r}] must be a (low, high) pair, got {rng!r}"
                                 ) from None
            self._check_params({k: lo}, f"randomize[{k!r}] low")
            self._check_params({k: hi}, f"randomize[{k!r}] high")
            if lo > hi:
                raise ValueError(f"randomize[{k!r}] needs low <= high, got ({lo}, {hi})")
            out[k] = (lo, hi)
        return out

    def _make_theta(self, params: Mapping[str, float]) -> torch.Tensor:
        names = self.dynamics.param_names()
        return torch.tensor([params[k] for k in names], dtype=torch.float64)

    @property
    def theta(self) -> torch.Tensor:
        """The current true parameter vector ``(p,)`` (float64), in the model's order."""
        return self._theta.clone()

    @property
    def state(self) -> np.ndarray:
        """The current model state ``(n,)`` in float64."""
        return self._x.numpy().copy()

    # ------------------------------------------------------------------ actions
    def action_to_control(self, action: np.ndarray) -> np.ndarray:
        """The control ``u (m,)`` (float64) applied for ``action``: clipped to the action box
        (the Gymnasium way: an out-of-box action is clipped, not rejected) and scaled."""
        a = np.asarray(action, dtype=np.float64).reshape(self.action_space.shape)
        if np.isnan(a).any():
            raise ValueError(f"action contains NaN: {action!r}; {type(self).__name__} needs a "
                             "finite action")
        a = np.clip(a, self.action_space.low, self.action_space.high)
        return a * self.u_max if self.normalize_actions else a

    def control_to_action(self, u: np.ndarray | torch.Tensor) -> np.ndarray:
        """The action (float32) whose control is ``u`` (e.g. the output of ``DiLQR.act``)."""
        if isinstance(u, torch.Tensor):
            u = u.detach().cpu().numpy()
        u = np.asarray(u, dtype=np.float64).reshape(self.action_space.shape)
        a = u / self.u_max if self.normalize_actions else u
        return np.clip(a, self.action_space.low, self.action_space.high).astype(np.float32)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode.

        :param seed: seeds ``self.np_random`` (initial state and parameter randomization)
        :param options: ``{"params": {...}}`` sets true parameters for this episode (on top of
            the constructor's, overriding randomization); ``{"state": x0}`` sets the initial
            model state ``(n,)``: finite, its ``unit_blocks`` (``cos``/``sin`` pairs,
            quaternions) of unit norm within ``unit_tol`` (then normalized), its observation
            inside ``observation_space``. Bad options raise ``ValueError``.
        """
        if options is not None and not isinstance(options, Mapping):
            raise ValueError(f"options must be a dict (keys 'params', 'state') or None, got "
                             f"{options!r}")
        options = dict(options or {})
        unknown = set(options) - {"params", "state"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; valid: 'params', "
                             "'state'")
        opt_params = options.get("params")
        if opt_params is not None and not isinstance(opt_params, Mapping):
            raise ValueError(f"options['params'] must be a dict {{name: value}} with names in "
                             f"{list(self.param_defaults)}, got {opt_params!r}")
        x0 = None if options.get("state") is None else self._check_state(options["state"])
        super().reset(seed=seed)
        params = dict(self.params)
        for k, (lo, hi) in self.randomize.items():
            params[k] = float(self.np_random.uniform(lo, hi))
        params = self._check_params(opt_params or {}, "parameter", base=params)
        self.episode_params = params
        self._theta = self._make_theta(params)
        if x0 is None:
            x0 = self._sample_state()
        self._set_state(x0)
        if self.render_mode == "human":
            self.render()
        return self._obs(), self._info()

    def _check_state(self, state: Any) -> np.ndarray:
        """``options["state"]`` as a float64 array, checked: shape, finite, unit-norm blocks
        within ``unit_tol`` (then projected onto the unit sphere) and an observation inside
        ``observation_space`` (finite in float32)."""
        try:
            x0 = np.array(state, dtype=np.float64)
        except (TypeError, ValueError):
            x0 = None
        if x0 is None or x0.shape != self.observation_space.shape or not np.isfinite(x0).all():
            raise ValueError(f"options['state'] must be a finite array of shape "
                             f"{self.observation_space.shape}, got {state!r}")
        for lo, hi, name in self.unit_blocks:
            norm = float(np.linalg.norm(x0[lo:hi]))
            if not abs(norm - 1.0) <= self.unit_tol:
                raise ValueError(f"options['state'][{lo}:{hi}] ({name}) must have unit norm "
                                 f"(within {self.unit_tol:g}), got {x0[lo:hi].tolist()} with "
                                 f"norm {norm:.9g}")
            x0[lo:hi] /= norm
        with np.errstate(over="ignore"):
            obs = x0.astype(np.float32)
        space = self.observation_space
        if not (np.isfinite(obs).all() and np.all(obs >= space.low) and np.all(obs <= space.high)):
            raise ValueError(f"options['state'] gives an observation outside the observation "
                             f"space (the float32 observation is {obs.tolist()}; bounds "
                             f"{space.low.tolist()} to {space.high.tolist()}); got {state!r}")
        return x0

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        u = self.action_to_control(action)
        x_prev = self._x.numpy()
        with np.errstate(over="ignore"):  # an overflow is reported below, as an error
            cost = self._cost(x_prev, u)
        self._advance(u)
        x = self._x.numpy()
        if not np.isfinite(x).all():
            raise RuntimeError(f"{type(self).__name__}: the state became non-finite ({x}); "
                               f"parameters {self.episode_params}")
        terminated, extra = self._terminal(x)
        info = self._info()
        info.update(extra, control=u)
        with np.errstate(over="ignore"):
            obs = self._obs()
        space = self.observation_space
        if not (np.isfinite(obs).all() and np.all(obs >= space.low) and np.all(obs <= space.high)):
            raise RuntimeError(f"{type(self).__name__}: the observation left the float32 "
                               f"observation space (state {x}, float32 observation {obs}); "
                               f"parameters {self.episode_params}")
        reward = -float(cost + extra.get("terminal_cost", 0.0))
        if not (math.isfinite(reward) and abs(reward) <= _F32_MAX):
            raise RuntimeError(f"{type(self).__name__}: the reward {reward} is not a finite "
                               f"float32 (state before the step {x_prev}, control {u}); "
                               f"parameters {self.episode_params}")
        if self.render_mode == "human":
            self.render()
        return obs, reward, terminated, False, info

    def _advance(self, u: np.ndarray) -> None:
        """One true step of the model (float64, no autograd)."""
        with torch.no_grad():
            self._x = self.dynamics.step(self._x, torch.from_numpy(u), self._theta)

    def _set_state(self, x0: np.ndarray) -> None:
        self._x = torch.as_tensor(x0, dtype=torch.float64).clone()

    def _obs(self) -> np.ndarray:
        return self._x.numpy().astype(np.float32)

    def _info(self) -> dict[str, Any]:
        return {"params": dict(self.episode_params)}

    def _terminal(self, x: np.ndarray) -> tuple[bool, dict[str, Any]]:
        """``(terminated, extra info)`` after a step; default: never terminates."""
        return False, {}

    # ------------------------------------------------------------------ task hooks
    @classmethod
    def task_cost(cls) -> Any:
        """The task cost as a learnable controller cost (``task.make_cost()``)."""
        if cls.task is None:
            raise ValueError("DynamicsEnv.task_cost needs an env class with a task")
        return cls.task.make_cost()

    def _sample_state(self) -> np.ndarray:
        return np.asarray(self.task.sample_start(self.np_random), dtype=np.float64)

    def _cost(self, x: np.ndarray, u: np.ndarray) -> float:
        return -float(self.task.reward(x, u))

    # ------------------------------------------------------------------ subclass hooks

    def _scene_xml(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _pose_scene(self, scene: SceneRenderer) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    _camera: ClassVar[dict[str, Any]] = {"lookat": (0, 0, 0), "distance": 4.0,
                                         "azimuth": 90.0, "elevation": -10.0}

    # ------------------------------------------------------------------ rendering
    def _scene(self) -> SceneRenderer:
        key = tuple(sorted(self.episode_params.items()))
        if self._renderer is None or key != self._scene_key:
            if self._renderer is not None:
                self._renderer.close()
            self._renderer = SceneRenderer(self._scene_xml(), self.render_width,
                                           self.render_height, self._camera)
            self._scene_key = key
        return self._renderer

    def render(self) -> np.ndarray | None:
        """``rgb_array``: an ``(H, W, 3) uint8`` frame; ``human``: update the window."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode="
                            "'rgb_array' to the constructor or gym.make")
            return None
        scene = self._scene()
        self._pose_scene(scene)
        if self.render_mode == "rgb_array":
            return scene.render()
        scene.show()
        return None

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
