"""Stable-Baselines3 policies whose actor is a differentiable iLQR controller (DiLQR).

The actor maps an observation to ``x0 = obs_to_state(obs)`` and solves the model-predictive
problem with :class:`dilqr_rl.DiLQR`; the first control ``u_0`` of the plan is the action (the
mean of PPO's Gaussian, the pre-squash mean of SAC, TD3's deterministic action). Gradients of
the RL loss reach the controller through the exact fixed-point gradient (``grad="implicit"``,
default), DiffMPC's ``"last_lqr"`` or ``"unroll"``.

==================================== ============================================================
class                                algorithm
==================================== ============================================================
:class:`DiLQRActorCriticPolicy`      PPO, A2C: Gaussian mean = DiLQR, learnable ``log_std``,
                                     MLP critic
:class:`DiLQRSACPolicy`              SAC: tanh-squashed Gaussian around the DiLQR control,
                                     state-dependent ``log_std`` from a small MLP
:class:`DiLQRTD3Policy`              TD3 (and DDPG): deterministic DiLQR actor
==================================== ============================================================

**The controller spec** (policy keyword ``controller``) is plain, picklable data, so
``model.save`` / ``PPO.load(path)`` rebuild the policy in a fresh process without
``custom_objects``; learned parameters come back through the state dict::

    controller = {
        "env_id": "dilqr_rl/Pendulum-v0",   # model class, task cost, dt and bounds come from here
        "model_params": {"g": 6.0},         # initial physical parameters (others: env default)
        "horizon": 15,
        "config": {"max_iter": 15, "tol": 1e-6},   # ILQRConfig fields (or an ILQRConfig)
        "grad": "implicit",
    }

Optional keys: ``"model"`` (name of a :class:`dilqr_rl.Dynamics` class in ``dilqr_rl``;
default the env's), ``"cost_params"`` (initial cost parameter values by name, default the env's
``task_cost()``), ``"dt"``, ``"u_lower"`` / ``"u_upper"`` (default the model's bounds),
``"dtype"`` (``"float64"``, default, or ``"float32"``).

**What is learned** (keyword ``learn``): ``"dynamics"`` (the model's physical parameters),
``"cost"`` (weights, goal, ...), ``"both"``, or ``"cost_net"``: a small MLP maps the state to
per-observation cost parameters (weights multiplied by ``exp(out)``, other parameters shifted by
``out``; the last layer starts at zero, so the initial controller is the task cost's). Combine
with ``+``, e.g. ``"dynamics+cost_net"``.

**Observations to states.** ``obs_to_state`` (default: the observation is the state) is a
callable or a name registered with :func:`register_obs_to_state`; a saved model stores the
name and the function is looked up in :data:`OBS_TO_STATE` when the model is loaded (register
it first). A model file cannot name a module to import.

**Precision.** Observations are float32; the controller solves in float64 (default) because the
implicit gradient is only as good as the fixed point, and iLQR's line search stalls at float32
rounding (docs/pitfalls.md, "Convergence precision"). The observation is cast to the solve
dtype and the action back to float32.

**Actions.** The env's action box ``[a_lo, a_hi]`` and the controller's box ``[u_lo, u_hi]`` are
matched affinely, ``a = a_lo + (u - u_lo) (a_hi - a_lo) / (u_hi - u_lo)`` (``a = u / u_max`` for
the normalized ``dilqr_rl`` envs), in ``predict`` and in the Gaussian mean alike.

**Warm starts.** During rollouts (policy in eval mode, sequential envs) each solve starts from
the previous plan of the same env shifted by one step; a sample whose observation is far from
the plan's predicted next state (episode reset, a different env) starts from zeros instead. On
shuffled training minibatches the sequential shift is meaningless and is never used; instead
each observation seen in a rollout keeps its plan in a bounded cache (``plan_cache``), so that
the training solve starts where the rollout solve ended and PPO's probability ratio compares
the same local optimum. Observations not in the cache start from zeros.

**Unconverged solves.** Rollouts use a small iteration cap (default ``max_iter=15``), so some
solves stop before convergence. The layer's per-call ``RuntimeWarning`` is suppressed here (it
would fire every step); instead the actor counts them (``DiLQRActor.stats``, logged by
:class:`DiLQRLoggingCallback` as ``dilqr/unconverged_frac``) and emits one ``UserWarning`` the
first time. With ``on_unconverged="warn"`` (default here) their gradient is taken at the last
iterate, which is not a fixed point: an approximation. With ``on_unconverged="detach"`` they get
no gradient (a zero contribution, counted in the same statistic).

**System identification.** :class:`SystemIdCallback` (``dilqr-rl train --sysid-every N``)
also fits the physical parameters to the one-step transitions the agent collects, a supervised
signal that the RL loss lacks (it is zero at saturated first controls); it works with all four
algorithms.

**Threads.** SB3 on small problems is slowed down a lot by intra-op parallelism on tiny
matrices (docs/pitfalls.md, "Threads"); call :func:`configure_threads`
(``torch.set_num_threads(1)``) once per process, as ``dilqr_rl.agents.rl`` does.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.sac.policies import Actor as SACActor
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import Actor as TD3Actor
from stable_baselines3.td3.policies import TD3Policy
from torch import Tensor, nn

import dilqr_rl as dl

__all__ = [
    "DiLQRActor", "DiLQRActorCriticPolicy", "DiLQRLoggingCallback", "DiLQRSACActor",
    "DiLQRSACPolicy", "DiLQRTD3Actor", "DiLQRTD3Policy", "LEARN_OPTIONS", "ScaledAdam",
    "OBS_TO_STATE", "SystemIdCallback",
    "build_controller", "configure_threads", "controller_spec", "dilqr_actor", "env_class",
    "physical_params", "register_obs_to_state",
]

LEARN_OPTIONS = ("dynamics", "cost", "cost_net")
_DEFAULT_CONFIG = {"max_iter": 15, "tol": 1e-6, "on_unconverged": "warn"}
#: lower bound of learned tracking-cost weights (:class:`ScaledAdam`)
WEIGHT_FLOOR = 1e-6
#: positive physical parameters stay >= this fraction of their initial value
PARAM_FLOOR = 0.01
#: SAC's pre-squash mean is ``atanh((1 - SQUASH_EPS) a)``; see :class:`DiLQRSACPolicy`
SQUASH_EPS = 1e-3


def configure_threads(n: int = 1) -> None:
    """``torch.set_num_threads(n)``: one thread is much faster for DiLQR's tiny batched
    matrices and avoids oversubscribing a small machine (SB3 envs run in the same process)."""
    torch.set_num_threads(int(n))


# ---------------------------------------------------------------------------- the controller
def env_class(env_id: str) -> type:
    """The env class registered under ``env_id`` (imported, not instantiated)."""
    entry = gym.spec(env_id).entry_point
    if not isinstance(entry, str):
        return entry  # type: ignore[return-value]
    module, name = entry.split(":")
    return getattr(importlib.import_module(module), name)


def controller_spec(env_id: str, model_params: Mapping[str, float] | None = None,
                    horizon: int = 15, max_iter: int = 15, tol: float = 1e-6,
                    grad: str = "implicit", **extra: Any) -> dict[str, Any]:
    """A plain-data controller spec (see the module docstring) for ``env_id``."""
    spec: dict[str, Any] = {"env_id": env_id, "model_params": dict(model_params or {}),
                            "horizon": int(horizon), "grad": grad,
                            "config": dict(_DEFAULT_CONFIG, max_iter=int(max_iter),
                                           tol=float(tol))}
    spec.update(extra)
    return spec


def _resolve_config(cfg: Any) -> dl.ILQRConfig:
    if cfg is None:
        return dl.ILQRConfig(**_DEFAULT_CONFIG)
    if isinstance(cfg, dl.ILQRConfig):
        return cfg
    return dl.ILQRConfig(**dict(_DEFAULT_CONFIG, **dict(cfg)))


def build_controller(spec: Mapping[str, Any]) -> dl.DiLQR:
    """Build the :class:`dilqr_rl.DiLQR` described by a controller spec.

    :param spec: see the module docstring; needs ``"env_id"`` or (``"model"`` and
        ``"cost_params"`` with the full cost)
    """
    spec = dict(spec)
    known = {"env_id", "model", "model_params", "cost_params", "horizon", "config", "grad",
             "dt", "u_lower", "u_upper", "dtype"}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"unknown controller spec key(s) {sorted(unknown)}; valid: "
                         f"{sorted(known)}")
    cls = env_class(spec["env_id"]) if spec.get("env_id") else None
    if spec.get("model"):
        model_cls = getattr(dl, spec["model"], None)
        if not (isinstance(model_cls, type) and issubclass(model_cls, dl.Dynamics)):
            raise ValueError(f"controller model {spec['model']!r} is not a dilqr_rl.Dynamics "
                             "class name (e.g. 'Pendulum', 'CartPole', 'Rocket')")
    elif cls is not None:
        model_cls = cls.dynamics_cls
    else:
        raise ValueError("the controller spec needs 'env_id' or 'model'")
    kw = dict(spec.get("model_params") or {})
    dt = spec.get("dt", getattr(cls, "default_dt", None))
    if dt is not None:
        kw["dt"] = float(dt)
    try:
        dyn = model_cls(**kw)
    except TypeError as e:
        raise ValueError(f"bad model_params {spec.get('model_params')} for "
                         f"{model_cls.__name__}: {e}") from None
    if cls is None:
        raise ValueError("a controller spec without 'env_id' is not supported yet: the cost "
                         "comes from the env's task_cost()")
    cost = cls.task_cost()
    with torch.no_grad():
        for k, v in (spec.get("cost_params") or {}).items():
            p = dict(cost.named_parameters()).get(k)
            if p is None:
                raise ValueError(f"unknown cost parameter {k!r}; the task cost has "
                                 f"{sorted(cost.param_shapes())}")
            p.copy_(torch.as_tensor(v, dtype=p.dtype).reshape(p.shape))
    dtype = {"float64": torch.float64, "float32": torch.float32}[spec.get("dtype", "float64")]
    return dl.DiLQR(dyn.to(dtype), cost.to(dtype), horizon=int(spec.get("horizon", 15)),
                    u_lower=spec.get("u_lower"), u_upper=spec.get("u_upper"),
                    config=_resolve_config(spec.get("config")),
                    grad=spec.get("grad", "implicit"))


def _parse_learn(learn: str) -> set[str]:
    parts = {"dynamics", "cost"} if learn == "both" else set(learn.split("+"))
    bad = parts - set(LEARN_OPTIONS)
    if not parts or bad:
        raise ValueError(f"learn must be 'dynamics', 'cost', 'both', 'cost_net' or a '+' "
                         f"combination of {LEARN_OPTIONS}, got {learn!r}")
    return parts


#: ``obs_to_state`` functions by name (:func:`register_obs_to_state`): the only ones a policy
#: or a saved model can name
OBS_TO_STATE: dict[str, Callable[[Tensor], Tensor]] = {}


def register_obs_to_state(name: str, fn: Callable[[Tensor], Tensor]) -> None:
    """Allow ``obs_to_state=name``: policies (and models loaded with ``PPO.load`` & co.,
    which store the name) map observations to states with ``fn``, ``(B, obs_dim) -> (B, n)``.

    Register before loading a model saved with that name. Names are looked up here only; a
    model file cannot make the policy import a module. (A callable passed directly is
    pickled into the saved model by SB3; pass its registered name instead.)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"obs_to_state name must be a non-empty str, got {name!r}")
    if not callable(fn):
        raise ValueError(f"obs_to_state function for {name!r} must be callable, got {fn!r}")
    OBS_TO_STATE[name] = fn


