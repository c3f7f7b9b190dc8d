"""The paper's imitation study (DiLQR section 5.2, figures 3-5, table 1), with mean +- std over
seeds: ``dilqr-rl study imitation`` or ``python benchmarks/imitation_study.py``.

For every environment and seed one expert data set is drawn (``data_seed = seed``: the seeds
vary the data, the batch order and the network initialization together); every learner and
training-set size uses the same data, batches and seed. The study writes

- ``<name>.json``: every run record (args, per-epoch history, final metrics) and the summary;
- ``<name>.md``: the table (mean +- std over seeds) and the paper's claims, checked;
- ``<name>.png``: test imitation loss per learner, and model loss over epochs.

The default budget (``epochs=20``) is far below DiffMPC's 1000 epochs so that the whole study
fits well under an hour on 2 CPU cores; ``--epochs 1000 --eval-every 10`` is the paper's.

The seeds of a controller learner train as one batched solve (``agents/batched.py``, same
numbers). Every run is kept in the run folder (``--runs-dir``, default ``runs/study/<name>``):
a study started again skips the finished runs and resumes the others from their checkpoints,
and the outputs above are rewritten after every unit of work (a partial result says how many
runs it holds). ``--backend ray`` runs the units as Ray tasks (``agents/study_runner.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cliargs import dataclass_parser, parse
from .data import ENVS
from .fields import arg, check_fields
from .imitation_args import LEARNERS, Args
from .imitation_plots import plot_study
from .run_state import read_progress
from .study_runner import RunStore, iter_units, make_units, run_tag

__all__ = ["StudyArgs", "check_study_args", "run_study", "runs_folder", "study_jobs",
           "summarize", "write_outputs", "main"]


@dataclass
class StudyArgs:
    """Settings of the imitation study."""

    envs: str = arg("pendulum,cartpole", f"comma-separated tasks, of {','.join(ENVS)}")
    n_train: str = arg("50,100", "comma-separated training-set sizes")
    seeds: int = arg(5, "number of seeds (0 .. seeds-1)")
    learners: str = arg("dilqr.dx,diffmpc.dx,dilqr.cost,diffmpc.cost,sysid,nn,mlp",
                       f"comma-separated learners, of {','.join(LEARNERS)} (add unroll.dx for "
                       "the unrolled gradient's time and memory)")
    epochs: int = arg(20, "epochs per run (paper / DiffMPC: 1000)")
    eval_every: int = arg(5, "evaluate val / test every this many epochs")
    lr: float = arg(1e-2, "RMSprop learning rate of the model learners (paper: 1e-2)")
    nn_lr: float = arg(1e-3, "Adam learning rate of the networks")
    max_iter: int = arg(200, "iLQR iteration cap of the learners")
    out: str = arg("benchmarks/results", "output folder")
    name: str = arg("imitation_study", "output file stem")
    progress: bool = arg(True, "progress bars (on a terminal only)")
    workers: int = arg(1, "local backend: parallel processes (each single-threaded); the "
                      "machine is shared, so 1 by default")
    batch_seeds: bool = arg(True, "train the seeds of a controller learner as one batched "
                           "solve per step (agents/batched.py; same numbers, faster)")
    runs_dir: str | None = arg(None, "run folder: finished runs and checkpoints, what a study "
                              "started again resumes from; none: runs/study/<name>")
    resume: bool = arg(True, "reuse the finished runs and checkpoints in the run folder "
                      "(--no-resume: start every run over)")
    report_only: bool = arg(False, "train nothing: write the outputs from the run folder "
                           "(finished runs, and runs in progress up to their last checkpoint)")
    checkpoint_every: int = arg(50, "checkpoint runs in progress every this many epochs (0: "
                               "never)")
    backend: str = arg("local", "where the runs go: this machine, or a Ray cluster (pip "
                       "install 'dilqr-rl[ray]')", ("local", "ray"))
    address: str | None = arg(None, "--backend ray: the cluster's address (ray.init(address=...), "
                              "e.g. auto); none: a new local Ray instance")
    ray_cpus: int | None = arg(None, "--backend ray without --address: CPUs of the local "
                               "instance; none: all")


def check_study_args(sa: StudyArgs) -> None:
    """``ValueError`` naming the flag of the first bad setting of ``dilqr-rl study``."""
    envs, learners = _split(sa.envs), _split(sa.learners)
    if not envs or any(e not in ENVS for e in envs):
        raise ValueError(f"--envs must be a comma-separated list of {ENVS}, got {sa.envs!r}")
    if not learners or any(ln not in LEARNERS for ln in learners):
        raise ValueError(f"--learners must be a comma-separated list of {LEARNERS}, got "
                         f"{sa.learners!r}")
    try:
        sizes = _split(sa.n_train, int)
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--n-train must be a comma-separated list of integers >= 1, got "
                         f"{sa.n_train!r}")
    if sa.backend not in ("local", "ray"):
        raise ValueError(f"--backend must be local or ray, got {sa.backend!r}")
    check_fields(sa, {"seeds": 1, "epochs": 1, "eval_every": 1, "max_iter": 1, "workers": 1,
                      "checkpoint_every": 0, "ray_cpus": 1}, positive=("lr", "nn_lr"))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _split(s: str, typ: type = str) -> list:
    return [typ(v) for v in s.split(",") if v.strip()]


def study_jobs(sa: StudyArgs) -> list[Args]:
    """Every run of the grid, in the order they are run: by env, learner (as ``--learners``
    lists them), training-set size, seed; so a partial study holds whole cells."""
    envs, sizes, learners = _split(sa.envs), _split(sa.n_train, int), _split(sa.learners)
    return [Args(env=env, learner=learner, n_train=n, epochs=sa.epochs, seed=seed, lr=sa.lr,
                 nn_lr=sa.nn_lr, max_iter=sa.max_iter, eval_every=sa.eval_every,
                 progress=sa.progress and sa.workers == 1 and sa.backend == "local")
            for env in envs for learner in learners for n in sizes for seed in range(sa.seeds)]


def runs_folder(sa: StudyArgs) -> Path:
    """The run folder (``--runs-dir``, default ``runs/study/<name>``)."""
    return Path(sa.runs_dir) if sa.runs_dir else Path("runs") / "study" / sa.name


def run_study(sa: StudyArgs, on_progress: Callable[[dict[str, Any]], None] | None = None
              ) -> dict[str, Any]:
    """Run every (env, seed, n_train, learner) not already finished in the run folder;
    returns ``{"args", "runs", "summary", "total_time", "complete"}`` (runs in grid order).
    ``on_progress(result so far)`` is called after every unit of work."""
    torch.set_num_threads(1)
    jobs = study_jobs(sa)
    store = RunStore(runs_folder(sa), sa.resume)
    done = {run_tag(a): store.finished(a) for a in jobs}
    done = {k: v for k, v in done.items() if v is not None}
    if sa.report_only:
        return _report(sa, jobs, store, done)
    units = make_units([a for a in jobs if run_tag(a) not in done], sa.batch_seeds)
    print(f"{len(jobs)} runs: {len(done)} finished before, {len(jobs) - len(done)} to run in "
          f"{len(units)} units ({sa.backend})", flush=True)
    t0 = time.perf_counter()

    def result() -> dict[str, Any]:
        runs = [done[run_tag(a)] for a in jobs if run_tag(a) in done]
        return dict(args=dataclasses.asdict(sa), runs=runs, summary=summarize(runs),
                    total_time=time.perf_counter() - t0, complete=len(runs) == len(jobs),
                    total_runs=len(jobs))

    for recs in iter_units(units, max(_split(sa.n_train, int)), store.folder, sa.resume,
                           sa.checkpoint_every, sa.backend, sa.workers, sa.address,
                           sa.ray_cpus):
        for rec in recs:
            a, f = rec["args"], rec["final"]
            key = Args(**{k: v for k, v in a.items() if k != "u_bound"})
            store.save(next(j for j in jobs if run_tag(j) == run_tag(key)), rec)
            done[run_tag(key)] = rec
            print(f"[{len(done)}/{len(jobs)} {time.perf_counter() - t0:.0f}s] {a['env']} "
                  f"n={a['n_train']} seed={a['seed']} {a['learner']}: test im "
                  f"{f.get('test_im', math.nan):.3e} model {f.get('model_loss', math.nan):.3e}"
                  + (" DIVERGED" if f.get("diverged") else ""), flush=True)
        if on_progress is not None:
            on_progress(result())
    return result()


def _report(sa: StudyArgs, jobs: list[Args], store: RunStore, done: dict[str, dict]
            ) -> dict[str, Any]:
    """The result of ``--report-only``: finished runs, and runs in progress as far as their
    checkpoints go (``final["in_progress"]``)."""
    runs = []
    for a in jobs:
        rec = done.get(run_tag(a)) or read_progress(store.checkpoint(a))
        if rec is not None:
            runs.append(rec)
    return dict(args=dataclasses.asdict(sa), runs=runs, summary=summarize(runs), total_time=0.0,
                complete=len(done) == len(jobs), total_runs=len(jobs), finished_runs=len(done))


def _ms(vals: list[float]) -> tuple[float, float, int]:
    v = np.array([x for x in vals if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def _at(row: dict[str, Any]) -> str:
    return f"{row['seeds']} seeds to epoch {row['epochs']}"


def _cost_ident(r: dict[str, Any]) -> None:
    """Fill in a cost run's :func:`~dilqr_rl.agents.learners.cost_identifiable_loss` at the
    evaluations that lack it (runs recorded before the learners recorded it), from the
    recorded parameters."""
    from dilqr_rl import tasks

    from .learners import cost_identifiable_loss

    task, truth = tasks.get(r["args"]["env"]), r.get("truth")
    for e in [*r["history"], r["final"]]:
        if truth and e.get("params") and not np.isfinite(e.get("ident_loss", math.nan)):
            e["ident_loss"] = cost_identifiable_loss(
                task, torch.tensor(e["params"], dtype=torch.float64),
                torch.tensor(truth, dtype=torch.float64))


#: an identifiable loss this small counts as identified (``ident_epoch``: the first epoch)
IDENT_TOL = 1e-3


def _first_epoch(history: list[dict[str, Any]], key: str, tol: float) -> float:
    return next((float(e["epoch"]) for e in history if e.get(key, math.inf) <= tol), math.nan)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean +- std over seeds per (env, n_train, learner), and the paper's claims. A cost
    run recorded without its identifiable loss gets it here (:func:`_cost_ident`)."""
    for r in runs:
        if r["args"]["learner"].endswith(".cost"):
            _cost_ident(r)
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        a = r["args"]
        groups.setdefault((a["env"], a["n_train"], a["learner"]), []).append(r)
    rows = []
    for (env, n, learner), rs in sorted(groups.items()):
        fs = [r["final"] for r in rs]
        row = dict(env=env, n_train=n, learner=learner, seeds=len(rs))
        for k in ("test_im", "val_im", "train_im", "model_loss", "ident_loss",
                  "train_time_per_step", "saved_bytes_per_step", "nonphysical_frac"):
            row[k] = _ms([f.get(k, math.nan) for f in fs])
        row["ident_epoch"] = _ms([_first_epoch(r["history"], "ident_loss", IDENT_TOL) for r in rs])
        row["nonphysical_final"] = sum(bool(f.get("nonphysical_final")) for f in fs)
        row["diverged"] = sum(bool(f.get("diverged")) for f in fs)
        row["epochs"] = min(f.get("epoch", -1) + 1 for f in fs)  # the least trained seed's
        rows.append(row)
    by = {(r["env"], r["n_train"], r["learner"]): r for r in rows}
    claims: dict[str, Any] = {"nn_over_dilqr": [], "model_loss_reduction": [],
                              "nonphysical": {}}
    for env, n, learner in by:
        if learner in ("dilqr.dx", "dilqr.cost") and (env, n, "nn") in by:
            d, nn_ = by[(env, n, learner)]["test_im"][0], by[(env, n, "nn")]["test_im"][0]
            claims["nn_over_dilqr"].append(dict(
                env=env, n_train=n, learner=learner, ratio=nn_ / d if d > 0 else math.inf,
                at=f"{_at(by[(env, n, learner)])}; nn {_at(by[(env, n, 'nn')])}"))
        if learner.startswith("dilqr.") and (env, n, learner.replace("dilqr", "diffmpc")) in by:
            d = by[(env, n, learner)]["model_loss"][0]
            m = by[(env, n, learner.replace("dilqr", "diffmpc"))]["model_loss"][0]
            other = by[(env, n, learner.replace("dilqr", "diffmpc"))]
            claims["model_loss_reduction"].append(dict(
                env=env, n_train=n, mode=learner.split(".")[1],
                dilqr=d, diffmpc=m, reduction=(m - d) / m if m > 0 else math.nan,
                dilqr_ident=by[(env, n, learner)]["ident_loss"][0],
                diffmpc_ident=other["ident_loss"][0],
                dilqr_ident_epoch=by[(env, n, learner)]["ident_epoch"],
                diffmpc_ident_epoch=other["ident_epoch"],
                at=f"{_at(by[(env, n, learner)])}; diffmpc {_at(other)}"))
    for method in ("dilqr.dx", "diffmpc.dx"):
        for n in sorted({k[1] for k in by}):
            fs = [r["final"] for r in runs if r["args"]["learner"] == method
                  and r["args"]["n_train"] == n]
            if fs:
                claims["nonphysical"][f"{method} n={n}"] = dict(
                    runs=len(fs),
                    final=sum(bool(f.get("nonphysical_final")) for f in fs) / len(fs),
                    steps=float(np.mean([f.get("nonphysical_frac", 0.0) for f in fs])))
    return dict(rows=rows, claims=claims)


