"""Warm starts of the DiLQR actor's solves, for whole batches at once.

- :class:`SequentialWarmStart`: during rollouts each env's solve starts from its previous plan
  shifted by one step, unless the observation is far from the state that plan predicted
  (an episode reset, another env).
- :class:`WarmStartCache`: each observation seen keeps the plan solved from it (bounded, the
  oldest dropped), so that a training solve on a shuffled minibatch starts where the rollout
  solve of the same observation ended.

Both look up and store a batch with tensor operations and bulk dict operations: no Python
loop over its samples. The cache matches observations by exact equality of their bytes: it
hashes each row to an ``int64`` (two independent linear hashes modulo primes near ``2^31``),
finds a batch's candidate slots in a dict from hash to slot (one ``map`` over the batch's
hashes, one ``dict.update`` to add them) and confirms each candidate by comparing the bytes,
so a hash collision can only cost a miss, never return another observation's plan.
"""

from __future__ import annotations

from collections import deque
from itertools import repeat

import torch
from torch import Tensor

__all__ = ["SequentialWarmStart", "WarmStartCache"]

#: the moduli of the two row hashes (primes below ``2^31``: sums of byte * coefficient stay far
#: below ``2^63``, and ``h1 * P2 + h2`` fits an int64)
_P1, _P2 = 2_147_483_647, 2_147_483_629
_COEF: dict[tuple[int, str], Tensor] = {}


def _rows(obs: Tensor) -> Tensor:
    """``(B, ...)`` -> the bytes of each sample, ``(B, w)`` uint8."""
    x = obs.detach().contiguous()
    return x.reshape(x.shape[0], -1).view(torch.uint8)


def _hash(rows: Tensor) -> Tensor:
    """``(B, w)`` uint8 -> ``(B,)`` int64."""
    w = rows.shape[1]
    key = (w, str(rows.device))
    if key not in _COEF:
        gen = torch.Generator().manual_seed(w)
        _COEF[key] = torch.randint(1, _P2, (2, w), generator=gen).to(rows.device)
    coef = _COEF[key]
    r = rows.long()
    return (r * coef[0]).sum(-1) % _P1 * _P2 + (r * coef[1]).sum(-1) % _P2


def _distinct(rows: Tensor, plans: Tensor) -> tuple[Tensor, Tensor]:
    """One entry per distinct row: in the order of first occurrence, with the plan of the last
    one (as if the batch were stored sample by sample)."""
    _, inv = torch.unique(rows, dim=0, return_inverse=True)
    idx = torch.arange(rows.shape[0], device=rows.device)
    u = int(inv.max()) + 1
    first = idx.new_full((u,), rows.shape[0]).scatter_reduce(0, inv, idx, "amin")
    last = idx.new_full((u,), -1).scatter_reduce(0, inv, idx, "amax")
    order = first.argsort()
    return rows[first[order]], plans[last[order]]