def _resolve_obs_to_state(v: Any) -> Callable[[Tensor], Tensor] | None:
    """``None``, a callable, or a registered name -> the callable (never imports)."""
    if v is None or callable(v):
        return v
    if isinstance(v, str):
        fn = OBS_TO_STATE.get(v)
        if fn is None:
            raise ValueError(
                f"obs_to_state {v!r} is not a registered name (registered: "
                f"{sorted(OBS_TO_STATE)}); call dilqr_rl.sb3.register_obs_to_state({v!r}, fn) "
                "first (also before loading a saved model), or pass the callable. Module paths "
                "are not imported: a model file must not choose code to run")
        return fn
    raise ValueError(f"obs_to_state must be None, a callable or a registered name, got {v!r}")


class DiLQRActor(nn.Module):
    """Observation ``(B, obs_dim)`` -> action ``(B, m)`` (float32): the first control of a
    DiLQR solve, mapped to the action box.

    :param controller: controller spec (module docstring)
    :param action_space: the env's ``Box``; ``unit=True`` maps to ``[-1, 1]`` instead (SAC/TD3)
    :param learn: ``"dynamics"``, ``"cost"``, ``"both"``, ``"cost_net"`` or a ``+`` combination
    :param cost_net_arch: hidden sizes of the ``cost_net``
    :param obs_to_state: ``None`` (identity), a callable ``(B, obs_dim) -> (B, n)`` or the
        name it was registered under (:func:`register_obs_to_state`)
    :param plan_cache: number of rollout plans kept for training-time warm starts (0: off)
    :param warm_tol: keep a sequential warm start when ``|x0 - x1_pred|_inf <= warm_tol (1 +
        |x1_pred|_inf)``
    """

    def __init__(self, controller: Mapping[str, Any], action_space: spaces.Box,
                 learn: str = "dynamics", cost_net_arch: tuple[int, ...] = (64, 64),
                 obs_to_state: str | Callable[[Tensor], Tensor] | None = None,
                 unit: bool = False, plan_cache: int = 100_000, warm_tol: float = 0.5):
        super().__init__()
        self.ctrl = build_controller(controller)
        self.learn = _parse_learn(learn)
        dyn, cost = self.ctrl.dynamics, self.ctrl.cost
        for p in dyn.parameters():
            p.requires_grad_("dynamics" in self.learn)
        for p in cost.parameters():
            p.requires_grad_("cost" in self.learn)
        self.dtype = next(dyn.parameters()).dtype
        self.obs_to_state = _resolve_obs_to_state(obs_to_state)
        n, m = self.ctrl.n_state, self.ctrl.n_ctrl
        self.cost_net: nn.Module | None = None
        self._cost_shapes = cost.param_shapes()
        if "cost_net" in self.learn:
            sizes = [n, *cost_net_arch]
            layers: list[nn.Module] = []
            for a, b in zip(sizes[:-1], sizes[1:], strict=True):
                layers += [nn.Linear(a, b), nn.Tanh()]
            last = nn.Linear(sizes[-1], sum(math.prod(s) for s in self._cost_shapes.values()))
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.cost_net = nn.Sequential(*layers, last).to(self.dtype)
        lo, hi = self.ctrl.bounds(1, self.dtype, "cpu")
        if lo is None or not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
            raise ValueError("the SB3 DiLQR actor needs finite control bounds (u_lower/u_upper)")
        a_lo = torch.as_tensor(action_space.low, dtype=self.dtype)
        a_hi = torch.as_tensor(action_space.high, dtype=self.dtype)
        if unit:
            a_lo, a_hi = -torch.ones_like(a_lo), torch.ones_like(a_hi)
        if a_lo.shape != (m,):
            raise ValueError(f"action space shape {action_space.shape} != controls ({m},)")
        self.register_buffer("u_lo", lo[0, 0].clone(), persistent=False)
        self.register_buffer("u_hi", hi[0, 0].clone(), persistent=False)
        self.register_buffer("a_lo", a_lo, persistent=False)
        self.register_buffer("a_hi", a_hi, persistent=False)
        self.sequential_warm_start = True
        self.warm_tol = float(warm_tol)
        self.plan_cache_size = int(plan_cache)
        self._plans: OrderedDict[bytes, Tensor] = OrderedDict()
        self._warm: tuple[Tensor, Tensor] | None = None
        self.stats = {"solves": 0, "unconverged": 0, "iterations": 0}
        self._warned = False

    # --------------------------------------------------------------- helpers
    def reset(self) -> None:
        """Forget the sequential warm start (e.g. before a new evaluation)."""
        self._warm = None

    def state(self, obs: Tensor) -> Tensor:
        """``x0 (B, n)`` in the solve dtype."""
        x = obs if self.obs_to_state is None else self.obs_to_state(obs)
        return x.to(self.dtype)

    def to_action(self, u: Tensor) -> Tensor:
        """Controls ``(..., m)`` -> actions in the action box (solve dtype)."""
        return self.a_lo + (u - self.u_lo) * (self.a_hi - self.a_lo) / (self.u_hi - self.u_lo)

    def cost_overrides(self, x0: Tensor) -> dict[str, Tensor]:
        """Per-observation cost parameters from ``cost_net`` (``{}`` without one)."""
        if self.cost_net is None:
            return {}
        out = self.cost_net(x0)
        base = self.ctrl.cost.params()
        res, i = {}, 0
        for k, s in self._cost_shapes.items():
            k_n = math.prod(s)
            o = out[:, i:i + k_n].reshape(-1, *s)
            i += k_n
            res[k] = base[k] * torch.exp(o.clamp(-5, 5)) if "weight" in k else base[k] + o
        return res

    def _init_plans(self, obs: Tensor, x0: Tensor) -> Tensor | None:
        B = x0.shape[0]
        T, m = self.ctrl.horizon, self.ctrl.n_ctrl
        init = torch.zeros(B, T, m, dtype=self.dtype, device=x0.device)
        hit = torch.zeros(B, dtype=torch.bool)
        if self.sequential_warm_start and not self.training and self._warm is not None:
            u_prev, x1 = self._warm
            if u_prev.shape[0] == B:
                ok = (x0 - x1).abs().amax(-1) <= self.warm_tol * (1 + x1.abs().amax(-1))
                init[ok] = u_prev[ok]
                hit |= ok.cpu()
        if self.plan_cache_size and len(self._plans) and not bool(hit.all()):
            keys = obs.detach().cpu().numpy()
            for i in range(B):
                if not hit[i]:
                    plan = self._plans.get(keys[i].tobytes())
                    if plan is not None:
                        init[i] = plan
                        hit[i] = True
        return init if bool(hit.any()) else None

    def _remember(self, obs: Tensor, sol: dl.Solution) -> None:
        u = sol.u.detach()
        if self.sequential_warm_start and not self.training:
            self._warm = (torch.cat([u[:, 1:], u[:, -1:]], 1), sol.x[:, 1].detach())
        if self.plan_cache_size:
            keys = obs.detach().cpu().numpy()
            for i in range(keys.shape[0]):
                self._plans[keys[i].tobytes()] = u[i]
            while len(self._plans) > self.plan_cache_size:
                self._plans.popitem(last=False)

    def solve(self, obs: Tensor) -> dl.Solution:
        """The DiLQR solution from the observations ``(B, obs_dim)``."""
        x0 = self.state(obs)
        u_init = self._init_plans(obs, x0)
        with warnings.catch_warnings():
            # counted and reported once below instead of a warning per call
            warnings.simplefilter("ignore", dl.UnconvergedWarning)
            sol = self.ctrl(x0, u_init=u_init, **self.cost_overrides(x0))
        bad = int((~sol.converged).sum())
        self.stats["solves"] += sol.converged.numel()
        self.stats["unconverged"] += bad
        self.stats["iterations"] += int(sol.iterations.sum())
        if bad and not self._warned and self.ctrl.config.tol > 0:
            self._warned = True
            what = ("get no gradient" if self.ctrl.config.on_unconverged == "detach" else
                    "are differentiated at their last iterate (approximate gradient)")
            warnings.warn(f"DiLQR actor: some solves stop at max_iter="
                          f"{self.ctrl.config.max_iter} before converging; they {what}. Counted "
                          "in DiLQRActor.stats / logged as dilqr/unconverged_frac; this warning "
                          "is shown once.", UserWarning, stacklevel=2)
        self._remember(obs, sol)
        return sol

    def forward(self, obs: Tensor) -> Tensor:
        """Actions ``(B, m)`` float32 from observations ``(B, obs_dim)``."""
        sol = self.solve(obs)
        return self.to_action(sol.u[:, 0]).to(torch.float32)


