"""The controller spec: which task's MPC controller an SB3 actor solves, as plain data.

A :class:`ControllerSpec` names a task of :mod:`dilqr_rl.tasks` (which holds the model class,
the task cost, ``dt``, the control box, the default horizon and solver settings) and only the
deviations from it: the initial physical parameters of the controller's model, the horizon,
the solver settings, the gradient mode, initial cost parameters, ``dt``, bounds and dtype. It
is frozen and picklable, and :meth:`ControllerSpec.to_dict` is plain JSON data, so a saved
model rebuilds its controller in a fresh process; nothing is looked up through Gymnasium's
registry.

Dicts in the format used before specs named a task (key ``"env_id"``, optional ``"model"``)
are still accepted by :meth:`ControllerSpec.coerce`, so models saved then keep loading.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import tasks as _tasks
from ..grad import GRAD_MODES
from ..ilqr import ILQRConfig
from ..layer import DiLQR

__all__ = ["DTYPES", "ControllerSpec", "SpecError", "controller_spec"]

#: solve dtypes by name
DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: solver settings a spec adds to its task's: rollouts cap the iterations, so unconverged
#: solves are expected there and are differentiated at their last iterate (counted, warned once)
SPEC_SOLVER: dict[str, Any] = {"on_unconverged": "warn"}
#: the format before specs named a task: its keys, and its defaults where they were its own
_OLD_KEYS = frozenset({"env_id", "model", "model_params", "cost_params", "horizon", "config",
                       "grad", "dt", "u_lower", "u_upper", "dtype"})
_OLD_DEFAULTS: dict[str, Any] = {"horizon": 15, "config": {"max_iter": 15, "tol": 1e-6}}


class SpecError(ValueError):
    """A bad controller spec field; :attr:`field` names it."""

    def __init__(self, field: str, msg: str):
        super().__init__(f"controller spec {field!r}: {msg}")
        self.field = field


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        raise SpecError(what, f"expected a number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class ControllerSpec:
    """The controller of a DiLQR actor: a task and the deviations from it.

    :ivar task: registered task name (a task's Gymnasium id or a registered :class:`Task` is
        accepted and stored as the name)
    :ivar model_params: initial physical parameters of the controller's model by name (others:
        the task's true values); each at or above the model's lower bound
    :ivar horizon: MPC horizon ``T`` (``None``: the task's)
    :ivar config: :class:`dilqr_rl.ILQRConfig` fields; stored complete: the task's solver
        settings, then ``on_unconverged="warn"``, then the given ones
    :ivar grad: ``"implicit"``, ``"last_lqr"`` or ``"unroll"``
    :ivar cost_params: initial cost parameter values by name (others: the task cost's)
    :ivar dt: time step of the model (``None``: the task's)
    :ivar u_lower: control lower bound, a number or one per control (``None``: the task's)
    :ivar u_upper: control upper bound (``None``: the task's)
    :ivar dtype: ``"float64"`` (default) or ``"float32"``, of the model and cost parameters
    """

    task: str
    model_params: dict[str, float] = field(default_factory=dict, hash=False)
    horizon: int | None = None
    config: dict[str, Any] = field(default_factory=dict, hash=False)
    grad: str = "implicit"
    cost_params: dict[str, Any] = field(default_factory=dict, hash=False)
    dt: float | None = None
    u_lower: float | tuple[float, ...] | None = None
    u_upper: float | tuple[float, ...] | None = None
    dtype: str = "float64"

    def __post_init__(self) -> None:
        def put(k: str, v: Any) -> None:
            object.__setattr__(self, k, v)

        task = self._task()
        put("task", task.name)
        put("model_params", self._model_params(task))
        h = self.horizon
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 1):
            raise SpecError("horizon", f"must be an int >= 1 or None (the task's), got {h!r}")
        put("config", self._config(task))
        if self.grad not in GRAD_MODES:
            raise SpecError("grad", f"must be one of {GRAD_MODES}, got {self.grad!r}")
        put("cost_params", self._cost_params(task))
        if self.dt is not None:
            dt = _number(self.dt, "dt")
            if not (math.isfinite(dt) and dt > 0):
                raise SpecError("dt", f"must be a finite number > 0 or None, got {self.dt!r}")
            put("dt", dt)
        for name in ("u_lower", "u_upper"):
            put(name, self._bound(name, task.n_ctrl))
        if self.dtype not in DTYPES:
            raise SpecError("dtype", f"must be one of {tuple(DTYPES)}, got {self.dtype!r}")

    # ------------------------------------------------------------------ validation
    def _task(self) -> _tasks.Task:
        try:
            task = _tasks.get(self.task)
        except (ValueError, TypeError):
            raise SpecError("task", f"unknown task {self.task!r}; registered tasks: "
                                    f"{_tasks.names()}") from None
        if _tasks.TASKS.get(task.name) is not task:
            raise SpecError("task", f"task {task.name!r} is not registered (a spec stores the "
                                    "name; dilqr_rl.tasks.register it first)")
        return task

    def _model_params(self, task: _tasks.Task) -> dict[str, float]:
        if not isinstance(self.model_params, Mapping):
            raise SpecError("model_params", f"must be a mapping, got {self.model_params!r}")
        bounds = task.dynamics().lower_bounds()
        out = {}
        for k, v in self.model_params.items():
            if k not in task.params:
                raise SpecError("model_params", f"unknown parameter {k!r}; the "
                                f"{task.model.__name__} model's are {list(task.params)}")
            f = _number(v, "model_params")
            if not math.isfinite(f) or f < bounds.get(k, -math.inf):
                raise SpecError("model_params", f"{k}={v!r} must be a finite number >= the "
                                f"model's lower bound {bounds.get(k, -math.inf):g}")
            out[k] = f
        return out

    def _config(self, task: _tasks.Task) -> dict[str, Any]:
        cfg = self.config
        if isinstance(cfg, ILQRConfig):
            cfg = dataclasses.asdict(cfg)
        if not isinstance(cfg, Mapping):
            raise SpecError("config", f"must be a mapping of ILQRConfig fields or an "
                                      f"ILQRConfig, got {cfg!r}")
        full = {**task.solver, **SPEC_SOLVER, **cfg}
        known = [f.name for f in dataclasses.fields(ILQRConfig)]
        unknown = set(full) - set(known)
        if unknown:
            raise SpecError("config", f"unknown ILQRConfig field(s) {sorted(unknown)}; valid: "
                                      f"{known}")
        try:
            ILQRConfig(**full)
        except (TypeError, ValueError) as e:
            raise SpecError("config", str(e)) from None
        return full

    def _cost_params(self, task: _tasks.Task) -> dict[str, Any]:
        if not isinstance(self.cost_params, Mapping):
            raise SpecError("cost_params", f"must be a mapping, got {self.cost_params!r}")
        shapes = task.make_cost().param_shapes() if self.cost_params else {}
        out = {}
        for k, v in self.cost_params.items():
            if k not in shapes:
                raise SpecError("cost_params", f"unknown cost parameter {k!r}; the task cost "
                                f"has {sorted(shapes)}")
            try:
                t = torch.as_tensor(v, dtype=torch.float64).reshape(shapes[k])
            except (TypeError, ValueError, RuntimeError) as e:
                raise SpecError("cost_params", f"{k}: expected {math.prod(shapes[k])} numbers "
                                f"(shape {shapes[k]}): {e}") from None
            if not bool(torch.isfinite(t).all()):
                raise SpecError("cost_params", f"{k} must be finite, got {v!r}")
            out[k] = t.tolist()
        return out

    def _bound(self, name: str, m: int) -> float | tuple[float, ...] | None:
        v = getattr(self, name)
        if hasattr(v, "tolist"):  # a tensor or an array
            v = v.tolist()
        if v is None or isinstance(v, (int, float)) and not isinstance(v, bool):
            return None if v is None else _number(v, name)
        try:
            out = tuple(_number(b, name) for b in v)
        except TypeError:
            raise SpecError(name, f"must be None, a number or {m} numbers, got {v!r}") from None
        if len(out) != m:
            raise SpecError(name, f"must have one value per control ({m}), got {len(out)}")
        return out

    # ------------------------------------------------------------------ use
    def build(self) -> DiLQR:
        """The :class:`dilqr_rl.DiLQR` this spec describes (built by its task)."""
        task = _tasks.get(self.task)
        if self.dt is not None and self.dt != task.dt:
            task = dataclasses.replace(task, dt=self.dt)
        bounds = {k: getattr(self, k) for k in ("u_lower", "u_upper") if getattr(self, k)
                  is not None}
        ctrl = task.controller(self.horizon, dtype=DTYPES[self.dtype],
                               model_params=self.model_params,
                               config=ILQRConfig(**self.config), grad=self.grad, **bounds)
        params = dict(ctrl.cost.named_parameters())
        with torch.no_grad():
            for k, v in self.cost_params.items():
                p = params[k]
                p.copy_(torch.as_tensor(v, dtype=p.dtype).reshape(p.shape))
        return ctrl

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; ``ControllerSpec.coerce(spec.to_dict()) == spec``."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k in ("model_params", "config", "cost_params"):
            d[k] = dict(d[k])
        for k in ("u_lower", "u_upper"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled as its plain data, validated again when loaded
        return (ControllerSpec.coerce, (self.to_dict(),))

    @classmethod
    def coerce(cls, obj: ControllerSpec | Mapping[str, Any]) -> ControllerSpec:
        """A spec from a :class:`ControllerSpec` (returned as is), a dict of its fields (key
        ``"task"``), or a dict in the format before specs named a task (key ``"env_id"``,
        mapped to its task by :func:`dilqr_rl.tasks.for_env`; optional ``"model"``, which must
        be that task's model class name; a missing ``"horizon"`` is 15 and the solver settings
        default to ``max_iter=15, tol=1e-6``, as they did then)."""
        if isinstance(obj, ControllerSpec):
            return obj
        if not isinstance(obj, Mapping):
            raise ValueError(f"a controller spec must be a ControllerSpec or a dict, got "
                             f"{type(obj).__name__}")
        d = dict(obj)
        if "task" in d:
            known = {f.name for f in dataclasses.fields(cls)}
            if set(d) - known:
                raise ValueError(f"unknown controller spec key(s) {sorted(set(d) - known)}; "
                                 f"valid: {sorted(known)}")
            return cls(**d)
        if "env_id" in d:
            return cls._from_env_format(d)
        raise ValueError(f"a controller spec needs 'task' (or, in the format before tasks, "
                         f"'env_id'); got keys {sorted(d)}")

    @classmethod
    def _from_env_format(cls, d: dict[str, Any]) -> ControllerSpec:
        if set(d) - _OLD_KEYS:
            raise ValueError(f"unknown controller spec key(s) {sorted(set(d) - _OLD_KEYS)}; "
                             f"valid: {sorted(_OLD_KEYS)}")
        try:
            task = _tasks.for_env(d.pop("env_id"))
        except ValueError as e:
            raise SpecError("env_id", str(e)) from None
        model = d.pop("model", None)
        if model is not None and model != task.model.__name__:
            raise SpecError("model", f"{model!r} is not the model of task {task.name!r} "
                                     f"({task.model.__name__}); a spec's model is its task's")
        config = d.pop("config", None)
        if isinstance(config, ILQRConfig):
            config = dataclasses.asdict(config)
        d["config"] = {**_OLD_DEFAULTS["config"], **(config or {})}
        d.setdefault("horizon", _OLD_DEFAULTS["horizon"])
        return cls(task=task.name, **d)


def controller_spec(task: str, model_params: Mapping[str, float] | None = None,
                    horizon: int | None = None, max_iter: int | None = None,
                    tol: float | None = None, grad: str = "implicit",
                    **extra: Any) -> ControllerSpec:
    """A :class:`ControllerSpec` for ``task`` (a task name or its env's Gymnasium id).

    :param model_params: initial physical parameters of the controller's model
    :param horizon: MPC horizon (default the task's)
    :param max_iter: iLQR iteration cap (default the task's)
    :param tol: iLQR step tolerance (default the task's)
    :param extra: other :class:`ControllerSpec` fields (``config`` is merged with
        ``max_iter`` / ``tol``)
    """
    config = extra.pop("config", None) or {}
    config = dataclasses.asdict(config) if isinstance(config, ILQRConfig) else dict(config)
    if max_iter is not None:
        config["max_iter"] = max_iter
    if tol is not None:
        config["tol"] = tol
    return ControllerSpec(task=task, model_params=dict(model_params or {}), horizon=horizon,
                          config=config, grad=grad, **extra)
