"""Receding-horizon DiLQR that re-identifies its model online, per episode.

Under domain randomization every episode has its own true parameters. :class:`AdaptiveMPC`
plans for a batch of envs stepped in lockstep, each with its own model parameters ``theta_b``
(one batched solve with per-sample parameters ``(B, p)``), and every ``refit_every`` steps fits
each ``theta_b`` to the transitions of its env's current episode: ``fit_steps`` Adam steps on
the one-step prediction error (that of :func:`dilqr_rl.models.transition_loss`, per env), in
log space (the model's parameters must be positive physical quantities), so a step is relative
and a parameter never changes sign. At a reset every model starts again from the nominal one:
nothing is carried over between episodes, so the controller adapts to each draw from what it
sees of it.
"""

from __future__ import annotations

import torch
from torch import Tensor

import dilqr_rl as dl

from .mpc import MPCPolicy

__all__ = ["AdaptiveMPC"]


class AdaptiveMPC(MPCPolicy):
    """A batch of adaptive MPC controllers (see the module docstring); the replans are
    :meth:`MPCPolicy.plan` with per-sample parameters.

    :param task: the task (controller, horizon rule, control box)
    :param model_params: the nominal model (default the task's parameters), where each
        episode's fit starts
    :param horizon: the first horizon (default the task's)
    :param max_iter: iLQR iterations per replan (a capped replan is used as it is)
    :param refit_every: env steps between fits (0: never, a fixed nominal model)
    :param fit_steps: Adam steps per fit
    :param lr: Adam learning rate on ``log theta``
    """

    def __init__(self, task: dl.tasks.Task, model_params: dict[str, float] | None = None,
                 horizon: int | None = None, max_iter: int = 10, refit_every: int = 10,
                 fit_steps: int = 50, lr: float = 0.05):
        for name, v in (("max_iter", max_iter), ("fit_steps", fit_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if isinstance(refit_every, bool) or not isinstance(refit_every, int) or refit_every < 0:
            raise ValueError(f"refit_every must be an integer >= 0, got {refit_every!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not task.model.positive_params:
            raise ValueError(f"AdaptiveMPC fits log-parameters: the {task.name} model's "
                             "parameters must be positive (positive_params)")
        self.nominal = {**task.params, **(model_params or {})}
        unknown = set(self.nominal) - set(task.params)
        if unknown:
            raise ValueError(f"model_params: {sorted(unknown)} are not parameters of "
                             f"{task.name} ({list(task.params)})")
        self.refit_every, self.fit_steps, self.lr = refit_every, fit_steps, float(lr)
        super().__init__(task, horizon, None, max_iter)

    def reset(self, theta: Tensor | None = None) -> None:
        """New episodes: every model back to the nominal one (or to ``theta (B, p)``, e.g. each
        env's true parameters for an oracle), no transitions, no warm start."""
        if theta is not None and (theta.dim() != 2 or theta.shape[1] != len(self.nominal)):
            raise ValueError(f"theta must be (B, {len(self.nominal)}), got "
                             f"{tuple(theta.shape)}")
        super().reset()
        self.theta = theta
        self._xs: list[Tensor] = []
        self._us: list[Tensor] = []
        self._live: list[Tensor] = []

    def params(self) -> list[dict[str, float]]:
        """The current model of each env of the batch."""
        if self.theta is None:
            return []
        return [dict(zip(self.nominal, map(float, th), strict=True)) for th in self.theta]

    def __call__(self, x0: Tensor, live: Tensor | None = None) -> Tensor:
        """The first controls ``(B, m)`` from the true states ``x0 (B, n)``; ``live (B,)``
        bool marks the envs whose episode is running, i.e. that will be stepped with these
        controls (default all): only their next transition is fitted."""
        B = x0.shape[0]
        if self.theta is None:
            nominal = torch.tensor(list(self.nominal.values()), dtype=x0.dtype)
            self.theta = nominal.expand(B, -1).clone()
        self.theta = self.theta.to(x0)
        self._xs.append(x0)
        if self._us and self.refit_every and self.step % self.refit_every == 0:
            self._fit()
        self._live.append(torch.ones(B, dtype=torch.bool) if live is None
                          else torch.as_tensor(live, dtype=torch.bool))
        u0 = self.plan(x0, self.theta)
        self._us.append(u0)
        return u0

    def _fit(self) -> None:
        """Adam on ``log theta_b`` against the one-step errors of each env's episode so far
        (per-coordinate scale: the std of ``x' - x`` over the batch, as system id does)."""
        dyn = self.controller(self.horizon).dynamics
        x = torch.stack(self._xs[:-1], 1)  # (B, k, n)
        y = torch.stack(self._xs[1:], 1)
        u = torch.stack(self._us[: x.shape[1]], 1)
        # (B, k): 1 where the env was stepped (live when the control was chosen)
        w = torch.stack(self._live[: x.shape[1]], 1).to(x.dtype)
        scale = (y - x).reshape(-1, x.shape[-1]).std(0).clamp_min(1e-6)
        log_th = self.theta.log().clone().requires_grad_(True)
        opt = torch.optim.Adam([log_th], lr=self.lr)
        for _ in range(self.fit_steps):
            err = (dyn.step(x, u, log_th.exp()[:, None]) - y) / scale
            # each env's mean error: the sum over envs keeps their gradients independent
            loss = ((err.pow(2).sum(-1) * w).sum(1) / w.sum(1).clamp_min(1)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.theta = log_th.detach().exp()
