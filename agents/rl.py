"""Train a DiLQR actor (or an MLP baseline) with Stable-Baselines3: ``dilqr-rl train``.

CleanRL-style: one :class:`TrainArgs` dataclass (one documented field per flag, in
:mod:`.rl_args`), one linear :func:`train` function; the run's files are written and read by
:mod:`.checkpoints`. The run directory ``<out_dir>/<run_name>/`` holds

- ``tb/``: TensorBoard logs (``tensorboard --logdir runs``), including ``eval/mean_reward`` and,
  for DiLQR actors, ``dilqr/<param>`` and ``dilqr/unconverged_frac``;
- ``checkpoints/``: periodic ``model_<steps>_steps.zip`` (and the replay buffer for SAC/TD3),
  each written atomically (temporary file, then ``os.replace``), and ``manifest.json``: the
  SHA-256 of every checkpoint this run wrote;
- ``evaluations.jsonl``: one line per periodic deterministic evaluation (appended, so it
  survives resumes; unreadable lines are skipped when read);
- ``final_model.zip`` and ``learning_curve.png``.

Rerunning with ``--resume`` continues from the newest checkpoint that is listed in the
manifest, matches its hash and loads (falling back to older ones); evaluation records past
that checkpoint are dropped. Without ``--resume`` a run starts from scratch. SB3 checkpoints
and replay buffers are pickles, i.e. code: resume only from run directories you trust.

Example::

    dilqr-rl train --algo ppo --env dilqr_rl/Pendulum-v0 --model-params g=6,m=1.4,l=1.4 \\
        --total-timesteps 20000

``torch.set_num_threads(--threads)`` (default 1) is called first: DiLQR's tiny batched
matrices run much faster on one thread, and SB3's env stepping shares the process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from typing import Any

import numpy as np
import torch

from .checkpoints import (
    MANIFEST,
    atomic_write,
    latest_checkpoint,
    read_evaluations,
    save_checkpoint,
    truncate_evaluations,
    trusted_checkpoints,
    write_manifest,
    write_text,
)
from .rl_args import ALGOS, TrainArgs, parse_args, parse_kv

__all__ = ["ALGOS", "TrainArgs", "evaluate", "latest_checkpoint", "main_train", "make_model",
           "parse_args", "parse_kv", "plot_curve", "read_evaluations", "save_checkpoint",
           "train", "trusted_checkpoints"]


def _algo_class(algo: str) -> Any:
    from stable_baselines3 import A2C, PPO, SAC, TD3

    return {"ppo": PPO, "a2c": A2C, "sac": SAC, "td3": TD3}[algo]


# ---------------------------------------------------------------------------- building
def make_model(args: TrainArgs, env: Any, tb_dir: str | None) -> Any:
    """A fresh SB3 model for ``args``."""
    from dilqr_rl import sb3

    kw: dict[str, Any] = {"learning_rate": args.learning_rate, "gamma": args.gamma,
                          "seed": args.seed, "verbose": args.verbose,
                          "tensorboard_log": tb_dir}
    if args.algo in ("ppo", "a2c"):
        kw["n_steps"] = args.n_steps
    if args.algo == "ppo":
        kw.update(batch_size=args.batch_size, n_epochs=args.n_epochs, gae_lambda=0.95)
    if args.algo in ("sac", "td3"):
        kw.update(batch_size=args.batch_size, learning_starts=args.learning_starts,
                  train_freq=args.train_freq)
    cls = _algo_class(args.algo)
    if args.policy == "mlp":
        return cls("MlpPolicy", env, **kw)
    # the spec as plain data: the saved model's policy_kwargs stay plain JSON
    pk: dict[str, Any] = {"controller": args.controller_spec().to_dict(), "learn": args.learn,
                          "controller_lr_scale": args.controller_lr_scale}
    policy = {"ppo": sb3.DiLQRActorCriticPolicy, "a2c": sb3.DiLQRActorCriticPolicy,
              "sac": sb3.DiLQRSACPolicy, "td3": sb3.DiLQRTD3Policy}[args.algo]
    if args.algo in ("ppo", "a2c"):
        pk["log_std_init"] = args.log_std_init
    return cls(policy, env, policy_kwargs=pk, **kw)


def evaluate(model: Any, env: Any, episodes: int, seed: int) -> list[float]:
    """Deterministic returns of ``episodes`` episodes with seeds ``seed, seed+1, ...``
    (a DiLQR actor's warm start is reset before each episode and after the evaluation)."""
    actor = _actor(model)
    rets = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        if actor is not None:
            actor.reset()
        done, ret = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, r, term, trunc, _ = env.step(action)
            ret += float(r)
            done = term or trunc
        rets.append(ret)
    if actor is not None:
        actor.reset()
    return rets


def _actor(model: Any) -> Any:
    from dilqr_rl import sb3

    try:
        return sb3.dilqr_actor(model.policy)
    except ValueError:
        return None


# ---------------------------------------------------------------------------- callbacks
def _callbacks(args: TrainArgs, run_dir: str, eval_env: Any) -> list[Any]:
    """System id (first, so an evaluation at step t sees the fit of step t), periodic
    evaluation, checkpoints and, for DiLQR actors, their logging."""
    from stable_baselines3.common.callbacks import BaseCallback

    from dilqr_rl import sb3

    class PeriodicEval(BaseCallback):
        """Deterministic evaluation every ``eval_freq`` steps, appended to evaluations.jsonl."""

        def __init__(self) -> None:
            super().__init__()
            self.path = os.path.join(run_dir, "evaluations.jsonl")
            self.next = 0

        def _on_training_start(self) -> None:
            self.next = (self.num_timesteps // args.eval_freq) * args.eval_freq
            if self.num_timesteps == 0 or not os.path.exists(self.path):
                self._evaluate()
            self.next += args.eval_freq

        def _evaluate(self) -> None:
            t0 = time.perf_counter()
            rets = evaluate(self.model, eval_env, args.eval_episodes, seed=10_000 + args.seed)
            rec: dict[str, Any] = {"timesteps": int(self.num_timesteps),
                                   "mean": float(np.mean(rets)), "std": float(np.std(rets)),
                                   "returns": rets, "eval_s": time.perf_counter() - t0}
            if _actor(self.model) is not None:
                rec["params"] = sb3.physical_params(self.model.policy)
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.logger.record("eval/mean_reward", rec["mean"])

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next:
                self.next += args.eval_freq
                self._evaluate()
            return True

    class Checkpoint(BaseCallback):
        """``model_<steps>_steps.zip`` (and the replay buffer) every ``checkpoint_freq`` env
        steps, written atomically and recorded with their hashes in the manifest."""

        def __init__(self) -> None:
            super().__init__()
            self.every = max(args.checkpoint_freq // args.n_envs, 1)

        def _on_step(self) -> bool:
            if self.n_calls % self.every == 0:
                save_checkpoint(self.model, run_dir, args.algo)
            return True

    cbs: list[Any] = ([sb3.SystemIdCallback(args.sysid_every, args.sysid_steps, args.sysid_lr)]
                      if args.sysid_every else [])
    cbs += [PeriodicEval(), Checkpoint()]
    if args.policy == "dilqr":
        cbs.append(sb3.DiLQRLoggingCallback(log_every=args.eval_freq))
    return cbs


def plot_curve(run_dir: str, title: str = "") -> str:
    """``learning_curve.png`` from ``evaluations.jsonl`` (and the physical parameters)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_evaluations(os.path.join(run_dir, "evaluations.jsonl"))
    t = np.array([r["timesteps"] for r in recs])
    mu = np.array([r["mean"] for r in recs])
    sd = np.array([r["std"] for r in recs])
    has_p = bool(recs) and "params" in recs[0]
    fig, axes = plt.subplots(1, 2 if has_p else 1, figsize=(10 if has_p else 5.5, 4),
                             squeeze=False)
    ax = axes[0, 0]
    ax.plot(t, mu, "o-")
    ax.fill_between(t, mu - sd, mu + sd, alpha=0.3)
    ax.set_xlabel("env steps")
    ax.set_ylabel("deterministic return")
    ax.set_title(title or os.path.basename(run_dir))
    ax.grid(alpha=0.3)
    if has_p:
        ax2 = axes[0, 1]
        for k in recs[0]["params"]:
            ax2.plot(t, [r["params"][k] for r in recs], "o-", label=k)
        ax2.set_xlabel("env steps")
        ax2.set_title("controller model parameters")
        ax2.legend()
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    out = os.path.join(run_dir, "learning_curve.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------- training
def _resume(args: TrainArgs, run_dir: str, env: Any, tb_dir: str | None
            ) -> tuple[Any, dict[str, Any] | None]:
    """``(model, checkpoint)`` from the newest trusted checkpoint that loads (falling back to
    older ones), or ``(None, None)``."""
    cls = _algo_class(args.algo)
    for c in trusted_checkpoints(run_dir, args.algo):
        try:  # newest first; fall back to older ones if one does not load
            kw = {"tensorboard_log": tb_dir} if c["steps"] < args.total_timesteps else {}
            model = cls.load(c["path"], env=env, device="cpu", **kw)
            if c["replay_buffer"] is not None:
                model.load_replay_buffer(c["replay_buffer"])
        except Exception as e:  # a corrupt zip or pickle raises anything
            warnings.warn(f"could not load checkpoint {c['path']} ({type(e).__name__}: {e}); "
                          "trying an older one", RuntimeWarning, stacklevel=2)
            continue
        return model, c
    return None, None


def _start(args: TrainArgs, run_dir: str, env: Any, tb_dir: str | None
           ) -> tuple[Any, dict[str, Any] | None]:
    """The model to train: resumed (``--resume``, evaluations past the checkpoint dropped) or
    fresh (with an empty manifest and evaluations file)."""
    evals = os.path.join(run_dir, "evaluations.jsonl")
    model, ckpt = _resume(args, run_dir, env, tb_dir) if args.resume else (None, None)
    if ckpt is not None:
        truncate_evaluations(evals, ckpt["steps"])
        print(f"resuming {run_dir} from {ckpt['steps']} steps")
        return model, ckpt
    if args.resume:
        print(f"no trusted checkpoint to resume in {run_dir} (only those listed with a "
              f"matching hash in checkpoints/{MANIFEST} are loaded); starting from scratch")
    model = make_model(args, env, tb_dir)
    # a fresh run: only checkpoints it writes itself count for a later --resume
    write_manifest(run_dir, {"checkpoints": {}})
    write_text(evals, "")
    return model, None


def train(args: TrainArgs) -> dict[str, Any]:
    """Train (with ``args.resume``: from the newest trusted checkpoint of the run, see
    :func:`trusted_checkpoints`); returns a summary dict."""
    torch.set_num_threads(args.threads)
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_vec_env

    import dilqr_rl.envs  # noqa: F401  (registers the ids)

    run_dir = os.path.join(args.out_dir, args.name)
    os.makedirs(run_dir, exist_ok=True)
    write_text(os.path.join(run_dir, "args.json"), json.dumps(dataclasses.asdict(args), indent=1))
    env_kwargs = parse_kv(args.env_kwargs)
    env = make_vec_env(args.env, n_envs=args.n_envs, seed=args.seed, env_kwargs=env_kwargs)
    eval_env = gym.make(args.env, **env_kwargs)
    tb_dir = os.path.join(run_dir, "tb") if args.tensorboard else None
    model, ckpt = _start(args, run_dir, env, tb_dir)
    remaining = args.total_timesteps - model.num_timesteps
    t0 = time.perf_counter()
    if remaining > 0:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*progress bar.*")
            model.learn(remaining, callback=_callbacks(args, run_dir, eval_env),
                        progress_bar=args.progress_bar and sys.stderr.isatty(),
                        reset_num_timesteps=ckpt is None,
                        tb_log_name="run")
    wall = time.perf_counter() - t0
    atomic_write(os.path.join(run_dir, "final_model.zip"), model.save)
    final = evaluate(model, eval_env, args.eval_episodes, seed=10_000 + args.seed)
    png = plot_curve(run_dir, f"{args.algo.upper()} ({args.policy}) on {args.env}")
    summary: dict[str, Any] = {"run_dir": run_dir, "timesteps": int(model.num_timesteps),
                               "final_mean": float(np.mean(final)),
                               "final_std": float(np.std(final)),
                               "wall_s": wall, "s_per_step": wall / max(remaining, 1),
                               "curve": png}
    if _actor(model) is not None:
        from dilqr_rl import sb3

        summary["params"] = sb3.physical_params(model.policy)
    env.close()
    eval_env.close()
    return summary


def main_train(argv: list[str]) -> int:
    """``dilqr-rl train ...``: parse flags, train, print a summary. Returns an exit code."""
    args = parse_args(argv)
    summary = train(args)
    print(json.dumps(summary, indent=1))
    print(f"learning curve: {summary['curve']}")
    return 0
