"""Many imitation runs in one batched solve (agents/batched.py) equal the separate runs, and a
run interrupted after a checkpoint (agents/run_state.py) resumes to the same numbers."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

from dilqr_rl.agents import run_state, training
from dilqr_rl.agents.batched import train_many
from dilqr_rl.agents.data import make_expert_data
from dilqr_rl.agents.imitation_args import Args
from dilqr_rl.agents.training import train

_TIMES = ("train_time", "eval_time", "train_time_per_step", "saved_bytes_per_step")


def _numbers(rec: dict) -> list[dict]:
    """The history and the final entry without the wall times."""
    return [{k: v for k, v in h.items() if k not in _TIMES}
            for h in [*rec["history"], rec["final"]]]


def _close(a, b, rtol: float) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rtol) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, rtol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= rtol * max(abs(a), 1e-12)
    return a == b


@pytest.mark.parametrize("env,learner", [("cartpole", "dilqr.dx"), ("pendulum", "diffmpc.cost")])
def test_batched_runs_equal_separate_runs(env, learner):
    """Three seeds (own data, own shuffling, own RMSprop state; the cost learner alternating
    goal and weights every epoch) trained as one batched solve per step end where three
    separate runs end, in float64, to 1e-10 relative; a minibatch of 1 in every epoch (batch
    2), a learning rate that differs between runs and a larger training set for one run (it
    takes a third step per epoch alone) included."""
    args = [Args(env=env, learner=learner, n_train=5 if s == 2 else 3, n_val=2, n_test=2, epochs=2,
                 batch_size=2, seed=s, lr=0.01 * (1 + s), eval_every=1, alternate_every=1,
                 progress=False) for s in range(3)]
    data = [make_expert_data(env, 5, 2, 2, seed=s) for s in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = [train(a, d) for a, d in zip(args, data, strict=True)]
        together = train_many(args, data)
    for a, b in zip(alone, together, strict=True):
        steps = 4 if a["args"]["n_train"] == 3 else 6  # 2 or 3 minibatches per epoch
        assert b["batched"] == 3 and b["final"]["steps"] == steps == a["final"]["steps"]
        assert _close(_numbers(a), _numbers(b), 1e-10), (a["final"], b["final"])
    # the runs did move, and differently: the comparison is not between three copies
    p = [torch.tensor(r["final"]["params"]) for r in together]
    assert (p[0] - p[1]).abs().max() > 1e-6 and (p[0] - p[2]).abs().max() > 1e-6
    start = torch.tensor(together[0]["history"][0]["params"])
    assert (p[0] - start).abs().max() > 1e-6


def test_train_many_rejects_mixed_runs():
    a = Args(env="pendulum", learner="dilqr.dx", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        train_many([a, dataclasses.replace(a, batch_size=a.batch_size + 1)])
    with pytest.raises(ValueError, match="does not batch"):
        train_many([dataclasses.replace(a, learner="nn")])


class _Killed(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    """A run killed right after its checkpoint at epoch 2 of 4, rerun with the same checkpoint
    file, continues from epoch 2 (it trains only epochs 2 and 3) and ends with the numbers of
    an uninterrupted run; the checkpoint is written atomically (no temporary left)."""
    args = Args(env="pendulum", learner="dilqr.cost", n_train=3, n_val=2, n_test=2, epochs=4,
                batch_size=2, seed=1, eval_every=1, alternate_every=1, progress=False)
    data = make_expert_data("pendulum", 3, 2, 2, seed=1)
    full = train(args, data)
    ckpt = tmp_path / "run.pt"
    save = run_state.save_run_state

    def save_then_die(run, path, next_epoch):
        save(run, path, next_epoch)
        raise _Killed

    monkeypatch.setattr(training, "save_run_state", save_then_die)
    with pytest.raises(_Killed):
        train(args, data, checkpoint=ckpt, checkpoint_every=2)
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]
    monkeypatch.setattr(training, "save_run_state", save)
    epochs = []
    train_epoch = training._Run.train_epoch
    monkeypatch.setattr(training._Run, "train_epoch",
                        lambda self, e: (epochs.append(e), train_epoch(self, e))[1])
    resumed = train(dataclasses.replace(args, progress=True), data, checkpoint=ckpt,
                    checkpoint_every=2)
    assert epochs == [2, 3]
    assert _close(_numbers(resumed), _numbers(full), 0.0)
