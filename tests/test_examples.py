"""The core examples run with tiny budgets and show what they claim."""

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
