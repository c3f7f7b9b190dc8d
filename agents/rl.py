"""Train a DiLQR actor (or an MLP baseline) with Stable-Baselines3: ``dilqr-rl train``.

CleanRL-style: one :class:`TrainArgs` dataclass (one documented field per flag), one linear
:func:`train` function. The run directory ``<out_dir>/<run_name>/`` holds

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

import argparse
import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["ALGOS", "TrainArgs", "evaluate", "latest_checkpoint", "main_train", "parse_args",
           "plot_curve", "read_evaluations", "save_checkpoint", "train", "trusted_checkpoints"]

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
    resume: bool = field(default=False, metadata={
        "help": "resume from the newest checkpoint this run wrote (listed with its hash in "
                "checkpoints/manifest.json); checkpoints are pickles: trust the run directory"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard logs"})
    progress_bar: bool = field(default=True, metadata={"help": "show SB3's progress bar"})
    threads: int = field(default=1, metadata={"help": "torch.set_num_threads"})
    verbose: int = field(default=0, metadata={"help": "SB3 verbosity"})

    def __post_init__(self) -> None:
        for name, lo in _MIN_INT.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise _arg_error(name, f"must be an integer >= {lo}, got {v!r}")
        for name, (lo, lo_ok, hi) in _FLOAT_RANGE.items():
            v = getattr(self, name)
            ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
                  and (v >= lo if lo_ok else v > lo) and v <= hi)
            if not ok:
                rng = f"{'>=' if lo_ok else '>'} {lo:g}" + (f" and <= {hi:g}" if hi < math.inf
                                                            else "")
                raise _arg_error(name, f"must be a finite number {rng}, got {v!r}")
        if self.algo not in ALGOS:
            raise _arg_error("algo", f"must be one of {ALGOS}, got {self.algo!r}")
        if self.policy not in ("dilqr", "mlp"):
            raise _arg_error("policy", f"must be 'dilqr' or 'mlp', got {self.policy!r}")
        if self.on_unconverged not in ("warn", "detach"):
            raise _arg_error("on_unconverged", f"must be 'warn' or 'detach', got "
                                               f"{self.on_unconverged!r}")
        if self.sysid_every and self.policy != "dilqr":
            raise ValueError("sysid_every (--sysid-every) needs policy='dilqr' (an MLP has no "
                             "model to fit)")
        if self.algo == "ppo" and self.batch_size < 2:
            raise _arg_error("batch_size", f"must be >= 2 for PPO (advantages are normalized "
                                           f"per minibatch), got {self.batch_size}")
        if self.algo == "ppo" and self.n_steps * self.n_envs < 2:
            raise _arg_error("n_steps", f"times n_envs must be >= 2 for PPO, got "
                                        f"{self.n_steps} x {self.n_envs}")
        self._check_env()

    def _check_env(self) -> None:
        """``env``, ``env_kwargs``, ``model_params``, ``grad`` and ``learn`` (the checks that
        need the env's class)."""
        import gymnasium as gym

        import dilqr_rl.envs  # noqa: F401  (registers the ids)

        try:
            gym.spec(self.env)
        except Exception:  # gymnasium's NameNotFound, VersionNotFound, ...
            raise _arg_error("env", f"must be a registered Gymnasium id (e.g. "
                                    f"{dilqr_rl.envs.ENV_IDS[0]!r}), got {self.env!r}") from None
        env_kwargs = _kv_arg(self.env_kwargs, "env_kwargs")
        model_params = _kv_arg(self.model_params, "model_params")
        if env_kwargs:
            try:
                gym.make(self.env, **env_kwargs).close()
            except (TypeError, ValueError) as e:
                raise _arg_error("env_kwargs", f"rejected by {self.env}: {e}") from None
        if self.policy != "dilqr":
            return
        from dilqr_rl import sb3
        from dilqr_rl.grad import GRAD_MODES

        cls = sb3.env_class(self.env)
        if not hasattr(cls, "dynamics_cls"):
            raise _arg_error("env", f"{self.env!r} has no dilqr_rl model; policy 'dilqr' needs "
                                    f"one of {dilqr_rl.envs.ENV_IDS}")
        dyn = cls.dynamics_cls()
        names = dyn.param_names()
        for k, v in model_params.items():
            if k not in names:
                raise _arg_error("model_params", f"has unknown parameter {k!r}; the "
                                                 f"{type(dyn).__name__} model's are {names}")
            if dyn.positive_params and not v > 0:
                raise _arg_error("model_params", f"{k}={v:g}: the {type(dyn).__name__} "
                                                 "model's parameters must be > 0")
        if self.grad not in GRAD_MODES:
            raise _arg_error("grad", f"must be one of {tuple(GRAD_MODES)}, got {self.grad!r}")
        try:
            sb3._parse_learn(self.learn)
        except ValueError as e:
            raise _arg_error("learn", str(e)) from None

    @property
    def name(self) -> str:
        return self.run_name or (f"{self.algo}_{self.policy}_{self.env.split('/')[-1]}_"
                                 f"s{self.seed}")


#: integer fields and their smallest value
_MIN_INT = {"horizon": 1, "max_iter": 1, "sysid_every": 0, "sysid_steps": 1,
            "total_timesteps": 1, "seed": 0, "n_envs": 1, "n_steps": 1, "batch_size": 1,
            "n_epochs": 1, "learning_starts": 0, "train_freq": 1, "eval_freq": 1,
            "eval_episodes": 1, "checkpoint_freq": 1, "threads": 1, "verbose": 0}
#: float fields: (low, low allowed, high)
_FLOAT_RANGE = {"tol": (0.0, True, math.inf), "sysid_lr": (0.0, False, math.inf),
                "learning_rate": (0.0, False, math.inf),
                "controller_lr_scale": (0.0, False, math.inf),
                "log_std_init": (-math.inf, False, math.inf), "gamma": (0.0, False, 1.0)}


def _arg_error(name: str, msg: str) -> ValueError:
    """A ``ValueError`` naming the field and its flag: ``eval_freq (--eval-freq) ...``."""
    return ValueError(f"{name} (--{name.replace('_', '-')}) {msg}")


def _kv_arg(text: str, name: str) -> dict[str, float]:
    try:
        return parse_kv(text)
    except ValueError as e:
        raise _arg_error(name, f"must be 'name=value,...' with finite numbers: {e}") from None


def parse_kv(text: str) -> dict[str, float]:
    """``'g=6,m=1.4'`` -> ``{'g': 6.0, 'm': 1.4}`` (finite values, each name once)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, sep, v = part.partition("=")
        k = k.strip()
        if not sep or not k:
            raise ValueError(f"expected name=value, got {part!r}")
        try:
            f = float(v)
        except ValueError:
            raise ValueError(f"{k}: expected a number, got {v.strip()!r}") from None
        if not math.isfinite(f):
            raise ValueError(f"{k}: expected a finite number, got {v.strip()!r}")
        if k in out:
            raise ValueError(f"{k} is given twice")
        out[k] = f
    return out


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    """Build :class:`TrainArgs` from command-line flags (``--total-timesteps 1000``); a bad
    value exits with argparse's usage error (status 2) naming the flag."""
    parser = argparse.ArgumentParser(prog="dilqr-rl train", description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(TrainArgs):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f.metadata.get("help"))
        else:
            typ = {"int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(flag, type=typ, default=f.default, help=f.metadata.get("help"))
    try:
        return TrainArgs(**vars(parser.parse_args(argv)))
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


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

    # the system-id fit comes first, so an evaluation at step t sees the fit of step t
    cbs: list[Any] = ([sb3.SystemIdCallback(args.sysid_every, args.sysid_steps, args.sysid_lr)]
                      if args.sysid_every else [])
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

    cbs += [PeriodicEval(), Checkpoint()]
    if args.policy == "dilqr":
        cbs.append(sb3.DiLQRLoggingCallback(log_every=args.eval_freq))
    return cbs


MANIFEST = "manifest.json"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a temporary file in ``path``'s folder (same suffix, so SB3 does not
    add one), fsync it, then ``os.replace`` it onto ``path``: a crash leaves either the old
    file or the new one, never half of one."""
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder or ".", prefix=f".{name}.",
                               suffix=os.path.splitext(name)[1])
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    _atomic_write(path, write)


def read_manifest(run_dir: str) -> dict[str, Any]:
    """``checkpoints/manifest.json`` (``{"checkpoints": {file: {...}}}``; empty if absent or
    unreadable)."""
    path = os.path.join(run_dir, "checkpoints", MANIFEST)
    try:
        with open(path) as f:
            man = json.load(f)
    except (OSError, ValueError):
        return {"checkpoints": {}}
    if not isinstance(man, dict) or not isinstance(man.get("checkpoints"), dict):
        return {"checkpoints": {}}
    return man


def _write_manifest(run_dir: str, man: dict[str, Any]) -> None:
    _write_text(os.path.join(run_dir, "checkpoints", MANIFEST), json.dumps(man, indent=1))


def save_checkpoint(model: Any, run_dir: str, algo: str) -> str:
    """Write ``model_<steps>_steps.zip`` (and ``model_replay_buffer_<steps>_steps.pkl`` for
    SAC/TD3) atomically, then list them with their SHA-256 in the manifest; returns the path."""
    folder = os.path.join(run_dir, "checkpoints")
    steps = int(model.num_timesteps)
    entry: dict[str, Any] = {"steps": steps, "algo": algo}
    if getattr(model, "replay_buffer", None) is not None:
        buf = os.path.join(folder, f"model_replay_buffer_{steps}_steps.pkl")
        _atomic_write(buf, model.save_replay_buffer)
        entry["replay_buffer"] = {"file": os.path.basename(buf), "sha256": _sha256(buf)}
    path = os.path.join(folder, f"model_{steps}_steps.zip")
    _atomic_write(path, model.save)
    entry["sha256"] = _sha256(path)
    man = read_manifest(run_dir)
    man["checkpoints"][os.path.basename(path)] = entry
    _write_manifest(run_dir, man)
    return path


def trusted_checkpoints(run_dir: str, algo: str | None = None) -> list[dict[str, Any]]:
    """The checkpoints this run wrote, newest first: those listed in the manifest (for
    ``algo``) whose files exist and match their SHA-256. Each is ``{"path", "steps",
    "replay_buffer"}`` (the buffer's path or ``None``). Anything else in the folder is
    ignored: SB3 zips and pickles run code when loaded."""
    folder = os.path.join(run_dir, "checkpoints")
    out = []
    for name, e in read_manifest(run_dir)["checkpoints"].items():
        try:
            if os.path.basename(name) != name or (algo is not None and e.get("algo") != algo):
                continue
            path = os.path.join(folder, name)
            if not os.path.isfile(path) or _sha256(path) != e["sha256"]:
                warnings.warn(f"checkpoint {path} is missing or does not match its hash in "
                              f"{MANIFEST}; not loading it", RuntimeWarning, stacklevel=2)
                continue
            buf = None
            if e.get("replay_buffer") is not None:
                bname = e["replay_buffer"]["file"]
                buf = os.path.join(folder, bname)
                if (os.path.basename(bname) != bname or not os.path.isfile(buf)
                        or _sha256(buf) != e["replay_buffer"]["sha256"]):
                    warnings.warn(f"replay buffer {buf} is missing or does not match its hash "
                                  f"in {MANIFEST}; not loading {path}", RuntimeWarning,
                                  stacklevel=2)
                    continue
            out.append({"path": path, "steps": int(e["steps"]), "replay_buffer": buf})
        except (KeyError, TypeError, ValueError, AttributeError):
            continue  # a malformed entry: not a checkpoint we can vouch for
    return sorted(out, key=lambda c: c["steps"], reverse=True)


def latest_checkpoint(run_dir: str, algo: str | None = None) -> tuple[str, int] | None:
    """``(path, steps)`` of the newest trusted checkpoint (:func:`trusted_checkpoints`), or
    ``None``."""
    ckpts = trusted_checkpoints(run_dir, algo)
    return (ckpts[0]["path"], ckpts[0]["steps"]) if ckpts else None


def read_evaluations(path: str) -> list[dict[str, Any]]:
    """The records of ``evaluations.jsonl``, sorted by ``timesteps``; lines that are not a
    complete record (e.g. half-written by an interrupted run) are skipped with a warning, and
    of records with the same ``timesteps`` the last one is kept."""
    recs: dict[int, dict[str, Any]] = {}
    bad = 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                ok = (isinstance(r, dict) and isinstance(r.get("timesteps"), int)
                      and all(isinstance(r.get(k), (int, float)) for k in ("mean", "std")))
            except ValueError:
                ok = False
            if ok:
                recs[r["timesteps"]] = r
            else:
                bad += 1
    if bad:
        warnings.warn(f"{path}: skipped {bad} unreadable line(s)", RuntimeWarning, stacklevel=2)
    return [recs[t] for t in sorted(recs)]


def _truncate_evaluations(path: str, steps: int) -> None:
    """Keep the readable records up to ``steps`` (a resumed run re-evaluates the rest)."""
    recs = read_evaluations(path) if os.path.exists(path) else []
    _write_text(path, "".join(json.dumps(r) + "\n" for r in recs if r["timesteps"] <= steps))


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
def train(args: TrainArgs) -> dict[str, Any]:
    """Train (with ``args.resume``: from the newest trusted checkpoint of the run, see
    :func:`trusted_checkpoints`); returns a summary dict."""
    torch.set_num_threads(args.threads)
    import gymnasium as gym
    from stable_baselines3 import A2C, PPO, SAC, TD3
    from stable_baselines3.common.env_util import make_vec_env

    import dilqr_rl.envs  # noqa: F401  (registers the ids)

    run_dir = os.path.join(args.out_dir, args.name)
    os.makedirs(run_dir, exist_ok=True)
    _write_text(os.path.join(run_dir, "args.json"), json.dumps(dataclasses.asdict(args), indent=1))
    env_kwargs = parse_kv(args.env_kwargs)
    env = make_vec_env(args.env, n_envs=args.n_envs, seed=args.seed, env_kwargs=env_kwargs)
    eval_env = gym.make(args.env, **env_kwargs)
    tb_dir = os.path.join(run_dir, "tb") if args.tensorboard else None
    cls = {"ppo": PPO, "a2c": A2C, "sac": SAC, "td3": TD3}[args.algo]
    evals = os.path.join(run_dir, "evaluations.jsonl")
    model, ckpt = None, None
    for c in trusted_checkpoints(run_dir, args.algo) if args.resume else []:
        try:  # newest first; fall back to older ones if one does not load
            kw = {"tensorboard_log": tb_dir} if c["steps"] < args.total_timesteps else {}
            model = cls.load(c["path"], env=env, device="cpu", **kw)
            if c["replay_buffer"] is not None:
                model.load_replay_buffer(c["replay_buffer"])
        except Exception as e:  # a corrupt zip or pickle raises anything
            warnings.warn(f"could not load checkpoint {c['path']} ({type(e).__name__}: {e}); "
                          "trying an older one", RuntimeWarning, stacklevel=2)
            model = None
            continue
        ckpt = c
        break
    if ckpt is not None:
        _truncate_evaluations(evals, ckpt["steps"])
        print(f"resuming {run_dir} from {ckpt['steps']} steps")
    else:
        if args.resume:
            print(f"no trusted checkpoint to resume in {run_dir} (only those listed with a "
                  f"matching hash in checkpoints/{MANIFEST} are loaded); starting from scratch")
        model = make_model(args, env, tb_dir)
        # a fresh run: only checkpoints it writes itself count for a later --resume
        _write_manifest(run_dir, {"checkpoints": {}})
        _write_text(evals, "")
    remaining = args.total_timesteps - model.num_timesteps
    t0 = time.perf_counter()
    if remaining > 0:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*progress bar.*")
            model.learn(remaining, callback=_callbacks(args, run_dir, eval_env),
                        progress_bar=args.progress_bar, reset_num_timesteps=ckpt is None,
                        tb_log_name="run")
    wall = time.perf_counter() - t0
    _atomic_write(os.path.join(run_dir, "final_model.zip"), model.save)
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
