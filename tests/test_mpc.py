"""Closed-loop MPC with each task's own controller (``dilqr-rl mpc``): every system succeeds
from fixed starts, the rocket lands (within 0.5 m, 10 degrees, 1 m/s), and the command writes
what it says."""

from __future__ import annotations

import json

import pytest

import dilqr_rl as dl
from dilqr_rl.agents.mpc import main_mpc, run_mpc


def test_shrinking_horizon() -> None:
    rocket, pendulum = dl.tasks.get("rocket"), dl.tasks.get("pendulum")
    assert [rocket.horizon_at(k) for k in (0, 1, 34, 35, 60)] == [40, 39, 6, 5, 5]
    assert [pendulum.horizon_at(k) for k in (0, 150)] == [20, 20]
    assert rocket.horizon_at(3, horizon=4) == 4  # never below min_horizon, nor above the start


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ["dilqr_rl/Pendulum-v0", "dilqr_rl/CartPole-v0",
                                    "dilqr_rl/Rocket-v0"])
def test_closed_loop_mpc_succeeds(env_id: str) -> None:
    r = run_mpc(env_id, 2, seed=11)
    assert r["success"] == [True, True], r["infos"]
    if "Rocket" in env_id:  # landed: touched down at the pad, upright, slowly
        for info in r["infos"]:
            assert info["distance"] < 0.5 and info["tilt_deg"] < 10 and info["speed"] < 1.0


@pytest.mark.slow
def test_wrong_model_fails_where_the_true_one_succeeds() -> None:
    ok = run_mpc("dilqr_rl/Pendulum-v0", 2, seed=3, max_iter=10)
    bad = run_mpc("dilqr_rl/Pendulum-v0", 2, seed=3, max_iter=10, model_params={"m": 5.0})
    assert ok["success"] == [True, True] and bad["success"] == [False, False]
    assert min(ok["returns"]) > max(bad["returns"])


def test_mpc_command_writes_json_plot_and_gif(tmp_path, capsys) -> None:
    argv = ["--env", "pendulum", "--episodes", "2", "--steps", "12", "--out", str(tmp_path)]
    assert main_mpc(argv) == 0
    out = capsys.readouterr().out
    # seed 0 starts far from upright (12 steps, 0.6 s, are too short), seed 1 next to it
    assert "episode 0: return" in out and "success 50 % of 2" in out
    rec = json.loads((tmp_path / "mpc_Pendulum-v0.json").read_text())
    assert rec["success"] == [False, True] and len(rec["states"]) == 13
    assert (tmp_path / "mpc_Pendulum-v0.png").stat().st_size > 0
    assert (tmp_path / "mpc_Pendulum-v0.gif").stat().st_size > 0
    with pytest.raises(SystemExit):
        main_mpc(["--env", "nope"])
    with pytest.raises(SystemExit):
        main_mpc(["--episodes", "0"])


def test_failed_replan_retries_cold_then_flies_the_previous_plan(monkeypatch) -> None:
    """A replan that is not finite for some samples (``Solution.failed``) plans those again
    without a warm start; where that fails too their previous plan, shifted, is flown and
    counted; at the first step, with no plan to fall back on, the error names the samples.
    The other samples of the batch are planned as usual."""
    import torch

    from dilqr_rl.agents.mpc import MPCPolicy

    policy = MPCPolicy(dl.tasks.get("pendulum"), horizon=10, max_iter=5)
    x0 = torch.tensor([[-0.4, 0.9, 0.0], [0.2, -0.98, 0.5]], dtype=torch.float64)
    u_first = policy(x0)
    calls: list[tuple[bool, int]] = []
    solve = policy._solve

    def failing(H, x, params, warm):  # sample 1's warm start overflows; a cold start plans
        calls.append((warm is None, x.shape[0]))
        u, failed = solve(H, x, params, warm)
        return u, failed | (torch.arange(x.shape[0]) == 1) if warm is not None else failed

    monkeypatch.setattr(policy, "_solve", failing)
    warm = policy._warm.clone()
    u = policy(x0)
    assert calls == [(False, 2), (True, 1)] and policy.failures == 0
    assert torch.isfinite(u).all()
    # sample 0 was planned from its warm start, sample 1 cold: each as solved alone
    ctrl = policy.controller(10)
    with torch.no_grad():
        ref0 = ctrl(x0[:1], u_init=warm[:1]).u[:, 0]
        ref1 = ctrl(x0[1:]).u[:, 0]
    assert torch.allclose(u[0], ref0[0], atol=1e-12) and torch.allclose(u[1], ref1[0], atol=1e-12)

    def broken(H, x, params, warm):  # sample 1 fails warm and cold
        u, failed = solve(H, x, params, warm)
        return u, failed | (torch.arange(x.shape[0]) == (1 if x.shape[0] == 2 else 0))

    plan = policy._warm.clone()
    monkeypatch.setattr(policy, "_solve", broken)
    u = policy(x0)
    assert policy.failures == 1 and torch.equal(u[1], plan[1, 0])
    assert torch.equal(policy._warm[1, :-1], plan[1, 1:])
    with torch.no_grad():  # sample 0 replanned from its warm start, as if alone
        ref0 = ctrl(x0[:1], u_init=plan[:1]).u[:, 0]
    assert torch.allclose(u[0], ref0[0], atol=1e-12)
    policy.reset()
    with pytest.raises(dl.NonFiniteError, match=r"samples \[1\]") as err:
        policy(x0)
    assert err.value.samples == [1]
    assert u_first.shape == (2, 1)


def test_failed_replan_keeps_shared_model_parameters(monkeypatch) -> None:
    """The cold replan of a failed sample uses the model parameters the caller gave, shared
    ``(p,)`` as well as per sample."""
    import warnings

    import torch

    from dilqr_rl.agents.mpc import MPCPolicy

    policy = MPCPolicy(dl.tasks.get("pendulum"), horizon=10, max_iter=5)
    # near upright: plans off the torque bound, so the model shows in them
    x0 = torch.tensor([[0.99, 0.1411, 0.2], [0.995, -0.0998, -0.1]], dtype=torch.float64)
    params = torch.tensor([10.0, 1.5, 1.0], dtype=torch.float64)  # (g, m, l): m off
    policy.plan(x0, params)
    solve = policy._solve

    def warm_fails(H, x, p, warm):  # sample 1's warm start "overflows"
        u, failed = solve(H, x, p, warm)
        return u, failed | ((torch.arange(x.shape[0]) == 1) & (warm is not None))

    monkeypatch.setattr(policy, "_solve", warm_fails)
    policy.plan(x0, params)
    plan = policy._warm[1, :-1]  # sample 1's plan, shifted
    with torch.no_grad(), warnings.catch_warnings():  # capped at 5 iterations, as the policy
        warnings.simplefilter("ignore", dl.UnconvergedWarning)
        ref = policy.controller(10)(x0[1:], params=params).u[0, 1:]
        other = policy.controller(10)(x0[1:]).u[0, 1:]
    assert torch.allclose(plan, ref, atol=1e-12) and not torch.allclose(plan, other, atol=1e-3)
