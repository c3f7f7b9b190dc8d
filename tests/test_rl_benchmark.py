"""The RL benchmark's verdicts (benchmarks/rl_report.py): the per-seed target "the best DiLQR
variant within 10 % of the true-model MPC return in <= 1/10 of the env steps the best MLP
baseline needs", with censored baselines, and the wrong models it starts from."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
rl_methods = pytest.importorskip("rl_methods")
rl_report = pytest.importorskip("rl_report")


def _er(steps: dict[str, dict[str, int | None]]) -> dict:
    return {"methods": {m: {"seed_steps_to_target": s} for m, s in steps.items()}}


def test_target_per_seed_with_censored_baselines() -> None:
    er = _er({"dilqr_ppo": {"0": 512, "1": None, "2": 2048, "3": 4096},
              "dilqr_sac": {"0": 256, "1": None, "2": None, "3": None},
              "mlp_sac": {"0": 2944, "1": 3000, "2": None, "3": None},
              "mlp_ppo": {"0": None, "1": None, "2": None, "3": None}})
    t = rl_report.seed_targets(er, list(er["methods"]), [0, 1, 2, 3], mlp_budget=20_480)
    # seed 0: the best DiLQR variant (SAC, 256) against the best MLP (2944): 256 <= 294.4
    assert (t["0"]["dilqr_method"], t["0"]["mlp_method"], t["0"]["holds"]) == (
        "dilqr_sac", "mlp_sac", True)
    assert t["0"]["ratio"] == pytest.approx(256 / 2944)
    assert t["1"]["holds"] is False  # no DiLQR variant reached the target
    # no MLP baseline reached it within 20480 steps: it needs more, so 2048 <= 2048 holds
    assert t["2"]["holds"] is True and t["2"]["mlp_steps"] is None
    assert t["3"]["holds"] is None  # 4096 > 20480 / 10: undetermined


def test_first_reach_and_threshold() -> None:
    assert rl_report.within_10pct(-100.0) == pytest.approx(-110.0)
    assert rl_report.within_10pct(50.0) == pytest.approx(45.0)
    assert rl_report.first_reach([0, 128, 256], [-900.0, -105.0, -104.0], -110.0) == 128
    assert rl_report.first_reach([0, 128], [-900.0, -500.0], -110.0) is None


def test_wrong_models_are_wrong_where_the_dynamics_look() -> None:
    """Every parameter 40 % off, with signs that leave no identifiable combination exact (the
    pendulum's g / l and m l^2)."""
    w = rl_methods.wrong_params("dilqr_rl/Pendulum-v0")
    assert w == pytest.approx({"g": 14.0, "m": 1.4, "l": 0.6})
    assert w["g"] / w["l"] != pytest.approx(10.0, rel=0.2)
    for env in rl_methods.ENVS:
        truth, wrong = rl_methods.true_params(env), rl_methods.wrong_params(env)
        assert wrong.keys() == truth.keys()
        for k in truth:
            assert abs(wrong[k] / truth[k] - 1) == pytest.approx(0.4)
