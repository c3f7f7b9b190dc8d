"""SB3 policies whose actor is a :class:`DiLQRActor`: PPO/A2C, SAC and TD3."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.sac.policies import Actor as SACActor
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import Actor as TD3Actor
from stable_baselines3.td3.policies import TD3Policy
from torch import Tensor, nn

from .actor import DiLQRActor, parse_learn
from .obs import resolve_obs_to_state
from .optim import ScaledAdam, param_groups
from .spec import ControllerSpec

__all__ = ["DiLQRActorCriticPolicy", "DiLQRSACActor", "DiLQRSACPolicy", "DiLQRTD3Actor",
           "DiLQRTD3Policy", "SQUASH_EPS"]

#: SAC's pre-squash mean is ``atanh((1 - SQUASH_EPS) a)``; see :class:`DiLQRSACActor`
SQUASH_EPS = 1e-3

Spec = ControllerSpec | Mapping[str, Any]
ObsToState = str | Callable[[Tensor], Tensor] | None


class _DiLQRPolicy:
    """The set-up every DiLQR policy shares: checks, the optimizer class, the actor's keywords
    and the constructor parameters SB3 saves (plain data: the spec as its dict)."""

    _dilqr_kwargs: dict[str, Any]
    controller_lr_scale: float

    def _setup_dilqr(self, kwargs: dict[str, Any], controller: Spec, learn: str,
                     cost_net_arch: tuple[int, ...], obs_to_state: ObsToState,
                     controller_lr_scale: float, plan_cache: int,
                     adam_eps: float | None = None) -> None:
        """Before SB3's ``__init__`` (which builds the actor): fail early on bad keywords,
        and use :class:`ScaledAdam` unless another optimizer class is given."""
        if kwargs.get("features_extractor_class", FlattenExtractor) is not FlattenExtractor:
            raise ValueError("DiLQR policies need features_extractor_class=FlattenExtractor: "
                             "the controller reads the observation itself (use obs_to_state "
                             "to map it)")
        if kwargs.get("use_sde"):
            raise ValueError("use_sde is not supported by the DiLQR actor")
        resolve_obs_to_state(obs_to_state)
        parse_learn(learn)
        if kwargs.get("optimizer_class") in (None, torch.optim.Adam):
            kwargs["optimizer_class"] = ScaledAdam
            if adam_eps is not None:
                kwargs["optimizer_kwargs"] = {"eps": adam_eps,
                                              **(kwargs.get("optimizer_kwargs") or {})}
        self._dilqr_kwargs = {"controller": ControllerSpec.coerce(controller), "learn": learn,
                              "cost_net_arch": tuple(cost_net_arch),
                              "obs_to_state": obs_to_state, "plan_cache": int(plan_cache)}
        self.controller_lr_scale = float(controller_lr_scale)

    def _dilqr_optimizer(self, module: nn.Module, actor: DiLQRActor,
                         lr_schedule: Callable[[float], float]) -> torch.optim.Optimizer:
        """The optimizer of ``module``'s parameters, the controller's in their own groups
        (:func:`param_groups`)."""
        return self.optimizer_class(  # type: ignore[attr-defined]
            param_groups(module.parameters(), actor, self.controller_lr_scale),
            lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[attr-defined]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(self._dilqr_kwargs, controller=self._dilqr_kwargs["controller"].to_dict(),
                    controller_lr_scale=self.controller_lr_scale)
        return data


class _OffPolicyDiLQR(_DiLQRPolicy):
    """SAC / TD3: the same keywords, and an actor class (``_actor_class``) whose ``mu`` is the
    DiLQR actor; ``net_arch`` defaults to ``_default_net_arch``."""

    _actor_class: type[nn.Module]
    _default_net_arch: dict[str, list[int]]

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box,
                 lr_schedule: Callable[[float], float], controller: Spec,
                 learn: str = "dynamics", cost_net_arch: tuple[int, ...] = (64, 64),
                 obs_to_state: ObsToState = None, controller_lr_scale: float = 30.0,
                 plan_cache: int = 100_000, net_arch: Any = None, **kwargs: Any):
        self._setup_dilqr(kwargs, controller, learn, cost_net_arch, obs_to_state,
                          controller_lr_scale, plan_cache)
        super().__init__(observation_space, action_space, lr_schedule,  # type: ignore[call-arg]
                         net_arch=net_arch or dict(self._default_net_arch), **kwargs)

    def make_actor(self, features_extractor: Any = None) -> nn.Module:
        kw = self._update_features_extractor(  # type: ignore[attr-defined]
            self.actor_kwargs, features_extractor)  # type: ignore[attr-defined]
        return self._actor_class(**kw, dilqr=self._dilqr_kwargs).to(
            self.device)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- PPO / A2C
class DiLQRActorCriticPolicy(_DiLQRPolicy, ActorCriticPolicy):
    """PPO/A2C policy: the Gaussian's mean is DiLQR's first control; learnable state-independent
    ``log_std``; MLP critic (``net_arch=dict(pi=[], vf=[64, 64])``).

    :param controller: :class:`ControllerSpec` or its dict (the dict keeps a saved model's
        ``policy_kwargs`` plain JSON; a spec is pickled there)
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
                 lr_schedule: Callable[[float], float], controller: Spec,
                 learn: str = "dynamics", cost_net_arch: tuple[int, ...] = (64, 64),
                 obs_to_state: ObsToState = None, controller_lr_scale: float = 30.0,
                 plan_cache: int = 100_000, net_arch: Any = None, log_std_init: float = -1.0,
                 **kwargs: Any):
        if net_arch is None:
            net_arch = {"pi": [], "vf": [64, 64]}
        if not isinstance(net_arch, dict) or net_arch.get("pi"):
            raise ValueError("DiLQRActorCriticPolicy needs net_arch=dict(pi=[], vf=[...]): the "
                             "actor is the controller, only the critic has hidden layers")
        self._setup_dilqr(kwargs, controller, learn, cost_net_arch, obs_to_state,
                          controller_lr_scale, plan_cache, adam_eps=1e-5)
        super().__init__(observation_space, action_space, lr_schedule, net_arch=net_arch,
                         log_std_init=log_std_init, **kwargs)

    def _build(self, lr_schedule: Callable[[float], float]) -> None:
        super()._build(lr_schedule)
        self.action_net = DiLQRActor(action_space=self.action_space, **self._dilqr_kwargs)
        self.optimizer = self._dilqr_optimizer(self, self.action_net, lr_schedule)

    @property
    def actor(self) -> DiLQRActor:
        """The DiLQR actor (``self.action_net``)."""
        return self.action_net  # type: ignore[return-value]


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


