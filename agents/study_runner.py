"""Running the imitation study's grid (``agents/study.py``): units of work, the run folder
that makes a study resumable, and the backends.

**Units.** The runs (seeds, training-set sizes) of one (env, learner) whose learner batches
(:data:`agents.batched.BATCHABLE`) train together as one batched solve per step
(:func:`agents.batched.train_many`); every other run is a unit of its own.

**Resuming.** Every run has a file in the run folder: ``<tag>.json`` once it finished (the
record and the settings it was made with), ``<tag>.pt`` while in progress (a checkpoint every
``checkpoint_every`` epochs, ``agents/run_state.py``). Both are written atomically (temporary
file, then ``os.replace``). A study started again with the same run folder loads the finished
runs instead of recomputing them and resumes the others from their checkpoints; a record or
checkpoint made with other settings is ignored.

**Backends.** ``local`` runs the units in this process, or in ``workers`` spawned processes;
``ray`` submits one Ray task per unit (``ray.remote`` / ``ray.wait``) to the cluster at
``address`` (none: a new local Ray instance with ``ray_cpus`` CPUs). The run folder must be
reachable by the workers for them to resume from checkpoints (a shared file system); finished
records come back to the driver, which writes them itself too.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .batched import BATCHABLE, CheckpointEpochError, train_many
from .data import make_expert_data
from .imitation_args import Args
from .run_state import key_matches, state_key
from .training import train

__all__ = ["RunStore", "iter_units", "make_units", "run_tag", "run_unit"]


def run_tag(a: Args) -> str:
    """The file stem of a run in the run folder."""
    return f"{a.env}_{a.learner}_n{a.n_train}_s{a.seed}"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RunStore:
    """The run folder: finished records ``<tag>.json`` and checkpoints ``<tag>.pt``.

    :param folder: the folder; :param resume: use what is there (else start every run over)
    """

    def __init__(self, folder: str | os.PathLike, resume: bool = True):
        self.folder, self.resume = Path(folder), resume

    def checkpoint(self, a: Args) -> Path:
        return self.folder / f"{run_tag(a)}.pt"

    def finished(self, a: Args) -> dict[str, Any] | None:
        """The record of run ``a`` if it finished with the same settings (and resuming)."""
        path = self.folder / f"{run_tag(a)}.json"
        if not self.resume or not path.exists():
            return None
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or not isinstance(saved.get("key"), dict) \
                or not key_matches(saved["key"], a):
            return None
        return saved.get("record")

    def save(self, a: Args, record: dict[str, Any]) -> None:
        """Write run ``a``'s record atomically and drop its checkpoint."""
        _atomic_write(self.folder / f"{run_tag(a)}.json",
                      json.dumps(dict(key=state_key(a), record=record)))
        self.checkpoint(a).unlink(missing_ok=True)

    def fresh(self, a: Args) -> None:
        """Without resuming: remove run ``a``'s checkpoint before it starts."""
        if not self.resume:
            self.checkpoint(a).unlink(missing_ok=True)


def make_units(jobs: Sequence[Args], batch: bool = True) -> list[list[Args]]:
    """The units of ``jobs``: all runs (seeds, training-set sizes) of one (env, learner) of a
    batching learner together (when ``batch``), every other run alone; in the order of
    ``jobs``."""
    units: dict[tuple, list[Args]] = {}
    for a in jobs:
        key = (a.env, a.learner) if batch and a.learner in BATCHABLE else \
            (a.env, a.learner, a.n_train, a.seed)
        units.setdefault(key, []).append(a)
    return list(units.values())


@functools.lru_cache(maxsize=4)
def _data(env: str, n_train: int, seed: int) -> Any:
    return make_expert_data(env, n_train, 10, 10, seed=seed)


def run_unit(unit: Sequence[Args], n_data: int, folder: str, resume: bool,
             checkpoint_every: int) -> list[dict[str, Any]]:
    """Train the runs of ``unit`` (one batched solve per step if it batches) on the expert
    data of their env and seed (``n_data`` training trajectories, ``data_seed = seed``),
    resuming from and checkpointing to the run folder; their records, each also written
    there."""
    torch.set_num_threads(1)
    store = RunStore(folder, resume)
    data = [_data(a.env, n_data, a.seed) for a in unit]
    for a in unit:
        store.fresh(a)
    ckpts = [store.checkpoint(a) for a in unit]
    if unit[0].learner in BATCHABLE and len(unit) > 1:
        try:
            recs = train_many(unit, data, checkpoints=ckpts, checkpoint_every=checkpoint_every)
        except CheckpointEpochError:  # resume them one by one
            recs = None
    else:
        recs = None
    if recs is None:
        recs = [train(a, d, checkpoint=c, checkpoint_every=checkpoint_every)
                for a, d, c in zip(unit, data, ckpts, strict=True)]
    for a, rec in zip(unit, recs, strict=True):
        f = rec["final"]
        rec["wall_time"] = f.get("train_time", 0.0) + f.get("eval_time", 0.0)
        store.save(a, rec)
    return recs


def _call(job: tuple) -> list[dict[str, Any]]:
    return run_unit(*job)


def _ray(jobs: list[tuple], address: str | None, cpus: int | None) -> Iterator[list[dict]]:
    """One Ray task per unit; results as they finish."""
    try:
        import ray
    except ImportError:
        raise ValueError("--backend ray needs Ray: pip install 'dilqr-rl[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else cpus,
                 include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(run_unit)
        pending = [task.remote(*job) for job in jobs]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
    finally:
        if started:
            ray.shutdown()


def iter_units(units: list[list[Args]], n_data: int, folder: Path, resume: bool,
               checkpoint_every: int, backend: str = "local", workers: int = 1,
               address: str | None = None, ray_cpus: int | None = None
               ) -> Iterator[list[dict[str, Any]]]:
    """Run ``units`` on ``backend``; each unit's records as it finishes (in any order)."""
    jobs = [(u, n_data, str(folder.resolve()), resume, checkpoint_every) for u in units]
    if backend == "ray":
        yield from _ray(jobs, address, ray_cpus)
    elif workers > 1:
        import multiprocessing as mp

        # a fresh process per unit: whatever one unit leaves behind (a leak, the allocator's
        # fragmentation) is not carried into the next; a leak of every solve, fixed since,
        # once grew two long-lived workers to 11-12 GB each in 70 min
        with mp.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
            yield from pool.imap_unordered(_call, jobs, chunksize=1)
    else:
        yield from map(_call, jobs)