class WarmStartCache:
    """Plans ``(T, m)`` by observation, at most ``capacity`` of them.

    :meth:`store` keeps the plan of each observation of a batch, as if the batch were stored
    sample by sample into a bounded ordered dict: an observation repeated in the batch keeps
    its last plan; an observation already stored gets the new plan and keeps its place in the
    eviction order; once full, the observations stored first are dropped first.
    :meth:`lookup` copies the stored plans of a batch into a tensor of the caller's dtype and
    device. Storage (a ring of ``capacity`` observations and plans) is allocated by the first
    :meth:`store`, on the observations' device in the plans' dtype. ``capacity=0`` stores
    nothing.
    """

    def __init__(self, capacity: int = 100_000):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity must be an int >= 0, got {capacity!r}")
        self.capacity = capacity
        self.clear()

    def clear(self) -> None:
        """Forget every plan."""
        self._keys: Tensor | None = None  # (C, w) uint8: the observations' bytes
        self._plans: Tensor | None = None  # (C, T, m)
        self._hash: Tensor | None = None  # (C,) int64: each slot's key hash
        self._index: dict[int, int] = {}  # key hash -> slot
        self._next = 0  # the slot written next (a ring)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def _find(self, h: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """``(slot (B,), found (B,))`` of the rows with hashes ``h``."""
        assert self._keys is not None
        slot = torch.tensor(list(map(self._index.get, h.tolist(), repeat(-1))),
                            dtype=torch.long, device=h.device)
        found = slot >= 0
        slot.clamp_(min=0)
        return slot, found & (self._keys[slot] == rows).all(-1)

    def _check(self, rows: Tensor, plan_shape: tuple[int, ...]) -> None:
        assert self._keys is not None and self._plans is not None
        if rows.shape[1] != self._keys.shape[1] or plan_shape != self._plans.shape[1:]:
            raise ValueError(f"WarmStartCache holds observations of {self._keys.shape[1]} bytes "
                             f"and plans {tuple(self._plans.shape[1:])}; got {rows.shape[1]} "
                             f"bytes and {tuple(plan_shape)}")

    def lookup(self, obs: Tensor, out: Tensor, where: Tensor | None = None) -> Tensor:
        """Copy the stored plans of ``obs (B, ...)`` into ``out (B, T, m)`` (in ``out``'s dtype
        and device; only rows where ``where (B,)`` is true, default all).

        :return: ``found (B,)`` bool on ``out``'s device: the rows written
        """
        found = torch.zeros(obs.shape[0], dtype=torch.bool, device=out.device)
        if self._n == 0:
            return found
        assert self._keys is not None and self._plans is not None
        rows = _rows(obs).to(self._keys.device)
        if rows.shape[1] != self._keys.shape[1]:  # another size or dtype: nothing matches
            return found
        self._check(rows, tuple(out.shape[1:]))
        slot, hit = self._find(_hash(rows), rows)
        if where is not None:
            hit &= where.to(hit.device)
        found |= hit.to(out.device)
        out[found] = self._plans[slot[hit]].to(out)
        return found

    def store(self, obs: Tensor, plans: Tensor) -> None:
        """Keep ``plans (B, T, m)`` as the plans of ``obs (B, ...)``."""
        if not self.capacity:
            return
        if plans.shape[0] != obs.shape[0]:
            raise ValueError(f"{obs.shape[0]} observations but {plans.shape[0]} plans")
        rows = _rows(obs)
        if self._keys is None:
            C = self.capacity
            self._keys = rows.new_zeros(C, rows.shape[1])
            self._plans = plans.new_zeros(C, *plans.shape[1:], device=rows.device)
            self._hash = torch.zeros(C, dtype=torch.long, device=rows.device)
        assert self._plans is not None
        rows = rows.to(self._keys.device)
        self._check(rows, tuple(plans.shape[1:]))
        plans = plans.detach().to(self._plans)
        if rows.shape[0] > 1:
            rows, plans = _distinct(rows, plans)
        h = _hash(rows)
        slot, found = self._find(h, rows)
        self._plans[slot[found]] = plans[found]  # known: new plan, same place in the ring
        new = ~found
        self._insert(rows[new], plans[new], h[new])

    def _insert(self, rows: Tensor, plans: Tensor, h: Tensor) -> None:
        """Write new observations into the ring, dropping the oldest."""
        assert self._keys is not None and self._plans is not None and self._hash is not None
        C = self.capacity
        rows, plans, h = rows[-C:], plans[-C:], h[-C:]
        k = rows.shape[0]
        if k == 0:
            return
        slots = (self._next + torch.arange(k, device=rows.device)) % C
        if self._n + k > C:  # the slots written hold the oldest entries: unindex them
            used = slots[slots < self._n]
            old_h = self._hash[used]
            # (unless their hash now points elsewhere: a collision that replaced them)
            now = torch.tensor(list(map(self._index.get, old_h.tolist(), repeat(-1))),
                               dtype=torch.long, device=h.device)
            deque(map(self._index.pop, old_h[now == used].tolist()), maxlen=0)
        self._keys[slots], self._plans[slots], self._hash[slots] = rows, plans, h
        self._index.update(zip(h.tolist(), slots.tolist(), strict=True))
        self._next = (self._next + k) % C
        self._n = min(self._n + k, C)


class SequentialWarmStart:
    """The previous plan of each env, shifted by one step (``u_1, ..., u_{T-1}, u_{T-1}``).

    A sample takes it when its state ``x0`` is close to the state ``x1`` the plan predicted,
    ``|x0 - x1|_inf <= warm_tol (1 + |x1|_inf)``; otherwise (an episode reset, another env, a
    batch of another size) it does not.

    :param warm_tol: the relative distance above which a sample does not take the plan
    """

    def __init__(self, warm_tol: float = 0.5):
        if isinstance(warm_tol, bool) or not isinstance(warm_tol, (int, float)) \
                or not warm_tol >= 0:
            raise ValueError(f"warm_tol must be a number >= 0, got {warm_tol!r}")
        self.warm_tol = float(warm_tol)
        self.reset()

    def reset(self) -> None:
        """Forget the previous plan (e.g. before an evaluation)."""
        self._plans: Tensor | None = None
        self._x1: Tensor | None = None

    @property
    def plans(self) -> Tensor | None:
        """The shifted previous plans ``(B, T, m)``, or ``None``."""
        return self._plans

    def remember(self, u: Tensor, x1: Tensor) -> None:
        """Keep the plans ``u (B, T, m)`` shifted by one step and their predicted next states
        ``x1 (B, n)``."""
        u = u.detach()
        self._plans = torch.cat([u[:, 1:], u[:, -1:]], 1)
        self._x1 = x1.detach()

    def lookup(self, x0: Tensor, out: Tensor) -> Tensor:
        """Copy the shifted plan into ``out (B, T, m)`` where ``x0 (B, n)`` is close to its
        prediction; returns those rows, ``(B,)`` bool on ``out``'s device."""
        B = x0.shape[0]
        p, x1 = self._plans, self._x1
        if p is None or x1 is None or p.shape[0] != B or p.shape[1:] != out.shape[1:]:
            return torch.zeros(B, dtype=torch.bool, device=out.device)
        x1 = x1.to(x0)
        ok = ((x0 - x1).abs().amax(-1) <= self.warm_tol * (1 + x1.abs().amax(-1))).to(out.device)
        out[ok] = p.to(out)[ok]
        return ok
