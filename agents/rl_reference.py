"""What a ``dilqr-rl train`` run is measured against: the true model of its env (the task's
parameters with the run's ``--env-kwargs``), the return of MPC with that model (the reference
line of the learning curve), and, where the task declares them, the identifiable parameter
combinations of the learned and the true model."""

from __future__ import annotations

from typing import Any

import torch

import dilqr_rl as dl

from .mpc import MPCPolicy, mpc_episodes
from .rl_args import TrainArgs, parse_kv

__all__ = ["identifiable", "reference_returns", "true_params"]


def true_params(args: TrainArgs) -> dict[str, float] | None:
    """The env's true physical parameters that the controller's model has (``None`` for an
    env that is not a task's)."""
    try:
        task = dl.tasks.for_env(args.env)
    except ValueError:
        return None
    env_kwargs = parse_kv(args.env_kwargs)
    return {k: float(env_kwargs.get(k, v)) for k, v in task.params.items()}


def identifiable(args: TrainArgs, params: dict[str, float]) -> dict[str, float] | None:
    """The identifiable combinations of ``params`` (``None`` if the task declares none)."""
    task = dl.tasks.for_env(args.env)
    if task.identifiable is None:
        return None
    theta = torch.tensor([params[k] for k in task.params], dtype=torch.float64)
    return {k: float(v) for k, v in task.combinations(theta).items()}


def reference_returns(args: TrainArgs, envs: list[Any], seed: int) -> list[float] | None:
    """Returns of closed-loop MPC with the true model (:class:`~dilqr_rl.agents.mpc.MPCPolicy`:
    the task's horizon rule, the run's horizon and solver settings), one episode per env of
    ``envs`` (seeds ``seed, seed+1, ...``) in one batch; ``None`` for an env that is not a
    task's. On a MuJoCo env the analytic model is only approximately true."""
    truth = true_params(args)
    if truth is None:
        return None
    policy = MPCPolicy(dl.tasks.for_env(args.env), args.horizon, truth, args.max_iter, args.tol)
    return mpc_episodes(envs, policy, seed)