# ---------------------------------------------------------------------------- optimizer
class ScaledAdam(torch.optim.Adam):
    """Adam whose parameter groups may carry an ``lr_scale`` (default 1).

    SB3 sets every group's ``lr`` from its schedule before each update, so a group-specific
    learning rate must be a factor: the physical parameters (``g ~ 10``) need steps far larger
    than a network's weights (``controller_lr_scale`` of the policies).

    A group may also carry a ``lower`` bound (float): after each step its parameters are
    clamped to it (projected gradient). The policies put the tracking cost's ``weights`` and
    ``terminal_weights`` in such a group with ``lower = WEIGHT_FLOOR``: an RL update can
    otherwise push a control weight through zero, and the controller then refuses the
    non-convex cost (``ValueError``) in the middle of training. Likewise each physical
    parameter of a model with ``positive_params`` (all built-in models) stays above
    ``PARAM_FLOOR`` times its initial value: PPO alone drove a pendulum's length to -0.15.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        saved = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * g.get("lr_scale", 1.0)
        try:
            with torch.enable_grad():
                loss = super().step(closure)
            for g in self.param_groups:
                if g.get("lower") is not None:
                    for p in g["params"]:
                        p.clamp_(min=g["lower"])
            return loss
        finally:
            for g, lr in zip(self.param_groups, saved, strict=True):
                g["lr"] = lr


def _floor(p: nn.Parameter) -> float:
    """Lower bound of a positive physical parameter: ``PARAM_FLOOR`` times its current size."""
    return PARAM_FLOOR * float(p.detach().abs().max())


def _groups(params: list[tuple[str, nn.Parameter]], actor_prefix: str, scale: float,
            actor: DiLQRActor) -> list[dict[str, Any]]:
    """Optimizer groups: the rest, and the controller's parameters at ``lr * scale``, with a
    lower bound (:class:`ScaledAdam`) for cost weights and for positive physical parameters."""
    rest = [p for k, p in params if p.requires_grad and not k.startswith(actor_prefix)]
    ctrl = [(k, p) for k, p in params if p.requires_grad and k.startswith(actor_prefix)]
    positive = actor.ctrl.dynamics.positive_params
    groups: list[dict[str, Any]] = [{"params": rest}]
    other = []
    for k, p in ctrl:
        if k.endswith((".cost.weights", ".cost.terminal_weights")):
            groups.append({"params": [p], "lr_scale": float(scale), "lower": WEIGHT_FLOOR})
        elif positive and ".ctrl.dynamics." in k:
            groups.append({"params": [p], "lr_scale": float(scale), "lower": _floor(p)})
        else:
            other.append(p)
    if other:
        groups.insert(1, {"params": other, "lr_scale": float(scale)})
    return groups


_ACTOR_KW = ("controller", "learn", "cost_net_arch", "obs_to_state", "plan_cache")


def _check_flatten(kwargs: Mapping[str, Any]) -> None:
    fe = kwargs.get("features_extractor_class", FlattenExtractor)
    if fe is not FlattenExtractor:
        raise ValueError("DiLQR policies need features_extractor_class=FlattenExtractor: the "
                         "controller reads the observation itself (use obs_to_state to map it)")


# ---------------------------------------------------------------------------- PPO / A2C
class DiLQRActorCriticPolicy(ActorCriticPolicy):
    """PPO/A2C policy: the Gaussian's mean is DiLQR's first control; learnable state-independent
    ``log_std``; MLP critic (``net_arch=dict(pi=[], vf=[64, 64])``).

    :param controller: controller spec (module docstring), plain data
    :param learn: what the actor learns: ``"dynamics"``, ``"cost"``, ``"both"``,
        ``"cost_net"`` or a ``+`` combination
    :param cost_net_arch: hidden sizes of the cost network (``learn`` with ``cost_net``)
    :param obs_to_state: ``None`` (identity), a registered name
        (:func:`register_obs_to_state`) or a callable
    :param controller_lr_scale: the controller's parameters use ``lr * controller_lr_scale``
    :param plan_cache: rollout plans kept to warm-start training solves (0: off)
    :param log_std_init: initial ``log_std`` of the normalized action (default ``-1``)
    Other keywords as :class:`stable_baselines3.common.policies.ActorCriticPolicy`.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box,
                 lr_schedule: Callable[[float], float], controller: Mapping[str, Any],
                 learn: str = "dynamics", cost_net_arch: tuple[int, ...] = (64, 64),
                 obs_to_state: str | Callable[[Tensor], Tensor] | None = None,
                 controller_lr_scale: float = 30.0, plan_cache: int = 100_000,
                 net_arch: Any = None, log_std_init: float = -1.0, **kwargs: Any):
        if net_arch is None:
            net_arch = {"pi": [], "vf": [64, 64]}
        if not isinstance(net_arch, dict) or net_arch.get("pi"):
            raise ValueError("DiLQRActorCriticPolicy needs net_arch=dict(pi=[], vf=[...]): the "
                             "actor is the controller, only the critic has hidden layers")
        if kwargs.get("use_sde"):
            raise ValueError("use_sde is not supported by the DiLQR actor")
        _init_dilqr(self, kwargs, controller, learn, cost_net_arch, obs_to_state,
                    controller_lr_scale, plan_cache, adam_eps=1e-5)
        super().__init__(observation_space, action_space, lr_schedule, net_arch=net_arch,
                         log_std_init=log_std_init, **kwargs)

    def _build(self, lr_schedule: Callable[[float], float]) -> None:
        super()._build(lr_schedule)
        self.action_net = DiLQRActor(action_space=self.action_space, **self._dilqr_kwargs)
        self.optimizer = self.optimizer_class(
            _groups(list(self.named_parameters()), "action_net.", self.controller_lr_scale,
                    self.action_net),
            lr=lr_schedule(1), **self.optimizer_kwargs)

    @property
    def actor(self) -> DiLQRActor:
        """The DiLQR actor (``self.action_net``)."""
        return self.action_net  # type: ignore[return-value]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return _with_dilqr_kwargs(self, super()._get_constructor_parameters())


