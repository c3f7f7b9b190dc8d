"""The imitation training loop: one :func:`train` for every learner, with the same data,
batches and seeds.

Defaults as the paper: RMSprop ``lr = 1e-2``, ``alpha`` (decay) ``0.5`` for the model
learners, Adam ``1e-3`` for the networks, batch 32. The controllers run in float64 with
one thread; every minibatch is one batched DiLQR call, warm-started per trajectory from that
trajectory's previous solution (a ``u`` cache per split).

If a step makes the parameters, the loss or the solution non-finite (or the solver raises),
the run stops there and is recorded as ``diverged``, with the last finite metrics kept.
``nonphysical_final`` says whether the run ended with a parameter ``<= 0``,
``nonphysical_frac`` the fraction of optimizer steps after which one was.

Metrics per evaluated epoch: train / val / test imitation loss, model loss (``dx``:
``mean (theta_hat - theta)^2``; ``cost``: ``mean`` over ``[weights; goal]``), the
identifiable model loss for the pendulum (only ``g / l`` and ``m l^2`` enter its dynamics, so
``(g, m, l)`` itself is identifiable only up to that family), unconverged solves, autograd
memory (bytes saved for backward in one training step) and wall time.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import warnings
from typing import Any

import torch
from torch import Tensor

from dilqr_rl import tasks

from .data import ExpertData, control_bound, make_expert_data
from .imitation_args import Args
from .learners import Learner, make_learner
from .run_state import load_run_state, save_run_state

__all__ = ["checkpoint_due", "eval_due", "train"]


class _SavedBytes:
    """Counts the bytes autograd saves for backward (the memory a backward needs)."""

    def __init__(self) -> None:
        self.bytes = 0

    def __enter__(self) -> _SavedBytes:
        def pack(t: Tensor) -> Tensor:
            self.bytes += t.numel() * t.element_size()
            return t

        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def _finite(*ts: Tensor | None) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in ts)


def _eval_split(learner: Learner, x: Tensor, u: Tensor, cache: Tensor, bs: int) -> float:
    """Imitation loss on a split (batched, warm-started from and updating ``cache``)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for idx in torch.arange(x.shape[0]).split(bs):
            pred = learner.predict(x[idx, 0], cache[idx] if learner.uses_solver else None)
            if not _finite(pred):
                return math.nan
            cache[idx] = pred
            total += float((pred - u[idx]).pow(2).sum())
            count += pred.numel()
    return total / count


def _resolve_data(args: Args, data: ExpertData | None) -> tuple[Args, ExpertData]:
    """The run's settings (``u_bound`` from ``data`` unless given) and its checked data
    (``data``, else loaded from ``args.data``, else generated with ``args.data_seed``)."""
    if data is not None and args.u_bound is None:
        args = dataclasses.replace(args, u_bound=data.config.get("u_bound"))
    bound = control_bound(tasks.get(args.env), args.u_bound)
    if data is None:
        if args.data:
            data = ExpertData.load(args.data)
        else:
            seed = args.seed if args.data_seed is None else args.data_seed
            data = make_expert_data(args.env, max(args.n_train, 1), args.n_val, args.n_test,
                                    seed=seed, u_bound=args.u_bound)
    data.validate()  # fields may have been changed since it was made or loaded
    if data.env != args.env:
        raise ValueError(f"data is for {data.env!r}, args.env is {args.env!r}")
    if float(data.config.get("u_bound", bound)) != bound:
        raise ValueError(f"data has |u| <= {data.config.get('u_bound')}, the learner "
                         f"{bound}; pass the same u_bound")
    return args, data


