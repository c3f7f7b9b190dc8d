"""Hardening of files and training runs (issue "Hardening", items 10-14): what ``dilqr-rl
train`` resumes from, what a model file may import, interrupted writes, expert data files and
command-line flags.

Planted code is a pickle whose unpickling creates a marker directory (``_Plant``); a test
that loads it fails on the marker."""

from __future__ import annotations

import base64
import json
import os
import pickle
import sys
import warnings
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
from stable_baselines3 import PPO  # noqa: E402

import dilqr_rl.envs  # noqa: E402,F401
from dilqr_rl import cli, sb3  # noqa: E402
from dilqr_rl.agents import rl  # noqa: E402
from dilqr_rl.agents.imitation import main_study  # noqa: E402

#: a tiny PPO run with SB3's MLP policy (about a second per 128 steps)
BASE = ["--algo", "ppo", "--policy", "mlp", "--n-steps", "64", "--batch-size", "32",
        "--n-epochs", "1", "--eval-freq", "64", "--eval-episodes", "1", "--checkpoint-freq", "64",
        "--no-progress-bar", "--no-tensorboard", "--no-reference"]
SAC = ["--algo", "sac", "--learning-starts", "32", "--batch-size", "16"]


class _Plant:
    """Unpickling this creates the directory ``path``: stands for code planted in a file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _planted_zip(path: Path, marker: Path) -> None:
    """An SB3-style zip whose ``data`` holds a cloudpickled object that runs code on load."""
    payload = base64.b64encode(pickle.dumps(_Plant(marker))).decode()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data", json.dumps({"policy_class": {":type:": "<class 'type'>",
                                                        ":serialized:": payload}}))


def _train(out: Path, *extra: str, total: int = 64) -> Path:
    argv = [*BASE, "--out-dir", str(out), "--total-timesteps", str(total), *extra]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert rl.main_train(argv) == 0
    return out / rl.parse_args(argv).name


def _evals(run: Path) -> list[int]:
    return [json.loads(line)["timesteps"]
            for line in (run / "evaluations.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ item 10
def test_train_starts_fresh_without_resume_flag(tmp_path, capsys) -> None:
    run = _train(tmp_path, total=64)
    marker = tmp_path / "planted"
    _planted_zip(run / "checkpoints" / "model_999_steps.zip", marker)
    capsys.readouterr()
    _train(tmp_path, total=64)
    assert not marker.exists()
    assert "resuming" not in capsys.readouterr().out
    assert _evals(run) == [0, 64]


def test_resume_ignores_checkpoints_not_in_manifest(tmp_path, capsys) -> None:
    run = _train(tmp_path, total=64)
    marker = tmp_path / "planted"
    _planted_zip(run / "checkpoints" / "model_999_steps.zip", marker)
    capsys.readouterr()
    _train(tmp_path, "--resume", total=128)
    assert not marker.exists()
    assert "from 64 steps" in capsys.readouterr().out
    assert _evals(run) == [0, 64, 128]
    assert PPO.load(run / "final_model").num_timesteps == 128


def test_resume_rejects_checkpoint_that_does_not_match_manifest(tmp_path, capsys) -> None:
    run = _train(tmp_path, total=128)  # checkpoints at 64 and 128
    marker = tmp_path / "planted"
    _planted_zip(run / "checkpoints" / "model_128_steps.zip", marker)  # a known name
    capsys.readouterr()
    _train(tmp_path, "--resume", total=192)
    assert not marker.exists()
    assert "from 64 steps" in capsys.readouterr().out


def test_resume_rejects_tampered_replay_buffer(tmp_path, capsys) -> None:
    run = _train(tmp_path, *SAC, total=64)
    buf = run / "checkpoints" / "model_replay_buffer_64_steps.pkl"
    assert buf.exists()
    marker = tmp_path / "planted"
    buf.write_bytes(pickle.dumps(_Plant(marker)))
    capsys.readouterr()
    _train(tmp_path, *SAC, "--resume", total=96)
    assert not marker.exists()
    assert "resuming" not in capsys.readouterr().out


def test_resume_of_sac_restores_replay_buffer(tmp_path, capsys) -> None:
    run = _train(tmp_path, *SAC, total=64)
    capsys.readouterr()
    _train(tmp_path, *SAC, "--resume", total=96)
    assert "from 64 steps" in capsys.readouterr().out
    (c64,) = [c for c in rl.trusted_checkpoints(str(run), "sac") if c["steps"] == 64]
    assert c64["replay_buffer"] == str(run / "checkpoints" / "model_replay_buffer_64_steps.pkl")
    assert rl.trusted_checkpoints(str(run), "ppo") == []  # another algorithm's are not used


# ------------------------------------------------------------------ item 11
def _planted_module(tmp_path: Path, monkeypatch) -> Path:
    marker = tmp_path / "imported"
    (tmp_path / "planted_obs_mod.py").write_text(
        f"import os\nos.mkdir({str(marker)!r})\n\n\ndef f(obs):\n    return obs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "planted_obs_mod", raising=False)
    return marker


def _ppo(**policy_kwargs) -> PPO:
    env = gym.make("dilqr_rl/Pendulum-v0")
    # the spec as its dict, as `dilqr-rl train` passes it: policy_kwargs stay plain JSON
    spec = sb3.controller_spec("pendulum", horizon=5, max_iter=5).to_dict()
    return PPO(sb3.DiLQRActorCriticPolicy, env, n_steps=64, batch_size=32, device="cpu",
               policy_kwargs={"controller": spec, **policy_kwargs})


def test_obs_to_state_module_path_is_not_imported(tmp_path, monkeypatch) -> None:
    marker = _planted_module(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="obs_to_state"):
        _ppo(obs_to_state="planted_obs_mod:f")
    assert not marker.exists()


def test_saved_model_cannot_choose_obs_to_state_module(tmp_path, monkeypatch) -> None:
    marker = _planted_module(tmp_path, monkeypatch)
    path = tmp_path / "model.zip"
    _ppo().save(path)
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    data = json.loads(files["data"])
    assert ":serialized:" not in data["policy_kwargs"]  # plain JSON: no pickle needed to edit it
    data["policy_kwargs"]["obs_to_state"] = "planted_obs_mod:f"  # the file names a module
    files["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(path, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    with pytest.raises(ValueError, match="obs_to_state"):
        PPO.load(path, device="cpu")
    assert not marker.exists()


def test_obs_to_state_registered_name_round_trips(tmp_path) -> None:
    calls = []

    def passthrough(obs: torch.Tensor) -> torch.Tensor:
        calls.append(obs.shape)
        return obs

    sb3.register_obs_to_state("test_passthrough", passthrough)
    try:
        model = _ppo(obs_to_state="test_passthrough")
        assert sb3.dilqr_actor(model.policy).obs_to_state is passthrough
        model.save(tmp_path / "m.zip")
        loaded = PPO.load(tmp_path / "m.zip", device="cpu")
        assert sb3.dilqr_actor(loaded.policy).obs_to_state is passthrough
        loaded.predict(np.array([1.0, 0.0, 0.0], np.float32), deterministic=True)
        assert calls == [(1, 3)]
        assert loaded.policy_kwargs["obs_to_state"] == "test_passthrough"  # stored by name
    finally:
        sb3.OBS_TO_STATE.pop("test_passthrough", None)
    with pytest.raises(ValueError, match="register_obs_to_state"):
        PPO.load(tmp_path / "m.zip", device="cpu")  # the name is no longer registered


# ------------------------------------------------------------------ item 12
def test_resume_falls_back_when_newest_checkpoint_truncated(tmp_path, capsys) -> None:
    run = _train(tmp_path, total=128)
    ck = run / "checkpoints" / "model_128_steps.zip"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    capsys.readouterr()
    _train(tmp_path, "--resume", total=192)
    assert "from 64 steps" in capsys.readouterr().out
    assert _evals(run) == [0, 64, 128, 192]


def test_resume_falls_back_when_newest_checkpoint_does_not_load(tmp_path, capsys) -> None:
    import hashlib

    run = _train(tmp_path, total=128)
    ck = run / "checkpoints" / "model_128_steps.zip"
    ck.write_bytes(b"not a zip file")  # listed, hash matches, but unreadable
    man_path = run / "checkpoints" / "manifest.json"
    man = json.loads(man_path.read_text())
    man["checkpoints"]["model_128_steps.zip"]["sha256"] = hashlib.sha256(
        ck.read_bytes()).hexdigest()
    man_path.write_text(json.dumps(man))
    capsys.readouterr()
    _train(tmp_path, "--resume", total=192)
    assert "from 64 steps" in capsys.readouterr().out


def test_plot_curve_skips_half_written_line(tmp_path) -> None:
    recs = [{"timesteps": 0, "mean": -5.0, "std": 1.0, "returns": [-5.0]},
            {"timesteps": 64, "mean": -4.0, "std": 0.5, "returns": [-4.0]}]
    text = "".join(json.dumps(r) + "\n" for r in recs) + '{"timesteps": 128, "mean": -3.'
    (tmp_path / "evaluations.jsonl").write_text(text)
    with pytest.warns(RuntimeWarning, match="unreadable"):
        png = rl.plot_curve(str(tmp_path))
    assert os.path.getsize(png) > 0
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert rl.read_evaluations(str(tmp_path / "evaluations.jsonl")) == recs


def test_resume_drops_evaluations_past_checkpoint_and_repairs_file(tmp_path) -> None:
    # checkpoint at 128 only; evaluations at 0, 64, 128, 192; then a half-written line
    run = _train(tmp_path, "--checkpoint-freq", "128", total=192)
    with open(run / "evaluations.jsonl", "a") as f:
        f.write('{"timesteps": 256, "me')
    _train(tmp_path, "--checkpoint-freq", "128", "--resume", total=256)
    assert _evals(run) == [0, 64, 128, 192, 256]  # every line readable, none twice


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch) -> None:
    from stable_baselines3.common.base_class import BaseAlgorithm

    def broken_save(self, path, *args, **kwargs):  # a crash half-way through the write
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(BaseAlgorithm, "save", broken_save)
    argv = [*BASE, "--out-dir", str(tmp_path), "--total-timesteps", "64"]
    with warnings.catch_warnings(), pytest.raises(OSError, match="disk full"):
        warnings.simplefilter("ignore")
        rl.main_train(argv)
    folder = tmp_path / rl.parse_args(argv).name / "checkpoints"
    assert [p.name for p in folder.iterdir() if p.name != "manifest.json"] == []


# ------------------------------------------------------------------ item 14
@pytest.mark.parametrize("flags, flag", [
    (["--eval-freq", "0"], "--eval-freq"),
    (["--n-envs", "0"], "--n-envs"),
    (["--model-params", "m=-1"], "--model-params"),
    (["--model-params", "mass=1"], "--model-params"),
    (["--model-params", "m"], "--model-params"),
    (["--model-params", "m=nan"], "--model-params"),
    (["--env-kwargs", "m=0"], "--env-kwargs"),
    (["--env-kwargs", "g=x"], "--env-kwargs"),
    (["--checkpoint-freq", "0"], "--checkpoint-freq"),
    (["--eval-episodes", "0"], "--eval-episodes"),
    (["--total-timesteps", "0"], "--total-timesteps"),
    (["--horizon", "0"], "--horizon"),
    (["--n-steps", "0"], "--n-steps"),
    (["--batch-size", "1"], "--batch-size"),
    (["--gamma", "1.5"], "--gamma"),
    (["--learning-rate", "0"], "--learning-rate"),
    (["--seed", "-1"], "--seed"),
    (["--algo", "dqn"], "--algo"),
    (["--env", "Nope-v0"], "--env"),
    (["--learn", "weights"], "--learn"),
    (["--grad", "fd"], "--grad"),
    (["--on-unconverged", "ignore"], "--on-unconverged"),
])
def test_train_flag_errors_name_the_flag(flags: list[str], flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        rl.parse_args(flags)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage: dilqr-rl train" in err and flag in err


def test_train_cli_flag_error_exits_2(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--eval-freq", "0", "--policy", "mlp", "--total-timesteps", "64",
                  "--no-progress-bar", "--no-tensorboard", "--no-reference"])
    assert e.value.code == 2 and "--eval-freq" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags, flag", [(["--batch", "0"], "--batch"),
                                         (["--horizon", "0"], "--horizon")])
def test_demo_flag_errors_name_the_flag(flags: list[str], flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", *flags])
    assert e.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize("flags, flag", [
    (["--n-train", "0"], "--n-train"), (["--n-val", "0"], "--n-val"),
    (["--n-test", "0"], "--n-test"), (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"), (["--eval-every", "0"], "--eval-every"),
    (["--max-iter", "0"], "--max-iter"), (["--u-bound", "-1"], "--u-bound"),
    (["--lr", "0"], "--lr"), (["--alternate-every", "0"], "--alternate-every"),
])
def test_imitate_flag_errors_name_the_flag(tmp_path, flags: list[str], flag: str,
                                           capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["imitate", "--epochs", "1", *flags, "--no-progress", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage: dilqr-rl imitate" in err and flag in err


@pytest.mark.parametrize("flags, flag", [
    (["--seeds", "0"], "--seeds"), (["--epochs", "0"], "--epochs"),
    (["--n-train", "0"], "--n-train"), (["--workers", "0"], "--workers"),
    (["--envs", "acrobot"], "--envs"), (["--learners", "dilqr.weights"], "--learners"),
])
def test_study_flag_errors_name_the_flag(tmp_path, flags: list[str], flag: str,
                                         capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main_study(["imitation", "--seeds", "1", "--envs", "pendulum", "--learners", "mlp",
                    "--epochs", "1", *flags, "--no-progress", "--out", str(tmp_path)])
    assert e.value.code == 2 and flag in capsys.readouterr().err