def _init_dilqr(policy: Any, kwargs: dict[str, Any], controller: Mapping[str, Any], learn: str,
                cost_net_arch: tuple[int, ...], obs_to_state: Any, controller_lr_scale: float,
                plan_cache: int, adam_eps: float | None = None) -> None:
    """The set-up every DiLQR policy shares (before SB3's ``__init__``): the controller's
    keywords as plain data (what ``_get_constructor_parameters`` saves) and Adam with a
    separate learning-rate factor for the controller's parameters."""
    _check_flatten(kwargs)
    _resolve_obs_to_state(obs_to_state)  # a bad name fails here, before SB3 builds anything
    if kwargs.get("optimizer_class") in (None, torch.optim.Adam):
        kwargs["optimizer_class"] = ScaledAdam
        if adam_eps is not None:
            kwargs["optimizer_kwargs"] = {"eps": adam_eps,
                                          **(kwargs.get("optimizer_kwargs") or {})}
    policy._dilqr_kwargs = {"controller": dict(controller), "learn": learn,
                            "cost_net_arch": tuple(cost_net_arch),
                            "obs_to_state": obs_to_state, "plan_cache": int(plan_cache)}
    policy.controller_lr_scale = float(controller_lr_scale)


def _with_dilqr_kwargs(policy: Any, data: dict[str, Any]) -> dict[str, Any]:
    data.update(policy._dilqr_kwargs, controller_lr_scale=policy.controller_lr_scale)
    return data


