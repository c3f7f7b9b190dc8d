"""The DiLQR actor: observations to actions through a differentiable iLQR solve."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from gymnasium import spaces
from torch import Tensor, nn

from ..ilqr import Solution
from ..layer import UnconvergedWarning
from .obs import resolve_obs_to_state
from .spec import ControllerSpec
from .warm_start import SequentialWarmStart, WarmStartCache

__all__ = ["LEARN_OPTIONS", "DiLQRActor", "parse_learn"]

LEARN_OPTIONS = ("dynamics", "cost", "cost_net")


def parse_learn(learn: str) -> set[str]:
    """``"dynamics"``, ``"cost"``, ``"both"`` (dynamics and cost), ``"cost_net"`` or a ``+``
    combination of :data:`LEARN_OPTIONS` -> the set of what is learned."""
    parts = {"dynamics", "cost"} if learn == "both" else set(str(learn).split("+"))
    bad = parts - set(LEARN_OPTIONS)
    if not parts or bad:
        raise ValueError(f"learn must be 'dynamics', 'cost', 'both', 'cost_net' or a '+' "
                         f"combination of {LEARN_OPTIONS}, got {learn!r}")
    return parts


class DiLQRActor(nn.Module):
    """Observation ``(B, obs_dim)`` -> action ``(B, m)`` (float32): the first control of a
    DiLQR solve, mapped to the action box.

    Parameters, by object (:meth:`physical_parameters`, :meth:`cost_parameters`,
    :meth:`cost_net_parameters`): the controller's model ``ctrl.dynamics``, its cost
    ``ctrl.cost`` and, with ``learn`` including ``cost_net``, the MLP ``cost_net`` that maps the
    state to per-observation cost parameters: parameters the cost declares positive
    (:meth:`dilqr_rl.Cost.positive_params`) are multiplied by ``exp(out)``, the others shifted
    by ``out`` (its last layer starts at zero: the initial controller is the task cost's).

    :param controller: a :class:`ControllerSpec` or its dict (also the format before tasks)
    :param action_space: the env's ``Box``; ``unit=True`` maps to ``[-1, 1]`` instead (SAC/TD3)
    :param learn: ``"dynamics"``, ``"cost"``, ``"both"``, ``"cost_net"`` or a ``+`` combination
    :param cost_net_arch: hidden sizes of the ``cost_net``
    :param obs_to_state: ``None`` (identity), a callable ``(B, obs_dim) -> (B, n)`` or the
        name it was registered under (:func:`register_obs_to_state`)
    :param plan_cache: number of rollout plans kept for training-time warm starts (0: off)
    :param warm_tol: keep a sequential warm start when ``|x0 - x1_pred|_inf <= warm_tol (1 +
        |x1_pred|_inf)``
    """

    def __init__(self, controller: ControllerSpec | Mapping[str, Any], action_space: spaces.Box,
                 learn: str = "dynamics", cost_net_arch: tuple[int, ...] = (64, 64),
                 obs_to_state: str | Callable[[Tensor], Tensor] | None = None,
                 unit: bool = False, plan_cache: int = 100_000, warm_tol: float = 0.5):
        super().__init__()
        self.spec = ControllerSpec.coerce(controller)
        self.ctrl = self.spec.build()
        # a rollout needs an action for every state, whatever the model predicts for the
        # others in the batch: the solver sets non-finite samples apart (see solve)
        self.ctrl.config = dataclasses.replace(self.ctrl.config, on_nonfinite="isolate")
        self.learn = parse_learn(learn)
        for p in self.physical_parameters():
            p.requires_grad_("dynamics" in self.learn)
        for p in self.cost_parameters():
            p.requires_grad_("cost" in self.learn)
        self.dtype = next(self.ctrl.dynamics.parameters()).dtype
        self.obs_to_state = resolve_obs_to_state(obs_to_state)
        self.cost_net: nn.Module | None = None
        self._cost_shapes = self.ctrl.cost.param_shapes()
        self._positive = set(self.ctrl.cost.positive_params())
        if "cost_net" in self.learn:
            self.cost_net = self._make_cost_net(cost_net_arch)
        self._set_boxes(action_space, unit)
        #: sequential warm starts (rollouts); TD3's target actor turns them off
        self.sequential_warm_start = True
        self.sequential = SequentialWarmStart(warm_tol)
        #: plans of the observations seen, for training-time warm starts
        self.plans = WarmStartCache(int(plan_cache))
        #: whether solves read and fill :attr:`plans`; evaluations turn it off (a plan cached
        #: under another model is a warm start that, in a nonconvex problem with capped
        #: iterations, can lead to another local plan: the policy would depend on its history)
        self.use_plan_cache = True
        #: solve statistics since the last reset by :class:`DiLQRLoggingCallback`
        self.stats = {"solves": 0, "unconverged": 0, "iterations": 0, "cold_retries": 0,
                      "nonfinite": 0, "warm_dropped": 0}
        self._warned = False
        self._warned_nonfinite = False

    def _make_cost_net(self, arch: tuple[int, ...]) -> nn.Module:
        sizes = [self.ctrl.n_state, *arch]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.Tanh()]
        last = nn.Linear(sizes[-1], sum(math.prod(s) for s in self._cost_shapes.values()))
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return nn.Sequential(*layers, last).to(self.dtype)

    def _set_boxes(self, action_space: spaces.Box, unit: bool) -> None:
        lo, hi = self.ctrl.bounds(1, self.dtype, "cpu")
        if lo is None or hi is None or not bool(torch.isfinite(lo).all()
                                                & torch.isfinite(hi).all()):
            raise ValueError("the SB3 DiLQR actor needs finite control bounds (u_lower/u_upper)")
        a_lo = torch.as_tensor(action_space.low, dtype=self.dtype)
        a_hi = torch.as_tensor(action_space.high, dtype=self.dtype)
        if unit:
            a_lo, a_hi = -torch.ones_like(a_lo), torch.ones_like(a_hi)
        if a_lo.shape != (self.ctrl.n_ctrl,):
            raise ValueError(f"action space shape {action_space.shape} != controls "
                             f"({self.ctrl.n_ctrl},)")
        self.register_buffer("u_lo", lo[0, 0].clone(), persistent=False)
        self.register_buffer("u_hi", hi[0, 0].clone(), persistent=False)
        self.register_buffer("a_lo", a_lo, persistent=False)
        self.register_buffer("a_hi", a_hi, persistent=False)

    # --------------------------------------------------------------- parameters
    def physical_parameters(self) -> Iterator[nn.Parameter]:
        """The controller model's physical parameters."""
        return self.ctrl.dynamics.parameters()

    def cost_parameters(self) -> Iterator[nn.Parameter]:
        """The controller cost's parameters."""
        return self.ctrl.cost.parameters()

    def cost_net_parameters(self) -> Iterator[nn.Parameter]:
        """The cost network's parameters (none without one)."""
        return iter(()) if self.cost_net is None else self.cost_net.parameters()

    # --------------------------------------------------------------- helpers
    def reset(self) -> None:
        """Forget the sequential warm start (e.g. before a new evaluation)."""
        self.sequential.reset()

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
            res[k] = base[k] * torch.exp(o.clamp(-5, 5)) if k in self._positive else base[k] + o
        return res

    def use_sequential(self) -> bool:
        """Whether solves now start from the shifted previous plan (rollouts: eval mode)."""
        return self.sequential_warm_start and not self.training

    def initial_plans(self, obs: Tensor, x0: Tensor) -> Tensor | None:
        """The warm start ``(B, T, m)`` of a solve from ``obs`` (state ``x0``): the shifted
        previous plan where :meth:`use_sequential` and close, else the cached plan of the
        observation, else zeros; ``None`` when no sample has one."""
        init = x0.new_zeros(x0.shape[0], self.ctrl.horizon, self.ctrl.n_ctrl)
        hit = torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device)
        if self.use_sequential():
            hit |= self.sequential.lookup(x0, init)
        if self.use_plan_cache and len(self.plans) and not bool(hit.all()):
            hit |= self.plans.lookup(obs, init, where=~hit)
        return init if bool(hit.any()) else None

    def _remember(self, obs: Tensor, sol: Solution) -> None:
        if self.use_sequential():
            self.sequential.remember(sol.u, sol.x[:, 1])
        if self.use_plan_cache:
            self.plans.store(obs, sol.u)

    def _count(self, sol: Solution) -> None:
        bad = int((~sol.converged).sum())
        self.stats["solves"] += sol.converged.numel()
        self.stats["unconverged"] += bad
        self.stats["iterations"] += int(sol.iterations.sum())
        cfg = self.ctrl.config
        if bad and not self._warned and cfg.tol > 0:
            self._warned = True
            what = ("get no gradient" if cfg.on_unconverged == "detach" else
                    "are differentiated at their last iterate (approximate gradient)")
            warnings.warn(f"DiLQR actor: some solves stop at max_iter={cfg.max_iter} before "
                          f"converging; they {what}. Counted in DiLQRActor.stats / logged as "
                          "dilqr/unconverged_frac; this warning is shown once.", UserWarning,
                          stacklevel=3)

    def solve(self, obs: Tensor) -> Solution:
        """The DiLQR solution from the observations ``(B, obs_dim)``.

        The solver sets apart the samples whose model rollout or Newton step is not finite
        (``ILQRConfig.on_nonfinite="isolate"``; e.g. a tumbling rocket under a wrong model's
        quadratic rate dynamics) and solves the others as usual, with their gradient. Set-apart
        samples that were warm-started are solved again from zero controls (counted in
        ``stats["cold_retries"]``); those that fail cold too get the zero plan (clamped into the
        box) with no gradient, counted in ``stats["nonfinite"]`` and warned about once (an
        action is needed in a rollout whatever the model predicts).

        Before that, warm starts whose rollout under the current model costs more than a cold
        start's are dropped (:meth:`_screen`, counted in ``stats["warm_dropped"]``)."""
        x0 = self.state(obs)
        overrides = self.cost_overrides(x0)
        u_init = self.initial_plans(obs, x0)
        if u_init is not None:
            u_init = self._screen(x0, u_init, overrides)
        with warnings.catch_warnings():
            # counted and reported once by _count instead of a warning per call
            warnings.simplefilter("ignore", UnconvergedWarning)
            sol = self.ctrl(x0, u_init=u_init, **overrides)
            if bool(sol.failed.any()):
                # (a zero warm start is a cold start already: no retry for those)
                warm = None if u_init is None else (u_init != 0).flatten(1).any(1)
                sol = self._set_apart(x0, overrides, sol, warm)
        self._count(sol)
        self._remember(obs, sol)
        return sol

    def _screen(self, x0: Tensor, u_init: Tensor, overrides: dict[str, Tensor]
                ) -> Tensor | None:
        """``u_init (B, T, m)`` without the warm starts whose rollout under the current model
        costs more than the cold start's (zero controls), or is not finite: those start cold,
        counted in ``stats["warm_dropped"]``; ``None`` when none is left.

        A warm start is a plan of an earlier model (the plan cache) or of the previous state
        (the sequential one). Once the model has moved, it can start the solve in a worse
        basin: on replay-buffer batches of an SB3 SAC run whose RL loss had drifted the
        cart-pole's model, the cached plans ended 10-iteration solves at 1.5-3.4x the total
        cost of cold starts on 4 batches of 6, through the solver's slow QP path (docs/rl.md).
        The cost of this check: one open-loop rollout of the batch, doubled."""
        hit = (u_init != 0).flatten(1).any(1)
        if not bool(hit.any()):
            return None
        # both candidates in one call: one check of the inputs, one batched rollout
        B = x0.shape[0]
        J_warm, J_cold = self.ctrl.rollout_cost(
            torch.cat([x0, x0]), torch.cat([u_init, torch.zeros_like(u_init)]),
            **{k: torch.cat([v.expand(B, *self._cost_shapes[k])] * 2)
               for k, v in overrides.items()}).view(2, B)
        # a warm start that is not finite is dropped; a finite one is kept where the cold
        # start's is not (NaN and inf compare False)
        drop = hit & ~(torch.isfinite(J_warm) & ~(J_warm > J_cold))
        self.stats["warm_dropped"] += int(drop.sum())
        if bool((drop == hit).all()):
            return None
        return torch.where(drop[:, None, None], 0.0, u_init)

    def _set_apart(self, x0: Tensor, overrides: dict[str, Tensor], sol: Solution,
                   warm: Tensor | None) -> Solution:
        """``sol`` with its failed samples that had a warm start (``warm (B,)`` bool, or
        ``None``: none had) solved again cold, and those that fail again given the zero plan
        and no gradient (see :meth:`solve`)."""
        failed = sol.failed
        if warm is not None and bool((failed & warm).any()):
            self.stats["cold_retries"] += 1
            r = torch.nonzero(failed & warm)[:, 0]
            sub = self.ctrl(x0[r], **{k: v[r] if v.dim() > len(self._cost_shapes[k]) else v
                                      for k, v in overrides.items()})
            sol = Solution(**{f.name: _merge(getattr(sol, f.name), getattr(sub, f.name), r)
                              for f in dataclasses.fields(Solution)})
            failed = sol.failed
            if not bool(failed.any()):
                return sol
        n_bad = int(failed.sum())
        self.stats["nonfinite"] += n_bad
        if not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(f"DiLQR actor: the solve overflows from {n_bad} of {failed.numel()} "
                          "states (the model's rollout or its Newton steps: a tumbling system "
                          "under a wrong model?); they get zero plans and no gradient. Counted "
                          "in DiLQRActor.stats['nonfinite']; this warning is shown once.",
                          UserWarning, stacklevel=4)
        zero = self._zero_plan(torch.zeros_like(sol.u))
        f3 = failed[:, None, None]
        # the set-apart rows of x may be NaN/inf: the initial state repeated instead
        x_rest = x0.detach()[:, None].expand_as(sol.x)
        return dataclasses.replace(sol, u=torch.where(f3, zero, sol.u),
                                   x=torch.where(f3, x_rest, sol.x),
                                   cost=torch.where(failed, torch.inf, sol.cost))

    def _zero_plan(self, u: Tensor) -> Tensor:
        """Zero controls ``(b, T, m)``, clamped into the control box."""
        return torch.maximum(torch.minimum(u, self.u_hi.to(u)), self.u_lo.to(u))

    def forward(self, obs: Tensor) -> Tensor:
        """Actions ``(B, m)`` float32 from observations ``(B, obs_dim)``."""
        sol = self.solve(obs)
        return self.to_action(sol.u[:, 0]).to(torch.float32)


def _merge(full: Tensor | None, part: Tensor | None, rows: Tensor) -> Tensor | None:
    """``full (B, ...)`` with ``rows`` replaced by ``part`` (differentiable in both); a
    per-iteration ``history`` of another length is dropped."""
    if full is None or part is None or full.shape[1:] != part.shape[1:]:
        return None
    return full.index_copy(0, rows, part.to(full))
