"""The imitation commands: ``dilqr-rl imitate`` (:func:`main_imitate`: one learner, learned
vs true, a plot) and ``dilqr-rl study imitation`` (:func:`main_study`, see ``agents/study.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cliargs import dataclass_parser, parse
from .data import ExpertData, make_expert_data
from .fields import arg
from .imitation_args import LEARNERS, Args, check_args
from .imitation_plots import plot_run
from .training import train

__all__ = ["main_imitate", "main_study"]

#: the gradient methods of the model learners (``dilqr`` in ``dilqr.dx``)
_METHODS = tuple(dict.fromkeys(ln.split(".")[0] for ln in LEARNERS if "." in ln))

#: ``dilqr-rl imitate``'s defaults where they differ from :class:`Args`: with the paper's
#: ``|u| <= 2`` most pendulum expert controls sit on the bound and carry no gradient, and
#: ``(g, m, l)`` stalls in a local minimum (see the study); with ``|u| <= 100`` every control
#: is informative and a decaying step recovers the model. ``--u-bound none --lr 0.01
#: --lr-final none --n-train 10 --epochs 100 --eval-every 1`` is the paper's setting.
IMITATE_DEFAULTS = dict(n_train=5, epochs=220, lr=0.1, lr_final=0.002, u_bound=100.0,
                        eval_every=10)


@dataclass
class _ImitateFlags(Args):
    """:class:`Args` and the shorthands of ``dilqr-rl imitate``."""

    mode: str | None = arg(None, "shorthand: --learner {method}.{mode}", ("dx", "cost"))
    method: str = arg("dilqr", "with --mode: the gradient (DiLQR exact, DiffMPC last-LQR, "
                      "unrolled)", _METHODS)
    compare: bool = arg(False, "also run the DiffMPC gradient with the same data and seed")

    def __post_init__(self) -> None:
        if self.mode is not None:
            self.learner = f"{self.method}.{self.mode}"

    def args(self) -> Args:
        return Args(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Args)})


def _imitate_data(args: Args, p: argparse.ArgumentParser) -> ExpertData:
    """``--data`` checked against the flags (a usage error names the flag), else new data."""
    if not args.data:
        return make_expert_data(args.env, args.n_train, args.n_val, args.n_test,
                                seed=args.seed if args.data_seed is None else args.data_seed,
                                u_bound=args.u_bound)
    try:
        data = ExpertData.load(args.data)
    except (OSError, ValueError) as e:
        p.error(f"--data {args.data}: {e}")
    if data.env != args.env:
        p.error(f"--data holds {data.env!r} trajectories, --env is {args.env!r}")
    if args.n_train > data.n_train:
        p.error(f"--n-train {args.n_train}: --data has {data.n_train} training trajectories")
    if args.u_bound is not None and float(data.config.get("u_bound", args.u_bound)) \
            != args.u_bound:
        p.error(f"--u-bound {args.u_bound:g}: --data was made with |u| <= "
                f"{data.config['u_bound']:g}; pass the same --u-bound")
    return data


def main_imitate(argv: list[str]) -> int:
    """``dilqr-rl imitate``: learn the model from expert actions, print learned vs true, plot."""
    p = dataclass_parser(_ImitateFlags, "dilqr-rl imitate", "Behaviour cloning through DiLQR: "
                         "learn the dynamics (--mode dx) or the cost (--mode cost) from expert "
                         "actions.", defaults=IMITATE_DEFAULTS)
    flags = parse(_ImitateFlags, argv, p, check_args)
    args = flags.args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = _imitate_data(args, p)
    out = Path(args.out)
    data_path = data.save(out / f"expert_{args.env}_seed{data.seed}.npz")
    print(f"expert data: {data.x.shape[0]} trajectories ({args.n_train} train) "
          f"-> {data_path} ({time.perf_counter() - t0:.1f} s)")
    records = [train(args, data)]
    if flags.compare and "." in args.learner:
        other = args.learner.replace(args.learner.split(".")[0], "diffmpc")
        if other != args.learner:
            records.append(train(dataclasses.replace(args, learner=other), data))
    for r in records:
        _print_summary(r)
    tag = f"{args.env}_{args.learner}_n{args.n_train}_s{args.seed}"
    (out / f"{tag}.json").write_text(json.dumps(records, indent=1))
    png = plot_run(records[0], out / f"{tag}.png", records[1:])
    print(f"wrote {out / (tag + '.json')} and {png} ({time.perf_counter() - t0:.0f} s total)")
    return 0


def _print_summary(r: dict[str, Any]) -> None:
    f, a = r["final"], r["args"]
    print(f"\n{a['learner']} on {a['env']}: {f.get('steps', 0)} steps, "
          f"{f.get('train_time', 0):.1f} s training"
          + (f", DIVERGED at epoch {f['diverged_at']}" if f.get("diverged") else ""))
    if f.get("params") is not None and r["truth"] is not None:
        names = r["param_names"] if len(r["truth"]) == len(r["param_names"]) else \
            [f"w{j}" for j in range(len(r["truth"]) // 2)] + \
            [f"goal{j}" for j in range(len(r["truth"]) // 2)]
        print(f"  {'param':>8} {'learned':>10} {'true':>10} {'rel.err':>8}")
        for nm, v, t in zip(names, f["params"], r["truth"], strict=True):
            rel = abs(v - t) / abs(t) if t != 0 else abs(v - t)
            print(f"  {nm:>8} {v:>10.4f} {t:>10.4f} {rel:>8.2%}")
    if f.get("identifiable") and r.get("identifiable_truth"):
        print("  the dynamics depend on the parameters only through these (identifiable):")
        for nm, t in r["identifiable_truth"].items():
            v = f["identifiable"][nm]
            print(f"  {nm:>8} {v:>10.4f} {t:>10.4f} {abs(v - t) / abs(t):>8.2%}")
    print(f"  imitation loss: train {f.get('train_im', math.nan):.3e}  "
          f"val {f.get('val_im', math.nan):.3e}  test {f.get('test_im', math.nan):.3e}")
    print(f"  model loss {f.get('model_loss', math.nan):.3e}"
          + (f"   identifiable loss {f['ident_loss']:.3e}"
             if not math.isnan(f.get("ident_loss", math.nan)) else "")
          + f"   non-physical at end: {f.get('nonphysical_final')}")


def main_study(argv: list[str]) -> int:
    """``dilqr-rl study imitation ...``: the paper's comparison (see ``agents/study.py``)."""
    if not argv or argv[0] != "imitation":
        import argparse

        p = argparse.ArgumentParser(
            prog="dilqr-rl study", description="Run a whole comparison study: 'imitation' is "
            "the DiLQR paper's imitation comparison (section 5.2), mean +- std over seeds; "
            "'dilqr-rl study imitation --help' lists its options.")
        p.add_argument("study", choices=["imitation"], help="the study to run")
        p.parse_args(argv[:1])  # --help, or a usage error naming the choices (exit 2)
    from .study import main as study_main

    return study_main(argv[1:])