def _actor_optimizer(policy: Any, lr_schedule: Callable[[float], float]) -> None:
    """SAC / TD3: the actor's optimizer with the controller (``mu.``) in its own group."""
    policy.actor.optimizer = policy.optimizer_class(
        _groups(list(policy.actor.named_parameters()), "mu.", policy.controller_lr_scale,
                dilqr_actor(policy.actor)),
        lr=lr_schedule(1), **policy.optimizer_kwargs)


# ---------------------------------------------------------------------------- SAC
class DiLQRSACActor(SACActor):
    """SAC actor: tanh-squashed Gaussian whose deterministic action is DiLQR's first control.

    **Squashing.** The controller enforces the box itself, so its normalized first control
    ``a`` already lies in ``[-1, 1]``. The pre-squash mean is ``mu = atanh((1 - eps) a)``,
    ``eps = 1e-3``: then ``tanh(mu) = (1 - eps) a`` and ``d tanh(mu) / da = 1 - eps``, so the
    squash neither moves the action nor attenuates its gradient, even at the bounds (a plain
    ``atanh(a)`` would be infinite there; a network mean followed by ``tanh`` saturates). The
    remaining zero is physical: a first control on its bound has ``du_0/dtheta = 0`` (the
    box-constrained optimum does not move with the parameters, the active set is held), and SAC
    still gets the gradient of the later free controls through the plan. Deterministic actions
    are ``a`` exactly; exploration noise is added before the squash with a state-dependent
    ``log_std`` (a small MLP, ``net_arch``).
    """

    def __init__(self, *args: Any, dilqr: Mapping[str, Any], **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.use_sde:
            raise ValueError("use_sde is not supported by the DiLQR actor")
        self.mu = DiLQRActor(action_space=self.action_space, unit=True, **dilqr)

    def get_action_dist_params(self, obs: Any) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        features = self.extract_features(obs, self.features_extractor)
        a = self.mu(features)
        mean = torch.atanh((1 - SQUASH_EPS) * a)
        log_std = self.log_std(self.latent_pi(features)).clamp(-20, 2)  # type: ignore[operator]
        return mean, log_std, {}

    def forward(self, obs: Any, deterministic: bool = False) -> Tensor:
        if deterministic:
            return self.mu(self.extract_features(obs, self.features_extractor))
        return super().forward(obs, deterministic=False)


class DiLQRSACPolicy(SACPolicy):
    """SAC policy with a DiLQR actor (:class:`DiLQRSACActor`) and SB3's MLP critics.

    Keywords ``controller``, ``learn``, ``cost_net_arch``, ``obs_to_state``,
    ``controller_lr_scale``, ``plan_cache`` as :class:`DiLQRActorCriticPolicy`; ``net_arch``
    (default ``dict(pi=[64], qf=[256, 256])``): ``pi`` is the ``log_std`` network.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box,
                 lr_schedule: Callable[[float], float], controller: Mapping[str, Any],
                 learn: str = "dynamics", cost_net_arch: tuple[int, ...] = (64, 64),
                 obs_to_state: str | Callable[[Tensor], Tensor] | None = None,
                 controller_lr_scale: float = 30.0, plan_cache: int = 100_000,
                 net_arch: Any = None, **kwargs: Any):
        _init_dilqr(self, kwargs, controller, learn, cost_net_arch, obs_to_state,
                    controller_lr_scale, plan_cache)
        super().__init__(observation_space, action_space, lr_schedule,
                         net_arch=net_arch or {"pi": [64], "qf": [256, 256]}, **kwargs)

    def make_actor(self, features_extractor: Any = None) -> DiLQRSACActor:
        kw = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return DiLQRSACActor(**kw, dilqr=self._dilqr_kwargs).to(self.device)

    def _build(self, lr_schedule: Callable[[float], float]) -> None:
        super()._build(lr_schedule)
        _actor_optimizer(self, lr_schedule)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return _with_dilqr_kwargs(self, super()._get_constructor_parameters())


# ---------------------------------------------------------------------------- TD3
class DiLQRTD3Actor(TD3Actor):
    """TD3 actor: the action is DiLQR's normalized first control (``[-1, 1]``, no ``tanh``:
    the controller's box is the bound, so no squashing can saturate; a first control on its
    bound has zero gradient w.r.t. the parameters, see :class:`DiLQRSACActor`)."""

    def __init__(self, *args: Any, dilqr: Mapping[str, Any], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.mu = DiLQRActor(action_space=self.action_space, unit=True, **dilqr)


class DiLQRTD3Policy(TD3Policy):
    """TD3 policy with a DiLQR actor; the target actor never uses sequential warm starts (it
    sees replay minibatches) but shares the actor's plan cache.

    Keywords as :class:`DiLQRSACPolicy`; ``net_arch`` default ``dict(pi=[], qf=[256, 256])``.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box,
                 lr_schedule: Callable[[float], float], controller: Mapping[str, Any],
                 learn: str = "dynamics", cost_net_arch: tuple[int, ...] = (64, 64),
                 obs_to_state: str | Callable[[Tensor], Tensor] | None = None,
                 controller_lr_scale: float = 30.0, plan_cache: int = 100_000,
                 net_arch: Any = None, **kwargs: Any):
        _init_dilqr(self, kwargs, controller, learn, cost_net_arch, obs_to_state,
                    controller_lr_scale, plan_cache)
        super().__init__(observation_space, action_space, lr_schedule,
                         net_arch=net_arch or {"pi": [], "qf": [256, 256]}, **kwargs)

    def make_actor(self, features_extractor: Any = None) -> DiLQRTD3Actor:
        kw = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return DiLQRTD3Actor(**kw, dilqr=self._dilqr_kwargs).to(self.device)

    def _build(self, lr_schedule: Callable[[float], float]) -> None:
        super()._build(lr_schedule)
        _actor_optimizer(self, lr_schedule)
        target: DiLQRActor = self.actor_target.mu  # type: ignore[assignment]
        target.sequential_warm_start = False
        target._plans = self.actor.mu._plans  # type: ignore[union-attr]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return _with_dilqr_kwargs(self, super()._get_constructor_parameters())


