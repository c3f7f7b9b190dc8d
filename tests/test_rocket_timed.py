"""The timed rocket (task ``rocket_timed``, env ``dilqr_rl/RocketTimed-v0``): a plan of fixed
length with the clock in the state is the rocket's shrinking-horizon plan, so the SB3 actor
lands; and the solver and the actor survive the overflowing rollouts of a tumbling rocket."""

from __future__ import annotations

import dataclasses
import types

import gymnasium as gym
import numpy as np
import pytest
import torch

import dilqr_rl as dl
import dilqr_rl.envs  # noqa: F401  (registers the ids)
from dilqr_rl.ilqr_step import _negative_curvature
from dilqr_rl.models import hessian_rows, jacobian_rows

torch.set_num_threads(1)
ROCKET, TIMED = dl.tasks.get("rocket"), dl.tasks.get("rocket_timed")


def _x0(seed: int = 0) -> torch.Tensor:
    return torch.tensor(ROCKET.sample_start(np.random.default_rng(seed)))[None]


@pytest.mark.parametrize("h", [40, 9])
def test_fixed_length_plan_is_the_shrinking_plan(h: int) -> None:
    """With ``k = h`` steps to the landing time, the 40-step timed plan's first ``h`` controls
    are the ``h``-step rocket plan's; the later ones only minimize the thrust terms (0)."""
    x0 = _x0()
    short = ROCKET.controller(horizon=h)(x0)
    timed = TIMED.controller(horizon=40)(torch.cat([x0, x0.new_full((1, 1), float(h))], -1))
    assert bool(short.converged.all()) and bool(timed.converged.all())
    torch.testing.assert_close(timed.u[:, :h], short.u, atol=1e-9, rtol=0)
    assert float(timed.u[:, h:].detach().abs().sum()) < 1e-9
    torch.testing.assert_close(timed.x[:, :h + 1, :13], short.x, atol=1e-9, rtol=0)
    assert timed.x[0, :, 13].tolist() == [float(h - t) for t in range(41)]


def test_timed_model_derivatives_match_autograd() -> None:
    dyn = TIMED.dynamics(dtype=torch.float64, Jx=0.7, l=1.3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 14, generator=gen, dtype=torch.float64)
    u = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    lam = torch.randn(5, 14, generator=gen, dtype=torch.float64)
    th = dyn.theta().detach()
    z = torch.cat([x, u], -1)
    y, F = dyn.jacobians(x, u, th)
    y_ad, F_ad = jacobian_rows(lambda zz: dyn.step(zz[..., :14], zz[..., 14:], th), z)
    torch.testing.assert_close(y, y_ad)
    torch.testing.assert_close(F, F_ad)
    assert F[:, 13].tolist() == [[0.0] * 13 + [1.0] + [0.0] * 3] * 5  # k' = k - 1
    H = dyn.weighted_hessian(x, u, th, lam)
    H_ad = hessian_rows(lambda zz: (lam * dyn.step(zz[..., :14], zz[..., 14:], th)).sum(), z,
                        False)
    torch.testing.assert_close(H, H_ad)


def test_env_clock_reward_and_touchdown_are_the_rockets() -> None:
    """The timed env is ``Rocket-v0`` plus the clock: the same states and rewards for the same
    seed and actions, the clock 40, 39, ... never below ``min_horizon``."""
    timed, plain = gym.make("dilqr_rl/RocketTimed-v0"), gym.make("dilqr_rl/Rocket-v0")
    assert timed.observation_space.shape == (14,)
    ot, _ = timed.reset(seed=3)
    op, _ = plain.reset(seed=3)
    np.testing.assert_array_equal(ot[:13], op)
    clock = [float(ot[13])]
    a = np.array([0.5, 0.01, -0.01], np.float32)  # ~ hovering: no touchdown in 45 steps
    for _ in range(45):
        ot, rt, term_t, _, _ = timed.step(a)
        op, rp, term_p, _, _ = plain.step(a)
        np.testing.assert_array_equal(ot[:13], op)
        assert rt == rp and term_t == term_p
        clock.append(float(ot[13]))
    assert clock[:3] == [40.0, 39.0, 38.0] and clock[34:] == [6.0] + [5.0] * 11
    with pytest.raises(ValueError, match="shape"):
        timed.reset(options={"state": np.zeros(13)})


