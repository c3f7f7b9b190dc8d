"""Expert data for control from pixels (DiLQR paper section 5.4).

States come from closed-loop episodes of the pendulum task's MPC with the true model (the
task's controller, replanning every step, warm-started), from hanging starts (perturbed) and
from the env's start distribution, with noise added to the applied torque so that the data
also covers states next to the expert's path. Every state ``x_t`` of an episode is one sample:

- its image history: the states ``x_{t-F+1}, ..., x_t`` of the episode (before the episode's
  start the first state repeats, as :class:`dilqr_rl.envs.PixelObservation` does after a
  reset), rendered on the fly by :func:`dilqr_rl.envs.pixels.render_pendulum`;
- its expert plan: the true-model iLQR solved from ``x_t`` from zero controls to
  ``tol = 1e-8`` (as the imitation experts of :mod:`dilqr_rl.agents.data`): controls
  ``u (T, 1)`` and the states ``x (T+1, 3)`` they produce on the true pendulum, whose rendered
  frames are the *true future frames* a model's prediction is scored against.

Splits are by episode (train episodes first, then test episodes).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

import dilqr_rl as dl
from dilqr_rl.envs.pixels import render_pendulum

__all__ = ["VisualData", "hanging_starts", "make_visual_data"]

F64 = torch.float64


def hanging_starts(gen: torch.Generator, n: int, angle: float = 0.5,
                   speed: float = 0.5) -> Tensor:
    """``n`` hanging start states ``(n, 3)`` float64: ``th = pi + U(-angle, angle)``,
    ``thdot = U(-speed, speed)``."""
    th = math.pi + (torch.rand(n, generator=gen, dtype=F64) * 2 - 1) * angle
    dth = (torch.rand(n, generator=gen, dtype=F64) * 2 - 1) * speed
    return torch.stack([th.cos(), th.sin(), dth], -1)


@dataclass
class VisualData:
    """Samples of one split.

    :ivar history: the states behind each sample's frames ``(N, F, 3)``, oldest first
    :ivar x: the expert plan's states ``(N, T+1, 3)`` (``x[:, 0]`` the current state)
    :ivar u: the expert plan's controls ``(N, T, 1)``
    :ivar episode: each sample's episode index ``(N,)`` and :ivar t: its step ``(N,)``
    """

    history: Tensor
    x: Tensor
    u: Tensor
    episode: Tensor
    t: Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, keep: Tensor) -> VisualData:
        """The samples where ``keep (N,)`` (bool) is true."""
        return VisualData(self.history[keep], self.x[keep], self.u[keep], self.episode[keep],
                          self.t[keep])

    def frames(self, idx: Tensor, size: int) -> Tensor:
        """The image stacks ``(b, F, S, S)`` float32 of samples ``idx (b,)``."""
        return render_pendulum(self.history[idx].float(), size)

    def future(self, idx: Tensor, steps: Tensor, size: int) -> Tensor:
        """The true frames ``(b, K, S, S)`` of samples ``idx`` at horizon ``steps (K,)``."""
        return render_pendulum(self.x[idx][:, steps].float(), size)


def _episodes(starts: Tensor, steps: int, noise: float, gen: torch.Generator) -> Tensor:
    """Closed-loop true-model MPC from ``starts (E, 3)``: states ``(E, steps+1, 3)``."""
    task = dl.tasks.get("pendulum")
    ctrl = task.controller(config=task.config(max_iter=30, tol=1e-6, on_unconverged="detach"))
    ctrl.reset()
    xs = [starts]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.UnconvergedWarning)  # capped replans: expected
        for _ in range(steps):
            u = ctrl.act(xs[-1])
            u = u + noise * torch.randn(u.shape, generator=gen, dtype=F64)
            u = u.clamp(task.u_lower, task.u_upper)
            xs.append(ctrl.dynamics(xs[-1], u))
    return torch.stack(xs, 1)


def _expert_plans(x0: Tensor, horizon: int, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """True-model plans from ``x0 (N, 3)`` from zero controls: ``x (N, T+1, 3)``,
    ``u (N, T, 1)``."""
    task = dl.tasks.get("pendulum")
    ctrl = task.controller(horizon, config=task.config(max_iter=100, tol=1e-8))
    xs, us = [], []
    with torch.no_grad():
        for i in range(0, x0.shape[0], chunk):
            sol = ctrl(x0[i:i + chunk])
            xs.append(sol.x)
            us.append(sol.u)
    return torch.cat(xs), torch.cat(us)


def make_visual_data(episodes: int, steps: int, horizon: int = 20, frames: int = 4,
                     seed: int = 0, noise: float = 0.5, hanging: float = 0.5
                     ) -> VisualData:
    """Expert samples from ``episodes`` closed-loop episodes of ``steps`` steps each.

    :param horizon: ``T`` of the expert plans
    :param frames: ``F``, the frames per image stack
    :param seed: seeds the starts and the torque noise
    :param noise: std of the Gaussian noise on the applied torque (clipped to the box)
    :param hanging: fraction of episodes starting hanging (:func:`hanging_starts`); the rest
        from the env's start distribution (the task's ``sample_start``)
    """
    for name, v, lo in (("episodes", episodes, 1), ("steps", steps, 1), ("horizon", horizon, 1),
                        ("frames", frames, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if not 0.0 <= hanging <= 1.0 or not noise >= 0.0:
        raise ValueError(f"hanging must be in [0, 1] and noise >= 0, got {hanging}, {noise}")
    task = dl.tasks.get("pendulum")
    gen = torch.Generator().manual_seed(seed)
    n_hang = round(hanging * episodes)
    rng = np.random.default_rng(seed)
    env_starts = [task.sample_start(rng) for _ in range(episodes - n_hang)]
    starts = torch.cat([hanging_starts(gen, n_hang),
                        torch.tensor(np.array(env_starts), dtype=F64).reshape(-1, 3)])
    xs = _episodes(starts, steps, noise, gen)  # (E, steps+1, 3)
    E, T1 = xs.shape[0], steps
    t = torch.arange(T1).repeat(E)
    ep = torch.arange(E).repeat_interleave(T1)
    back = (t[:, None] + torch.arange(1 - frames, 1)[None]).clamp(min=0)  # (N, F)
    history = xs[ep[:, None], back]
    x, u = _expert_plans(xs[ep, t], horizon)
    return VisualData(history, x, u, ep, t)