# ---------------------------------------------------------------------------- logging
def dilqr_actor(policy: nn.Module) -> DiLQRActor:
    """The :class:`DiLQRActor` inside any of the three policies."""
    for mod in policy.modules():
        if isinstance(mod, DiLQRActor):
            return mod
    raise ValueError(f"{type(policy).__name__} has no DiLQR actor")


class DiLQRLoggingCallback(BaseCallback):
    """Logs the controller's physical parameters (``dilqr/<name>``), the fraction of
    unconverged solves and the mean iteration count at every rollout end / ``log_every``
    steps."""

    def __init__(self, log_every: int = 1000, verbose: int = 0):
        super().__init__(verbose)
        self.log_every = int(log_every)
        self._last = 0

    def _record(self) -> None:
        actor = dilqr_actor(self.model.policy)
        dyn = actor.ctrl.dynamics
        for name, v in zip(dyn.param_names(), dyn.theta().detach().tolist(), strict=True):
            self.logger.record(f"dilqr/{name}", v)
        s = actor.stats
        if s["solves"]:
            self.logger.record("dilqr/unconverged_frac", s["unconverged"] / s["solves"])
            self.logger.record("dilqr/mean_iterations", s["iterations"] / s["solves"])
            for k in s:
                s[k] = 0

    def _on_rollout_end(self) -> None:
        self._record()

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last >= self.log_every:
            self._last = self.num_timesteps
            self._record()
        return True