class DiLQRSACPolicy(_OffPolicyDiLQR, SACPolicy):
    """SAC policy with a DiLQR actor (:class:`DiLQRSACActor`) and SB3's MLP critics.

    Keywords ``controller``, ``learn``, ``cost_net_arch``, ``obs_to_state``,
    ``controller_lr_scale``, ``plan_cache`` as :class:`DiLQRActorCriticPolicy`; ``net_arch``
    (default ``dict(pi=[64], qf=[256, 256])``): ``pi`` is the ``log_std`` network.
    """

    _actor_class = DiLQRSACActor
    _default_net_arch = {"pi": [64], "qf": [256, 256]}

    def _build(self, lr_schedule: Callable[[float], float]) -> None:
        super()._build(lr_schedule)
        self.actor.optimizer = self._dilqr_optimizer(self.actor, self.actor.mu, lr_schedule)


# ---------------------------------------------------------------------------- TD3
class DiLQRTD3Actor(TD3Actor):
    """TD3 actor: the action is DiLQR's normalized first control (``[-1, 1]``, no ``tanh``:
    the controller's box is the bound, so no squashing can saturate; a first control on its
    bound has zero gradient w.r.t. the parameters, see :class:`DiLQRSACActor`)."""

    def __init__(self, *args: Any, dilqr: Mapping[str, Any], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.mu = DiLQRActor(action_space=self.action_space, unit=True, **dilqr)


class DiLQRTD3Policy(_OffPolicyDiLQR, TD3Policy):
    """TD3 policy with a DiLQR actor; the target actor never uses sequential warm starts (it
    sees replay minibatches) but shares the actor's plan cache.

    Keywords as :class:`DiLQRSACPolicy`; ``net_arch`` default ``dict(pi=[], qf=[256, 256])``.
    """

    _actor_class = DiLQRTD3Actor
    _default_net_arch = {"pi": [], "qf": [256, 256]}

    def _build(self, lr_schedule: Callable[[float], float]) -> None:
        super()._build(lr_schedule)
        self.actor.optimizer = self._dilqr_optimizer(self.actor, self.actor.mu, lr_schedule)
        target: DiLQRActor = self.actor_target.mu  # type: ignore[assignment]
        target.sequential_warm_start = False
        target.plans = self.actor.mu.plans  # type: ignore[union-attr]
