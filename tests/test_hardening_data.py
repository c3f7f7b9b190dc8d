"""Hardening of expert data files (issue "Hardening", item 13): a ``ValueError`` names the
first bad field of a file or of an :class:`ExpertData`, and training refuses invalid data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dilqr_rl.agents.data import ExpertData, make_expert_data
from dilqr_rl.agents.imitation import Args
from dilqr_rl.agents.imitation import train as imitation_train


@pytest.fixture(scope="module")
def expert() -> ExpertData:
    return make_expert_data("pendulum", n_train=2, n_val=1, n_test=1, seed=0)


def _write(path: Path, data: ExpertData, meta: dict | None = None, **arrays) -> Path:
    a = {k: getattr(data, k).numpy() for k in ("x", "u", "theta", "weights", "goal")}
    a.update(arrays)
    a = {k: v for k, v in a.items() if v is not None}
    m = dict(env=data.env, n_train=data.n_train, n_val=data.n_val, n_test=data.n_test,
             seed=data.seed, config=data.config)
    m.update(meta or {})
    np.savez(path, meta=np.array(json.dumps(m)), **a)
    return path


def _bad_x(data: ExpertData, fn) -> np.ndarray:
    x = data.x.numpy().copy()
    fn(x)
    return x


@pytest.mark.parametrize("case, field", [
    ({"meta": {"n_train": 10}}, "n_train"),
    ({"meta": {"n_test": -1}}, "n_test"),
    ({"meta": {"n_val": 1.5}}, "n_val"),
    ({"meta": {"config": [1, 2]}}, "config"),
    ({"meta": {"env": "acrobot"}}, "env"),
    ({"meta": {"seed": "zero"}}, "seed"),
    ({"meta": {"config": {"u_bound": -2.0}}}, "u_bound"),
    ({"x": lambda d: d.x.numpy()[:, :, :2]}, "'x'"),
    ({"x": lambda d: d.x.numpy()[:, :11], "u": lambda d: d.u.numpy()[:, :10]}, "horizon"),
    ({"u": lambda d: d.u.numpy()[:, :, [0, 0]]}, "'u'"),
    ({"u": lambda d: d.u.numpy()[:3]}, "'u'"),
    ({"x": lambda d: _bad_x(d, lambda x: x.__setitem__((0, 3, 1), np.nan))}, "'x'"),
    ({"u": lambda d: d.u.numpy().astype(np.float32)}, "'u'"),
    ({"x": lambda d: d.x.numpy().astype(np.float32)}, "'x'"),
    ({"theta": lambda d: d.theta.numpy()[:2]}, "'theta'"),
    ({"weights": lambda d: np.full(4, np.inf)}, "'weights'"),
    ({"goal": lambda d: None}, "'goal'"),
])
def test_expert_data_load_rejects_bad_field(tmp_path, expert, case: dict, field: str) -> None:
    arrays = {k: v(expert) for k, v in case.items() if k != "meta"}
    path = _write(tmp_path / "bad.npz", expert, case.get("meta"), **arrays)
    with pytest.raises(ValueError, match=field):
        ExpertData.load(path)


def test_expert_data_load_rejects_bad_meta(tmp_path, expert) -> None:
    a = {k: getattr(expert, k).numpy() for k in ("x", "u", "theta", "weights", "goal")}
    np.savez(tmp_path / "a.npz", meta=np.array("{not json"), **a)
    with pytest.raises(ValueError, match="meta"):
        ExpertData.load(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", meta=np.array(json.dumps({"env": "pendulum"})), **a)
    with pytest.raises(ValueError, match="n_train"):
        ExpertData.load(tmp_path / "b.npz")


def test_expert_data_valid_file_still_loads(tmp_path, expert) -> None:
    back = ExpertData.load(_write(tmp_path / "ok.npz", expert))
    assert torch.equal(back.x, expert.x) and back.n_train == 2


def test_expert_data_constructor_rejects_bad_field(expert) -> None:
    with pytest.raises(ValueError, match="n_train"):
        ExpertData(env="pendulum", x=expert.x, u=expert.u, theta=expert.theta,
                   weights=expert.weights, goal=expert.goal, n_train=5, n_val=1, n_test=1,
                   seed=0, config=dict(expert.config))


def test_imitation_train_rejects_invalid_data(expert) -> None:
    import copy

    bad = copy.copy(expert)
    bad.x = expert.x.float()  # changed after construction
    with pytest.raises(ValueError, match="'x'"):
        imitation_train(Args(env="pendulum", n_train=2, n_val=1, n_test=1, epochs=1,
                             progress=False), bad)