def _fmt(t: tuple[float, float, int], pct: bool = False) -> str:
    m, s, _ = t
    if not np.isfinite(m):
        return "-"
    return f"{100 * m:.1f} ± {100 * s:.1f} %" if pct else f"{m:.2e} ± {s:.1e}"


def _epochs(t: tuple[float, float, int]) -> str:
    m, sd, k = t
    return "never" if not np.isfinite(m) else f"{m:.0f} ± {sd:.0f} ({k} seeds)"


def markdown(result: dict[str, Any], command: str) -> str:
    """The table and the claims as Markdown."""
    sa, summ = result["args"], result["summary"]
    lines = ["# Imitation study (DiLQR paper §5.2)\n",
             f"Command: `{command}`  ",
             f"{sa['seeds']} seeds, {sa['epochs']} epochs (eval every {sa['eval_every']}), "
             f"RMSprop lr {sa['lr']} (alpha 0.5), Adam {sa['nn_lr']} for the networks, batch 32, "
             f"float64 controllers, 1 thread. Training and evaluation time of all runs "
             f"{sum(r.get('wall_time', 0.0) for r in result['runs']) / 60:.1f} min (the seeds "
             "of a controller learner share one batched solve). Values: mean ± std over seeds "
             "at the last epoch. Identifiable loss: dx, the mean squared relative error of the "
             "parameter combinations the dynamics depend on (the pendulum's g/l and m l^2); "
             "cost, the error of the cost up to scale and a constant "
             "(`agents.learners.cost_identifiable_loss`).\n",
             *([] if result.get("complete", True) else [
                 f"**Partial result: {result.get('finished_runs', len(result['runs']))} of "
                 f"{result['total_runs']} runs finished** (the study is resumable; a cell may "
                 "have fewer seeds, or runs still in progress: its 'epochs' column is the least "
                 "trained seed's, at its last checkpoint).\n"]),
             "| env | train | learner | epochs | test imitation loss | model loss | identifiable "
             "loss | non-physical at end | non-physical steps | diverged | s / step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summ["rows"]:
        lines.append(
            f"| {r['env']} | {r['n_train']} | {r['learner']} | {r['epochs']} | "
            f"{_fmt(r['test_im'])} | "
            f"{_fmt(r['model_loss'])} | {_fmt(r['ident_loss'])} | "
            f"{r['nonphysical_final']}/{r['seeds']} | {_fmt(r['nonphysical_frac'], True)} | "
            f"{r['diverged']}/{r['seeds']} | {r['train_time_per_step'][0]:.3f} |")
    c = summ["claims"]
    lines += ["\n## The paper's claims, on our implementation\n",
              "**1. DiLQR's test imitation loss is orders of magnitude below the NN's** "
              "(ratio NN / DiLQR of the mean test loss):\n"]
    for x in c["nn_over_dilqr"]:
        lines.append(f"- {x['env']} train={x['n_train']} {x['learner']}: {x['ratio']:.3g}x "
                     f"({x['at']})")
    lines += ["\n**2. DiLQR's final model loss is ≥ 32 % (cost) and ≥ 41 % (dx) below "
              "DiffMPC's** (reduction = (DiffMPC − DiLQR) / DiffMPC of the mean):\n"]
    for x in c["model_loss_reduction"]:
        target = 0.32 if x["mode"] == "cost" else 0.41
        verdict = "holds" if x["reduction"] >= target else "does NOT hold"
        lines.append(f"- {x['env']} train={x['n_train']} {x['mode']}: DiLQR {x['dilqr']:.3e}, "
                     f"DiffMPC {x['diffmpc']:.3e}, reduction {100 * x['reduction']:.1f} % "
                     f"({verdict}; paper ≥ {100 * target:.0f} %; {x['at']})"
                     + ("" if not np.isfinite(x.get("dilqr_ident", math.nan)) else
                        f"; identifiable loss DiLQR {x['dilqr_ident']:.2e}, DiffMPC "
                        f"{x['diffmpc_ident']:.2e}; first epoch with it ≤ {IDENT_TOL:g}: "
                        f"DiLQR {_epochs(x['dilqr_ident_epoch'])}, DiffMPC "
                        f"{_epochs(x['diffmpc_ident_epoch'])}"))
    lines += ["\n**3. Fewer non-physical parameter sets with DiLQR** (paper: 2.76 % vs 16.85 % "
              "at train=100, 7.23 % vs 17.82 % at train=50); runs ending with a parameter ≤ 0, "
              "and the mean fraction of optimizer steps after which one was:\n"]
    for k, v in c["nonphysical"].items():
        lines.append(f"- {k}: {100 * v['final']:.1f} % of {v['runs']} runs at the end, "
                     f"{100 * v['steps']:.2f} % of steps")
    return "\n".join(lines) + "\n"


def write_outputs(result: dict[str, Any], out: Path, name: str, command: str) -> list[Path]:
    """``<name>.json``, ``.md`` and ``.png`` (atomically; a partial result says so)."""
    _atomic_write(out / f"{name}.json", json.dumps(result, indent=1))
    _atomic_write(out / f"{name}.md", markdown(result, command))
    return [out / f"{name}.json", out / f"{name}.md", plot_study(result, out / f"{name}.png")]


def main(argv: list[str]) -> int:
    """``dilqr-rl study imitation [--epochs N ...]``."""
    p = dataclass_parser(StudyArgs, "dilqr-rl study imitation",
                         "The DiLQR paper's imitation comparison, mean ± std over seeds.")
    sa = parse(StudyArgs, argv, p, check_study_args)
    out = Path(sa.out)
    # the study's command (a --report-only run reports on it; the table says what finished)
    command = ("dilqr-rl study imitation " + " ".join(a for a in argv if a != "--report-only")
               ).strip()
    result = run_study(sa, lambda r: write_outputs(r, out, sa.name, command))
    paths = write_outputs(result, out, sa.name, command)
    print(markdown(result, command))
    print("wrote " + ", ".join(map(str, paths)))
    return 0
