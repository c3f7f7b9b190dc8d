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


def test_success_target_for_the_rocket() -> None:
    """Where the return cannot tell a landing from a crash (the rocket), the target also asks
    for the true-model MPC's success rate on the seed's starts."""
    t, curve, succ = [0, 256, 512], [-27909.0, -28000.0, -29569.0], [0.0, 0.0, 1.0]
    assert rl_report.first_reach(t, curve, -32000.0) == 0  # the wrong model's crash "meets" it
    assert rl_report.first_reach(t, curve, -32000.0, succ, 0.5) == 512
    assert rl_report.first_reach(t, curve, -32000.0, [None, None, None], 0.5) is None
    assert rl_methods.SUCCESS_TARGET == {"rocket", "rocket_timed"}
    assert "dilqr_rl/RocketTimed-v0" in rl_methods.ENVS


def test_markdown_lists_every_method_and_verdict() -> None:
    er = _er({"dilqr_sac_sysid": {"0": 256}, "mlp_sac": {"0": 3584}})
    for m in ("dilqr_sac_sysid", "mlp_sac"):
        er["methods"][m].update(seeds=[0], final_mean=-100.0, final_std=1.0,
                                final_success=1.0, train_s_per_step=0.1)
    er["methods"]["dilqr_sac_sysid"].update(identifiable_error_start=1.328,
                                            identifiable_error_end=0.0372,
                                            param_error_start=0.4, param_error_end=0.3)
    er.update(mpc_true={"mean": -106.6, "success": 1.0},
              mpc_wrong={"mean": -1171.8, "success": 0.17},
              targets=rl_report.seed_targets(er, ["dilqr_sac_sysid", "mlp_sac"], [0], 10240))
    md = rl_report.markdown({"budget": 1024, "rocket_budget": 1024, "mlp_budget": 10240,
                             "eval_freq": 256, "eval_episodes": 2, "max_iter": 10,
                             "envs": {"dilqr_rl/Pendulum-v0": er}})
    assert "| dilqr_sac_sysid | 0 | 256 | -100.0 +- 1.0 | 1.00 | 1.328 -> 0.0372 | 100 |" in md
    assert "| mlp_sac | 0 | 3584 |" in md
    assert "seed 0: dilqr_sac_sysid 256 against mlp_sac 3584 (ratio 0.071, holds: True)" in md


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


def test_merge_adds_seeds_to_a_method_of_an_earlier_invocation() -> None:
    """A method run later on more seeds joins its earlier seeds (a seed run again replaces the
    old one); a method run only earlier is kept; an old record without its seeds' curves is
    replaced whole; the targets are recomputed over every seed."""
    env, truth = "dilqr_rl/Pendulum-v0", {"g": 10.0, "m": 1.0, "l": 1.0}
    wrong = rl_methods.wrong_params(env)

    def rec(m: str, curves: dict[int, list[float]], thr: dict[str, float]) -> dict:
        rs = [{"env": env, "method": m, "seed": s, "timesteps": [0, 256, 512], "mean": c,
               "success": [None] * 3, "params": [wrong, truth, truth],
               "train_s_per_step": 0.1} for s, c in curves.items()]
        return rl_report.method_record(env, m, rs, thr)

    t_old, t_new = {"0": -110.0, "1": -120.0}, {"1": -120.0, "2": -100.0}
    old = {"seed_threshold": t_old, "mpc_true": {"per_seed": {"0": -100.0, "1": -109.0}},
           "methods": {"dilqr_sac": rec("dilqr_sac", {0: [-900, -105, -104],
                                                      1: [-900, -800, -700]}, t_old),
                       "mlp_sac": rec("mlp_sac", {0: [-900, -900, -900],
                                                  1: [-900, -900, -119]}, t_old),
                       "dilqr_ppo": rec("dilqr_ppo", {0: [-900, -100, -100]}, t_old)}}
    del old["methods"]["dilqr_ppo"]["runs"]  # a report written before the runs were kept
    new = {"seed_threshold": t_new, "mpc_true": {"per_seed": {"1": -109.0, "2": -91.0}},
           "methods": {"dilqr_sac": rec("dilqr_sac", {1: [-900, -119, -110],
                                                      2: [-900, -900, -99]}, t_new),
                       "dilqr_ppo": rec("dilqr_ppo", {2: [-900, -900, -900]}, t_new)}}
    er = rl_report.merge_env(env, old, new, mlp_budget=10_240)
    sac = er["methods"]["dilqr_sac"]
    assert sac["seeds"] == [0, 1, 2]
    assert sac["seed_steps_to_target"] == {"0": 256, "1": 256, "2": 512}  # seed 1 rerun
    assert sac["final_mean"] == pytest.approx((-104 - 110 - 99) / 3)
    assert er["methods"]["mlp_sac"] is old["methods"]["mlp_sac"]
    assert er["methods"]["dilqr_ppo"]["seeds"] == [2]  # old seed 0 could not be merged
    assert er["mpc_true"] is old["mpc_true"]  # new covers fewer of the old seeds
    assert er["seed_threshold"] == {"0": -110.0, "1": -120.0, "2": -100.0}
    # seed 0: 256 against an MLP that never gets there in 10240 steps; seed 1: against 512;
    # seed 2 has no MLP run, so no verdict
    assert er["targets"]["0"]["holds"] is True and er["targets"]["1"]["holds"] is False
    assert er["targets"]["1"]["mlp_steps"] == 512 and "2" not in er["targets"]
