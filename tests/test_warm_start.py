"""The DiLQR actor's warm starts on their own: the plan cache by observation (hits, misses,
eviction, shapes, dtypes) and the sequential shifted plan (the ``warm_tol`` rule)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from dilqr_rl.sb3 import WarmStartCache
from dilqr_rl.sb3 import warm_start as ws
from dilqr_rl.sb3.warm_start import SequentialWarmStart

T, M = 4, 2


def obs_of(*ids: int, d: int = 3) -> torch.Tensor:
    """Distinct float32 observations ``(len(ids), d)``, one per id."""
    i = torch.tensor(ids, dtype=torch.float32)[:, None]
    return i * torch.tensor([1.0, -0.5, 0.25])[:d] + 0.125


def plan_of(*ids: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Distinct plans ``(len(ids), T, M)``, one per id."""
    return torch.tensor(ids, dtype=dtype)[:, None, None] + torch.arange(T * M, dtype=dtype
                                                                         ).reshape(T, M) / 100


def get(cache: WarmStartCache, obs: torch.Tensor, dtype=torch.float64, where=None):
    out = torch.zeros(obs.shape[0], T, M, dtype=dtype)
    return out, cache.lookup(obs, out, where)


def test_hits_and_misses() -> None:
    c = WarmStartCache(10)
    out, found = get(c, obs_of(1, 2))  # empty cache
    assert found.tolist() == [False, False] and out.abs().sum() == 0
    c.store(obs_of(1, 2, 3), plan_of(1, 2, 3))
    assert len(c) == 3
    out, found = get(c, obs_of(3, 9, 1))
    assert found.tolist() == [True, False, True]
    torch.testing.assert_close(out[0], plan_of(3)[0])
    torch.testing.assert_close(out[2], plan_of(1)[0])
    assert out[1].abs().sum() == 0  # a miss is left as it was
    # only where asked
    out, found = get(c, obs_of(1, 2), where=torch.tensor([False, True]))
    assert found.tolist() == [False, True] and out[0].abs().sum() == 0
    # exact equality: a nearby observation misses
    out, found = get(c, obs_of(1) + 1e-6)
    assert not found.any()


def test_eviction_order_and_updates() -> None:
    c = WarmStartCache(3)
    for i in (1, 2, 3):
        c.store(obs_of(i), plan_of(i))
    c.store(obs_of(2), plan_of(20))  # known: new plan, same place in the eviction order
    assert len(c) == 3
    c.store(obs_of(4), plan_of(4))  # drops 1, the oldest
    _, found = get(c, obs_of(1, 2, 3, 4))
    assert found.tolist() == [False, True, True, True]
    c.store(obs_of(5), plan_of(5))  # drops 2 (stored before 3, although updated since)
    out, found = get(c, obs_of(2, 3, 4, 5))
    assert found.tolist() == [False, True, True, True]
    # a batch larger than the cache keeps its last entries
    c.store(obs_of(6, 7, 8, 9, 10), plan_of(6, 7, 8, 9, 10))
    out, found = get(c, obs_of(5, 6, 7, 8, 9, 10))
    assert found.tolist() == [False, False, False, True, True, True]
    torch.testing.assert_close(out[3:], plan_of(8, 9, 10))
    assert len(c) == 3


def test_repeated_observation_in_a_batch_keeps_the_last_plan() -> None:
    c = WarmStartCache(5)
    c.store(obs_of(1, 2, 1), plan_of(10, 2, 11))
    assert len(c) == 2
    out, found = get(c, obs_of(1, 1))
    assert found.all()
    torch.testing.assert_close(out, plan_of(11, 11))


def test_dtype_and_device_follow_the_input() -> None:
    c = WarmStartCache(4)
    c.store(obs_of(1, 2), plan_of(1, 2, dtype=torch.float32))
    out, found = get(c, obs_of(2, 1), dtype=torch.float64)
    assert out.dtype == torch.float64 and found.dtype == torch.bool
    assert found.device == out.device and found.all()
    torch.testing.assert_close(out, plan_of(2, 1, dtype=torch.float32).double())
    # the same values in another dtype are other bytes: a miss
    _, found = get(c, obs_of(1).double())
    assert not found.any()
    # later plans are stored in the first one's dtype
    c.store(obs_of(3), plan_of(3, dtype=torch.float64))
    out, found = get(c, obs_of(3), dtype=torch.float32)
    assert found.all() and out.dtype == torch.float32


def test_shapes_are_checked() -> None:
    c = WarmStartCache(4)
    with pytest.raises(ValueError, match="observations"):
        c.store(obs_of(1, 2), plan_of(1))
    c.store(obs_of(1), plan_of(1))
    with pytest.raises(ValueError, match="bytes"):
        c.store(obs_of(1, d=2), plan_of(1))
    with pytest.raises(ValueError, match="plans"):
        c.lookup(obs_of(1), torch.zeros(1, T + 1, M))
    with pytest.raises(ValueError, match="capacity"):
        WarmStartCache(-1)


def test_capacity_zero_stores_nothing() -> None:
    c = WarmStartCache(0)
    c.store(obs_of(1), plan_of(1))
    assert len(c) == 0 and not get(c, obs_of(1))[1].any()


