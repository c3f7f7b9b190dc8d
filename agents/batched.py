"""Many imitation runs in one batched solve: :func:`train_many`.

S runs of the same controller learner (``dilqr.*``, ``diffmpc.*``, ``unroll.dx``: the same
task, learner, batch size, epochs and solver settings; seeds, data, training-set sizes and
learning rates may differ) train together: every optimizer step is one DiLQR call on
``B = sum_s b_s`` samples, each run's minibatch with that run's parameters per sample
(``params (B, p)``, or ``weights``, ``goal``, ``terminal_weights`` ``(B, ...)``). The solver
treats every sample on its own (its own iterations, line search and regularization), and the
runs are independent in the loss (``sum_s loss_s``: run ``s``'s parameters get exactly the
gradient of its own loss), so each run keeps its own optimizer, shuffling generator, warm-start
caches and divergence status and ends with the numbers of a separate :func:`train` run, up to
rounding (``tests/test_study_batched.py``). Evaluations are batched the same way.

A run that diverges drops out of the batch; a step or evaluation whose batched call raises is
redone run by run (each failing as it would alone). Time and autograd memory are shared: each
run's ``train_time`` is its share of the batched calls' wall time, ``saved_bytes_per_step``
its share of the batched step's.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

import dilqr_rl as dl

from .data import ExpertData
from .imitation_args import Args
from .learners import MPCLearner, imitation_loss, make_learner
from .run_state import load_run_state, save_run_state
from .training import (
    _finite,
    _progress,
    _resolve_data,
    _Run,
    _SavedBytes,
    _tick,
    checkpoint_due,
    eval_due,
)

__all__ = ["BATCHABLE", "SHARED_FIELDS", "CheckpointEpochError", "train_many"]

#: the learners that train as one batched solve (a controller with per-sample overrides)
BATCHABLE = ("dilqr.dx", "dilqr.cost", "diffmpc.dx", "diffmpc.cost", "unroll.dx")
#: the :class:`Args` fields the runs of one batch must share (the rest may differ)
SHARED_FIELDS = ("env", "learner", "n_val", "n_test", "epochs", "batch_size",
                 "u_bound", "max_iter", "tol", "warm_start", "restart_warmstart_every",
                 "eval_every", "alternate_every")


class CheckpointEpochError(ValueError):
    """The runs' checkpoints are at different epochs (resume them one by one)."""


def _check(args_list: Sequence[Args]) -> None:
    if not args_list:
        raise ValueError("args_list must hold at least one run's Args")
    a0 = args_list[0]
    if a0.learner not in BATCHABLE:
        raise ValueError(f"args_list: learner {a0.learner!r} does not batch; one of {BATCHABLE}")
    for a in args_list[1:]:
        for f in SHARED_FIELDS:
            if getattr(a, f) != getattr(a0, f):
                raise ValueError(f"args_list: every run must have the same {f!r}, got "
                                 f"{getattr(a0, f)!r} and {getattr(a, f)!r}")


def _stack(runs: Sequence[_Run], sizes: Sequence[int]) -> dict[str, Tensor]:
    """Each run's controller overrides repeated for its ``b_s`` samples: ``(B, ...)``."""
    ovs = [r.learner.overrides() for r in runs]
    if len(ovs) == 1:
        return ovs[0]  # one run: its shared parameters, the path of a separate run
    return {k: torch.cat([ov[k].expand(b, *ov[k].shape) for ov, b in zip(ovs, sizes, strict=True)])
            for k in ovs[0]}


def _solve(runs: Sequence[_Run], x0s: Sequence[Tensor], inits: Sequence[Tensor]
           ) -> dl.Solution:
    """One controller call for all runs: ``x0s[s] (b_s, n)``, warm starts ``(b_s, T, m)``."""
    sizes = [x.shape[0] for x in x0s]
    ctrl = runs[0].learner.ctrl
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.UnconvergedWarning)  # counted per run instead
        return ctrl(torch.cat(list(x0s)), u_init=torch.cat(list(inits)), **_stack(runs, sizes))