class _Run:
    """The state of one training run: optimizer, splits, warm-start caches, counters and the
    history; :meth:`train_epoch` and :meth:`evaluate` advance it."""

    def __init__(self, args: Args, learner: Learner, data: ExpertData):
        self.args, self.learner = args, learner
        self.opt = learner.optimizer()
        self.sched = None
        if args.lr_final is not None and args.epochs > 1:
            base = args.nn_lr if args.learner in ("nn", "mlp") else args.lr
            gamma = (args.lr_final / base) ** (1.0 / (args.epochs - 1))
            self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma)
        self.gen = torch.Generator().manual_seed(args.seed)
        self.splits = {"train": data.split("train", args.n_train), "val": data.split("val"),
                       "test": data.split("test")}
        self.cache = {k: torch.zeros_like(u) for k, (_, u) in self.splits.items()}
        self.history: list[dict[str, Any]] = []
        self.steps = self.nonphys_steps = self.saved_bytes = 0
        self.diverged_at: int | None = None
        self.t_train = self.t_eval = 0.0
        self.train_im = math.nan

    def begin_epoch(self, epoch: int) -> list[Tensor]:
        """Reset the warm-start caches when due; the epoch's minibatches (row indices of the
        training split, shuffled by the run's generator)."""
        args = self.args
        if not args.warm_start or (args.restart_warmstart_every > 0
                                   and epoch % args.restart_warmstart_every == 0):
            for c in self.cache.values():
                c.zero_()
        n = self.splits["train"][0].shape[0]
        return list(torch.randperm(n, generator=self.gen).split(args.batch_size))

    def end_epoch(self, sq_sum: float, count: int, seconds: float) -> None:
        """The epoch's training imitation loss and time; the learning-rate schedule."""
        self.train_im = sq_sum / max(count, 1)
        self.t_train += seconds
        if self.sched is not None:
            self.sched.step()

    def train_epoch(self, epoch: int) -> None:
        """One pass over the training split in a shuffled order (the run's generator);
        stops at the first non-finite or failed step (``diverged_at``)."""
        t0 = time.perf_counter()
        sq_sum, count = 0.0, 0
        for idx in self.begin_epoch(epoch):
            err = self._step(epoch, idx)
            if err is not None:
                sq_sum, count = sq_sum + err[0], count + err[1]
            if self.diverged_at is not None:
                break
        self.end_epoch(sq_sum, count, time.perf_counter() - t0)

    def minibatch(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x (b, T+1, n), u (b, T, m), warm start u (b, T, m))`` of the rows ``idx``."""
        x_tr, u_tr = self.splits["train"]
        return x_tr[idx], u_tr[idx], self.cache["train"][idx]

    def _step(self, epoch: int, idx: Tensor) -> tuple[float, int] | None:
        """One optimizer step on the minibatch ``idx``; its squared imitation error and count,
        or ``None`` if the step failed (``diverged_at`` set)."""
        learner = self.learner
        mb_x, mb_u, u_init = self.minibatch(idx)
        try:
            with _SavedBytes() as sb:
                loss, pred = learner.train_loss(mb_x, mb_u, u_init)
            self.saved_bytes = max(self.saved_bytes, sb.bytes)
            ok = _finite(loss, pred)
            if ok:
                self.opt.zero_grad()
                loss.backward()
        except (ValueError, RuntimeError) as e:  # e.g. non-finite dynamics parameters
            ok = False
            self.fail(epoch, e)
        if not ok:
            self.diverged_at = epoch
            return None
        return self.apply_step(epoch, idx, pred, mb_u)

    def fail(self, epoch: int, e: Exception) -> None:
        """Record a failed step (the run stops: ``diverged_at``)."""
        warnings.warn(f"{self.args.learner}: solve failed at epoch {epoch}: {e}",
                      RuntimeWarning)
        self.diverged_at = epoch

    def apply_step(self, epoch: int, idx: Tensor, pred: Tensor, mb_u: Tensor
                   ) -> tuple[float, int] | None:
        """After ``backward``: the learner's hook, the finiteness check of the gradients, the
        warm-start cache, the optimizer step and the counters. ``pred (b, T, m)`` are the
        predicted controls of the rows ``idx``, ``mb_u (b, T, m)`` the expert's."""
        learner = self.learner
        learner.before_step(epoch)
        if not all(_finite(p.grad) for p in learner.parameters()):
            self.diverged_at = epoch
            return None
        if self.args.warm_start:
            self.cache["train"][idx] = pred.detach()
        err = (float((pred.detach() - mb_u).pow(2).sum()), pred.numel())
        self.opt.step()
        self.steps += 1
        self.nonphys_steps += learner.nonphysical()
        if learner.learned() is not None and not _finite(learner.learned()):
            self.diverged_at = epoch
        return err

    def evaluate(self, epoch: int) -> None:
        """Val / test imitation loss and the model metrics: one :attr:`history` entry."""
        learner, bs = self.learner, self.args.batch_size
        t0 = time.perf_counter()
        try:
            val = _eval_split(learner, *self.splits["val"], self.cache["val"], bs)
            test = _eval_split(learner, *self.splits["test"], self.cache["test"], bs)
        except (ValueError, RuntimeError):
            val = test = math.nan
        self.log_eval(epoch, val, test, time.perf_counter() - t0)

    def log_eval(self, epoch: int, val: float, test: float, seconds: float) -> None:
        """Append the :attr:`history` entry of an evaluation (val / test imitation loss given,
        the model metrics from the learner)."""
        learner = self.learner
        self.t_eval += seconds
        v = learner.learned()
        self.history.append(dict(
            epoch=epoch, steps=self.steps, train_im=self.train_im, val_im=val, test_im=test,
            model_loss=learner.model_loss(), ident_loss=learner.identifiable_loss(),
            params=None if v is None else v.detach().tolist(),
            identifiable=learner.identifiable(), nonphysical=learner.nonphysical(),
            unconverged=learner.unconverged,
            train_time=self.t_train, eval_time=self.t_eval))

    def record(self) -> dict[str, Any]:
        """The run record: ``args``, ``truth``, ``param_names``, ``history``, ``final``."""
        learner, steps = self.learner, self.steps
        final = dict(self.history[-1]) if self.history else {}
        final.update(diverged=self.diverged_at is not None, diverged_at=self.diverged_at,
                     nonphysical_final=learner.nonphysical(),
                     nonphysical_frac=self.nonphys_steps / max(steps, 1),
                     saved_bytes_per_step=self.saved_bytes,
                     train_time_per_step=self.t_train / max(steps, 1), steps=steps)
        truth, task = learner.truth(), learner.task
        ident = None if learner.identifiable() is None else {
            k: float(c) for k, c in task.combinations(task.theta()).items()}
        return dict(args=dataclasses.asdict(self.args),
                    truth=None if truth is None else truth.tolist(),
                    param_names=list(task.param_names), identifiable_truth=ident,
                    history=self.history, final=final)


