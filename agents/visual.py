"""Control from pixels with DiLQR inside the network (DiLQR paper section 5.4): the models.

:class:`Encoder` maps ``F`` stacked grayscale frames ``(B, F, S, S)`` to a pendulum state
``(cos th, sin th, thdot)`` (the ``cos``/``sin`` pair normalized to unit norm, ``thdot`` scaled
by :data:`VEL_SCALE`); :class:`Decoder` mirrors it, rendering one frame (logits) from a state.
Between them:

- :class:`VisualDiLQR`: a :class:`dilqr_rl.DiLQR` layer with the pendulum's learnable
  physical parameters ``(g, m, l)`` and the task cost plans ``T`` steps from the encoded state;
  the decoder renders the planned states. The gradient of a loss on the decoded frames or on
  the planned controls reaches the encoder through ``x0`` and the physical parameters through
  the layer's implicit (fixed-point) gradient.
- :class:`LatentAR`: the baseline, the same encoder and decoder around an autoregressive latent
  dynamics network ``z' = z + MLP(z, u)``, rolled out with given controls.

Both return a :class:`Prediction`: the states ``(B, T+1, 3)`` and the frame logits
``(B, T+1, S, S)`` of the horizon steps asked for.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import dilqr_rl as dl

__all__ = ["VEL_SCALE", "Decoder", "Encoder", "LatentAR", "Prediction", "VisualDiLQR",
           "normalize_state", "state_features"]

#: ``thdot`` is carried as ``thdot / VEL_SCALE`` inside the networks (swing-up speeds are a few
#: rad/s), so every feature is of order one
VEL_SCALE = 4.0


def _levels(size: int) -> int:
    """Stride-2 stages from ``size`` down to 4 pixels (``size`` a power of two >= 8)."""
    k = int(round(math.log2(size))) - 2
    if isinstance(size, bool) or not isinstance(size, int) or size < 8 or 4 * 2**k != size:
        raise ValueError(f"size must be a power of two >= 8, got {size!r}")
    return k


def state_features(x: Tensor) -> Tensor:
    """States ``(..., 3)`` ``(cos, sin, thdot)`` -> network features ``(cos, sin,
    thdot / VEL_SCALE)``."""
    return torch.cat([x[..., :2], x[..., 2:] / VEL_SCALE], -1)


def normalize_state(h: Tensor) -> Tensor:
    """Raw encoder outputs ``(..., 3)`` -> states: ``(cos, sin)`` projected onto the unit
    circle (the pendulum's states live there), ``thdot = VEL_SCALE h_2``."""
    cs = h[..., :2] / torch.sqrt(h[..., :2].square().sum(-1, keepdim=True) + 1e-6)
    return torch.cat([cs, VEL_SCALE * h[..., 2:]], -1)


class Encoder(nn.Module):
    """``F`` stacked frames ``(B, F, S, S)`` in ``[0, 1]`` -> state ``(B, 3)``: stride-2
    convolutions (channels ``width, 2 width, 4 width, 4 width, ...``) down to 4x4, then two
    fully connected layers (the paper's encoder, smaller, without batch norm so that a
    closed-loop step and a training batch compute the same function).

    The convolutions see the ``F`` frames and their ``F - 1`` successive differences: the
    model's semi-implicit Euler step makes ``thdot_t = (th_t - th_{t-1}) / dt`` exactly, and
    the area a difference image sweeps is close to linear in that angle step, so the velocity
    is read from the differences (with the frames alone, a small encoder trained for minutes
    missed it by 0.4 rad/s on average, enough to drop every balance in closed loop).
    """

    def __init__(self, frames: int = 4, size: int = 64, width: int = 8, hidden: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 2 * frames - 1
        for i in range(_levels(size)):
            c_out = width * min(2**i, 4)
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * 16, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 3))
        self.frames, self.size = frames, size

    def forward(self, frames: Tensor) -> Tensor:
        """``frames (B, F, S, S)`` (uint8 ``0..255`` or float ``[0, 1]``) -> ``(B, 3)``."""
        if frames.dim() != 4 or frames.shape[1:] != (self.frames, self.size, self.size):
            raise ValueError(f"frames must have shape (B, {self.frames}, {self.size}, "
                             f"{self.size}), got {tuple(frames.shape)}")
        if frames.dtype == torch.uint8:
            frames = frames.float() / 255.0
        w = self.head[1].weight
        frames = frames.to(w)
        inp = torch.cat([frames, frames[:, 1:] - frames[:, :-1]], 1)
        return normalize_state(self.head(self.conv(inp)))


class Decoder(nn.Module):
    """State ``(..., 3)`` -> frame logits ``(..., S, S)``: two fully connected layers to a
    4x4 map, then transposed stride-2 convolutions up to ``S`` (the encoder mirrored; the
    sigmoid of the logits is the image)."""

    def __init__(self, size: int = 64, width: int = 8, hidden: int = 64):
        super().__init__()
        k = _levels(size)
        chans = [width * min(2**i, 4) for i in reversed(range(k))] + [1]
        self.head = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(),
                                  nn.Linear(hidden, chans[0] * 16), nn.ReLU())
        layers: list[nn.Module] = []
        for i in range(k):
            layers.append(nn.ConvTranspose2d(chans[i], chans[i + 1], 4, stride=2, padding=1))
            if i < k - 1:
                layers.append(nn.ReLU())
        self.deconv = nn.Sequential(*layers)
        self.c0, self.size = chans[0], size

    def forward(self, x: Tensor) -> Tensor:
        """States ``(..., 3)`` -> logits ``(..., S, S)``."""
        lead = x.shape[:-1]
        w = self.head[0].weight
        h = self.head(state_features(x.to(w)).reshape(-1, 3)).reshape(-1, self.c0, 4, 4)
        return self.deconv(h).reshape(*lead, self.size, self.size)