def test_matches_an_ordered_dict() -> None:
    """Random batches with repeats against the reference semantics (a bounded OrderedDict)."""
    gen = torch.Generator().manual_seed(0)
    cap = 17
    c, ref = WarmStartCache(cap), OrderedDict()
    for step in range(200):
        ids = torch.randint(0, 40, (int(torch.randint(1, 12, (1,), generator=gen)),),
                            generator=gen).tolist()
        if step % 3:
            plans = plan_of(*[100 * step + i for i in ids])
            c.store(obs_of(*ids), plans)
            for i, p in zip(ids, plans, strict=True):
                ref[i] = p
            while len(ref) > cap:
                ref.popitem(last=False)
        out, found = get(c, obs_of(*ids))
        assert found.tolist() == [i in ref for i in ids]
        for k, i in enumerate(ids):
            if i in ref:
                torch.testing.assert_close(out[k], ref[i])
        assert len(c) == len(ref)


def test_hash_collisions_cost_misses_not_wrong_plans(monkeypatch) -> None:
    monkeypatch.setattr(ws, "_hash", lambda rows: torch.zeros(rows.shape[0], dtype=torch.long))
    c = WarmStartCache(8)
    c.store(obs_of(1, 2, 3), plan_of(1, 2, 3))
    out, found = get(c, obs_of(1, 2, 3, 4))
    assert not found[3]
    for k in range(3):
        if found[k]:
            torch.testing.assert_close(out[k], plan_of(k + 1)[0])


def test_sequential_shift_and_tolerance() -> None:
    s = SequentialWarmStart(warm_tol=0.5)
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    out = torch.zeros(2, T, M, dtype=torch.float64)
    assert s.plans is None and not s.lookup(x0, out).any()
    u = plan_of(1, 2)
    x1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, -2.0, 0.0]], dtype=torch.float64)
    s.remember(u, x1)
    # shifted by one step, the last control repeated
    torch.testing.assert_close(s.plans[:, :-1], u[:, 1:])
    torch.testing.assert_close(s.plans[:, -1], u[:, -1])
    # taken where |x0 - x1|_inf <= warm_tol (1 + |x1|_inf): 0.5 * 2 = 1 and 0.5 * 3 = 1.5
    x0 = x1 + torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.5 + 1e-9, 0.0]], dtype=torch.float64)
    ok = s.lookup(x0, out)
    assert ok.tolist() == [True, False]
    torch.testing.assert_close(out[0], s.plans[0])
    assert out[1].abs().sum() == 0
    # a batch of another size, or after reset: nothing
    assert not s.lookup(x1[:1], torch.zeros(1, T, M, dtype=torch.float64)).any()
    s.reset()
    assert s.plans is None and not s.lookup(x1, out.zero_()).any()
    with pytest.raises(ValueError, match="warm_tol"):
        SequentialWarmStart(-1.0)


def test_sequential_follows_the_output_dtype() -> None:
    s = SequentialWarmStart()
    s.remember(plan_of(1), torch.zeros(1, 3))
    out = torch.zeros(1, T, M, dtype=torch.float32)
    assert s.lookup(torch.zeros(1, 3, dtype=torch.float64), out).all()
    assert out.dtype == torch.float32 and out.abs().sum() > 0


@pytest.mark.filterwarnings("ignore:DiLQR actor")
def test_actor_drops_warm_starts_worse_than_a_cold_start(monkeypatch) -> None:
    """A cached plan whose rollout under the current model costs more than zero controls' is
    no warm start: that sample starts cold (counted), the others keep theirs, and a batch with
    none left solves as cold."""
    gym = pytest.importorskip("gymnasium")
    import dilqr_rl.envs  # noqa: F401
    from dilqr_rl.sb3 import DiLQRActor, controller_spec

    env = gym.make("dilqr_rl/Pendulum-v0")
    actor = DiLQRActor(controller_spec("dilqr_rl/Pendulum-v0", {}), env.action_space)
    assert actor.training and actor.use_plan_cache  # training solves read the plan cache
    # near upright, and upright at rest (where zero torque is already the best plan)
    obs = torch.tensor([[0.9553, 0.2955, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    good = actor.solve(obs).u.detach()  # cached
    assert actor.stats["warm_dropped"] == 0
    _, hi = actor.ctrl.bounds(1)
    actor.plans.store(obs[1:], hi)  # full torque: knocks the upright pendulum over
    x0 = actor.state(obs)
    J_hi = actor.ctrl.rollout_cost(x0[1:], hi)
    assert float(J_hi) > float(actor.ctrl.rollout_cost(x0[1:], torch.zeros_like(hi)))
    seen: list[torch.Tensor | None] = []
    forward = actor.ctrl.forward

    def spy(x0, u_init=None, **kw):
        seen.append(u_init)
        return forward(x0, u_init=u_init, **kw)

    monkeypatch.setattr(actor.ctrl, "forward", spy)
    actor.solve(obs)
    assert actor.stats["warm_dropped"] == 1
    torch.testing.assert_close(seen[0][0], good[0])  # kept
    assert bool((seen[0][1] == 0).all())  # dropped: a cold start
    actor.plans.store(obs, hi.expand(2, -1, -1))
    actor.solve(obs)
    assert seen[1] is None and actor.stats["warm_dropped"] == 3  # none left: cold
    # a cold start whose rollout is not finite keeps the (finite) warm start; a warm start
    # that is not finite is dropped
    def cost(x0, u, **kw):  # per row: the sample it belongs to (rows may be stacked)
        cold = ~(u != 0).flatten(1).any(1)
        i = torch.arange(u.shape[0]) % 2
        return torch.where(cold, torch.tensor([float("nan"), 0.0], dtype=u.dtype)[i],
                           torch.tensor([1.0, float("inf")], dtype=u.dtype)[i])

    monkeypatch.setattr(actor.ctrl, "rollout_cost", cost)
    init = actor._screen(x0, good, {})
    assert init is not None and torch.equal(init[0], good[0]) and bool((init[1] == 0).all())
