"""Expert data for imitation learning (DiLQR paper section 5.2, DiffMPC's ``imitation_nonconvex``).

An *expert* is the iLQR controller with the true dynamics parameters and the true cost, solved
to tight convergence (``tol = 1e-10``) from zero controls, from random initial states. A data
set holds ``N = n_train + n_val + n_test`` such open-loop trajectories:

- ``x (N, T+1, n)`` expert states, ``u (N, T, m)`` expert controls (float64);
- the true dynamics parameters ``theta (p,)``, the true cost ``weights (n+m,)`` and
  ``goal (n+m,)`` (a :class:`dilqr_rl.tasks.Tracking` cost ``sum_i w_i (z_i - goal_i)^2``,
  terminal weights ``weights[:n]``), the control bound, the horizon, the seed and the solver
  settings.

Splits are contiguous: ``[0, n_train)`` train, then val, then test; a run with a smaller
training set uses the first ``n`` training trajectories, so the 10 / 50 / 100 sets are nested.

Everything about a system comes from its :mod:`dilqr_rl.tasks` entry: the true parameters
(``task.params``), the expert's cost (``task.demo_tracking()``), the control bound
(``task.u_upper``), the horizon (``task.demo_horizon``), the start distribution
(``task.demo_starts``) and the learners' initial guess (``task.learn_init``). :data:`ENVS` are
the registered tasks that have a tracking cost for imitation.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import dilqr_rl as dl
from dilqr_rl import tasks
from dilqr_rl.tasks import Task

__all__ = ["ENVS", "ExpertData", "control_bound", "demo_controller", "make_expert_data"]

F64 = torch.float64
_ARRAYS = ("x", "u", "theta", "weights", "goal")
_META = ("env", "n_train", "n_val", "n_test", "seed", "config")


def _has_demo_cost(task: Task) -> bool:
    try:
        task.demo_tracking()
    except ValueError:
        return False
    return True


#: the tasks imitation runs on: those with a tracking cost for the expert
ENVS: tuple[str, ...] = tuple(n for n in tasks.names() if _has_demo_cost(tasks.get(n)))


def control_bound(task: Task | str, u_bound: float | None = None) -> float:
    """The bound ``b`` of the imitation box ``|u_i| <= b``: ``u_bound`` if given, else the
    task's (which must be symmetric and the same for every control)."""
    task = tasks.get(task)
    if u_bound is not None:
        return float(u_bound)
    lo, hi = task.u_lower, task.u_upper
    if not isinstance(hi, (int, float)) or not isinstance(lo, (int, float)) or lo != -hi:
        raise ValueError(f"task {task.name!r}: imitation needs a symmetric scalar control bound, "
                         f"the task has [{lo}, {hi}]; pass u_bound")
    return float(hi)


def demo_controller(task: Task | str, u_bound: float | None = None, *, grad: str = "implicit",
                    **config: Any) -> dl.DiLQR:
    """The imitation experiment's controller: the task's true model and its expert tracking
    cost (:meth:`dilqr_rl.tasks.Task.demo_tracking`), float64 and frozen (learners pass
    ``params=`` or ``weights=`` / ``goal=``), horizon ``task.demo_horizon``, ``|u_i| <= b``
    (:func:`control_bound`).

    :param grad: the layer's gradient mode
    :param config: :class:`dilqr_rl.ILQRConfig` fields over the task's solver settings
    """
    task = tasks.get(task)
    b = control_bound(task, u_bound)
    dyn = task.dynamics(dtype=torch.float64).requires_grad_(False)
    cost = task.demo_tracking().cost(task.n_state).double().requires_grad_(False)
    return dl.DiLQR(dyn, cost, horizon=task.demo_horizon, u_lower=-b, u_upper=b,
                    config=task.config(**config), grad=grad)