@dataclass
class Prediction:
    """What a visual model predicts from one frame stack.

    :ivar x: predicted states ``(B, T+1, 3)`` (step 0: the encoded state)
    :ivar logits: frame logits ``(B, K, S, S)`` of the ``K`` horizon steps asked for
    :ivar u: planned controls ``(B, T, 1)`` (the DiLQR model), or ``None``
    :ivar converged: ``(B,)`` whether each plan converged (all ``True`` for the baseline)
    """

    x: Tensor
    logits: Tensor
    u: Tensor | None
    converged: Tensor


def _steps(steps: Tensor | None, T: int, device: torch.device) -> Tensor:
    return torch.arange(T + 1, device=device) if steps is None else steps


class VisualDiLQR(nn.Module):
    """Encoder -> DiLQR (learnable ``(g, m, l)``, the task cost and box) -> decoder.

    :param horizon: ``T``
    :param init_params: the model's initial physical parameters (default the task's
        ``learn_init``, a wrong guess); the cost is the task's and is not learned
    :param max_iter: iLQR iterations per solve (unconverged samples get no gradient)
    :param grad: the layer's gradient mode (``"implicit"``: the exact fixed-point gradient)
    :param size, frames, width, hidden: the encoder / decoder sizes
    """

    def __init__(self, horizon: int = 20, init_params: dict[str, float] | None = None,
                 max_iter: int = 30, grad: str = "implicit", size: int = 64, frames: int = 4,
                 width: int = 8, hidden: int = 64):
        super().__init__()
        task = dl.tasks.get("pendulum")
        params = dict(task.learn_init or {}) if init_params is None else dict(init_params)
        self.encoder = Encoder(frames, size, width, hidden)
        self.decoder = Decoder(size, width, hidden)
        self.dilqr = dl.DiLQR(task.dynamics(dtype=torch.float64, **params),
                              task.make_cost().double().requires_grad_(False), horizon,
                              task.u_lower, task.u_upper, grad=grad,
                              config=task.config(max_iter=max_iter, tol=1e-6,
                                                 on_unconverged="detach"))
        self.horizon = horizon

    def plan(self, x0: Tensor, u_init: Tensor | None = None) -> dl.Solution:
        """The DiLQR plan from states ``x0 (B, 3)``, solved in float64 (``u_init (B, T, 1)``
        a warm start; default zeros)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dl.UnconvergedWarning)  # counted by the caller
            return self.dilqr(x0.double(), u_init=u_init)

    def forward(self, frames: Tensor, steps: Tensor | None = None,
                u_init: Tensor | None = None, detach_plan: bool = False) -> Prediction:
        """Encode ``frames (B, F, S, S)``, plan, decode the plan's states at ``steps (K,)``
        (default all ``T+1``).

        :param u_init: warm start of the plan ``(B, T, 1)`` (training starts from the expert's
            controls: the same fixed point, fewer iterations)
        :param detach_plan: cut the graph at the solve (the plan as a constant): the ablation
            that shows what the implicit gradient contributes
        """
        x0 = self.encoder(frames)
        sol = self.plan(x0.detach() if detach_plan else x0, u_init)
        x, u = sol.x.to(x0.dtype), sol.u.to(x0.dtype)
        if detach_plan:
            x, u = x.detach(), u.detach()
        x = torch.cat([x0[:, None], x[:, 1:]], 1)  # step 0 is the encoded state itself
        k = _steps(steps, self.horizon, x.device)
        return Prediction(x, self.decoder(x[:, k]), u, sol.converged)


class LatentAR(nn.Module):
    """The baseline: the same encoder and decoder around ``z_{k+1} = z_k + MLP([z_k, u_k])``
    (the latent is 3-d like the state; rolled out with the controls it is given)."""

    def __init__(self, horizon: int = 20, size: int = 64, frames: int = 4, width: int = 8,
                 hidden: int = 64):
        super().__init__()
        self.encoder = Encoder(frames, size, width, hidden)
        self.decoder = Decoder(size, width, hidden)
        self.u_max = float(dl.tasks.get("pendulum").u_upper)
        self.dynamics = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                      nn.Tanh(), nn.Linear(hidden, 3))
        self.horizon = horizon

    def forward(self, frames: Tensor, u: Tensor, steps: Tensor | None = None) -> Prediction:
        """Encode ``frames (B, F, S, S)``, roll the latent out under ``u (B, T, 1)``, decode
        at ``steps (K,)`` (default all ``T+1``)."""
        z = [self.encoder(frames)]
        u = u.to(z[0])
        scale = torch.tensor([1.0, 1.0, VEL_SCALE], dtype=z[0].dtype, device=z[0].device)
        for t in range(u.shape[1]):
            f = torch.cat([state_features(z[-1]), u[:, t] / self.u_max], -1)
            z.append(z[-1] + scale * self.dynamics(f))
        x = torch.stack(z, 1)
        k = _steps(steps, u.shape[1], x.device)
        ok = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        return Prediction(x, self.decoder(x[:, k]), None, ok)
