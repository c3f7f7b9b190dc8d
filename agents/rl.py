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
from collections.abc import Callable
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
from .episodes import episode_success, run_episodes
from .plotting import pyplot, save_figure
from .rl_args import ALGOS, TrainArgs, parse_args, parse_kv
from .rl_reference import identifiable, reference_returns, true_params

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


def evaluate(model: Any, envs: Any, episodes: int | None = None, seed: int = 0,
             outcome: dict[str, Any] | None = None) -> list[float]:
    """Deterministic returns of one episode per env of ``envs`` (a list; or one env, which
    then plays ``episodes`` episodes in turn) with seeds ``seed, seed+1, ...``. The envs of a
    list run in lockstep, so a DiLQR actor plans for all of them in one batched solve (its warm
    start is reset before and after). A DiLQR actor's plan cache is neither read nor filled:
    each solve starts from the previous step's plan or from zero controls, as closed-loop MPC
    does, so that an evaluation is a function of the current model alone (a start's plan cached
    at the previous evaluation, under another model, made the rocket miss a landing that a
    fresh actor with the same model makes). For a list of envs of a task that declares
    ``success``, ``outcome`` (if given) receives ``"success"``: the task's verdict per
    episode."""
    actor = _actor(model)
    if actor is None:
        return _evaluate(model, None, envs, episodes, seed, outcome)
    actor.reset()
    cached, actor.use_plan_cache = actor.use_plan_cache, False
    try:
        return _evaluate(model, actor, envs, episodes, seed, outcome)
    finally:
        actor.use_plan_cache = cached


def _evaluate(model: Any, actor: Any, envs: Any, episodes: int | None, seed: int,
              outcome: dict[str, Any] | None) -> list[float]:

    def act(obs: np.ndarray) -> np.ndarray:
        return model.predict(obs, deterministic=True)[0]

    if isinstance(envs, (list, tuple)):
        trace: dict[str, Any] = {}
        rets = run_episodes(envs, seed, act, trace)
        if outcome is not None:
            ok = episode_success(envs, trace["infos"])
            if ok is not None:
                outcome["success"] = ok
    else:
        rets = []
        for ep in range(episodes or 1):
            if actor is not None:
                actor.reset()
            rets += run_episodes([envs], seed + ep, act)
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
def _callbacks(args: TrainArgs, run_dir: str, eval_envs: list[Any]) -> list[Any]:
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
            outcome: dict[str, Any] = {}
            rets = evaluate(self.model, eval_envs, seed=10_000 + args.seed, outcome=outcome)
            rec: dict[str, Any] = {"timesteps": int(self.num_timesteps),
                                   "mean": float(np.mean(rets)), "std": float(np.std(rets)),
                                   "returns": rets, **outcome,
                                   "eval_s": time.perf_counter() - t0}
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


def plot_curve(run_dir: str, title: str = "", reference: float | None = None,
               truth: dict[str, float] | None = None,
               combos: Callable[[dict[str, float]], dict[str, float] | None] | None = None
               ) -> str:
    """``learning_curve.png`` from ``evaluations.jsonl``: the return, with the true-model MPC
    return ``reference`` as a line; the physical parameters with their ``truth``; and, where
    ``combos`` maps parameters to identifiable combinations, those relative to the truth's."""
    plt = pyplot()

    recs = read_evaluations(os.path.join(run_dir, "evaluations.jsonl"))
    t = np.array([r["timesteps"] for r in recs])
    mu = np.array([r["mean"] for r in recs])
    sd = np.array([r["std"] for r in recs])
    has_p = bool(recs) and "params" in recs[0]
    has_c = has_p and truth is not None and combos is not None and combos(truth) is not None
    n = 1 + has_p + has_c
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot(t, mu, "o-")
    ax.fill_between(t, mu - sd, mu + sd, alpha=0.3)
    ax.set_xlabel("env steps")
    ax.set_ylabel("deterministic return")
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=1, label="true-model MPC")
        ax.legend()
    ax.set_title(title or os.path.basename(run_dir))
    ax.grid(alpha=0.3)
    if has_p:
        ax2 = axes[0, 1]
        for i, k in enumerate(recs[0]["params"]):
            ax2.plot(t, [r["params"][k] for r in recs], "o-", color=f"C{i}", label=k)
            if truth is not None and k in truth:
                ax2.axhline(truth[k], color=f"C{i}", ls="--", lw=1)
        ax2.set_xlabel("env steps")
        ax2.set_title("controller model parameters (dashed: true)")
        ax2.legend()
        ax2.grid(alpha=0.3)
    if has_c:
        ax3, ref_c = axes[0, 2], combos(truth)
        learned = [combos(r["params"]) for r in recs]
        for i, k in enumerate(ref_c):
            ax3.plot(t, [c[k] / ref_c[k] for c in learned], "o-",
                     color=f"C{i + 3}", label=k)
        ax3.axhline(1.0, color="k", ls="--", lw=1)
        ax3.set_xlabel("env steps")
        ax3.set_ylabel("learned / true")
        ax3.set_title("identifiable combinations (all the dynamics see)")
        ax3.legend()
        ax3.grid(alpha=0.3)
    return str(save_figure(fig, os.path.join(run_dir, "learning_curve.png"), dpi=100))


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
    # one env per evaluation episode: the episodes run as one batch (rl.evaluate)
    eval_envs = [gym.make(args.env, **env_kwargs) for _ in range(args.eval_episodes)]
    tb_dir = os.path.join(run_dir, "tb") if args.tensorboard else None
    model, ckpt = _start(args, run_dir, env, tb_dir)
    remaining = args.total_timesteps - model.num_timesteps
    t0 = time.perf_counter()
    if remaining > 0:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*progress bar.*")
            model.learn(remaining, callback=_callbacks(args, run_dir, eval_envs),
                        progress_bar=args.progress_bar and sys.stderr.isatty(),
                        reset_num_timesteps=ckpt is None,
                        tb_log_name="run")
    wall = time.perf_counter() - t0
    atomic_write(os.path.join(run_dir, "final_model.zip"), model.save)
    final = evaluate(model, eval_envs, seed=10_000 + args.seed)
    ref = reference_returns(args, eval_envs, seed=10_000 + args.seed) if args.reference else None
    truth = true_params(args)
    png = plot_curve(run_dir, f"{args.algo.upper()} ({args.policy}) on {args.env}",
                     None if ref is None else float(np.mean(ref)), truth,
                     lambda p: identifiable(args, p) if truth is not None else None)
    summary: dict[str, Any] = {"run_dir": run_dir, "timesteps": int(model.num_timesteps),
                               "final_mean": float(np.mean(final)),
                               "final_std": float(np.std(final)),
                               "wall_s": wall, "s_per_step": wall / max(remaining, 1),
                               "curve": png}
    if _actor(model) is not None:
        from dilqr_rl import sb3

        summary["params"] = params = sb3.physical_params(model.policy)
        summary["true_params"] = truth
        learned = identifiable(args, params)
        if learned is not None and truth is not None:  # what the transitions can identify
            true_c = identifiable(args, truth)
            summary["identifiable"] = {k: {"learned": v, "true": true_c[k]}
                                       for k, v in learned.items()}
    if ref is not None:
        summary["reference_mean"] = float(np.mean(ref))
    env.close()
    for e in eval_envs:
        e.close()
    return summary


def main_train(argv: list[str]) -> int:
    """``dilqr-rl train ...``: parse flags, train, print a summary. Returns an exit code."""
    args = parse_args(argv)
    summary = train(args)
    print(json.dumps(summary, indent=1))
    print(f"learning curve: {summary['curve']}")
    return 0