@pytest.mark.slow
def test_closed_loop_timed_equals_shrinking_and_lands() -> None:
    from dilqr_rl.agents.mpc import run_mpc

    a = run_mpc("dilqr_rl/Rocket-v0", 1, seed=11)
    b = run_mpc("dilqr_rl/RocketTimed-v0", 1, seed=11)
    assert a["success"] == b["success"] == [True]
    assert b["returns"] == pytest.approx(a["returns"], rel=1e-9)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:DiLQR actor")  # capped solves are expected here
def test_sb3_actor_lands_the_timed_rocket() -> None:
    """The SB3 DiLQR actor (one plan length) with the true model lands ``RocketTimed-v0``."""
    from dilqr_rl.sb3 import DiLQRActor, controller_spec

    env = gym.make("dilqr_rl/RocketTimed-v0")
    actor = DiLQRActor(controller_spec("dilqr_rl/RocketTimed-v0", {}, config={"max_iter": 10}),
                       env.action_space).eval()
    obs, _ = env.reset(seed=11)
    info: dict = {}
    with torch.no_grad():
        for _ in range(100):
            a = actor(torch.as_tensor(obs)[None])[0].numpy()
            obs, _, term, trunc, info = env.step(a)
            if term or trunc:
                break
    assert term and info["landed"] and info["speed"] < 1.0, info


def _failing(solve, which):
    """A stand-in for ``DiLQR.forward`` whose solve sets apart the samples ``which(x0,
    u_init)`` (a ``(B,)`` bool), as the solver does when their rollout or Newton step is not
    finite (``Solution.failed``)."""
    def forward(x0, u_init=None, **kw):
        sol = solve(x0, u_init=u_init, **kw)
        bad = which(x0, u_init)
        return dataclasses.replace(sol, failed=sol.failed | bad,
                                   converged=sol.converged & ~bad)
    return forward


@pytest.mark.filterwarnings("ignore:DiLQR actor")
def test_actor_retries_an_overflowing_warm_start_cold(monkeypatch) -> None:
    from dilqr_rl.sb3 import DiLQRActor, controller_spec

    env = gym.make("dilqr_rl/Pendulum-v0")
    actor = DiLQRActor(controller_spec("dilqr_rl/Pendulum-v0", {}), env.action_space).eval()
    assert actor.ctrl.config.on_nonfinite == "isolate"
    obs = torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.1411, 0.2]])
    actor(obs)  # a plan to warm-start from
    cold = actor.ctrl(actor.state(obs[1:])).u[:, 0]
    seen: list[tuple[bool, int]] = []

    def warm_fails(x0, u_init):  # sample 1's warm start overflows
        seen.append((u_init is not None, x0.shape[0]))
        return (torch.arange(x0.shape[0]) == 1) & (u_init is not None)

    monkeypatch.setattr(actor.ctrl, "forward", _failing(actor.ctrl.forward, warm_fails))
    a = actor(obs)
    assert seen == [(True, 2), (False, 1)] and actor.stats["cold_retries"] == 1
    assert actor.stats["nonfinite"] == 0
    torch.testing.assert_close(a[1], actor.to_action(cold)[0].float())
    # failing cold too: the zero plan, counted
    monkeypatch.setattr(actor.ctrl, "forward", _failing(
        actor.ctrl.forward, lambda x0, u: torch.ones(x0.shape[0], dtype=torch.bool)))
    actor.reset()
    actor.plans.clear()
    a = actor(torch.tensor([[0.0, 1.0, 0.0]]))
    assert actor.stats["nonfinite"] == 1 and a.abs().sum() == 0


def test_negative_curvature_survives_huge_and_nonfinite_pivots() -> None:
    """A tumbling rocket's rollout gave ``Quu ~ 1e60``, on which LAPACK's ``eigh`` failed to
    converge: the direction is computed on ``Quu`` scaled to O(1), and a non-finite ``Quu``
    offers none."""
    T, m, n = 4, 2, 3
    Quu = torch.eye(m, dtype=torch.float64).repeat(3, T, 1, 1)
    Quu[0, 2] = torch.tensor([[1e60, 0.0], [0.0, -3e59]], dtype=torch.float64)  # indefinite
    Quu[1, 1, 0, 0] = float("inf")
    Quu[2, 3] = torch.tensor([[-1.0, 0.0], [0.0, 2.0]])
    gains = types.SimpleNamespace(Quu=Quu, free=torch.ones(3, T, m, dtype=torch.bool),
                                  K=torch.ones(3, T, m, n, dtype=torch.float64))
    K, k = _negative_curvature(gains)
    assert torch.isfinite(K).all() and torch.isfinite(k).all()
    assert k[0, 2].abs().tolist() == [0.0, 1.0] and k[0, [0, 1, 3]].abs().sum() == 0
    assert k[1].abs().sum() == 0  # no direction from an inf Quu (k = 0: the same trajectory)
    assert k[2, 3].abs().tolist() == [1.0, 0.0]
    assert K[0, 3].abs().sum() > 0 and K[0, :3].abs().sum() == 0  # later steps follow K


