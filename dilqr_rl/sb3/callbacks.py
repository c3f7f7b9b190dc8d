"""SB3 callbacks of DiLQR actors (logging, system identification) and their accessors."""

from __future__ import annotations

import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from torch import Tensor, nn

from ..models import transition_loss
from .actor import DiLQRActor

__all__ = ["DiLQRLoggingCallback", "SystemIdCallback", "dilqr_actor", "physical_params"]


def dilqr_actor(policy: nn.Module) -> DiLQRActor:
    """The :class:`DiLQRActor` inside any of the three policies."""
    for mod in policy.modules():
        if isinstance(mod, DiLQRActor):
            return mod
    raise ValueError(f"{type(policy).__name__} has no DiLQR actor")


def physical_params(policy: nn.Module) -> dict[str, float]:
    """The controller's current physical parameters by name."""
    dyn = dilqr_actor(policy).ctrl.dynamics
    return dict(zip(dyn.param_names(), dyn.theta().detach().tolist(), strict=True))


class DiLQRLoggingCallback(BaseCallback):
    """Logs the controller's physical parameters (``dilqr/<name>``), the fraction of
    unconverged solves, the mean iteration count and the fraction of warm starts dropped for a
    cold start (``DiLQRActor._screen``) at every rollout end / ``log_every`` steps."""

    def __init__(self, log_every: int = 1000, verbose: int = 0):
        super().__init__(verbose)
        self.log_every = int(log_every)
        self._last = 0

    def _record(self) -> None:
        for name, v in physical_params(self.model.policy).items():
            self.logger.record(f"dilqr/{name}", v)
        s = dilqr_actor(self.model.policy).stats
        if s["solves"]:
            self.logger.record("dilqr/unconverged_frac", s["unconverged"] / s["solves"])
            self.logger.record("dilqr/mean_iterations", s["iterations"] / s["solves"])
            self.logger.record("dilqr/warm_dropped_frac", s["warm_dropped"] / s["solves"])
            for k in s:
                s[k] = 0

    def _on_rollout_end(self) -> None:
        self._record()

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last >= self.log_every:
            self._last = self.num_timesteps
            self._record()
        return True


class SystemIdCallback(BaseCallback):
    """Fits the DiLQR actor's physical parameters to the transitions the agent observes.

    The RL loss reaches the model only through the return, and a first control on its bound
    carries no gradient, so physical parameters learned by RL alone move slowly and can drift
    to any model that happens to act well. Every transition ``(s, a, s')`` the algorithm
    collects is also a supervised label for the model: this callback keeps them (a ring buffer
    of ``capacity``) and every ``every`` env steps takes ``steps`` Adam steps on
    :func:`dilqr_rl.models.transition_loss`,

        ``L(theta) = mean_i sum_j ((f(x_i, u_i; theta) - x'_i)_j / s_j)^2``

    with ``x = obs_to_state(obs)``, ``u`` the executed (clipped) action mapped to the
    controller's box, and ``s_j`` the standard deviation of ``x'_j - x_j`` over the buffer (so
    that every state coordinate counts). After each step the parameters are projected onto the
    model's declared lower bounds (:meth:`dilqr_rl.Dynamics.project_`). It works with PPO, A2C,
    SAC and TD3 alike (it reads the env step from the callback's locals, and an episode's last
    observation from ``infos[i]["terminal_observation"]``). The fit runs before the algorithm's
    own update of the same step, and before any callback listed after it, so an evaluation at
    step ``t`` sees a model fitted to the first ``t`` transitions only.

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
            self._opt = torch.optim.Adam(params, lr=self.lr)
        x, u, y = self._x[:self._n], self._u[:self._n], self._y[:self._n]
        scale = (y - x).std(0).clamp_min(1e-6) if self._n > 1 else None
        gen = torch.Generator().manual_seed(self._n)

        def loss_fn(idx: Tensor | None = None) -> Tensor:
            xs, us, ys = (x, u, y) if idx is None else (x[idx], u[idx], y[idx])
            return transition_loss(dyn, dyn.theta(), xs, us, ys, scale)

        try:
            with torch.no_grad():
                before = float(loss_fn())
            for _ in range(self.steps):
                idx = (torch.randint(self._n, (self.batch_size,), generator=gen)
                       if 0 < self.batch_size < self._n else None)
                saved = [p.detach().clone() for p in params]
                self._opt.zero_grad()
                loss_fn(idx).backward()
                self._opt.step()
                dyn.project_()
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
