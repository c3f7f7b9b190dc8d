"""Checkpoints of imitation runs in progress (``agents/training.py``'s ``_Run``), so that a
killed study resumes a run where it stopped instead of from epoch 0.

A checkpoint holds everything the next epoch reads: the learner's parameters, the optimizer's
and the learning-rate schedule's state, the shuffling generator, the warm-start caches, the
history and the counters, and the index of the next epoch. It is written with ``torch.save`` to
a temporary file in the same folder and moved into place with ``os.replace`` (a crash leaves
the old checkpoint or the new one, never half of one), and read with
``torch.load(weights_only=True)`` (tensors and plain containers only: no code runs). A
checkpoint made with other settings (:func:`state_key`) is ignored with a warning. A setting
that :class:`Args` gained after the checkpoint was written matches when the run leaves it at its
default (a new setting's default keeps the behaviour it had before it existed), so a study
survives an upgrade that adds options.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["key_matches", "load_run_state", "read_progress", "save_run_state", "state_key"]

#: settings that do not change a run's numbers (a resumed run may differ in these)
_COSMETIC = ("progress", "out")


def state_key(args: Any) -> dict[str, Any]:
    """The settings a checkpoint must match: the run's :class:`Args` less the cosmetic ones."""
    return {k: v for k, v in dataclasses.asdict(args).items() if k not in _COSMETIC}


def key_matches(saved: dict[str, Any], args: Any) -> bool:
    """Whether a checkpoint's ``saved`` key (:func:`state_key`) fits a run with ``args``:
    equal settings, where a setting missing from ``saved`` must be at its default."""
    now = _plain(state_key(args))  # JSON-plain on both sides: a JSON record has no tuples
    saved = _plain(saved)
    defaults = _plain({f.name: f.default for f in dataclasses.fields(args)})
    if set(saved) - set(now):  # a setting that no longer exists: the run is not the same
        return False
    return all(saved[k] == v if k in saved else v == defaults.get(k, dataclasses.MISSING)
               for k, v in now.items())


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=repr))


def _learners(run: Any) -> dict[str, Any]:
    # the learner and any learner inside it (sysid's controller) count unconverged solves
    return {name: m for name, m in run.learner.named_modules() if hasattr(m, "unconverged")}


def save_run_state(run: Any, path: str | os.PathLike, next_epoch: int) -> None:
    """Write ``run``'s state before epoch ``next_epoch`` to ``path`` atomically."""
    path = Path(path)
    state = dict(
        key=state_key(run.args), next_epoch=next_epoch,
        learner=run.learner.state_dict(), opt=run.opt.state_dict(),
        sched=None if run.sched is None else run.sched.state_dict(),
        gen=run.gen.get_state(), rng=torch.get_rng_state(), cache=run.cache,
        history=run.history,
        counters=dict(steps=run.steps, nonphys_steps=run.nonphys_steps,
                      saved_bytes=run.saved_bytes, diverged_at=run.diverged_at,
                      t_train=run.t_train, t_eval=run.t_eval, train_im=run.train_im),
        unconverged={k: m.unconverged for k, m in _learners(run).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_run_state(run: Any, path: str | os.PathLike) -> int:
    """Restore ``run`` from ``path`` if it exists and matches the run's settings; the epoch
    to continue from (0 when there is nothing to resume)."""
    path = Path(path)
    if not path.exists():
        return 0
    try:
        state = torch.load(path, weights_only=True)
        key = state["key"]
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError) as e:
        warnings.warn(f"{path} is unreadable ({e}); starting the run over", RuntimeWarning,
                      stacklevel=2)
        return 0
    if not key_matches(key, run.args):
        warnings.warn(f"{path} was made with other settings; starting the run over",
                      RuntimeWarning, stacklevel=2)
        return 0
    run.learner.load_state_dict(state["learner"])
    run.opt.load_state_dict(state["opt"])
    if run.sched is not None:
        run.sched.load_state_dict(state["sched"])
    run.gen.set_state(state["gen"])
    torch.set_rng_state(state["rng"])
    for k, c in state["cache"].items():
        run.cache[k].copy_(c)
    run.history = list(state["history"])
    for k, v in state["counters"].items():
        setattr(run, k, v)
    for k, m in _learners(run).items():
        m.unconverged = state["unconverged"][k]
    return int(state["next_epoch"])


def read_progress(path: str | os.PathLike) -> dict[str, Any] | None:
    """A run in progress as a partial record from its checkpoint (no training): ``history``
    and a ``final`` entry (the last evaluation, ``in_progress`` and the counters' step
    metrics), or ``None`` if there is no readable checkpoint with an evaluation."""
    try:
        state = torch.load(path, weights_only=True)
        hist, c = list(state["history"]), state["counters"]
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError):
        return None
    if not hist:
        return None
    steps = max(int(c["steps"]), 1)
    final = dict(hist[-1], in_progress=True, next_epoch=int(state["next_epoch"]),
                 diverged=c["diverged_at"] is not None, diverged_at=c["diverged_at"],
                 nonphysical_final=hist[-1].get("nonphysical"),
                 nonphysical_frac=c["nonphys_steps"] / steps,
                 saved_bytes_per_step=c["saved_bytes"], train_time_per_step=c["t_train"] / steps,
                 steps=int(c["steps"]))
    return dict(args=dict(state["key"]), history=hist, final=final, in_progress=True,
                wall_time=c["t_train"] + c["t_eval"])