@pytest.mark.filterwarnings("ignore:DiLQR actor")
def test_actor_sets_apart_samples_whose_model_blows_up() -> None:
    """A batch in which one sample's rollout overflows whatever the controls (here its rate,
    1e200, squared in the cost): the others are solved as they would be alone, with their
    gradient; the bad one gets the zero plan and no gradient, and is counted (and warned
    about once). A batch of bad samples only gets zero plans too: a rollout needs an action."""
    from dilqr_rl.sb3 import DiLQRActor, controller_spec

    env = gym.make("dilqr_rl/Pendulum-v0")
    actor = DiLQRActor(controller_spec("dilqr_rl/Pendulum-v0", {}), env.action_space).train()
    good = torch.tensor([[0.99, 0.1411, 0.2], [0.995, -0.0998, -0.1]], dtype=torch.float64)
    alone = actor.solve(good)
    obs = torch.cat([good[:1], torch.tensor([[1.0, 0.0, 1e200]], dtype=torch.float64),
                     good[1:]])
    with pytest.warns(UserWarning, match="overflows from 1 of 3 states"):
        sol = actor.solve(obs)
    assert actor.stats["nonfinite"] == 1
    torch.testing.assert_close(sol.u[[0, 2]], alone.u.to(sol.u), atol=1e-8, rtol=0)
    assert sol.u[1].abs().sum() == 0 and not bool(sol.converged[1])
    sol.u.sum().backward()  # (first controls may sit on the bound: the whole plan)
    g = actor.ctrl.dynamics.g.grad
    assert g is not None and torch.isfinite(g) and g != 0
    lone = actor.solve(obs[1:2])
    assert lone.u.abs().sum() == 0 and actor.stats["nonfinite"] == 2
    assert torch.isfinite(actor(obs[1:2])).all()
    # the same with an unrolled gradient
    unroll = DiLQRActor(controller_spec("dilqr_rl/Pendulum-v0", {}, grad="unroll"),
                        env.action_space).train()
    sol = unroll.solve(obs)
    assert unroll.stats["nonfinite"] == 1 and sol.u[1].abs().sum() == 0
    torch.testing.assert_close(sol.u[[0, 2]], alone.u.to(sol.u), atol=1e-8, rtol=0)
    sol.u.sum().backward()
    g = unroll.ctrl.dynamics.g.grad
    assert g is not None and torch.isfinite(g) and g != 0


@pytest.mark.filterwarnings("ignore:DiLQR actor")
def test_actor_sets_apart_the_samples_the_solver_names(monkeypatch) -> None:
    """A Newton step that is not finite for some samples (``Solution.failed``; seen in a
    cart-pole PPO update) although their rollouts at rest are finite: those samples get the
    zero plan and no gradient, the others their own solution and gradient."""
    from dilqr_rl.sb3 import DiLQRActor, controller_spec

    env = gym.make("dilqr_rl/Pendulum-v0")
    actor = DiLQRActor(controller_spec("dilqr_rl/Pendulum-v0", {}), env.action_space).train()
    obs = torch.tensor([[0.99, 0.1411, 0.2], [0.0, 1.0, 0.5], [0.995, -0.0998, -0.1]],
                       dtype=torch.float64)
    alone = actor.solve(obs[[0, 2]])
    # the state with sin = 1 "fails" wherever it is in the batch
    monkeypatch.setattr(actor.ctrl, "forward", _failing(
        actor.ctrl.forward, lambda x0, u: x0[:, 1] == 1.0))
    actor.plans.clear()
    sol = actor.solve(obs)
    assert actor.stats["nonfinite"] == 1 and sol.u[1].abs().sum() == 0
    torch.testing.assert_close(sol.u[[0, 2]], alone.u, atol=1e-8, rtol=0)
    sol.u.sum().backward()
    g = actor.ctrl.dynamics.g.grad
    assert g is not None and torch.isfinite(g) and g != 0
