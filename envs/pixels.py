"""The pendulum seen as images (DiLQR paper section 5.4): a line from the image centre at the
pendulum's angle, grayscale, several frames stacked.

:func:`render_pendulum` draws a batch of states with torch (no MuJoCo: a distance-to-segment
test per pixel, anti-aliased over one pixel), so expert data and training batches are rendered
on the fly. :class:`PixelObservation` is the Gymnasium observation wrapper: it renders the
wrapped env's true state after every ``reset`` and ``step`` and returns the last ``frames``
images, oldest first, as ``uint8 (frames, size, size)`` (channel-first, the image layout that
Stable-Baselines3's ``CnnPolicy`` and vector envs accept).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

__all__ = ["PixelObservation", "render_pendulum"]

#: the rod's length and line width as fractions of the image side
ROD_LENGTH, ROD_WIDTH = 0.42, 1.0 / 20.0


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8 (pixels per side), got {size!r}")
    return size


def render_pendulum(x: Tensor, size: int = 64) -> Tensor:
    """Grayscale images of pendulum states: a line from the centre to the rod's tip.

    ``th = 0`` (upright) points up the image, ``th`` grows clockwise on screen. The rod is
    ``ROD_LENGTH * size`` long and ``ROD_WIDTH * size`` wide, its edge anti-aliased over one
    pixel (so the image is a continuous function of the angle).

    :param x: states ``(..., 3)`` ``(cos th, sin th, thdot)`` (only the angle is drawn)
    :param size: image side in pixels
    :return: ``(..., size, size)`` in ``[0, 1]``, ``x``'s dtype (float32 for integer input)
    """
    size = _check_size(size)
    if not isinstance(x, Tensor) or x.shape[-1:] != (3,):
        raise ValueError(f"x must be a tensor of states (..., 3), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    x = x if x.is_floating_point() else x.float()
    th = torch.atan2(x[..., 1], x[..., 0])[..., None, None]
    half = size / 2.0
    coords = torch.arange(size, dtype=x.dtype, device=x.device) + 0.5 - half
    px, py = coords[None, :], coords[:, None]  # column (right), row (down)
    L = ROD_LENGTH * size
    ex, ey = th.sin(), -th.cos()  # unit vector centre -> tip, in (right, down)
    t = (px * ex + py * ey).clamp(0.0, L)  # projection onto the segment
    d = torch.sqrt((px - t * ex) ** 2 + (py - t * ey) ** 2)
    return (ROD_WIDTH * size / 2.0 + 0.5 - d).clamp(0.0, 1.0)


class PixelObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Observe a pendulum env through rendered frames: the last ``frames`` images of its
    true state, oldest first (:func:`render_pendulum`).

    ## Observation space

    ``Box(0, 255, (frames, size, size), uint8)``. After ``reset`` every slot holds the first
    image (the velocity is not visible until the pendulum has moved).

    ## Arguments

    ``PixelObservation(gymnasium.make("dilqr_rl/Pendulum-v0"), size=64, frames=4)``; with
    SB3, ``make_vec_env("dilqr_rl/Pendulum-v0", n_envs=4, wrapper_class=PixelObservation)``.
    The wrapped env must expose the pendulum state ``(cos th, sin th, thdot)`` as
    ``env.unwrapped.state`` (:class:`dilqr_rl.envs.PendulumEnv` and the MuJoCo pendulum do).
    """

    def __init__(self, env: gym.Env, size: int = 64, frames: int = 4):
        gym.utils.RecordConstructorArgs.__init__(self, size=size, frames=frames)  # env specs
        gym.ObservationWrapper.__init__(self, env)
        self.size = _check_size(size)
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be an int >= 1, got {frames!r}")
        state = getattr(env.unwrapped, "state", None)
        if state is None or np.shape(state) != (3,):
            raise ValueError(f"PixelObservation needs a pendulum env whose unwrapped.state is "
                             f"(cos th, sin th, thdot); {env.unwrapped!r} has state "
                             f"{None if state is None else np.shape(state)}")
        self.frames = frames
        self.observation_space = gym.spaces.Box(0, 255, (frames, size, size), np.uint8)
        self._stack: deque[np.ndarray] = deque(maxlen=frames)

    def _frame(self) -> np.ndarray:
        x = torch.as_tensor(self.env.unwrapped.state, dtype=torch.float32)
        return (render_pendulum(x, self.size) * 255.0).round().to(torch.uint8).numpy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        self._stack.clear()
        return super().reset(seed=seed, options=options)

    def observation(self, observation: Any) -> np.ndarray:
        """The frame stack ``(frames, size, size)`` uint8 after the env's latest reset/step."""
        frame = self._frame()
        if not self._stack:  # just reset: the first image fills every slot
            self._stack.extend([frame] * self.frames)
        else:
            self._stack.append(frame)
        return np.stack(self._stack)

