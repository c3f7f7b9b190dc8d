"""Settings of one imitation run (``dilqr-rl imitate``): :class:`Args`, the learner names
:data:`LEARNERS` and :func:`check_args`. Every field is one flag; its help (and its choices)
live in the field's metadata (:mod:`dilqr_rl.agents.cliargs`)."""

from __future__ import annotations

from dataclasses import dataclass

from .data import ENVS
from .fields import arg, check_fields

__all__ = ["LEARNERS", "Args", "check_args"]

#: the learners (see ``agents/learners.py``)
LEARNERS = ("dilqr.dx", "dilqr.cost", "diffmpc.dx", "diffmpc.cost", "unroll.dx", "sysid",
            "nn", "mlp")


@dataclass
class Args:
    """Settings of one imitation run."""

    env: str = arg("pendulum", "the task (dilqr_rl.tasks)", ENVS)
    learner: str = arg("dilqr.dx", "what is learned and how (agents/learners.py)", LEARNERS)
    n_train: int = arg(10, "number of expert training trajectories (the paper: 10, 50, 100)")
    u_bound: float | None = arg(None, "the control bound |u_i| <= u_bound of expert and "
                               "learner; none: the task's")
    n_val: int = arg(10, "validation trajectories")
    n_test: int = arg(10, "test trajectories")
    epochs: int = arg(100, "passes over the training set")
    batch_size: int = arg(32, "minibatch size (one batched DiLQR call per minibatch)")
    seed: int = arg(0, "seed of the shuffling and the network initialization")
    data_seed: int | None = arg(None, "seed of the expert data's initial states; none: "
                               "--seed")
    lr: float = arg(1e-2, "RMSprop learning rate of the model learners (paper: 1e-2)")
    lr_final: float | None = arg(None, "if set, decay the learning rate geometrically to this "
                                "value over the epochs; none: constant, as the paper")
    rmsprop_alpha: float = arg(0.5, "RMSprop smoothing constant ('decay 0.5' in the paper, "
                              "DiffMPC's alpha)")
    nn_lr: float = arg(1e-3, "Adam learning rate of the network policies")
    alternate_every: int = arg(10, "cost learning: switch between goal and weights every this "
                              "many epochs")
    cost_learn: str | None = arg(None, "cost learning: 'alternate' goal and weights every "
                                 "--alternate-every epochs (DiffMPC), 'weights' only (the goal "
                                 "stays at the task's initial guess), 'both' at once; none: the "
                                 "task's choice (Task.cost_learn)",
                                 ("alternate", "weights", "both"))
    max_iter: int = arg(200, "iLQR iteration cap of the learners' controller")
    tol: float = arg(1e-8, "iLQR relative step tolerance of the learners' controller")
    warm_start: bool = arg(True, "warm-start each trajectory's solve from its previous solution "
                          "(a u cache)")
    restart_warmstart_every: int = arg(50, "reset the warm-start caches to zeros (the expert's "
                                      "start) every this many epochs, as DiffMPC does; 0 never "
                                      "resets")
    eval_every: int = arg(1, "evaluate val / test imitation loss every this many epochs (and at "
                         "the last one)")
    data: str | None = arg(None, "expert data .npz to load; none: generate in memory")
    out: str = arg("runs/imitate", "output folder (JSON, PNG)")
    progress: bool = arg(True, "show a progress bar (on a terminal only)")


def check_args(args: Args) -> None:
    """``ValueError`` naming the flag of the first bad setting of ``dilqr-rl imitate``."""
    if args.env not in ENVS:
        raise ValueError(f"--env must be one of {ENVS}, got {args.env!r}")
    if args.learner not in LEARNERS:
        raise ValueError(f"--learner must be one of {LEARNERS}, got {args.learner!r}")
    if args.cost_learn not in (None, "alternate", "weights", "both"):
        raise ValueError(f"--cost-learn must be one of alternate, weights, both or none, got "
                         f"{args.cost_learn!r}")
    check_fields(args, {"n_train": 1, "n_val": 1, "n_test": 1, "epochs": 1, "batch_size": 1,
                        "seed": 0, "data_seed": 0, "alternate_every": 1, "max_iter": 1,
                        "restart_warmstart_every": 0, "eval_every": 1},
                 positive=("u_bound", "lr", "lr_final", "nn_lr"),
                 nonneg=("rmsprop_alpha", "tol"))