def physical_params(policy: nn.Module) -> dict[str, float]:
    """The controller's current physical parameters by name."""
    dyn = dilqr_actor(policy).ctrl.dynamics
    return dict(zip(dyn.param_names(), dyn.theta().detach().tolist(), strict=True))



class SystemIdCallback(BaseCallback):
    """Fits the DiLQR actor's physical parameters to the transitions the agent observes.

    The RL loss reaches the model only through the return, and a first control on its bound
    carries no gradient, so physical parameters learned by RL alone move slowly and can drift
    to any model that happens to act well. Every transition ``(s, a, s')`` the algorithm
    collects is also a supervised label for the model: this callback keeps them (a ring buffer
    of ``capacity``) and every ``every`` env steps takes ``steps`` Adam steps on the one-step
    prediction error

        ``L(theta) = mean_i sum_j ((f(x_i, u_i; theta) - x'_i)_j / s_j)^2``

    with ``x = obs_to_state(obs)``, ``u`` the executed (clipped) action mapped to the
    controller's box, and ``s_j`` the standard deviation of ``x'_j - x_j`` over the buffer (so
    that every state coordinate counts). It works with PPO, A2C, SAC and TD3 alike (it reads
    the env step from the callback's locals, and an episode's last observation from
    ``infos[i]["terminal_observation"]``). The fit runs before the algorithm's own update of
    the same step, and before any callback listed after it, so an evaluation at step ``t``
    sees a model fitted to the first ``t`` transitions only.

    Logged: ``sysid/loss`` (after each fit) and ``sysid/transitions``; :attr:`history` keeps
    the loss before and after every fit.

    :param every: env steps between fits
    :param steps: Adam steps per fit (full batch, or ``batch_size`` samples per step)
    :param lr: Adam learning rate (the parameters are the model's own, e.g. ``g``, ``m``,
        ``l``)
    :param capacity: transitions kept (oldest dropped)
    :param batch_size: transitions per Adam step (``0``: all)
    """

    def __init__(self, every: int = 128, steps: int = 200, lr: float = 0.02,
                 capacity: int = 100_000, batch_size: int = 0, verbose: int = 0):
        super().__init__(verbose)
        if every < 1 or steps < 1 or capacity < 1:
            raise ValueError(f"every, steps and capacity must be >= 1, got {every}, {steps}, "
                             f"{capacity}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.every, self.steps, self.lr = int(every), int(steps), float(lr)
        self.capacity, self.batch_size = int(capacity), int(batch_size)
        self._x: Tensor | None = None
        self._u: Tensor | None = None
        self._y: Tensor | None = None
        self._n = 0  # transitions stored (<= capacity)
        self._i = 0  # next write position
        self._since = 0
        self._opt: torch.optim.Optimizer | None = None
        self.history: list[dict[str, float]] = []

    def _on_training_start(self) -> None:
        self.actor = dilqr_actor(self.model.policy)
        space = self.model.action_space
        if not isinstance(space, spaces.Box):
            raise TypeError(f"SystemIdCallback needs a Box action space, got {space}")
        self._a_lo = torch.as_tensor(space.low, dtype=self.actor.dtype)
        self._a_hi = torch.as_tensor(space.high, dtype=self.actor.dtype)

    def _store(self, x: Tensor, u: Tensor, y: Tensor) -> None:
        if self._x is None:
            self._x = x.new_zeros(self.capacity, x.shape[-1])
            self._u = u.new_zeros(self.capacity, u.shape[-1])
            self._y = y.new_zeros(self.capacity, y.shape[-1])
        assert self._u is not None and self._y is not None
        rows = (self._i + torch.arange(x.shape[0])) % self.capacity  # n_envs rows per env step
        self._x[rows], self._u[rows], self._y[rows] = x, u, y
        self._i = (self._i + x.shape[0]) % self.capacity
        self._n = min(self._n + x.shape[0], self.capacity)

    def _on_step(self) -> bool:
        loc = self.locals
        act = loc.get("clipped_actions", loc.get("actions"))
        if act is None or "new_obs" not in loc:
            raise RuntimeError("SystemIdCallback: the algorithm's locals have no actions/new_obs")
        obs = self.model._last_obs  # the observation the action was taken in
        new_obs = loc["new_obs"].copy()
        for k, done in enumerate(loc["dones"]):
            if done and "terminal_observation" in loc["infos"][k]:
                new_obs[k] = loc["infos"][k]["terminal_observation"]
        a = self.actor
        with torch.no_grad():
            x = a.state(torch.as_tensor(obs))
            y = a.state(torch.as_tensor(new_obs))
            act_t = torch.as_tensor(act, dtype=a.dtype).reshape(x.shape[0], -1)
            act_t = torch.maximum(torch.minimum(act_t, self._a_hi), self._a_lo)
            u = a.u_lo + (act_t - self._a_lo) * (a.u_hi - a.u_lo) / (self._a_hi - self._a_lo)
        self._store(x, u, y)
        self._since += x.shape[0]
        if self._since >= self.every:
            self._since = 0
            self.fit()
        return True

    def fit(self) -> dict[str, float]:
        """``steps`` Adam steps on the stored transitions; returns the losses before and
        after. A step that makes the loss non-finite is undone and ends the fit."""
        assert self._x is not None and self._u is not None and self._y is not None
        dyn = self.actor.ctrl.dynamics
        params = list(dyn.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        if self._opt is None:
            # ScaledAdam's lower bounds keep positive physical parameters positive, as in the
            # policies' own optimizers
            self._opt = ScaledAdam(
                [{"params": [p], "lower": _floor(p) if dyn.positive_params else None}
                 for p in params], lr=self.lr)
        x, u, y = self._x[:self._n], self._u[:self._n], self._y[:self._n]
        scale = (y - x).std(0).clamp_min(1e-6) if self._n > 1 else torch.ones_like(x[0])
        gen = torch.Generator().manual_seed(self._n)

        def loss_fn(idx: Tensor | None = None) -> Tensor:
            xs, us, ys = (x, u, y) if idx is None else (x[idx], u[idx], y[idx])
            return (((dyn.step(xs, us, dyn.theta()) - ys) / scale) ** 2).sum(-1).mean()

        try:
            with torch.no_grad():
                before = float(loss_fn())
            for _ in range(self.steps):
                idx = (torch.randint(self._n, (self.batch_size,), generator=gen)
                       if 0 < self.batch_size < self._n else None)
                saved = [p.detach().clone() for p in params]
                self._opt.zero_grad()
                loss = loss_fn(idx)
                loss.backward()
                self._opt.step()
                if not all(bool(torch.isfinite(p).all()) for p in params):
                    with torch.no_grad():
                        for p, s in zip(params, saved, strict=True):
                            p.copy_(s)
                    break
            with torch.no_grad():
                after = float(loss_fn())
        finally:
            for p, f in zip(params, flags, strict=True):
                p.requires_grad_(f)
                p.grad = None
        rec = {"timesteps": float(self.num_timesteps), "loss_before": before,
               "loss_after": after, "transitions": float(self._n)}
        self.history.append(rec)
        self.logger.record("sysid/loss", after)
        self.logger.record("sysid/transitions", self._n)
        return rec
