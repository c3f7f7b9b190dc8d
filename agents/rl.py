"""Train a DiLQR actor (or an MLP baseline) with Stable-Baselines3: ``dilqr-rl train``.

CleanRL-style: one :class:`TrainArgs` dataclass (one documented field per flag), one linear
:func:`train` function. The run directory ``<out_dir>/<run_name>/`` holds

- ``tb/``: TensorBoard logs (``tensorboard --logdir runs``), including ``eval/mean_reward`` and,
  for DiLQR actors, ``dilqr/<param>`` and ``dilqr/unconverged_frac``;
- ``checkpoints/``: periodic ``model_<steps>_steps.zip`` (and the replay buffer for SAC/TD3);
  rerunning the same command resumes from the latest one;
- ``evaluations.jsonl``: one line per periodic deterministic evaluation (appended, so it
  survives resumes);
- ``final_model.zip`` and ``learning_curve.png``.

Example::

    dilqr-rl train --algo ppo --env dilqr_rl/Pendulum-v0 --model-params g=6,m=1.4,l=1.4 \\
        --total-timesteps 20000

``torch.set_num_threads(--threads)`` (default 1) is called first: DiLQR's tiny batched
matrices run much faster on one thread, and SB3's env stepping shares the process.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["ALGOS", "TrainArgs", "evaluate", "main_train", "parse_args", "plot_curve", "train"]

ALGOS = ("ppo", "a2c", "sac", "td3")


@dataclass
class TrainArgs:
    """Arguments of ``dilqr-rl train`` (flags are the field names with ``-``)."""

    algo: str = field(default="ppo", metadata={"help": f"one of {ALGOS}"})
    env: str = field(default="dilqr_rl/Pendulum-v0", metadata={"help": "Gymnasium env id"})
    policy: str = field(default="dilqr", metadata={
        "help": "'dilqr' (DiLQR actor) or 'mlp' (SB3's default MlpPolicy)"})
    learn: str = field(default="dynamics", metadata={
        "help": "what the DiLQR actor learns: dynamics, cost, both, cost_net (or a+b)"})
    model_params: str = field(default="", metadata={
        "help": "initial physical parameters of the controller's model, e.g. 'g=6,m=1.4' "
                "(others: the env's defaults)"})
    env_kwargs: str = field(default="", metadata={
        "help": "true env parameters, e.g. 'g=10,damping=0.1'"})
    horizon: int = field(default=20, metadata={"help": "MPC horizon T"})
    max_iter: int = field(default=10, metadata={"help": "iLQR iteration cap per solve"})
    tol: float = field(default=1e-6, metadata={"help": "iLQR relative step tolerance"})
    grad: str = field(default="implicit", metadata={
        "help": "DiLQR gradient: implicit, last_lqr or unroll"})
    on_unconverged: str = field(default="warn", metadata={
        "help": "unconverged solves: 'warn' (gradient at the last iterate, counted and warned "
                "once) or 'detach' (no gradient)"})
    sysid_every: int = field(default=0, metadata={
        "help": "DiLQR actors: fit the model's physical parameters to the observed transitions "
                "every this many env steps (sb3.SystemIdCallback; 0: off, RL loss only)"})
    sysid_steps: int = field(default=200, metadata={"help": "Adam steps per system-id fit"})
    sysid_lr: float = field(default=0.02, metadata={"help": "Adam lr of the system-id fit"})
    total_timesteps: int = field(default=20_000, metadata={"help": "env-step budget"})
    seed: int = field(default=0, metadata={"help": "seed of SB3, envs and evaluation"})
    n_envs: int = field(default=1, metadata={"help": "number of (sequential) training envs"})
    learning_rate: float = field(default=1e-3, metadata={"help": "SB3 learning rate"})
    controller_lr_scale: float = field(default=10.0, metadata={
        "help": "the controller's parameters use learning_rate * this"})
    log_std_init: float = field(default=-1.0, metadata={
        "help": "initial log std of the DiLQR Gaussian (PPO/A2C)"})
    gamma: float = field(default=0.9, metadata={"help": "discount"})
    n_steps: int = field(default=512, metadata={"help": "PPO/A2C rollout length per env"})
    batch_size: int = field(default=64, metadata={"help": "PPO/SAC/TD3 minibatch size"})
    n_epochs: int = field(default=5, metadata={"help": "PPO epochs per rollout"})
    learning_starts: int = field(default=500, metadata={"help": "SAC/TD3 random steps first"})
    train_freq: int = field(default=1, metadata={"help": "SAC/TD3 env steps per update"})
    eval_freq: int = field(default=2000, metadata={"help": "env steps between evaluations"})
    eval_episodes: int = field(default=3, metadata={"help": "episodes per evaluation"})
    checkpoint_freq: int = field(default=5000, metadata={"help": "env steps between checkpoints"})
    out_dir: str = field(default="runs", metadata={"help": "parent folder of run directories"})
    run_name: str = field(default="", metadata={
        "help": "run directory name (default: algo_policy_env_seed)"})
    resume: bool = field(default=True, metadata={
        "help": "resume from the latest checkpoint of the run directory"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard logs"})
    progress_bar: bool = field(default=True, metadata={"help": "show SB3's progress bar"})
    threads: int = field(default=1, metadata={"help": "torch.set_num_threads"})
    verbose: int = field(default=0, metadata={"help": "SB3 verbosity"})

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}")
        if self.policy not in ("dilqr", "mlp"):
            raise ValueError(f"policy must be 'dilqr' or 'mlp', got {self.policy!r}")
        if self.sysid_every < 0:
            raise ValueError(f"sysid_every must be >= 0, got {self.sysid_every}")
        if self.sysid_every and self.policy != "dilqr":
            raise ValueError("sysid_every needs policy='dilqr' (an MLP has no model to fit)")

    @property
    def name(self) -> str:
        return self.run_name or (f"{self.algo}_{self.policy}_{self.env.split('/')[-1]}_"
                                 f"s{self.seed}")


def parse_kv(text: str) -> dict[str, float]:
    """``'g=6,m=1.4'`` -> ``{'g': 6.0, 'm': 1.4}``."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, sep, v = part.partition("=")
        if not sep:
            raise ValueError(f"expected name=value, got {part!r}")
        out[k.strip()] = float(v)
    return out


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    """Build :class:`TrainArgs` from command-line flags (``--total-timesteps 1000``)."""
    parser = argparse.ArgumentParser(prog="dilqr-rl train", description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(TrainArgs):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f.metadata.get("help"))
        else:
            typ = {"int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(flag, type=typ, default=f.default, help=f.metadata.get("help"))
    return TrainArgs(**vars(parser.parse_args(argv)))


# ---------------------------------------------------------------------------- building
def make_model(args: TrainArgs, env: Any, tb_dir: str | None) -> Any:
    """A fresh SB3 model for ``args``."""
    from stable_baselines3 import A2C, PPO, SAC, TD3

    from dilqr_rl import sb3

    cls = {"ppo": PPO, "a2c": A2C, "sac": SAC, "td3": TD3}[args.algo]
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
    if args.policy == "mlp":
        return cls("MlpPolicy", env, **kw)
    spec = sb3.controller_spec(args.env, parse_kv(args.model_params), horizon=args.horizon,
                               max_iter=args.max_iter, tol=args.tol, grad=args.grad)
    spec["config"]["on_unconverged"] = args.on_unconverged
    pk: dict[str, Any] = {"controller": spec, "learn": args.learn,
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


def _callbacks(args: TrainArgs, run_dir: str, eval_env: Any) -> list[Any]:
    from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback

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
            self.logger.record("eval/mean_reward", rec["mean"])

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next:
                self.next += args.eval_freq
                self._evaluate()
            return True

    # the system-id fit comes first, so an evaluation at step t sees the fit of step t
    cbs: list[Any] = ([sb3.SystemIdCallback(args.sysid_every, args.sysid_steps, args.sysid_lr)]
                      if args.sysid_every else [])
    cbs += [PeriodicEval(),
                      CheckpointCallback(max(args.checkpoint_freq // args.n_envs, 1),
                                         os.path.join(run_dir, "checkpoints"), "model",
                                         save_replay_buffer=args.algo in ("sac", "td3"))]
    if args.policy == "dilqr":
        cbs.append(sb3.DiLQRLoggingCallback(log_every=args.eval_freq))
    return cbs


def latest_checkpoint(run_dir: str) -> tuple[str, int] | None:
    """``(path, steps)`` of the newest ``model_<steps>_steps.zip``, or ``None``."""
    best = None
    for p in glob.glob(os.path.join(run_dir, "checkpoints", "model_*_steps.zip")):
        m = re.search(r"model_(\d+)_steps\.zip$", p)
        if m and (best is None or int(m.group(1)) > best[1]):
            best = (p, int(m.group(1)))
    return best


def plot_curve(run_dir: str, title: str = "") -> str:
    """``learning_curve.png`` from ``evaluations.jsonl`` (and the physical parameters)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(run_dir, "evaluations.jsonl")) as f:
        recs = sorted((json.loads(line) for line in f if line.strip()),
                      key=lambda r: r["timesteps"])
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
def train(args: TrainArgs) -> dict[str, Any]:
    """Train (resuming from the run's latest checkpoint if any); returns a summary dict."""
    torch.set_num_threads(args.threads)
    import gymnasium as gym
    from stable_baselines3 import A2C, PPO, SAC, TD3
    from stable_baselines3.common.env_util import make_vec_env

    import dilqr_rl.envs  # noqa: F401  (registers the ids)

    run_dir = os.path.join(args.out_dir, args.name)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "args.json"), "w") as f:
        json.dump(dataclasses.asdict(args), f, indent=1)
    env_kwargs = parse_kv(args.env_kwargs)
    env = make_vec_env(args.env, n_envs=args.n_envs, seed=args.seed, env_kwargs=env_kwargs)
    eval_env = gym.make(args.env, **env_kwargs)
    tb_dir = os.path.join(run_dir, "tb") if args.tensorboard else None
    cls = {"ppo": PPO, "a2c": A2C, "sac": SAC, "td3": TD3}[args.algo]
    ckpt = latest_checkpoint(run_dir) if args.resume else None
    if ckpt is not None and ckpt[1] >= args.total_timesteps:
        model = cls.load(ckpt[0], env=env, device="cpu")
    elif ckpt is not None:
        model = cls.load(ckpt[0], env=env, device="cpu", tensorboard_log=tb_dir)
        buf = ckpt[0].replace("model_", "model_replay_buffer_").replace("_steps.zip",
                                                                          "_steps.pkl")
        if args.algo in ("sac", "td3") and os.path.exists(buf):
            model.load_replay_buffer(buf)
        print(f"resuming {run_dir} from {ckpt[1]} steps")
    else:
        model = make_model(args, env, tb_dir)
        open(os.path.join(run_dir, "evaluations.jsonl"), "w").close()
    remaining = args.total_timesteps - model.num_timesteps
    t0 = time.perf_counter()
    if remaining > 0:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*progress bar.*")
            model.learn(remaining, callback=_callbacks(args, run_dir, eval_env),
                        progress_bar=args.progress_bar, reset_num_timesteps=ckpt is None,
                        tb_log_name="run")
    wall = time.perf_counter() - t0
    model.save(os.path.join(run_dir, "final_model"))
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