@dataclass
class ExpertData:
    """Expert trajectories and what produced them.

    :ivar env: environment name
    :ivar x: expert states ``(N, T+1, n)``
    :ivar u: expert controls ``(N, T, m)``
    :ivar theta: true dynamics parameters ``(p,)``
    :ivar weights: true cost weights ``(n+m,)``
    :ivar goal: true cost goal ``(n+m,)``
    :ivar n_train: size of the training split (the first rows)
    :ivar n_val: size of the validation split (next rows)
    :ivar n_test: size of the test split (last rows)
    :ivar seed: seed of the initial-state sampler
    :ivar config: solver settings and anything else that reproduces the data (JSON-able)
    """

    env: str
    x: Tensor
    u: Tensor
    theta: Tensor
    weights: Tensor
    goal: Tensor
    n_train: int
    n_val: int
    n_test: int
    seed: int
    config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field against the environment's task; a ``ValueError`` names the first
        field that is wrong (what a file from elsewhere, or an edit, can get wrong: split sizes
        that do not add up to the trajectories, wrong state / control / horizon shapes,
        non-float64 or non-finite arrays, a ``config`` that is not a dict)."""
        if self.env not in ENVS:
            raise ValueError(f"expert data field 'env' must be one of {ENVS}, got {self.env!r}")
        for k in ("n_train", "n_val", "n_test", "seed"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or (k != "seed" and v < 0):
                raise ValueError(f"expert data field {k!r} must be an int"
                                 f"{'' if k == 'seed' else ' >= 0'}, got {v!r}")
        if not isinstance(self.config, dict):
            raise ValueError(f"expert data field 'config' must be a dict, got "
                             f"{type(self.config).__name__}: {self.config!r}")
        u_bound = self.config.get("u_bound")
        if u_bound is not None and (isinstance(u_bound, bool)
                                    or not isinstance(u_bound, (int, float))
                                    or not math.isfinite(u_bound) or u_bound <= 0):
            raise ValueError(f"expert data field config['u_bound'] must be a finite number > 0, "
                             f"got {u_bound!r}")
        task = tasks.get(self.env)
        T, n, m, p = task.demo_horizon, task.n_state, task.n_ctrl, len(task.params)
        for k in ("x", "u", "theta", "weights", "goal"):
            v = getattr(self, k)
            if not isinstance(v, Tensor):
                raise ValueError(f"expert data field {k!r} must be a tensor, got "
                                 f"{type(v).__name__}")
            if v.dtype != F64:
                raise ValueError(f"expert data field {k!r} must be float64, got {v.dtype}")
        N = self.x.shape[0] if self.x.dim() == 3 else -1
        if self.x.dim() != 3 or tuple(self.x.shape[1:]) != (T + 1, n):
            what = (f"; its horizon is {self.x.shape[1] - 1}, the {self.env} learners use "
                    f"{T}" if self.x.dim() == 3 and self.x.shape[1] != T + 1 else "")
            raise ValueError(f"expert data field 'x' must have shape (N, T+1, n) = (N, {T + 1}, "
                             f"{n}) for {self.env}, got {tuple(self.x.shape)}{what}")
        if tuple(self.u.shape) != (N, T, m):
            raise ValueError(f"expert data field 'u' must have shape (N, T, m) = ({N}, {T}, {m}) "
                             f"for {self.env} (N from 'x'), got {tuple(self.u.shape)}")
        for k, shape in (("theta", (p,)), ("weights", (n + m,)), ("goal", (n + m,))):
            if tuple(getattr(self, k).shape) != shape:
                raise ValueError(f"expert data field {k!r} must have shape {shape} for "
                                 f"{self.env}, got {tuple(getattr(self, k).shape)}")
        for k in ("x", "u", "theta", "weights", "goal"):
            bad = int((~torch.isfinite(getattr(self, k))).sum())
            if bad:
                raise ValueError(f"expert data field {k!r} has {bad} non-finite value(s) (NaN "
                                 "or inf)")
        total = self.n_train + self.n_val + self.n_test
        if total != N:
            raise ValueError(f"expert data fields n_train + n_val + n_test = {self.n_train} + "
                             f"{self.n_val} + {self.n_test} = {total}, but the data holds {N} "
                             "trajectories")

    def split(self, name: str, n: int | None = None) -> tuple[Tensor, Tensor]:
        """``(x (N_s, T+1, n), u (N_s, T, m))`` of split ``"train"``, ``"val"`` or ``"test"``;
        ``n`` keeps the first ``n`` rows (training-set size)."""
        a = {"train": 0, "val": self.n_train, "test": self.n_train + self.n_val}[name]
        size = {"train": self.n_train, "val": self.n_val, "test": self.n_test}[name]
        if n is not None:
            if n > size:
                raise ValueError(f"asked for {n} {name} trajectories (n_{name}), the data has "
                                 f"{size}")
            size = n
        return self.x[a:a + size], self.u[a:a + size]

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``.npz`` atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(env=self.env, n_train=self.n_train, n_val=self.n_val, n_test=self.n_test,
                    seed=self.seed, config=self.config)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp.npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, x=self.x.numpy(), u=self.u.numpy(), theta=self.theta.numpy(),
                         weights=self.weights.numpy(), goal=self.goal.numpy(),
                         meta=np.array(json.dumps(meta)))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExpertData:
        """Read a file written by :meth:`save`; a ``ValueError`` names a missing or invalid
        field (see :meth:`validate`)."""
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("meta", *_ARRAYS) if k not in z.files]
            if missing:
                raise ValueError(f"{path}: expert data field(s) {missing} missing")
            try:
                meta = json.loads(str(z["meta"]))
            except ValueError as e:
                raise ValueError(f"{path}: expert data field 'meta' is not JSON: {e}") from None
            arrays = {}
            for k in _ARRAYS:
                a = z[k]
                if a.dtype.kind not in "fiub":
                    raise ValueError(f"{path}: expert data field {k!r} must be a float64 array, "
                                     f"got dtype {a.dtype}")
                arrays[k] = torch.from_numpy(a.copy())
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: expert data field 'meta' must be a JSON object, got "
                             f"{type(meta).__name__}")
        missing = [k for k in _META if k not in meta]
        if missing:
            raise ValueError(f"{path}: expert data field(s) {missing} missing from 'meta'")
        try:
            return cls(**{k: meta[k] for k in _META}, **arrays)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def make_expert_data(env: str, n_train: int = 100, n_val: int = 10, n_test: int = 10,
                     seed: int = 0, tol: float = 1e-10, max_iter: int = 1000,
                     u_bound: float | None = None) -> ExpertData:
    """Solve the true problem from ``n_train + n_val + n_test`` random initial states
    (``task.demo_starts``).

    ``u_bound`` overrides the task's control bound (stored in ``config``): with the
    pendulum's ``|u| <= 2`` most expert controls sit on the bound and carry no information
    about the model (their derivative is zero), see ``agents/learners.py``.

    One batched solve from zero controls; a sample that does not converge is replaced by a
    fresh draw (at most 5 rounds), so every expert trajectory is a tight fixed point.
    """
    if env not in ENVS:
        raise ValueError(f"unknown env {env!r}; choose one of {ENVS}")
    task = tasks.get(env)
    gen = torch.Generator().manual_seed(seed)
    ctrl = demo_controller(task, u_bound, max_iter=max_iter, tol=tol, on_unconverged="detach")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.UnconvergedWarning)
        sol = ctrl(task.demo_starts(gen, n_train + n_val + n_test))
        x, u, ok = sol.x, sol.u, sol.converged
        for _ in range(5):
            if bool(ok.all()):
                break
            bad = torch.nonzero(~ok)[:, 0]
            s2 = ctrl(task.demo_starts(gen, len(bad)))
            x, u, ok = x.clone(), u.clone(), ok.clone()
            x[bad], u[bad], ok[bad] = s2.x, s2.u, s2.converged
        if not bool(ok.all()):
            raise RuntimeError(f"{env}: {int((~ok).sum())} expert solves did not converge")
    tracking = task.demo_tracking()
    config = dict(horizon=task.demo_horizon, u_bound=control_bound(task, u_bound), tol=tol,
                  max_iter=max_iter, param_names=list(task.param_names),
                  solver="dilqr_rl.DiLQR from zeros")
    return ExpertData(env=env, x=x.detach().clone(), u=u.detach().clone(),
                      theta=task.theta(F64), weights=torch.tensor(tracking.weights, dtype=F64),
                      goal=torch.tensor(tracking.goal, dtype=F64),
                      n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, config=config)