def _progress(args: Args, start: int = 0, desc: str | None = None) -> Any:
    if not args.progress or not sys.stderr.isatty():  # a log file gets no bar redraws
        return None
    from tqdm.auto import tqdm

    desc = desc or f"{args.env} {args.learner} n={args.n_train} s={args.seed}"
    return tqdm(total=args.epochs, initial=start, desc=desc, leave=False, dynamic_ncols=True)


def _tick(bar: Any, run: _Run) -> None:
    if bar is not None:
        bar.update(1)
        if run.history:
            h = run.history[-1]
            bar.set_postfix(im=f"{h['train_im']:.2e}", model=f"{h['model_loss']:.2e}")


def eval_due(args: Args, epoch: int) -> bool:
    """Whether epoch ``epoch`` ends with an evaluation (every ``eval_every``, and the last)."""
    return epoch % args.eval_every == 0 or epoch == args.epochs - 1


def checkpoint_due(args: Args, epoch: int, every: int) -> bool:
    """Whether to checkpoint after epoch ``epoch`` (every ``every`` epochs, not the last:
    a finished run is a record, written by the caller)."""
    return every > 0 and (epoch + 1) % every == 0 and epoch + 1 < args.epochs


def train(args: Args, data: ExpertData | None = None, *,
          checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 0
          ) -> dict[str, Any]:
    """Train one learner; returns the run record (JSON-able): ``args``, ``truth``,
    ``param_names``, ``history`` (one entry per evaluated epoch) and ``final``.

    :param args: :class:`Args`
    :param data: expert data (default: generated from ``args.data`` or ``args.data_seed``)
    :param checkpoint: a file to resume from if it exists (``agents/run_state.py``) and to
        write the run's state to every ``checkpoint_every`` epochs (0: never)
    """
    # tiny batched solves: one thread is ~100x faster (docs/pitfalls.md, "Threads")
    torch.set_num_threads(1)
    args, data = _resolve_data(args, data)
    torch.manual_seed(args.seed)
    run = _Run(args, make_learner(args), data)
    start = 0 if checkpoint is None else load_run_state(run, checkpoint)
    bar = _progress(args, start)
    for epoch in range(start, args.epochs):
        run.train_epoch(epoch)
        if run.diverged_at is not None:
            break
        if eval_due(args, epoch):
            run.evaluate(epoch)
        _tick(bar, run)
        if checkpoint is not None and checkpoint_due(args, epoch, checkpoint_every):
            save_run_state(run, checkpoint, epoch + 1)
    if bar is not None:
        bar.close()
    return run.record()
