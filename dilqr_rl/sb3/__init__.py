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

Modules: :mod:`.spec` (the controller spec), :mod:`.actor` (:class:`DiLQRActor`),
:mod:`.warm_start` (its warm starts), :mod:`.optim` (:class:`ScaledAdam` and its groups),
:mod:`.policies`, :mod:`.callbacks` (logging, system identification), :mod:`.obs`
(observations to states).

**The controller spec** (policy keyword ``controller``) names a task of
:mod:`dilqr_rl.tasks`, which provides the model class, the task cost, ``dt``, the control box,
the default horizon and solver settings; the spec holds only the deviations::

    controller = controller_spec(
        "pendulum",                  # a task name, or its env's id "dilqr_rl/Pendulum-v0"
        {"g": 6.0},                  # initial physical parameters (others: the task's)
        horizon=15,                  # default: the task's
        max_iter=15, tol=1e-6,       # ILQRConfig fields; default: the task's solver settings
        grad="implicit",
    )

:class:`ControllerSpec` is frozen, picklable data; its other fields are ``cost_params``
(initial cost parameter values by name), ``dt``, ``u_lower`` / ``u_upper`` and ``dtype``
(``"float64"``, default, or ``"float32"``). Policies accept it or its dict
(:meth:`ControllerSpec.to_dict`; a dict keeps the saved model's ``policy_kwargs`` plain JSON),
and save the dict as their constructor parameter, so ``model.save`` / ``PPO.load(path)``
rebuild the policy in a fresh process without ``custom_objects``; learned parameters come
back through the state dict. Dicts in the format used before specs named a task (``"env_id"``
and optionally ``"model"``) still load (:meth:`ControllerSpec.coerce`).

**What is learned** (keyword ``learn``): ``"dynamics"`` (the model's physical parameters),
``"cost"`` (weights, goal, ...), ``"both"``, or ``"cost_net"``: a small MLP maps the state to
per-observation cost parameters (those the cost declares positive, e.g. weights, multiplied by
``exp(out)``, the others shifted by ``out``; the last layer starts at zero, so the initial
controller is the task cost's). Combine with ``+``, e.g. ``"dynamics+cost_net"``. The
optimizer (:class:`ScaledAdam`) steps the controller's parameters at ``lr *
controller_lr_scale`` and keeps each constrained one at or above the lower bound its model or
cost declares.

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

**Warm starts** (:mod:`.warm_start`). During rollouts (policy in eval mode, sequential envs)
each solve starts from the previous plan of the same env shifted by one step; a sample whose
observation is far from the plan's predicted next state (episode reset, a different env)
starts from zeros instead. On shuffled training minibatches the sequential shift is
meaningless and is never used; instead each observation seen keeps its plan in a bounded
cache (:class:`WarmStartCache`, ``plan_cache`` entries), so that the training solve starts
where the rollout solve ended and PPO's probability ratio compares the same local optimum.
Observations not in the cache start from zeros.

**Unconverged solves.** Rollouts use a small iteration cap (the task's, ``max_iter=15``), so
some solves stop before convergence. The layer's per-call ``RuntimeWarning`` is suppressed
here (it would fire every step); instead the actor counts them (``DiLQRActor.stats``, logged by
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

import torch

from .actor import LEARN_OPTIONS, DiLQRActor, parse_learn
from .callbacks import DiLQRLoggingCallback, SystemIdCallback, dilqr_actor, physical_params
from .obs import OBS_TO_STATE, register_obs_to_state
from .optim import ScaledAdam
from .policies import (
    DiLQRActorCriticPolicy,
    DiLQRSACActor,
    DiLQRSACPolicy,
    DiLQRTD3Actor,
    DiLQRTD3Policy,
)
from .spec import ControllerSpec, controller_spec
from .warm_start import WarmStartCache

__all__ = [
    "DiLQRActor", "DiLQRActorCriticPolicy", "DiLQRLoggingCallback", "DiLQRSACActor",
    "DiLQRSACPolicy", "DiLQRTD3Actor", "DiLQRTD3Policy", "LEARN_OPTIONS", "ScaledAdam",
    "OBS_TO_STATE", "SystemIdCallback", "ControllerSpec", "WarmStartCache",
    "configure_threads", "controller_spec", "dilqr_actor", "physical_params",
    "register_obs_to_state", "parse_learn",
]


def configure_threads(n: int = 1) -> None:
    """``torch.set_num_threads(n)``: one thread is much faster for DiLQR's tiny batched
    matrices and avoids oversubscribing a small machine (SB3 envs run in the same process)."""
    torch.set_num_threads(int(n))
