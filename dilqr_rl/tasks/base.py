"""The :class:`Task`: everything the package knows about one system, in one place.

A task names its model class and holds the true parameters, the time step and the control
box (by default the model's own), the task cost and the env reward derived from it, the start
distributions of the env and of the imitation experiment, the default MPC horizon and solver
settings, and the Gymnasium id of its env. Envs, expert data, the SB3 controller spec, the CLI,
the examples, the tests and the benchmarks all read it; nothing restates it.

**One scaling.** A :class:`Tracking` cost is ``sum_i w_i (z_i - g_i)^2`` over ``z = [x; u]``
(terminal: the same on ``x``), the scale of the env's per-step cost, so ``reward = -cost``
wherever the reward is the cost itself. As a controller cost it is
:meth:`dilqr_rl.QuadraticCost.tracking` with weights ``2 w`` (whose convention is ``1/2 w``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..cost import Cost, QuadraticCost
from ..ilqr import ILQRConfig
from ..layer import DiLQR
from ..models import Dynamics

__all__ = ["COST_LEARN", "Task", "Tracking", "uniform"]

#: what a cost learner may learn (:attr:`Task.cost_learn`)
COST_LEARN = ("alternate", "weights", "both")


def uniform(gen: torch.Generator, n: int, lo: float, hi: float, *shape: int) -> Tensor:
    """``(n, *shape)`` float64 draws from ``U[lo, hi)`` (start-state samplers)."""
    return torch.rand(n, *shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo


@dataclass(frozen=True)
class Tracking:
    """Diagonal tracking cost ``sum_i w_i (z_i - g_i)^2`` over ``z = [x; u]``; terminal cost
    ``sum_i w_i (x_i - g_i)^2`` over the state part.

    :ivar weights: ``w (n+m,)``, ``>= 0``, control weights ``> 0``
    :ivar goal: ``g (n+m,)``
    """

    weights: tuple[float, ...]
    goal: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.goal):
            raise ValueError(f"Tracking weights and goal must have the same length, got "
                             f"{len(self.weights)} and {len(self.goal)}")

    def cost(self, n_state: int) -> QuadraticCost:
        """As a learnable :class:`dilqr_rl.QuadraticCost` (tracking weights ``2 w``)."""
        return QuadraticCost.tracking(2.0 * torch.tensor(self.weights),
                                      torch.tensor(self.goal), n_state=n_state)

    def value(self, x: np.ndarray, u: np.ndarray) -> float:
        """The stage cost of one pair, ``x (n,)``, ``u (m,)`` (numpy, for env steps)."""
        z = np.concatenate([x, u])
        return float(np.dot(self.weights, (z - np.asarray(self.goal)) ** 2))


def _frozen(d: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class Task:
    """One system: model, physics, cost, reward, starts, horizon, solver settings, env id.

    :ivar name: registry name (``"pendulum"``)
    :ivar model: the :class:`dilqr_rl.Dynamics` class
    :ivar cost: a :class:`Tracking` cost, or a factory ``() -> Cost`` (e.g. a
        :class:`dilqr_rl.FunctionCost` with its default parameters)
    :ivar reward: ``reward(x (n,), u (m,)) -> float`` (numpy) of one env step from ``x``;
        default ``-cost`` for a :class:`Tracking` cost
    :ivar sample_start: ``(numpy Generator) -> x0 (n,)``, the env's start distribution
    :ivar sample_demo_start: ``(torch Generator, N) -> x0 (N, n)`` float64, the imitation
        experiment's start distribution; default: ``sample_start`` N times
    :ivar horizon: default MPC horizon ``T`` (controllers, closed-loop MPC, RL actors)
    :ivar demo_horizon: the imitation experiment's horizon (default ``horizon``)
    :ivar params: true physical parameters; default the model's ``param_defaults``
    :ivar dt: time step; default the model's ``default_dt``
    :ivar u_lower: control lower bound (scalar or ``(m,)``); default the model's
    :ivar u_upper: control upper bound; default the model's
    :ivar solver: :class:`dilqr_rl.ILQRConfig` fields of the task's MPC controller
    :ivar learn_init: a wrong initial model for learning experiments (DiffMPC's guesses)
    :ivar demo_cost: the imitation expert's cost where it differs from ``cost`` (a
        :class:`Tracking`; the cost learners need one)
    :ivar cost_learn_init: the cost learners' initial guess (a :class:`Tracking`, weights in
        ``(0, 1)``); ``None``: DiffMPC's (every weight 0.5, goal 0)
    :ivar cost_learn: what the cost learners learn unless told otherwise: ``"alternate"``
        goal and weights in turn (DiffMPC), ``"weights"`` (the goal stays at
        ``cost_learn_init``'s) or ``"both"`` at once
    :ivar unit_blocks: ``(start, stop, name)`` state blocks of unit norm (``cos``/``sin``
        pairs, quaternions): their observations lie in ``[-1, 1]``
    :ivar state_names: a short name per state coordinate (plots); default ``x[i]``
    :ivar env_id: the Gymnasium id of the task's env (``None``: no env)
    :ivar episode_steps: the env's time limit
    :ivar shrink_horizon: closed-loop MPC plans to a fixed end: at env step ``k`` the horizon
        is ``max(horizon - k, min_horizon)`` (:meth:`horizon_at`; the rocket lands at the end
        of its first plan instead of chasing a target that moves with the horizon)
    :ivar min_horizon: the shortest horizon of a shrinking one
    :ivar success: ``(final state (n,), last step info) -> bool``, what counts as a
        successful closed-loop episode (swung up and held, landed)
    :ivar identifiable: ``theta (..., p) -> {name: (...)}``, the parameter combinations the
        dynamics actually depend on, where the raw parameters are not identifiable (the
        pendulum depends on ``g / l`` and ``m l^2`` only); ``None``: the parameters themselves
    """

    name: str
    model: type[Dynamics]
    cost: Tracking | Callable[[], Cost]
    sample_start: Callable[[np.random.Generator], np.ndarray]
    reward: Callable[[np.ndarray, np.ndarray], float] | None = None
    sample_demo_start: Callable[[torch.Generator, int], Tensor] | None = None
    horizon: int = 20
    params: Mapping[str, float] | None = None
    dt: float | None = None
    u_lower: float | tuple[float, ...] | None = None
    u_upper: float | tuple[float, ...] | None = None
    solver: Mapping[str, Any] = field(default_factory=lambda: {"max_iter": 15, "tol": 1e-6})
    learn_init: Mapping[str, float] | None = None
    demo_cost: Tracking | None = None
    cost_learn_init: Tracking | None = None
    cost_learn: str = "alternate"
    demo_horizon: int | None = None
    unit_blocks: tuple[tuple[int, int, str], ...] = ()
    state_names: tuple[str, ...] | None = None
    env_id: str | None = None
    episode_steps: int = 200
    identifiable: Callable[[Tensor], dict[str, Tensor]] | None = None
    shrink_horizon: bool = False
    min_horizon: int = 1
    success: Callable[[np.ndarray, dict[str, Any]], bool] | None = None

    def __post_init__(self) -> None:
        def put(k: str, v: Any) -> None:
            object.__setattr__(self, k, v)

        if not (isinstance(self.model, type) and issubclass(self.model, Dynamics)):
            raise ValueError(f"task {self.name!r}: model must be a dilqr_rl.Dynamics subclass, "
                             f"got {self.model!r}")
        dt = self.model.default_dt if self.dt is None else self.dt
        if dt is None or not dt > 0:
            raise ValueError(f"task {self.name!r}: dt must be > 0 (the model has no "
                             f"default_dt), got {dt!r}")
        put("dt", float(dt))
        # the model's scalar parameters, by name, with their values on a fresh instance
        fresh = {k: p for k, p in self._new_model().named_parameters()}
        if any(p.numel() != 1 for p in fresh.values()):
            raise ValueError(f"task {self.name!r}: the model's parameters must be scalars, got "
                             f"shapes { {k: tuple(p.shape) for k, p in fresh.items()} }")
        # exact declared defaults (a float32 Parameter would round 9.8 to 9.80000019)
        declared = self.model.param_defaults
        params = {k: float(declared[k]) if k in declared else float(p.detach())
                  for k, p in fresh.items()}
        if self.params is not None:
            if set(self.params) != set(params):
                raise ValueError(f"task {self.name!r}: params must name exactly the model's "
                                 f"parameters {list(params)}, got {list(self.params)}")
            params = {k: float(self.params[k]) for k in params}
        put("params", _frozen(params))
        put("u_lower", self.model.u_lower if self.u_lower is None else self.u_lower)
        put("u_upper", self.model.u_upper if self.u_upper is None else self.u_upper)
        put("solver", _frozen(self.solver))
        put("learn_init", None if self.learn_init is None else _frozen(
            {k: float(v) for k, v in self.learn_init.items()}))
        if self.reward is None:
            if not isinstance(self.cost, Tracking):
                raise ValueError(f"task {self.name!r}: a reward is needed when the cost is "
                                 "not a Tracking cost")
            tracking = self.cost
            put("reward", lambda x, u: -tracking.value(x, u))
        names = self.state_names or tuple(f"x[{i}]" for i in range(self.model.n_state))
        if len(names) != self.model.n_state:
            raise ValueError(f"task {self.name!r}: state_names must name the "
                             f"{self.model.n_state} state coordinates, got {names}")
        put("state_names", tuple(names))
        put("demo_horizon", self.horizon if self.demo_horizon is None else self.demo_horizon)
        if self.cost_learn not in COST_LEARN:
            raise ValueError(f"task {self.name!r}: cost_learn must be one of {COST_LEARN}, got "
                             f"{self.cost_learn!r}")
        if not (isinstance(self.horizon, int) and self.horizon >= 1):
            raise ValueError(f"task {self.name!r}: horizon must be an int >= 1, got "
                             f"{self.horizon!r}")

    # ------------------------------------------------------------------ builders
    @property
    def n_state(self) -> int:
        return self.model.n_state

    @property
    def n_ctrl(self) -> int:
        return self.model.n_ctrl

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.params)

    def _new_model(self) -> Dynamics:
        takes_dt = "dt" in inspect.signature(self.model).parameters
        return self.model(dt=self.dt) if takes_dt else self.model()

    def dynamics(self, *, dtype: torch.dtype | None = None, **params: float) -> Dynamics:
        """The model with the true parameters, ``params`` overriding some, in ``dtype``
        (default: torch's default dtype). The model class is built with no arguments (or only
        ``dt``), cast, then its parameters are set by name (so a float64 model holds ``1.3``,
        not the float32 ``1.29999995``)."""
        unknown = set(params) - set(self.params)
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)} for task {self.name!r}; "
                             f"its parameters are {list(self.params)}")
        dyn = self._new_model()
        if dtype is not None:
            dyn = dyn.to(dtype)
        values = {**self.params, **params}
        with torch.no_grad():
            for k, p in dyn.named_parameters():
                p.fill_(float(values[k]))
        return dyn

    def make_cost(self) -> Cost:
        """The task cost as a learnable controller cost (default dtype)."""
        if isinstance(self.cost, Tracking):
            return self.cost.cost(self.n_state)
        return self.cost()

    def theta(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The true parameter vector ``(p,)``."""
        return torch.tensor(list(self.params.values()), dtype=dtype)

    def config(self, **overrides: Any) -> ILQRConfig:
        """The task's :class:`dilqr_rl.ILQRConfig`, fields in ``overrides`` replaced."""
        return ILQRConfig(**{**self.solver, **overrides})

    def controller(self, horizon: int | None = None, *, dtype: torch.dtype = torch.float64,
                   model_params: Mapping[str, float] | None = None,
                   config: ILQRConfig | None = None, **kwargs: Any) -> DiLQR:
        """The task's MPC controller: :class:`dilqr_rl.DiLQR` with the true model (or
        ``model_params`` overriding some parameters), the task cost and bounds.

        :param horizon: ``T``; default the task's
        :param dtype: of the model and cost parameters
        :param config: solver settings; default :meth:`config`
        :param kwargs: more :class:`dilqr_rl.DiLQR` keywords (``grad``, ``u_lower``, ...)
        """
        kwargs.setdefault("u_lower", self.u_lower)
        kwargs.setdefault("u_upper", self.u_upper)
        return DiLQR(self.dynamics(dtype=dtype, **dict(model_params or {})),
                     self.make_cost().to(dtype), horizon=horizon or self.horizon,
                     config=config or self.config(), **kwargs)

    def demo_tracking(self) -> Tracking:
        """The imitation expert's tracking cost (``demo_cost``, else ``cost``)."""
        t = self.demo_cost if self.demo_cost is not None else self.cost
        if not isinstance(t, Tracking):
            raise ValueError(f"task {self.name!r} has no tracking cost for imitation (set "
                             "demo_cost)")
        return t

    def demo_starts(self, gen: torch.Generator, n: int) -> Tensor:
        """``n`` imitation start states ``(n, n_state)`` float64."""
        if self.sample_demo_start is not None:
            return self.sample_demo_start(gen, n)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        rng = np.random.default_rng(seed)
        return torch.tensor(np.stack([self.sample_start(rng) for _ in range(n)]),
                            dtype=torch.float64)

    def horizon_at(self, step: int, horizon: int | None = None) -> int:
        """The MPC horizon at env step ``step`` of an episode (``horizon``: the first one,
        default the task's): constant, or shrinking to ``min_horizon``."""
        h = horizon or self.horizon
        return max(h - step, min(self.min_horizon, h)) if self.shrink_horizon else h

    def combinations(self, theta: Tensor) -> dict[str, Tensor]:
        """The identifiable combinations of ``theta (..., p)`` by name (the parameters
        themselves when the task declares none)."""
        if self.identifiable is not None:
            return self.identifiable(theta)
        return {k: theta[..., i] for i, k in enumerate(self.params)}

    def obs_bounds(self) -> list[tuple[float, float] | None]:
        """Observation bounds per state coordinate: ``[-1, 1]`` in unit blocks, else none."""
        out: list[tuple[float, float] | None] = [None] * self.n_state
        for lo, hi, _ in self.unit_blocks:
            out[lo:hi] = [(-1.0, 1.0)] * (hi - lo)
        return out
