"""Expert data for imitation learning (DiLQR paper section 5.2, DiffMPC's ``imitation_nonconvex``).

An *expert* is the iLQR controller with the true dynamics parameters and the true cost, solved
to tight convergence (``tol = 1e-10``) from zero controls, from random initial states. A data
set holds ``N = n_train + n_val + n_test`` such open-loop trajectories:

- ``x (N, T+1, n)`` expert states, ``u (N, T, m)`` expert controls (float64);
- the true dynamics parameters ``theta (p,)``, the true cost ``weights (n+m,)`` and
  ``goal (n+m,)`` (tracking form ``1/2 sum_i w_i (z_i - goal_i)^2``, terminal weights
  ``weights[:n]``), the control bounds, the horizon, the seed and the solver settings.

Splits are contiguous: ``[0, n_train)`` train, then val, then test; a run with a smaller
training set uses the first ``n`` training trajectories, so the 10 / 50 / 100 sets are nested.

Environments (``ENVS``), following DiffMPC's ``il_env.py`` and ``mpc.pytorch``'s true costs:

========== ========================= ================================ ========= ===========
env        true theta                cost weights / goal over [x; u]  bounds    T
========== ========================= ================================ ========= ===========
pendulum   (g, m, l) = (10, 1, 1)    (1, 1, 0.1, 0.001) / (1, 0, 0, 0) |u| <= 2  20
cartpole   (g, mc, mp, l) =          (0.1, 0.1, 1, 1, 0.1, 0.001) /    |u| <= 100 20
           (9.8, 1, 0.1, 0.5)        (0, 0, 1, 0, 0, 0)
rocket     (Jx, Jy, Jz, m, l) =      r 1, v 0.1, q 1, w 0.1, T 0.01 /  |T_i| <= 20 40
           (0.5, 1, 1, 1, 1)         q = (1, 0, 0, 0), T = (10, 0, 0)
========== ========================= ================================ ========= ===========

The bounds are the models' (and ``mpc.pytorch``'s ``PendulumDx`` / ``CartpoleDx``) defaults,
which DiffMPC's imitation experiment used (``u_lower=true_dx.lower``). Initial states are
DiffMPC's: pendulum ``th ~ U(-pi/2, pi/2)``, ``thdot ~ U(-1, 1)``; cartpole ``x, xdot ~
U(-0.5, 0.5)``, ``th ~ U(-pi, pi)``, ``thdot ~ U(-1, 1)``; rocket (ours) position ``r ~ U([3, 8],
[-3, 3], [-3, 3])``, velocity ``~ U(-0.5, 0.5)^3``, tilt up to 0.3 rad, rate ``~ U(-0.1, 0.1)^3``.

The initial guesses for dynamics learning are DiffMPC's: pendulum ``(15, 3, 0.5)``, cartpole
``(9.8, 3, 0.1, 1)``; rocket (ours) ``(1, 2, 0.5, 2, 0.5)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import dilqr_rl as dl

__all__ = ["ENVS", "EnvSpec", "ExpertData", "env_spec", "make_expert_data", "sample_x0"]

ENVS = ("pendulum", "cartpole", "rocket")
F64 = torch.float64
_ARRAYS = ("x", "u", "theta", "weights", "goal")
_META = ("env", "n_train", "n_val", "n_test", "seed", "config")


@dataclass(frozen=True)
class EnvSpec:
    """Everything the imitation experiment needs to know about one environment.

    :ivar name: ``"pendulum"``, ``"cartpole"`` or ``"rocket"``
    :ivar horizon: ``T``
    :ivar theta: true dynamics parameters ``(p,)``
    :ivar theta_init: DiffMPC-style initial guess for dynamics learning ``(p,)``
    :ivar param_names: names of the ``p`` parameters
    :ivar weights: true cost weights ``(n+m,)``
    :ivar goal: true cost goal ``(n+m,)``
    :ivar u_bound: ``|u_i| <= u_bound``
    """

    name: str
    horizon: int
    theta: tuple[float, ...]
    theta_init: tuple[float, ...]
    param_names: tuple[str, ...]
    weights: tuple[float, ...]
    goal: tuple[float, ...]
    u_bound: float

    def dynamics(self) -> dl.Dynamics:
        """A float64 model with the *true* parameters (frozen: learners pass ``params=``)."""
        cls = {"pendulum": dl.Pendulum, "cartpole": dl.CartPole, "rocket": dl.Rocket}[self.name]
        dyn = cls(**dict(zip(self.param_names, self.theta, strict=True))).double()
        return dyn.requires_grad_(False)

    def cost(self) -> dl.QuadraticCost:
        """The true tracking cost, float64, frozen (learners pass ``weights=``, ``goal=``)."""
        n = len(self.weights) - self.n_ctrl
        return dl.QuadraticCost.tracking(self.weights, self.goal, n_state=n).double() \
            .requires_grad_(False)

    @property
    def n_ctrl(self) -> int:
        return {"pendulum": 1, "cartpole": 1, "rocket": 3}[self.name]

    @property
    def n_state(self) -> int:
        return len(self.weights) - self.n_ctrl


def env_spec(name: str, u_bound: float | None = None) -> EnvSpec:
    """The :class:`EnvSpec` of ``name`` (one of :data:`ENVS`); ``u_bound`` overrides the
    control bound."""
    spec = _env_spec(name)
    return spec if u_bound is None else dataclasses.replace(spec, u_bound=float(u_bound))


def _env_spec(name: str) -> EnvSpec:
    if name == "pendulum":
        return EnvSpec("pendulum", 20, (10.0, 1.0, 1.0), (15.0, 3.0, 0.5), ("g", "m", "l"),
                       (1.0, 1.0, 0.1, 0.001), (1.0, 0.0, 0.0, 0.0), 2.0)
    if name == "cartpole":
        return EnvSpec("cartpole", 20, (9.8, 1.0, 0.1, 0.5), (9.8, 3.0, 0.1, 1.0),
                       ("g", "m_cart", "m_pole", "l"),
                       (0.1, 0.1, 1.0, 1.0, 0.1, 0.001), (0.0, 0.0, 1.0, 0.0, 0.0, 0.0), 100.0)
    if name == "rocket":
        w = [1.0] * 3 + [0.1] * 3 + [1.0] * 4 + [0.1] * 3 + [0.01] * 3
        goal = [0.0] * 6 + [1.0, 0.0, 0.0, 0.0] + [0.0] * 3 + [10.0, 0.0, 0.0]
        return EnvSpec("rocket", 40, (0.5, 1.0, 1.0, 1.0, 1.0), (1.0, 2.0, 0.5, 2.0, 0.5),
                       ("Jx", "Jy", "Jz", "m", "l"), tuple(w), tuple(goal), 20.0)
    raise ValueError(f"unknown env {name!r}; choose one of {ENVS}")


def sample_x0(name: str, n: int, gen: torch.Generator) -> Tensor:
    """``n`` random initial states ``(n, n_state)`` (float64), DiffMPC's distributions."""

    def unif(lo: float, hi: float, *shape: int) -> Tensor:
        return torch.rand(n, *shape, generator=gen, dtype=F64) * (hi - lo) + lo

    if name == "pendulum":
        th, dth = unif(-math.pi / 2, math.pi / 2), unif(-1.0, 1.0)
        return torch.stack([th.cos(), th.sin(), dth], -1)
    if name == "cartpole":
        x, dx = unif(-0.5, 0.5), unif(-0.5, 0.5)
        th, dth = unif(-math.pi, math.pi), unif(-1.0, 1.0)
        return torch.stack([x, dx, th.cos(), th.sin(), dth], -1)
    if name == "rocket":
        r = torch.stack([unif(3.0, 8.0), unif(-3.0, 3.0), unif(-3.0, 3.0)], -1)
        v = unif(-0.5, 0.5, 3)
        axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=F64), dim=-1)
        half = unif(0.0, 0.3) / 2
        q = torch.cat([half.cos()[:, None], half.sin()[:, None] * axis], -1)
        w = unif(-0.1, 0.1, 3)
        return torch.cat([r, v, q, w], -1)
    raise ValueError(f"unknown env {name!r}; choose one of {ENVS}")


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
        """Check every field against the environment's spec; a ``ValueError`` names the first
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
        spec = env_spec(self.env)
        T, n, m, p = spec.horizon, spec.n_state, spec.n_ctrl, len(spec.theta)
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
    """Solve the true problem from ``n_train + n_val + n_test`` random initial states.

    ``u_bound`` overrides the environment's control bound (stored in ``config``): with the
    pendulum's ``|u| <= 2`` most expert controls sit on the bound and carry no information
    about the model (their derivative is zero), see ``agents/imitation.py``.

    One batched solve from zero controls; a sample that does not converge is replaced by a
    fresh draw (at most 5 rounds), so every expert trajectory is a tight fixed point.
    """
    spec = env_spec(env, u_bound)
    gen = torch.Generator().manual_seed(seed)
    N = n_train + n_val + n_test
    cfg = dl.ILQRConfig(max_iter=max_iter, tol=tol, on_unconverged="detach")
    ctrl = dl.DiLQR(spec.dynamics(), spec.cost(), horizon=spec.horizon, u_lower=-spec.u_bound,
                    u_upper=spec.u_bound, config=cfg)
    x0 = sample_x0(env, N, gen)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.UnconvergedWarning)
        sol = ctrl(x0)
        x, u, ok = sol.x, sol.u, sol.converged
        for _ in range(5):
            if bool(ok.all()):
                break
            bad = torch.nonzero(~ok)[:, 0]
            x0b = sample_x0(env, len(bad), gen)
            s2 = ctrl(x0b)
            x, u, ok = x.clone(), u.clone(), ok.clone()
            x[bad], u[bad], ok[bad] = s2.x, s2.u, s2.converged
        if not bool(ok.all()):
            raise RuntimeError(f"{env}: {int((~ok).sum())} expert solves did not converge")
    config = dict(horizon=spec.horizon, u_bound=spec.u_bound, tol=tol, max_iter=max_iter,
                  param_names=list(spec.param_names), solver="dilqr_rl.DiLQR from zeros")
    return ExpertData(env=env, x=x.detach().clone(), u=u.detach().clone(),
                      theta=torch.tensor(spec.theta, dtype=F64),
                      weights=torch.tensor(spec.weights, dtype=F64),
                      goal=torch.tensor(spec.goal, dtype=F64),
                      n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, config=config)
