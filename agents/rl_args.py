"""Arguments of ``dilqr-rl train``: :class:`TrainArgs`, one documented field per flag (help
and choices in the field's metadata, turned into flags by :mod:`dilqr_rl.agents.cliargs`),
and their checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from dilqr_rl.grad import GRAD_MODES

from . import cliargs
from .fields import arg

__all__ = ["ALGOS", "TrainArgs", "parse_args", "parse_kv"]

ALGOS = ("ppo", "a2c", "sac", "td3")
PROG = "dilqr-rl train"
DESCRIPTION = "Train a DiLQR actor (or an MLP baseline) with Stable-Baselines3."


@dataclass
class TrainArgs:
    """Arguments of ``dilqr-rl train`` (flags are the field names with ``-``)."""

    algo: str = arg("ppo", "RL algorithm", ALGOS)
    env: str = arg("pendulum", "a task (pendulum, cartpole, rocket: its env) or the Gymnasium "
                    "id of an env, e.g. dilqr_rl/MujocoPendulum-v0")
    policy: str = arg("dilqr", "'dilqr' (DiLQR actor) or 'mlp' (SB3's default MlpPolicy)",
                       ("dilqr", "mlp"))
    learn: str = arg("dynamics", "what the DiLQR actor learns: dynamics, cost, both, cost_net "
                                  "(or a+b)")
    model_params: str = arg("", "initial physical parameters of the controller's model, e.g. "
                                 "'g=6,m=1.4' (others: the task's true values)")
    env_kwargs: str = arg("", "true env parameters, e.g. 'g=10,damping=0.1'")
    horizon: int | None = arg(None, "MPC horizon T (none: the task's)")
    max_iter: int = arg(10, "iLQR iteration cap per solve")
    tol: float = arg(1e-6, "iLQR relative step tolerance")
    grad: str = arg("implicit", "DiLQR gradient", GRAD_MODES)
    on_unconverged: str = arg("warn", "unconverged solves: 'warn' (gradient at the last "
                                       "iterate, counted and warned once) or 'detach' (no "
                                       "gradient)", ("warn", "detach"))
    sysid_every: int = arg(0, "DiLQR actors: fit the model's physical parameters to the "
                               "observed transitions every this many env steps "
                               "(sb3.SystemIdCallback; 0: off, RL loss only)")
    sysid_steps: int = arg(200, "Adam steps per system-id fit")
    sysid_lr: float = arg(0.02, "Adam lr of the system-id fit")
    total_timesteps: int = arg(20_000, "env-step budget")
    seed: int = arg(0, "seed of SB3, envs and evaluation")
    n_envs: int = arg(1, "number of (sequential) training envs")
    learning_rate: float = arg(1e-3, "SB3 learning rate")
    controller_lr_scale: float = arg(10.0, "the controller's parameters use learning_rate * "
                                            "this")
    log_std_init: float = arg(-1.0, "initial log std of the DiLQR Gaussian (PPO/A2C)")
    gamma: float = arg(0.9, "discount")
    n_steps: int = arg(512, "PPO/A2C rollout length per env")
    batch_size: int = arg(64, "PPO/SAC/TD3 minibatch size")
    n_epochs: int = arg(5, "PPO epochs per rollout")
    learning_starts: int = arg(500, "SAC/TD3 random steps first")
    train_freq: int = arg(1, "SAC/TD3 env steps per update")
    eval_freq: int = arg(2000, "env steps between evaluations")
    eval_episodes: int = arg(3, "episodes per evaluation")
    checkpoint_freq: int = arg(5000, "env steps between checkpoints")
    out_dir: str = arg("runs", "parent folder of run directories")
    run_name: str = arg("", "run directory name (default: algo_policy_env_seed)")
    resume: bool = arg(False, "resume from the newest checkpoint this run wrote (listed with "
                               "its hash in checkpoints/manifest.json); checkpoints are pickles: "
                               "trust the run directory")
    tensorboard: bool = arg(True, "write TensorBoard logs")
    progress_bar: bool = arg(True, "show SB3's progress bar (on a terminal only)")
    reference: bool = arg(True, "also evaluate MPC with the true model (the learning curve's "
                                 "reference line)")
    threads: int = arg(1, "torch.set_num_threads")
    verbose: int = arg(0, "SB3 verbosity")

    def __post_init__(self) -> None:
        from dilqr_rl import tasks

        if self.env in tasks.TASKS and tasks.get(self.env).env_id is not None:
            self.env = tasks.get(self.env).env_id  # a task name: the task's env
        self._check_ranges()
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

    def _check_ranges(self) -> None:
        """Integers, numbers and choices."""
        for name, lo in _MIN_INT.items():
            v = getattr(self, name)
            if v is None and getattr(type(self), name) is None:
                continue
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
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                raise _arg_error(f.name, f"must be one of {tuple(choices)}, got "
                                         f"{getattr(self, f.name)!r}")

    def _check_env(self) -> None:
        """``env``, ``env_kwargs``, and for DiLQR actors the controller (``model_params``,
        ``horizon``, ...: the spec's own checks) and ``learn``."""
        import gymnasium as gym

        import dilqr_rl.envs  # noqa: F401  (registers the ids)

        try:
            gym.spec(self.env)
        except Exception:  # gymnasium's NameNotFound, VersionNotFound, ...
            raise _arg_error("env", f"must be a task ({', '.join(dilqr_rl.tasks.names())}) or "
                                    f"a registered Gymnasium id (e.g. "
                                    f"{dilqr_rl.envs.ENV_IDS[-1]!r}), got {self.env!r}") from None
        env_kwargs = _kvarg(self.env_kwargs, "env_kwargs")
        _kvarg(self.model_params, "model_params")
        if env_kwargs:
            try:
                gym.make(self.env, **env_kwargs).close()
            except (TypeError, ValueError) as e:
                raise _arg_error("env_kwargs", f"rejected by {self.env}: {e}") from None
        if self.policy != "dilqr":
            return
        from dilqr_rl import sb3, tasks

        try:
            tasks.for_env(self.env)
        except ValueError:
            raise _arg_error("env", f"{self.env!r} is not the env of a dilqr_rl task; policy "
                                    f"'dilqr' needs a task ({', '.join(tasks.names())}) or one "
                                    f"of {sorted(tasks.ENV_TASKS)}") from None
        try:
            self.controller_spec()
        except ValueError as e:
            name = getattr(e, "field", "")
            raise _arg_error(name if name in _FIELDS else "env", str(e)) from None
        try:
            sb3.parse_learn(self.learn)
        except ValueError as e:
            raise _arg_error("learn", str(e)) from None

    def controller_spec(self) -> Any:
        """The :class:`dilqr_rl.sb3.ControllerSpec` of the DiLQR actor."""
        from dilqr_rl import sb3

        return sb3.controller_spec(self.env, parse_kv(self.model_params), horizon=self.horizon,
                                   max_iter=self.max_iter, tol=self.tol, grad=self.grad,
                                   config={"on_unconverged": self.on_unconverged})

    @property
    def name(self) -> str:
        return self.run_name or (f"{self.algo}_{self.policy}_{self.env.split('/')[-1]}_"
                                 f"s{self.seed}")


_FIELDS = {f.name for f in fields(TrainArgs)}
#: integer fields and their smallest value (``None`` allowed where it is the default)
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
    return ValueError(f"{name} ({cliargs.flag(name)}) {msg}")


def _kvarg(text: str, name: str) -> dict[str, float]:
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
    return cliargs.parse(TrainArgs, argv, cliargs.dataclass_parser(TrainArgs, PROG, DESCRIPTION))
