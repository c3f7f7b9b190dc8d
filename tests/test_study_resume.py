"""The imitation study's grid (agents/study.py, study_runner.py): a study killed midway and
started again recomputes only the runs that had not finished and ends with the numbers of an
uninterrupted study; the Ray backend gives the local backend's numbers."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest

from dilqr_rl.agents import study_runner
from dilqr_rl.agents.study import StudyArgs, check_study_args, main, run_study

_TIMES = ("train_time", "eval_time", "train_time_per_step", "saved_bytes_per_step")


def _numbers(result: dict) -> dict:
    """Per run (by env, learner, n, seed): its history and final entry without wall times, as
    JSON (so that NaN equals NaN, and a record read back equals one in memory)."""
    out = {}
    for r in result["runs"]:
        a = r["args"]
        out[(a["env"], a["learner"], a["n_train"], a["seed"])] = json.dumps(
            [{k: v for k, v in h.items() if k not in _TIMES} for h in [*r["history"], r["final"]]])
    return out


def _tiny(tmp_path, name: str, **kw) -> StudyArgs:
    sa = StudyArgs(envs="pendulum", n_train="3", seeds=2, learners="dilqr.cost,mlp", epochs=2,
                   eval_every=1, max_iter=50, out=str(tmp_path / "out"), name=name,
                   runs_dir=str(tmp_path / name), progress=False, **kw)
    check_study_args(sa)
    return sa


class _Killed(Exception):
    pass


def _spy(monkeypatch) -> list[tuple]:
    """Record the runs each unit trains: ``(learner, seed)``."""
    trained: list[tuple] = []
    run_unit = study_runner.run_unit

    def spy(unit, *rest):
        trained.extend((a.learner, a.seed) for a in unit)
        return run_unit(unit, *rest)

    monkeypatch.setattr(study_runner, "run_unit", spy)
    return trained


def test_killed_study_resumes_without_recomputing(tmp_path, monkeypatch):
    trained = _spy(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = run_study(_tiny(tmp_path, "whole"))
        assert whole["complete"] and len(whole["runs"]) == 4
        # the two dilqr.cost seeds are one unit (one batched solve), mlp runs one by one
        assert trained == [("dilqr.cost", 0), ("dilqr.cost", 1), ("mlp", 0), ("mlp", 1)]
        assert all(r["batched"] == 2 for r in whole["runs"] if r["args"]["learner"] != "mlp")
        trained.clear()

        def kill_after_first_unit(result):
            raise _Killed

        sa = _tiny(tmp_path, "killed")
        with pytest.raises(_Killed):
            run_study(sa, kill_after_first_unit)
        assert trained == [("dilqr.cost", 0), ("dilqr.cost", 1)]
        trained.clear()
        again = run_study(sa)
    assert trained == [("mlp", 0), ("mlp", 1)]  # the finished runs were not recomputed
    assert again["complete"] and _numbers(again) == _numbers(whole)
    # no temporaries and no checkpoints left: only the finished records
    assert sorted(p.suffix for p in (tmp_path / "killed").iterdir()) == [".json"] * 4
    trained.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = run_study(dataclasses.replace(sa, resume=False))
    assert len(trained) == 4 and _numbers(fresh) == _numbers(whole)


def test_study_cli_writes_partial_and_final_outputs(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["--envs", "pendulum", "--n-train", "3", "--seeds", "1", "--learners",
                     "mlp", "--epochs", "1", "--out", str(tmp_path), "--runs-dir",
                     str(tmp_path / "runs"), "--name", "s", "--no-progress"])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "s.json", "s.md", "s.png"]
    with pytest.raises(SystemExit):
        main(["--backend", "spark"])


@pytest.mark.slow
def test_ray_backend_matches_local(tmp_path):
    """A local Ray instance with 2 CPUs runs the tiny grid (one batched unit, two single
    runs) to the local backend's numbers."""
    pytest.importorskip("ray")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = run_study(_tiny(tmp_path, "local"))
        on_ray = run_study(_tiny(tmp_path, "ray", backend="ray", ray_cpus=2))
    assert on_ray["complete"] and _numbers(on_ray) == _numbers(local)


def test_report_only_shows_runs_in_progress(tmp_path, monkeypatch):
    """A study killed right after a run's first checkpoint: ``--report-only`` trains nothing
    and reports that run as far as its checkpoint goes, labelled partial."""
    from dilqr_rl.agents import run_state, training
    from dilqr_rl.agents.study import markdown

    save = run_state.save_run_state

    def save_then_die(run, path, next_epoch):
        save(run, path, next_epoch)
        raise _Killed

    monkeypatch.setattr(training, "save_run_state", save_then_die)
    sa = _tiny(tmp_path, "p", checkpoint_every=1)
    sa = dataclasses.replace(sa, learners="mlp", seeds=1, epochs=3)
    with pytest.raises(_Killed):
        run_study(sa)
    trained = _spy(monkeypatch)
    rep = run_study(dataclasses.replace(sa, report_only=True))
    assert trained == [] and not rep["complete"] and rep["finished_runs"] == 0
    (run,) = rep["runs"]
    assert run["final"]["in_progress"] and run["final"]["next_epoch"] == 1
    assert [h["epoch"] for h in run["history"]] == [0]
    (row,) = rep["summary"]["rows"]
    assert row["epochs"] == 1 and "Partial result: 0 of 1 runs" in markdown(rep, "cmd")


def test_checkpoint_key_tolerates_settings_added_later():
    """A checkpoint written before ``Args`` gained a setting resumes when the run leaves that
    setting at its default, and only then; any changed or vanished setting starts over."""
    from dilqr_rl.agents.imitation_args import Args
    from dilqr_rl.agents.run_state import key_matches, state_key

    a = Args(env="pendulum", learner="dilqr.dx", n_train=3, epochs=4, seed=1)
    old = {k: v for k, v in state_key(a).items() if k != "cost_learn"}  # before cost_learn
    assert key_matches(state_key(a), a)
    assert key_matches(old, a)
    assert not key_matches(old, dataclasses.replace(a, cost_learn="both"))
    assert not key_matches({**old, "seed": 2}, a)
    assert not key_matches({**state_key(a), "gone": 1}, a)
    # a JSON round trip (the finished-run records) changes nothing
    assert key_matches(json.loads(json.dumps(old)), a)