def _count_unconverged(runs: Sequence[_Run], sol: dl.Solution, sizes: list[int]) -> None:
    for r, ok in zip(runs, sol.converged.split(sizes), strict=True):
        r.learner.unconverged += int((~ok).sum())


def _step(runs: Sequence[_Run], epoch: int, idxs: Sequence[Tensor]
          ) -> list[tuple[float, int] | None]:
    """One optimizer step of every run (run ``s`` on its rows ``idxs[s]``) as one solve; the
    squared imitation error and count per run (``None``: the run's step failed)."""
    mbs = [r.minibatch(idx) for r, idx in zip(runs, idxs, strict=True)]
    sizes = [len(idx) for idx in idxs]
    try:
        with _SavedBytes() as sb:
            sol = _solve(runs, [mb[0][:, 0] for mb in mbs], [mb[2] for mb in mbs])
            preds = sol.u.split(sizes)
            losses = [imitation_loss(p, mb[1]) for p, mb in zip(preds, mbs, strict=True)]
        ok = [_finite(loss, p) for loss, p in zip(losses, preds, strict=True)]
        for r in runs:
            r.opt.zero_grad()
        if any(ok):
            # run s's parameters enter only its own samples: each gets its own loss's gradient
            sum(loss for loss, o in zip(losses, ok, strict=True) if o).backward()
    except (ValueError, RuntimeError):
        # redo run by run: each fails (or not) exactly as it would alone
        return [r._step(epoch, idx) for r, idx in zip(runs, idxs, strict=True)]
    _count_unconverged(runs, sol, sizes)
    errs: list[tuple[float, int] | None] = []
    for r, idx, p, mb, o in zip(runs, idxs, preds, mbs, ok, strict=True):
        r.saved_bytes = max(r.saved_bytes, sb.bytes // len(runs))
        if not o:
            r.diverged_at = epoch
            errs.append(None)
        else:
            errs.append(r.apply_step(epoch, idx, p, mb[1]))
    return errs


def _epoch(runs: list[_Run], epoch: int) -> None:
    """One epoch of every run, step by step in lockstep (each run in its own order)."""
    t0 = time.perf_counter()
    batches = [r.begin_epoch(epoch) for r in runs]
    sums = [[0.0, 0] for _ in runs]
    for j in range(max(len(b) for b in batches)):
        # a run with a smaller training set has fewer minibatches: it sits out the last steps
        live = [i for i, r in enumerate(runs) if r.diverged_at is None and j < len(batches[i])]
        if not live:
            break
        errs = _step([runs[i] for i in live], epoch, [batches[i][j] for i in live])
        for i, err in zip(live, errs, strict=True):
            if err is not None:
                sums[i][0] += err[0]
                sums[i][1] += err[1]
    share = (time.perf_counter() - t0) / len(runs)
    for r, (sq, n) in zip(runs, sums, strict=True):
        r.end_epoch(sq, n, share)


def _eval_splits(runs: Sequence[_Run], splits: Sequence[str]) -> list[list[float]]:
    """Imitation loss of every run on every split (``[split][run]``), chunk by chunk as
    :func:`training._eval_split` (a run whose chunk is non-finite gets NaN on that split and
    stops there), all splits' chunks in one solve. The warm-start caches are written only when
    every solve succeeded (a raising solve is redone run by run from the same caches)."""
    bs = runs[0].args.batch_size
    pairs = [(s, i) for s in splits for i in range(len(runs))]
    chunks = {s: list(torch.arange(runs[0].splits[s][0].shape[0]).split(bs)) for s in splits}
    total = {p: 0.0 for p in pairs}
    count = {p: 0 for p in pairs}
    writes: list[tuple[Tensor, Tensor, Tensor]] = []
    live = list(pairs)
    with torch.no_grad():
        for j in range(max(len(c) for c in chunks.values())):
            now = [(s, i) for s, i in live if j < len(chunks[s])]
            if not now:
                break
            idx = [chunks[s][j] for s, _ in now]
            rs = [runs[i] for _, i in now]
            sol = _solve(rs, [runs[i].splits[s][0][k, 0] for (s, i), k in zip(now, idx,
                                                                               strict=True)],
                         [runs[i].cache[s][k] for (s, i), k in zip(now, idx, strict=True)])
            _count_unconverged(rs, sol, [len(k) for k in idx])
            for (s, i), k, pred in zip(now, idx, sol.u.split([len(k) for k in idx]),
                                       strict=True):
                if not _finite(pred):
                    total[(s, i)], count[(s, i)] = math.nan, 1
                    live.remove((s, i))
                    continue
                writes.append((runs[i].cache[s], k, pred))
                total[(s, i)] += float((pred - runs[i].splits[s][1][k]).pow(2).sum())
                count[(s, i)] += pred.numel()
    for cache, k, pred in writes:
        cache[k] = pred
    return [[total[(s, i)] / max(count[(s, i)], 1) for i in range(len(runs))] for s in splits]


def _evaluate(runs: list[_Run], epoch: int) -> None:
    t0 = time.perf_counter()
    try:
        vals, tests = _eval_splits(runs, ("val", "test"))
    except (ValueError, RuntimeError):
        for r in runs:  # run by run, as alone
            r.evaluate(epoch)
        return
    share = (time.perf_counter() - t0) / len(runs)
    for r, v, t in zip(runs, vals, tests, strict=True):
        r.log_eval(epoch, v, t, share)


def _runs(args_list: Sequence[Args], data_list: Sequence[ExpertData | None]) -> list[_Run]:
    runs = []
    for a, d in zip(args_list, data_list, strict=True):
        a, d = _resolve_data(a, d)
        torch.manual_seed(a.seed)  # as train(): the same initial state
        learner = make_learner(a)
        assert isinstance(learner, MPCLearner)
        runs.append(_Run(a, learner, d))
    return runs


def train_many(args_list: Sequence[Args], data_list: Sequence[ExpertData | None] | None = None,
               *, checkpoints: Sequence[str | os.PathLike] | None = None,
               checkpoint_every: int = 0) -> list[dict[str, Any]]:
    """Train the runs ``args_list`` together, every step one batched solve; their records,
    as :func:`training.train` returns them (plus ``batched``: the number of runs).

    :param args_list: S runs' :class:`Args`, equal in :data:`SHARED_FIELDS`
    :param data_list: their expert data (default: each run's own, as :func:`train`)
    :param checkpoints: one file per run to resume from and write to every
        ``checkpoint_every`` epochs (``agents/run_state.py``); the runs must be at the same
        epoch
    """
    torch.set_num_threads(1)
    _check(args_list)
    data_list = [None] * len(args_list) if data_list is None else list(data_list)
    if len(data_list) != len(args_list):
        raise ValueError(f"data_list has {len(data_list)} entries, args_list {len(args_list)}")
    if checkpoints is not None and len(checkpoints) != len(args_list):
        raise ValueError(f"checkpoints has {len(checkpoints)} entries, args_list "
                         f"{len(args_list)}")
    runs = _runs(args_list, data_list)
    starts = {0} if checkpoints is None else {load_run_state(r, c)
                                              for r, c in zip(runs, checkpoints, strict=True)}
    if len(starts) != 1:
        raise CheckpointEpochError(f"checkpoints are at different epochs {sorted(starts)}; "
                                   "resume them separately")
    start, a0 = starts.pop(), runs[0].args
    bar = _progress(a0, start, f"{a0.env} {a0.learner} n={a0.n_train} x{len(runs)}")
    for epoch in range(start, a0.epochs):
        live = [r for r in runs if r.diverged_at is None]
        if not live:
            break
        _epoch(live, epoch)
        live = [r for r in live if r.diverged_at is None]
        if live and eval_due(a0, epoch):
            _evaluate(live, epoch)
        _tick(bar, runs[0])
        if checkpoints is not None and checkpoint_due(a0, epoch, checkpoint_every):
            for r, c in zip(runs, checkpoints, strict=True):
                save_run_state(r, c, epoch + 1)
    if bar is not None:
        bar.close()
    return [dict(r.record(), batched=len(runs)) for r in runs]
