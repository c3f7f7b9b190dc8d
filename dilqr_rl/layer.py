"""``DiLQR``: a box-constrained iLQR controller as a differentiable ``nn.Module``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .cost import Cost, QuadraticCost
from .grad import GRAD_MODES, solve_implicit
from .ilqr import ILQRConfig, NonFiniteError, Solution, ilqr_solve, rollout
from .ilqr_types import _Problem
from .models import Dynamics
from .qp import clamp

__all__ = ["DiLQR", "NonFiniteError", "NotConvergedError", "UnconvergedWarning"]

class NotConvergedError(RuntimeError):
    """Raised when ``ILQRConfig.on_unconverged == "raise"`` and a sample did not converge."""


class UnconvergedWarning(RuntimeWarning):
    """Issued when samples did not converge (``on_unconverged`` ``"warn"`` or ``"detach"``).

    Callers that count unconverged solves themselves (receding-horizon loops, RL rollouts) can
    silence exactly this with ``warnings.simplefilter("ignore", dl.UnconvergedWarning)``."""


def _check_finite(name: str, v: Tensor) -> None:
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} contains NaN or inf")


class DiLQR(nn.Module):
    """Model-predictive iLQR controller with exact fixed-point gradients (DiLQR).

    :param dynamics: a :class:`dilqr_rl.Dynamics` (its ``nn.Parameter`` s are learnable)
    :param cost: a :class:`dilqr_rl.Cost` (its ``nn.Parameter`` s are learnable)
    :param horizon: number of controls ``T >= 1``
    :param u_lower: lower control bound: float, ``(m,)``, ``(T, m)`` or ``(B, T, m)``;
        ``None`` takes the model's default bound; ``-inf`` means unbounded
    :param u_upper: upper control bound, as ``u_lower``
    :param config: :class:`dilqr_rl.ILQRConfig`
    :param grad: ``"implicit"`` (exact fixed-point gradient, default), ``"last_lqr"``
        (DiffMPC's approximation) or ``"unroll"`` (autodiff through every iteration)
    """

    def __init__(self, dynamics: Dynamics, cost: Cost, horizon: int,
                 u_lower: float | Tensor | None = None, u_upper: float | Tensor | None = None,
                 config: ILQRConfig | None = None, grad: str = "implicit"):
        super().__init__()
        if not isinstance(dynamics, Dynamics):
            raise TypeError(f"dynamics must be a dilqr_rl.Dynamics, got {type(dynamics).__name__}")
        if not isinstance(cost, Cost):
            raise TypeError(f"cost must be a dilqr_rl.Cost, got {type(cost).__name__}")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
        if grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
        if cost.n_state != dynamics.n_state or cost.n_ctrl != dynamics.n_ctrl:
            raise ValueError(f"cost is for n={cost.n_state}, m={cost.n_ctrl} but dynamics has "
                             f"n={dynamics.n_state}, m={dynamics.n_ctrl}")
        self.dynamics, self.cost = dynamics, cost
        self.horizon = horizon
        self.config = config or ILQRConfig()
        if not isinstance(self.config, ILQRConfig):
            raise TypeError("config must be an ILQRConfig")
        self.grad = grad
        self.u_lower = dynamics.u_lower if u_lower is None else u_lower
        self.u_upper = dynamics.u_upper if u_upper is None else u_upper
        # validate now, with the batch size of per-sample (B, T, m) bounds if there are any
        rows = [torch.as_tensor(b).shape[0] for b in (self.u_lower, self.u_upper)
                if b is not None and torch.as_tensor(b).dim() == 3]
        self._bounds(max(rows, default=1), torch.float64, torch.device("cpu"))
        self._warm: Tensor | None = None

    @property
    def n_state(self) -> int:
        return self.dynamics.n_state

    @property
    def n_ctrl(self) -> int:
        return self.dynamics.n_ctrl

    # ------------------------------------------------------------------ helpers
    def bounds(self, B: int = 1, dtype: torch.dtype = torch.float64,
               device: torch.device | str = "cpu") -> tuple[Tensor | None, Tensor | None]:
        """The control bounds as ``(B, T, m)`` tensors, or ``(None, None)`` when unbounded.

        :param B: batch size; :param dtype: dtype; :param device: device
        """
        return self._bounds(B, dtype, torch.device(device))

    def _bounds(self, B: int, dtype, device) -> tuple[Tensor | None, Tensor | None]:
        T, m = self.horizon, self.n_ctrl
        out = []
        for name, b, default in (("u_lower", self.u_lower, -math.inf),
                                 ("u_upper", self.u_upper, math.inf)):
            v = torch.as_tensor(default if b is None else b, dtype=dtype, device=device)
            if v.dim() > 3 or (v.dim() >= 1 and v.shape[-1] not in (1, m)) or \
                    (v.dim() >= 2 and v.shape[-2] not in (1, T)):
                raise ValueError(f"{name} must be a float or broadcastable to (B, T, m) = "
                                 f"({B}, {T}, {m}), got shape {tuple(v.shape)}")
            if v.dim() == 3 and v.shape[0] not in (1, B):
                raise ValueError(f"{name} has per-sample bounds for {v.shape[0]} samples, but "
                                 f"x0 has B = {B}")
            if bool(torch.isnan(v).any()):
                raise ValueError(f"{name} contains NaN")
            out.append(v.expand(B, T, m))
        lo, hi = out
        if bool((lo == math.inf).any()):
            raise ValueError("u_lower is +inf somewhere: a lower bound must be below +inf "
                             "(-inf means no lower bound)")
        if bool((hi == -math.inf).any()):
            raise ValueError("u_upper is -inf somewhere: an upper bound must be above -inf "
                             "(+inf means no upper bound)")
        if bool((lo > hi).any()):
            raise ValueError("u_lower must be <= u_upper everywhere")
        if bool(torch.isinf(lo).all() & torch.isinf(hi).all()) and bool((lo < 0).all()) and \
                bool((hi > 0).all()):
            return None, None
        return lo, hi

    def _params(self, B: int, x0: Tensor, params: Tensor | None,
                overrides: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        p = self.dynamics.n_params
        if params is None:
            theta = self.dynamics.theta().to(x0)
        else:
            if not isinstance(params, Tensor):
                raise TypeError(f"params must be a Tensor, got {type(params).__name__}")
            if not params.is_floating_point():
                raise TypeError(f"params must be floating point, got {params.dtype}")
            if params.shape not in ((p,), (B, p)):
                raise ValueError(f"params must have shape ({p},) or (B, {p}) = ({B}, {p}), got "
                                 f"{tuple(params.shape)}")
            theta = params.to(x0)
        _check_finite("params" if params is not None else "dynamics parameters", theta)
        # shared parameters stay (p,): the model's forward then runs as one batched call
        # instead of a vmap over samples (docs/solver.md, "The general path")
        shapes = self.cost.param_shapes()
        P = {}
        for k, v in self.cost.params().items():
            if k in overrides:
                v = overrides[k]
                if not isinstance(v, Tensor):
                    raise TypeError(f"{k} must be a Tensor, got {type(v).__name__}")
                s = shapes[k]
                if tuple(v.shape) not in (s, (B, *s)):
                    raise ValueError(f"{k} must have shape {s} or (B, ...) = {(B, *s)}, got "
                                     f"{tuple(v.shape)}")
            v = v.to(x0)
            _check_finite(k, v)
            P[k] = v.expand(B, *shapes[k])
        unknown = set(overrides) - set(shapes)
        if unknown:
            raise TypeError(f"unknown cost parameter override(s) {sorted(unknown)}; this cost "
                            f"has {sorted(shapes)}")
        if isinstance(self.cost, QuadraticCost):
            Ruu = self.cost.control_hessian(P)
            if not bool((torch.linalg.cholesky_ex(Ruu.detach())[1] == 0).all()):
                raise ValueError("the control weights of the cost must be positive definite "
                                 "(weights[n:] > 0, or C[n:, n:] positive definite)")
        return theta, P

    def _problem(self, x0: Tensor, params: Tensor | None, u_init: Tensor | None,
                 overrides: Mapping[str, Tensor], plan: str = "u_init"
                 ) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor | None, Tensor | None,
                            Tensor]:
        """The checked inputs of a solve (arguments as :meth:`forward`; ``plan``: the name of
        the controls' argument in messages): ``x0 (B, n)``, ``theta``, ``P``, the bounds
        ``(B, T, m)`` or ``None``, ``u_init (B, T, m)``."""
        if not isinstance(x0, Tensor):
            raise TypeError(f"x0 must be a Tensor, got {type(x0).__name__}")
        if x0.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"x0 must be float32 or float64, got {x0.dtype}")
        n, m, T = self.n_state, self.n_ctrl, self.horizon
        if x0.dim() == 1:
            x0 = x0[None]
        if x0.dim() != 2 or x0.shape[-1] != n:
            raise ValueError(f"x0 must have shape (B, {n}) or ({n},), got {tuple(x0.shape)}")
        _check_finite("x0", x0)
        B = x0.shape[0]
        if B == 0:
            raise ValueError("x0 has no samples (B = 0): pass at least one initial state")
        theta, P = self._params(B, x0, params, overrides)
        lower, upper = self._bounds(B, x0.dtype, x0.device)
        if u_init is None:
            u_init = torch.zeros(B, T, m, dtype=x0.dtype, device=x0.device)
        else:
            if not isinstance(u_init, Tensor):
                raise TypeError(f"{plan} must be a Tensor, got {type(u_init).__name__}")
            if u_init.shape not in ((T, m), (B, T, m)):
                raise ValueError(f"{plan} must have shape ({T}, {m}) or ({B}, {T}, {m}), got "
                                 f"{tuple(u_init.shape)}")
            u_init = u_init.detach().to(x0).expand(B, T, m)
            _check_finite(plan, u_init)
        return x0, theta, P, lower, upper, u_init

    @torch.no_grad()
    def rollout_cost(self, x0: Tensor, u: Tensor, params: Tensor | None = None,
                     cost_params: Mapping[str, Tensor] | None = None, **cost_overrides: Tensor
                     ) -> Tensor:
        """The cost of the open-loop rollout of the plan ``u`` (clamped into the box) from
        ``x0`` under the current model, the cost the solver starts from with ``u_init=u``; no
        gradient. Arguments as :meth:`forward` (``u`` as ``u_init``).

        :return: ``(B,)``; NaN/inf where the rollout is not finite
        """
        x0, theta, P, lower, upper, u = self._problem(x0, params, u, dict(
            cost_params or {}, **cost_overrides), plan="u")
        u = clamp(u, lower, upper)
        return self.cost.total(rollout(self.dynamics, x0, u, theta), u, P)

    # ------------------------------------------------------------------ API
    def forward(self, x0: Tensor, params: Tensor | None = None, u_init: Tensor | None = None,
                cost_params: Mapping[str, Tensor] | None = None, **cost_overrides: Tensor
                ) -> Solution:
        """Solve from ``x0``.

        :param x0: initial states ``(B, n)`` (or ``(n,)``, treated as ``B = 1``); the solve runs
            in ``x0``'s dtype and device
        :param params: dynamics parameters ``(p,)`` or per sample ``(B, p)``; default the
            module's own
        :param u_init: warm start ``(B, T, m)`` or ``(T, m)``; default zeros
        :param cost_params: cost parameter overrides by name, each ``shape`` or ``(B, *shape)``
        :param cost_overrides: the same as keywords, e.g. ``weights=``, ``goal=``
        :return: :class:`dilqr_rl.Solution`
        """
        x0, theta, P, lower, upper, u_init = self._problem(x0, params, u_init, dict(
            cost_params or {}, **cost_overrides))

        if self.grad == "unroll":
            sol = ilqr_solve(self.dynamics, self.cost, x0, theta, P, u_init, lower, upper,
                             self.config)
            x, u = sol.x, sol.u
            if bool(sol.failed.any()) and x.requires_grad:
                # the recorded graph carries the set-apart samples' NaN into every shared
                # parameter's gradient (0 * NaN): record the others alone (the solver treats
                # samples independently, so their iterates are the same) and detach the rest
                good = torch.nonzero(~sol.failed)[:, 0]
                sub = ilqr_solve(self.dynamics, self.cost, *_take(good, x0, theta, P, u_init,
                                                                   lower, upper), self.config)
                x = sol.x.detach().index_copy(0, good, sub.x)
                u = sol.u.detach().index_copy(0, good, sub.u)
        else:
            x, u, sol = solve_implicit(self.dynamics, self.cost, x0, theta, P, u_init, lower,
                                       upper, self.config, exact=self.grad == "implicit")
        self._report(sol)
        failed = sol.failed
        if bool(failed.any()):
            # a set-apart sample's x may be NaN/inf: its cost is the solver's, without a graph,
            # so that no backward meets 0 * NaN in the cost's derivatives for it
            good = torch.nonzero(~failed)[:, 0]
            cost = sol.cost.detach().index_copy(0, good, self.cost.total(
                x[good], u[good], {k: v[good] for k, v in P.items()}))
        else:
            cost = self.cost.total(x, u, P)
        detach = self.config.on_unconverged == "detach" and self.config.tol > 0
        if detach or bool(failed.any()):
            # no gradient from unconverged samples (when asked) or set-apart ones (always)
            # through x, u or cost, in every mode
            keep = sol.converged if detach else ~failed
            x = torch.where(keep[:, None, None], x, x.detach())
            u = torch.where(keep[:, None, None], u, u.detach())
            cost = torch.where(keep, cost, cost.detach())
        return Solution(x=x, u=u, cost=cost, converged=sol.converged,
                        iterations=sol.iterations, free=sol.free, kkt=sol.kkt, pivot=sol.pivot,
                        qp_iterations=sol.qp_iterations,
                        history=sol.history, failed=failed)

    def _report(self, sol: Solution) -> None:
        n_failed = int(sol.failed.sum())
        if self.config.tol == 0:  # a fixed iteration count was asked for: only set-apart ones
            if n_failed:
                warnings.warn(f"DiLQR: {n_failed} of {sol.failed.numel()} samples set apart as "
                              "not finite (on_nonfinite='isolate': see Solution.failed); they "
                              "get no gradient", UnconvergedWarning, stacklevel=3)
            return
        bad = int((~sol.converged).sum())
        if bad == 0:
            return
        msg = (f"DiLQR: {bad} of {sol.converged.numel()} samples did not converge in "
               f"{self.config.max_iter} iterations (tol={self.config.tol}); their gradient is "
               "taken at a point that is not a fixed point")
        if n_failed:
            msg += (f" ({n_failed} of them set apart as not finite, on_nonfinite='isolate': "
                    "see Solution.failed; they get no gradient)")
        if self.config.on_unconverged == "raise":
            raise NotConvergedError(msg)
        if self.config.on_unconverged == "detach":
            msg = msg.replace("their gradient is taken at a point that is not a fixed point",
                              "they get no gradient (on_unconverged='detach')")
        warnings.warn(msg, UnconvergedWarning, stacklevel=3)

    def act(self, x0: Tensor, **kwargs) -> Tensor:
        """Receding-horizon control: solve from ``x0`` warm-started with the previous solution
        shifted by one step, and return the first control ``(B, m)``.

        :param x0: ``(B, n)``; other keywords as :meth:`forward`
        """
        x0b = x0[None] if x0.dim() == 1 else x0
        warm = self._warm
        if warm is not None and (warm.shape[0] != x0b.shape[0] or warm.dtype != x0b.dtype
                                 or warm.device != x0b.device):
            warm = None
        sol = self.forward(x0b, u_init=warm, **kwargs)
        u = sol.u.detach()
        self._warm = torch.cat([u[:, 1:], u[:, -1:]], 1)
        return sol.u[:, 0] if x0.dim() == 2 else sol.u[0, 0]

    def reset(self) -> None:
        """Forget the warm start used by :meth:`act`."""
        self._warm = None

    @property
    def warm_start(self) -> Tensor | None:
        """The controls ``(B, T, m)`` the next :meth:`act` starts from (the last plan shifted
        by one step, its last control repeated), or ``None`` after :meth:`reset`."""
        return None if self._warm is None else self._warm.clone()


def _take(idx: Tensor, x0: Tensor, theta: Tensor, P: dict[str, Tensor], u_init: Tensor,
          lower: Tensor | None, upper: Tensor | None) -> tuple:
    """The solve's inputs of the samples ``idx`` (``P``, bounds and ``u_init`` are per
    sample; ``theta`` shared ``(p,)`` or per sample)."""
    pr = _Problem(x0, theta, P, lower, upper).take(idx)
    return pr.x0, pr.theta, pr.P, u_init[idx], pr.lower, pr.upper
