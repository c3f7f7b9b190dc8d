"""Closed-loop MPC with a task's own controller: ``dilqr-rl mpc``.

:class:`MPCPolicy` replans every env step from the true state, for a batch of envs in one
solve, with the task's horizon (shrinking to a fixed end where the task says so, as the
rocket's), warm-started from the previous plan shifted by one step. :func:`run_mpc` runs it on
a task's env from several starts and judges each episode by the task's ``success``;
:func:`main_mpc` prints the episodes and writes JSON, a plot of the trajectories and a GIF of
the first episode.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import dilqr_rl as dl

from .cliargs import dataclass_parser, parse
from .episodes import episode_success, run_episodes
from .fields import arg, check_fields
from .plotting import pyplot, save_figure

__all__ = ["MPCArgs", "MPCPolicy", "main_mpc", "mpc_episodes", "run_mpc"]


class MPCPolicy:
    """Receding-horizon DiLQR for a batch of ``B`` envs stepped in lockstep.

    :param task: the task (its controller, cost, bounds, horizon rule)
    :param horizon: the first horizon (default the task's)
    :param model_params: physical parameters of the controller's model that differ from the
        truth (a wrong model); default the true model
    :param max_iter: iLQR iterations per replan (a replan may stop unconverged: it is used)

    A replan whose model rollout or Newton step is not finite for some samples (a wrong model
    that has let the system tumble can overflow over the horizon) sets only those samples
    apart (``ILQRConfig.on_nonfinite="isolate"``): the others are planned as usual. The
    set-apart ones are planned again from no warm start; if that fails too, they keep flying
    their previous plan, shifted by one step, as MPC implementations do when the solver fails,
    and each such sample-step is counted in ``failures``. A failure at the first step of an
    episode, with no plan to fall back on, is raised (:class:`~dilqr_rl.NonFiniteError`,
    naming the samples).
    """

    def __init__(self, task: dl.tasks.Task, horizon: int | None = None,
                 model_params: dict[str, float] | None = None, max_iter: int = 30,
                 tol: float = 1e-6):
        self.task, self.horizon = task, horizon or task.horizon
        self.model_params = dict(model_params or {})
        self.config = task.config(max_iter=max_iter, tol=tol, on_unconverged="detach",
                                  on_nonfinite="isolate")
        self._ctrls: dict[int, dl.DiLQR] = {}
        self.reset()

    def reset(self) -> None:
        """Start new episodes: step 0, no warm start."""
        self.step, self._warm = 0, None
        self.iterations: list[float] = []
        self.failures = 0

    def controller(self, horizon: int) -> dl.DiLQR:
        if horizon not in self._ctrls:
            self._ctrls[horizon] = self.task.controller(horizon, model_params=self.model_params,
                                                        config=self.config)
        return self._ctrls[horizon]

    def __call__(self, x0: Tensor) -> Tensor:
        """The first controls ``(B, m)`` of the plans from the true states ``x0 (B, n)``."""
        return self.plan(x0)

    def plan(self, x0: Tensor, params: Tensor | None = None) -> Tensor:
        """One replan from ``x0 (B, n)`` (with per-sample model parameters ``params (B, p)``
        if given): the first controls ``(B, m)``; the plan is kept as the next warm start."""
        H = self.task.horizon_at(self.step, self.horizon)
        warm = self._warm
        if warm is not None:  # the shifted plan, cut or padded to this step's horizon
            warm = warm[:, :H] if warm.shape[1] >= H else torch.cat(
                [warm, warm[:, -1:].expand(-1, H - warm.shape[1], -1)], 1)
        u, failed = self._solve(H, x0, params, warm)
        if bool(failed.any()) and warm is not None:
            # the shifted plan may be what overflows: plan those samples from scratch
            r = torch.nonzero(failed)[:, 0]
            u_r, f_r = self._solve(H, x0[r], params if params is None or params.dim() == 1
                                   else params[r], None)
            u, failed = u.index_copy(0, r, u_r), failed.index_copy(0, r, f_r)
        if bool(failed.any()):
            bad = torch.nonzero(failed)[:, 0].tolist()
            if warm is None:
                raise dl.NonFiniteError(
                    f"MPC: the plan from the first state is not finite for samples {bad[:8]} "
                    "(the model's rollout or Newton step overflows there) and there is no "
                    "previous plan to fly; check the model's parameters and x0", samples=bad)
            self.failures += len(bad)
            u = torch.where(failed[:, None, None], warm, u)  # keep flying the previous plan
        self._warm = torch.cat([u[:, 1:], u[:, -1:]], 1)
        self.step += 1
        return u[:, 0]

    def _solve(self, H: int, x0: Tensor, params: Tensor | None, warm: Tensor | None
               ) -> tuple[Tensor, Tensor]:
        """The plans ``(B, H, m)`` from ``x0 (B, n)`` and which samples failed ``(B,)``."""
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", dl.UnconvergedWarning)  # capped replans: expected
            sol = self.controller(H)(x0, params=params, u_init=warm)
        self.iterations.append(float(sol.iterations.double().mean()))
        return sol.u, sol.failed


def mpc_episodes(envs: list[Any], policy: MPCPolicy, seed: int,
                 trace: dict[str, Any] | None = None) -> list[float]:
    """One closed-loop episode per env of ``envs`` (seeds ``seed, seed+1, ...``), in lockstep
    (:func:`~dilqr_rl.agents.episodes.run_episodes`, ``trace`` as there), ``policy`` planning
    for all of them at once from their true states; returns the episode returns."""
    policy.reset()
    to_action = envs[0].unwrapped.control_to_action

    def act(obs: np.ndarray) -> np.ndarray:
        x = torch.tensor(np.stack([e.unwrapped.state for e in envs]), dtype=torch.float64)
        return np.stack([to_action(u) for u in policy(x)])

    return run_episodes(envs, seed, act, trace)


def run_mpc(env_id: str, episodes: int, seed: int = 0, *, horizon: int | None = None,
            model_params: dict[str, float] | None = None, max_iter: int = 30,
            env_kwargs: dict[str, Any] | None = None, render: bool = False,
            max_steps: int | None = None) -> dict[str, Any]:
    """Closed-loop MPC on ``episodes`` starts of ``env_id`` (seeds ``seed, seed+1, ...``), all
    in one batch. Returns ``returns``, ``success`` (the task's rule), ``infos``, ``steps``,
    ``states`` (``(steps+1, E, n)`` list), ``frames`` (episode 0, if ``render``), timing,
    ``plan_failures`` (sample-steps flown on the previous plan, :class:`MPCPolicy`).
    ``max_steps`` shortens the env's time limit."""
    import gymnasium as gym

    import dilqr_rl.envs  # noqa: F401  (registers the ids)

    task = dl.tasks.for_env(env_id)
    limit = {} if max_steps is None else {"max_episode_steps": max_steps}
    envs = [gym.make(env_id, **limit, **(env_kwargs or {}),
                     **({"render_mode": "rgb_array"} if render and i == 0 else {}))
            for i in range(episodes)]
    policy = MPCPolicy(task, horizon, model_params, max_iter)
    trace: dict[str, Any] = {}
    t0 = time.perf_counter()
    rets = mpc_episodes(envs, policy, seed, trace)
    wall = time.perf_counter() - t0
    ok = episode_success(envs, trace["infos"]) or [math.nan] * len(envs)
    for e in envs:
        e.close()
    infos = [{k: v for k, v in info.items() if isinstance(v, (bool, int, float))}
             for info in trace["infos"]]
    return {"env": env_id, "task": task.name, "state_names": list(task.state_names),
            "returns": rets, "success": ok, "infos": infos,
            "steps": trace["steps"], "states": [s.tolist() for s in trace["obs"]],
            "frames": trace["frames"], "wall_s": wall,
            "s_per_step": wall / max(max(trace["steps"]), 1),
            "mean_iterations": float(np.mean(policy.iterations)),
            "plan_failures": policy.failures}


def plot_states(result: dict[str, Any], path: str | Path) -> Path:
    """Every state coordinate over time, one line per episode."""
    plt = pyplot()

    X = np.array(result["states"])  # (steps+1, E, n)
    n = X.shape[-1]
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for j in range(rows * cols):
        ax = axes[j // cols, j % cols]
        if j >= n:
            ax.axis("off")
            continue
        for e in range(X.shape[1]):
            ax.plot(X[: result["steps"][e] + 1, e, j], lw=1,
                    color="C2" if result["success"][e] is True else "C3")
        ax.set_title(result["state_names"][j], fontsize=9)
        ax.set_xlabel("env step", fontsize=8)
        ax.grid(alpha=0.3)
    rate = np.mean([s is True for s in result["success"]])
    fig.suptitle(f"closed-loop MPC on {result['env']}: {100 * rate:.0f} % success "
                 "(green: success, red: not)")
    return save_figure(fig, path, dpi=90)


@dataclass
class MPCArgs:
    """Settings of ``dilqr-rl mpc``."""

    env: str = arg("pendulum", "a task (its env) or the Gymnasium id of a task's env")
    episodes: int = arg(8, "start states (the env's start distribution), solved as one batch")
    seed: int = arg(0, "seed of the first start; the others follow")
    horizon: int | None = arg(None, "the first MPC horizon (default the task's)")
    max_iter: int = arg(30, "iLQR iterations per replan")
    steps: int | None = arg(None, "episode length (default the env's time limit)")
    model_params: str = arg("", "a wrong model: e.g. 'm=1.4' (default the true model)")
    out: str = arg("runs/mpc", "output folder (JSON, PNG, GIF)")
    gif: bool = arg(True, "record the first episode as a GIF")


def main_mpc(argv: list[str]) -> int:
    """``dilqr-rl mpc``: closed-loop MPC on a task's env; prints every episode."""
    from .rl_args import parse_kv

    p = dataclass_parser(MPCArgs, "dilqr-rl mpc", "Closed-loop MPC with a task's own "
                         "controller (the true model unless --model-params), replanning every "
                         "step; writes JSON, a plot of the trajectories and a GIF.")
    a = parse(MPCArgs, argv, p, check=lambda a: check_fields(
        a, {"episodes": 1, "seed": 0, "horizon": 1, "max_iter": 1, "steps": 1}))
    env_id = dl.tasks.get(a.env).env_id if a.env in dl.tasks.TASKS else a.env
    try:
        dl.tasks.for_env(env_id)
        params = parse_kv(a.model_params)
    except ValueError as e:
        p.error(f"{'--model-params' if 'model' in str(e) else '--env'}: {e}")
    torch.set_num_threads(1)
    r = run_mpc(env_id, a.episodes, a.seed, horizon=a.horizon, model_params=params,
                max_iter=a.max_iter, render=a.gif, max_steps=a.steps)
    for i, (ret, ok, info, k) in enumerate(zip(r["returns"], r["success"], r["infos"],
                                               r["steps"], strict=True)):
        extra = ", ".join(f"{key} {v:.3g}" for key, v in info.items() if key != "terminal_cost")
        print(f"episode {i}: return {ret:9.2f}, {k} steps, success {ok}" +
              (f" ({extra})" if extra else ""))
    rate = float(np.mean([s is True for s in r["success"]]))
    print(f"{env_id}: success {100 * rate:.0f} % of {a.episodes}, mean return "
          f"{np.mean(r['returns']):.2f}, {r['wall_s']:.1f} s ({r['s_per_step'] * 1e3:.0f} ms "
          f"per batched step, {r['mean_iterations']:.1f} iterations per replan"
          + (f", {r['plan_failures']} steps on the previous plan after a failed replan"
             if r["plan_failures"] else "") + ")")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"mpc_{env_id.split('/')[-1]}"
    frames = r.pop("frames")
    stem.with_suffix(".json").write_text(json.dumps({"args": asdict(a), **r}))
    png = plot_states(r, stem.with_suffix(".png"))
    written = [str(stem.with_suffix(".json")), str(png)]
    if frames:
        from dilqr_rl.envs import save_video

        written.append(str(save_video(frames, stem.with_suffix(".gif"))))
    print("wrote " + ", ".join(written), file=sys.stdout)
    return 0
