"""Headless rendering through ``mujoco.Renderer``, and saving episodes as GIF / MP4.

Every environment of :mod:`dilqr_rl.envs` renders the same way: a MuJoCo scene built from
the env's MJCF (:mod:`dilqr_rl.envs.mjcf`), posed from the current state. The analytic envs
never step that model; they only set its joint positions (or its mocap pose) and render.

``mujoco`` is imported lazily, on the first render or MuJoCo-simulated env, and before that
import ``MUJOCO_GL`` defaults to ``"egl"`` (headless GPU/CPU rendering that needs no extra
packages on Linux); set ``MUJOCO_GL=osmesa`` (software) or ``glfw`` (needs a display) before
the first use to choose otherwise. ``render_mode="human"`` uses ``mujoco.viewer`` and needs a
display; without one it raises :class:`RenderError` with what to do instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import gymnasium as gym

__all__ = [
    "RenderError", "SceneRenderer", "display_available", "import_mujoco", "record_episode",
    "save_video",
]


class RenderError(RuntimeError):
    """Rendering is impossible in this setting (no display for ``"human"``, no codec, ...)."""


def import_mujoco() -> ModuleType:
    """Import ``mujoco``, choosing the headless EGL backend unless the user has chosen one.

    ``MUJOCO_GL`` must be set before ``mujoco`` is first imported; if ``mujoco`` is already
    imported this changes nothing.
    """
    if "mujoco" not in sys.modules:
        os.environ.setdefault("MUJOCO_GL", "egl")
    import mujoco

    return mujoco


def display_available() -> bool:
    """Whether a window can be opened (a display on Linux; assumed elsewhere)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class SceneRenderer:
    """Offscreen renderer of one MJCF scene.

    :param xml: the MJCF string (its ``<visual><global offwidth offheight>`` must be at least
        ``width x height``)
    :param width: frame width in pixels
    :param height: frame height in pixels
    :param camera: free-camera settings ``lookat (3,)``, ``distance``, ``azimuth``,
        ``elevation`` (degrees)
    """

    def __init__(self, xml: str, width: int, height: int, camera: dict[str, Any]):
        mujoco = import_mujoco()
        self._mj = mujoco
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        try:
            self._renderer = mujoco.Renderer(self.model, height=height, width=width)
        except Exception as e:  # no GL context: say which backends exist
            raise RenderError(
                f"could not create a MuJoCo renderer with MUJOCO_GL="
                f"{os.environ.get('MUJOCO_GL')!r} ({e}); set MUJOCO_GL=egl (GPU or Mesa EGL) "
                "or MUJOCO_GL=osmesa (software) before importing mujoco") from e
        self.camera = mujoco.MjvCamera()
        self.camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        self.set_camera(**camera)
        self._viewer: Any = None

    def set_camera(self, lookat: Sequence[float], distance: float, azimuth: float,
                   elevation: float) -> None:
        """Point the free camera."""
        self.camera.lookat[:] = np.asarray(lookat, dtype=np.float64)
        self.camera.distance = float(distance)
        self.camera.azimuth = float(azimuth)
        self.camera.elevation = float(elevation)

    def pose(self, qpos: np.ndarray | None = None, mocap_pos: np.ndarray | None = None,
             mocap_quat: np.ndarray | None = None) -> None:
        """Set joint positions and/or the mocap pose and recompute the kinematics."""
        if qpos is not None:
            self.data.qpos[:] = qpos
        if mocap_pos is not None:
            self.data.mocap_pos[0] = mocap_pos
        if mocap_quat is not None:
            self.data.mocap_quat[0] = mocap_quat
        self._mj.mj_kinematics(self.model, self.data)

    def render(self, data: Any = None) -> np.ndarray:
        """An ``(H, W, 3) uint8`` frame of ``data`` (default this renderer's own data)."""
        self._renderer.update_scene(self.data if data is None else data, camera=self.camera)
        return self._renderer.render().copy()

    def show(self, data: Any = None) -> None:
        """Show the scene in an interactive window (``render_mode="human"``)."""
        if not display_available():
            raise RenderError(_NO_DISPLAY)
        if self._viewer is None:
            import mujoco.viewer

            self._viewer = mujoco.viewer.launch_passive(
                self.model, self.data if data is None else data,
                show_left_ui=False, show_right_ui=False)
        self._viewer.sync()

    def close(self) -> None:
        if self._viewer is not None:
            self._viewer.close()
            self._viewer = None
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


_NO_DISPLAY = ("render_mode='human' needs a display, and none was found (DISPLAY and "
               "WAYLAND_DISPLAY are unset). Use render_mode='rgb_array' and save the frames "
               "with dilqr_rl.envs.save_video / record_episode instead.")


def check_human_render() -> None:
    """Raise :class:`RenderError` now if ``render_mode="human"`` cannot work here."""
    if not display_available():
        raise RenderError(_NO_DISPLAY)


def save_video(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 20.0) -> Path:
    """Save ``(H, W, 3) uint8`` frames as a GIF or MP4 (chosen by the file suffix).

    MP4 needs the ``imageio-ffmpeg`` package; GIF needs only ``imageio`` (Pillow).

    :param frames: the frames, all of one size
    :param path: ``*.gif`` or ``*.mp4``
    :param fps: frames per second
    :return: the path written
    """
    try:
        import imageio.v3 as iio
    except ImportError as e:  # pragma: no cover - imageio is a dependency
        raise RenderError("saving videos needs imageio: pip install imageio") from e
    path = Path(path)
    if not frames:
        raise ValueError("no frames to save")
    suffix = path.suffix.lower()
    arr = np.stack([np.asarray(f, dtype=np.uint8) for f in frames])
    if suffix == ".gif":
        iio.imwrite(path, arr, extension=".gif", duration=1000.0 / fps, loop=0)
    elif suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError as e:
            raise RenderError("saving MP4 needs imageio-ffmpeg: pip install imageio-ffmpeg "
                              "(or save a .gif)") from e
        iio.imwrite(path, arr, extension=".mp4", fps=fps, codec="libx264")
    else:
        raise ValueError(f"path must end in .gif or .mp4, got {str(path)!r}")
    return path


def record_episode(env: gym.Env, policy: Callable[[np.ndarray], np.ndarray] | None,
                   path: str | os.PathLike, *, seed: int | None = None,
                   max_steps: int | None = None, fps: float | None = None) -> dict[str, Any]:
    """Run one episode with ``policy`` (``None``: random actions) and save it as GIF/MP4.

    :param env: an env made with ``render_mode="rgb_array"``
    :param policy: ``obs -> action`` (in the env's action space)
    :param path: ``*.gif`` or ``*.mp4``
    :param seed: reset seed
    :param max_steps: stop after this many steps (default: when the episode ends)
    :param fps: default the env's ``metadata["render_fps"]``
    :return: ``{"path", "return", "steps", "final_info"}``
    """
    if env.render_mode != "rgb_array":
        raise ValueError(f"record_episode needs an env made with render_mode='rgb_array', got "
                         f"{env.render_mode!r}")
    obs, info = env.reset(seed=seed)
    frames = [env.render()]
    total, steps = 0.0, 0
    while max_steps is None or steps < max_steps:
        action = env.action_space.sample() if policy is None else policy(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        frames.append(env.render())
        total += float(reward)
        steps += 1
        if terminated or truncated:
            break
    fps = float(fps or env.metadata.get("render_fps", 20))
    out = save_video(frames, path, fps=fps)
    return {"path": out, "return": total, "steps": steps, "final_info": info}
