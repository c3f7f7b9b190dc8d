"""Imitation learners (the DiLQR paper's section 5.2 and appendix A.2, following DiffMPC's
``imitation_nonconvex``).

A learner sees expert initial states ``x0 (B, n)`` and expert controls ``u* (B, T, m)`` and
minimizes the imitation loss ``mean |u(x0) - u*|^2`` (``sysid``: the next-state error). The
training loop (``agents/training.py``) serves every learner with the same data, batches and
seeds:

================ ===========================================================================
learner          what is learned, and how the gradient is computed
================ ===========================================================================
``dilqr.dx``     the task's dynamics parameters (``task.param_names``, from
                 ``task.learn_init``), cost known; exact fixed-point gradient
``dilqr.cost``   cost weights (``sigmoid`` of a logit, as DiffMPC) and goal, dynamics known;
                 goal and weights alternate every 10 epochs (goal first, as DiffMPC), or
                 as ``Args.cost_learn`` / ``Task.cost_learn`` say (the rocket: weights only)
``diffmpc.dx``   as ``dilqr.dx`` with ``grad="last_lqr"`` (DiffMPC's gradient)
``diffmpc.cost`` as ``dilqr.cost`` with ``grad="last_lqr"``
``unroll.dx``    as ``dilqr.dx`` with ``grad="unroll"`` (autodiff through every iteration)
``sysid``        dynamics parameters fitted on next-state prediction error
                 (:func:`dilqr_rl.models.transition_loss`); controls from the known-cost iLQR
                 with the fitted model
``nn``           DiffMPC's LSTM policy ``x0 -> u (T, m)``
``mlp``          an MLP policy ``x0 -> u (T, m)``
================ ===========================================================================

The controllers are :func:`agents.data.demo_controller`: the task's true model and expert
tracking cost in float64, horizon ``task.demo_horizon``, ``|u_i| <=`` the task's bound (or
``Args.u_bound``). The cost learners learn the :class:`dilqr_rl.tasks.Tracking` weights
``w = sigmoid(logit)`` and goal, compared with the expert's; the controller's cost is
``QuadraticCost.tracking(2 w, goal)`` (the ``1/2 w`` convention).

**Non-physical parameters.** Nothing is clamped, for any learner: a dynamics step may leave
a parameter ``<= 0``; the solver still solves (the models stay finite for negative masses and
lengths as long as no denominator is exactly zero). :meth:`Learner.nonphysical` says whether
one is.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

import dilqr_rl as dl
from dilqr_rl import tasks
from dilqr_rl.models import transition_loss
from dilqr_rl.tasks import Task

from .baselines import LSTMPolicy, MLPPolicy
from .data import demo_controller
from .imitation_args import LEARNERS, Args

__all__ = ["Learner", "MPCLearner", "NNLearner", "SysIdLearner", "cost_identifiable_loss",
           "imitation_loss", "make_learner", "tracking_coefficients"]

F64 = torch.float64
_GRAD = {"dilqr": "implicit", "diffmpc": "last_lqr", "unroll": "unroll"}


def imitation_loss(u: Tensor, u_expert: Tensor) -> Tensor:
    """``mean (u - u_expert)^2`` over ``(B, T, m)``."""
    return (u - u_expert).pow(2).mean()


def tracking_coefficients(task: Task, v: Tensor) -> Tensor:
    """The coefficients of the tracking cost ``sum_i w_i (z_i - g_i)^2`` given as
    ``v = [w; g] (..., 2k)`` (``k = n + m``) that the optimal controls can depend on, up to a
    positive scale: per coordinate the quadratic ``w_i`` and the linear ``w_i g_i`` (the
    constant drops out). In a unit-norm block of the state (``cos, sin``; a quaternion),
    ``sum_j z_j^2 = 1`` turns the block's first quadratic into a constant: its quadratics
    are ``w_j - w_first``, without the first. Shape ``(..., 2k - #blocks)``."""
    k = v.shape[-1] // 2
    w, g = v[..., :k], v[..., k:]
    quad, keep = w.clone(), torch.ones(k, dtype=torch.bool, device=v.device)
    for lo, hi, _ in task.unit_blocks:
        quad[..., lo:hi] = w[..., lo:hi] - w[..., lo:lo + 1]
        keep[lo] = False
    return torch.cat([quad[..., keep], w * g], -1)


def cost_identifiable_loss(task: Task, learned: Tensor, truth: Tensor) -> float:
    """How far the learned tracking cost ``learned = [w; g] (2k,)`` is from ``truth`` where
    it matters: the mean squared relative error of :func:`tracking_coefficients` after the
    best positive scale ``a``, each coefficient relative to its true value (or, where that is
    0, to the largest true coefficient), ``min_{a >= 0} mean_i ((a c_i - c*_i) / d_i)^2``.
    0: the same cost up to scale and a constant, so the same optimal controls; the share of
    nonzero true coefficients: nothing in common. The raw model loss cannot see these
    invariances: a pendulum cost ``4.3x`` the true one with goal ``cos = 4.4`` has the true
    optimal controls and a large model loss."""
    c, ref = tracking_coefficients(task, learned), tracking_coefficients(task, truth)
    d = torch.where(ref != 0, ref.abs(), ref.abs().max())
    c, ref = c / d, ref / d
    a = ((c * ref).sum() / (c * c).sum()).clamp(min=0.0) if (c * c).sum() > 0 else 0.0
    return float((a * c - ref).pow(2).mean())


class Learner(nn.Module):
    """Common interface: ``train_loss``, ``predict``, ``model_loss``, ``optimizer``.

    :param task: the system (:mod:`dilqr_rl.tasks`)
    :param args: the run's settings
    """

    kind = "none"  # "dx", "cost" or "none"
    uses_solver = False

    def __init__(self, task: Task, args: Args):
        super().__init__()
        self.task, self.args = task, args
        tracking = task.demo_tracking()
        self.theta_true = task.theta(F64)
        self.cost_true = torch.cat([torch.tensor(tracking.weights, dtype=F64),
                                    torch.tensor(tracking.goal, dtype=F64)])
        self.unconverged = 0

    def predict(self, x0: Tensor, u_init: Tensor | None) -> Tensor:
        """Controls ``(B, T, m)`` from ``x0 (B, n)`` (differentiable where learnable)."""
        raise NotImplementedError

    def train_loss(self, x: Tensor, u: Tensor, u_init: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(loss, predicted u (B, T, m))`` on expert states ``x (B, T+1, n)``, controls
        ``u (B, T, m)``."""
        pred = self.predict(x[:, 0], u_init)
        return imitation_loss(pred, u), pred

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(self.parameters(), lr=self.args.lr,
                                   alpha=self.args.rmsprop_alpha)

    def before_step(self, epoch: int) -> None:
        """Hook between ``backward`` and ``step`` (cost learners mask one group here)."""

    def learned(self) -> Tensor | None:
        """The learned model parameters ``(p,)`` (dx) or ``[weights; goal]`` (cost)."""
        return None

    def truth(self) -> Tensor | None:
        """What :meth:`learned` should reach: the true parameters or ``[weights; goal]``."""
        return {"dx": self.theta_true, "cost": self.cost_true}.get(self.kind)

    def model_loss(self) -> float:
        v, ref = self.learned(), self.truth()
        if v is None or ref is None:
            return math.nan
        return float((v.detach() - ref).pow(2).mean())

    def identifiable(self) -> dict[str, float] | None:
        """dx learners of a task that declares identifiable combinations (the pendulum's
        ``g / l`` and ``m l^2``): their learned values by name; else ``None``."""
        v = self.learned()
        if v is None or self.kind != "dx" or self.task.identifiable is None:
            return None
        return {k: float(c) for k, c in self.task.combinations(v.detach()).items()}

    def identifiable_loss(self) -> float:
        """dx learners of a task that declares identifiable combinations (the pendulum's
        ``g / l`` and ``m l^2``): the mean squared relative error of those; cost learners:
        :func:`cost_identifiable_loss`; else NaN."""
        v = self.learned()
        if v is not None and self.kind == "cost":
            return cost_identifiable_loss(self.task, v.detach(), self.cost_true)
        if v is None or self.kind != "dx" or self.task.identifiable is None:
            return math.nan
        got = self.task.combinations(v.detach())
        ref = self.task.combinations(self.theta_true)
        return float(sum(((got[k] / ref[k] - 1) ** 2) for k in ref)) / len(ref)

    def nonphysical(self) -> bool:
        v = self.learned()
        return bool(self.kind == "dx" and v is not None and (v.detach() <= 0).any())


class MPCLearner(Learner):
    """DiLQR controller with learnable dynamics parameters (``dx``) or cost (``cost``).

    :param what: ``"dx"`` or ``"cost"``; :param grad: the layer's gradient mode
    """

    uses_solver = True

    def __init__(self, task: Task, args: Args, what: str, grad: str):
        super().__init__(task, args)
        self.kind = what
        self.ctrl = demo_controller(task, args.u_bound, grad=grad, max_iter=args.max_iter,
                                    tol=args.tol, on_unconverged="warn")
        if what == "dx":
            if task.learn_init is None:
                raise ValueError(f"task {task.name!r} has no learn_init (initial guess)")
            init = [task.learn_init[k] for k in task.param_names]
            self.theta = nn.Parameter(torch.tensor(init, dtype=F64))
        else:
            # DiffMPC: q = sigmoid(logit) with logit = 0 (q = 0.5), linear term 0 (goal 0),
            # unless the task has its own guess (the rocket's hover thrust is 10, not 0)
            n = len(self.cost_true) // 2
            init = task.cost_learn_init
            w0 = torch.full((n,), 0.5, dtype=F64) if init is None else \
                torch.tensor(init.weights, dtype=F64)
            if w0.shape != (n,) or not bool(((w0 > 0) & (w0 < 1)).all()):
                raise ValueError(f"task {task.name!r}: cost_learn_init needs {n} weights in "
                                 f"(0, 1), got {w0.tolist()}")
            self.w_logit = nn.Parameter(torch.logit(w0))
            self.goal = nn.Parameter(torch.zeros(n, dtype=F64) if init is None else
                                     torch.tensor(init.goal, dtype=F64))

    def weights(self) -> Tensor:
        """The learned tracking weights ``w`` (``sum w (z - g)^2``)."""
        return torch.sigmoid(self.w_logit)

    def learned(self) -> Tensor:
        if self.kind == "dx":
            return self.theta
        return torch.cat([self.weights(), self.goal])

    def overrides(self) -> dict[str, Tensor]:
        """What the controller takes from this learner, by keyword: ``params (p,)`` (dx), or
        ``weights``, ``goal`` ``(n+m,)`` and ``terminal_weights (n,)`` (cost). A batch of
        learners stacks them per sample (``agents/batched.py``)."""
        if self.kind == "dx":
            return {"params": self.theta}
        w2 = 2.0 * self.weights()  # QuadraticCost.tracking's 1/2 w convention
        return {"weights": w2, "goal": self.goal, "terminal_weights": w2[: self.task.n_state]}

    def solve(self, x0: Tensor, u_init: Tensor | None) -> dl.Solution:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dl.UnconvergedWarning)  # counted below instead
            sol = self.ctrl(x0, u_init=u_init, **self.overrides())
        self.unconverged += int((~sol.converged).sum())
        return sol

    def predict(self, x0: Tensor, u_init: Tensor | None) -> Tensor:
        return self.solve(x0, u_init).u

    def before_step(self, epoch: int) -> None:
        if self.kind != "cost":
            return
        what = self.args.cost_learn or self.task.cost_learn
        if what == "both":
            return
        # DiffMPC alternates p (goal) and q (weights), starting with p
        learn_weights = what == "weights" or (epoch // self.args.alternate_every) % 2 == 1
        frozen = self.goal if learn_weights else self.w_logit
        if frozen.grad is not None:
            frozen.grad.zero_()


class SysIdLearner(Learner):
    """Dynamics parameters from next-state prediction; controls from the known-cost iLQR."""

    kind = "dx"
    uses_solver = True

    def __init__(self, task: Task, args: Args):
        super().__init__(task, args)
        self.mpc = MPCLearner(task, args, "dx", "implicit")
        self.dyn = task.dynamics(dtype=torch.float64).requires_grad_(False)

    def learned(self) -> Tensor:
        return self.mpc.theta

    def predict(self, x0: Tensor, u_init: Tensor | None) -> Tensor:
        with torch.no_grad():
            u = self.mpc.predict(x0, u_init)
        self.unconverged = self.mpc.unconverged
        return u

    def train_loss(self, x: Tensor, u: Tensor, u_init: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(mean squared next-state error per coordinate, predicted u)``."""
        pred = self.predict(x[:, 0], u_init)
        loss = transition_loss(self.dyn, self.mpc.theta, x[:, :-1], u, x[:, 1:])
        return loss / self.task.n_state, pred


class NNLearner(Learner):
    """A network policy (float32), Adam.

    :param arch: ``"lstm"`` or ``"mlp"``
    """

    def __init__(self, task: Task, args: Args, arch: str):
        super().__init__(task, args)
        cls = LSTMPolicy if arch == "lstm" else MLPPolicy
        self.policy = cls(task.n_state, task.n_ctrl, task.demo_horizon)

    def predict(self, x0: Tensor, u_init: Tensor | None) -> Tensor:
        return self.policy(x0.float()).double()

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.args.nn_lr)


def make_learner(args: Args, task: Task | str | None = None) -> Learner:
    """The learner named ``args.learner`` (see :data:`LEARNERS`) on ``task`` (default
    ``args.env``)."""
    if args.learner not in LEARNERS:
        raise ValueError(f"unknown learner {args.learner!r}; choose one of {LEARNERS}")
    task = tasks.get(args.env if task is None else task)
    if args.learner == "sysid":
        return SysIdLearner(task, args)
    if args.learner in ("nn", "mlp"):
        return NNLearner(task, args, "lstm" if args.learner == "nn" else "mlp")
    method, what = args.learner.split(".")
    return MPCLearner(task, args, what, _GRAD[method])
