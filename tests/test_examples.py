"""The examples run with small budgets and show what they claim."""

import importlib.util
from pathlib import Path

import pytest

import dilqr_rl as dl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fit_dynamics_recovers_the_mass():
    """The example's claim: the true mass to 1e-3, the loss below 1e-6 of its start."""
    r = _load("fit_dynamics").main(["--steps", "3", "--init-mass", "2.0"])
    assert abs(r["mass"] - r["true"]) < 1e-3 and r["true"] == dl.tasks.get("pendulum").params["m"]
    assert r["loss_last"] < 1e-6 * r["loss_first"]


@pytest.mark.slow
def test_mpc_pendulum_right_model_beats_wrong(tmp_path):
    res = _load("mpc_pendulum").main(["--steps", "60", "--gif", str(tmp_path / "p.gif")])
    assert res["right model"] > res["wrong model"] + 50
    assert (tmp_path / "p.gif").stat().st_size > 0
    assert (tmp_path / "p_wrong.gif").stat().st_size > 0


@pytest.mark.slow
def test_rl_pendulum_ppo_identifies_and_improves():
    """The example's claim: g/l and m l^2 within 1 % of the truth after 256 steps, and the
    return within 10 % of the true model's, up from the wrong model's."""
    r = _load("rl_pendulum_ppo").main(["--steps", "256", "--episodes", "2"])
    for k, v in r["truth"].items():
        assert abs(r["learned"][k] / v - 1) < 0.01, (k, r["learned"][k], v)
    assert r["after"] >= r["reference"] * 1.1 and r["before"] < r["reference"] * 2, r


@pytest.mark.slow
def test_imitation_pendulum_recovers_the_identifiable_model(tmp_path, monkeypatch):
    """The main demo's claim: g/l and m l^2 within 2 % of the truth."""
    import json
    import sys

    monkeypatch.setattr(sys, "argv", ["imitation_pendulum.py", "--out", str(tmp_path),
                                      "--no-progress"])
    import runpy

    try:
        runpy.run_path(str(EXAMPLES / "imitation_pendulum.py"), run_name="__main__")
    except SystemExit as e:
        assert e.code == 0
    (rec,) = json.loads(next(tmp_path.glob("*.json")).read_text())
    final, truth = rec["final"]["identifiable"], rec["identifiable_truth"]
    for k, v in truth.items():
        assert abs(final[k] / v - 1) < 0.02, (k, final[k], v)
