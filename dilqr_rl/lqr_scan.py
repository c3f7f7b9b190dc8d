"""The forward solver's Riccati pass as associative scans, and the rule that picks it.

:func:`lqr_backward_scan` computes what :func:`dilqr_rl.lqr.lqr_backward` computes for the
iLQR iterations (the projected Newton step, docs/solver.md) with ``O(log T)`` sequential depth:

1. the costates ``lam_T = c_T``, ``lam_t = c_x + F_x^T lam_{t+1}`` by a reverse scan of affine
   maps, then every step's gradient ``gu_t = c_u + F_u^T lam_{t+1}`` at once. The held set (a
   control on a bound whose gradient pushes outward) depends on the costates only, so it is known
   before the Riccati recursion: it is a fixed held set, which is what the scan needs;
2. the value functions of the LQR with the held controls eliminated by the backward scan of
   :mod:`dilqr_rl.scan` (Särkkä & García-Fernández, IEEE TAC 2023);
3. every step's ``Quu``, its Cholesky factor and the gains from ``S_{t+1}`` at once.

With the closed loop's gradients (long horizons, ``closed_loop=True``; docs/solver.md) the held
set depends on the value functions instead of the costates: it is guessed, solved, recomputed
from the pass's ``qu`` until it reproduces itself (the sequential pass's held set then).

**Regularization.** The scan solves the *proximal* problem: ``C_uu + mu I`` in place of
``C_uu``, i.e. the LQ model plus ``1/2 mu |du|^2``, which is the value
:meth:`dilqr_rl.qp.LQModel.value` measures. The sequential pass keeps Tassa et al.'s (2012)
update ``V = Qxx + K^T Quu K + ...`` with the unregularized ``Quu``: the value of the
unregularized model under the regularized policy, not a minimum of any LQ problem, hence not an
associative recursion. Both give the same gains for ``mu = 0`` and differ by ``O(mu)``
otherwise; both have ``k = 0`` exactly at a fixed point, so the solver's solution does not
depend on the choice (tests/test_lqr_scan.py checks the pass against the sequential one run on
the proximal problem, and ``ilqr_solve`` with the scan on and off).

**Where it applies.** A sample whose regularized free ``Quu`` is not positive definite at some
step (the sequential pass then takes no step there and goes on), or whose step leaves the box of
the ``m = 1`` closed-form clamp (``box_lower`` / ``box_upper``: the clamp changes the earlier
value functions), or whose held set did not settle (closed loop), or whose scan is not finite,
is redone by the sequential pass.
:func:`riccati_pass` does that, for the samples concerned only.

**The rule.** :func:`use_scan_forward` picks the scan from ``(B, T, n, m, device)``; its
thresholds are the measured crossover of benchmarks/long_horizon.py (the forward sweep).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .lqr import _masked, _pivots, lqr_backward
from .lqr_gains import LQRGains, _held
from .scan import _combine_affine, _held_eliminated, _value_functions, associative_scan

__all__ = ["lqr_backward_scan", "riccati_pass", "use_scan_forward"]

#: ``None``: :func:`use_scan_forward` decides; ``True`` / ``False``: force the scan / the
#: sequential pass in every forward Riccati pass (tests and benchmarks)
FORWARD_SCAN: bool | None = None


def use_scan_forward(B: int, T: int, n: int, m: int, device: torch.device) -> bool:
    """Whether the forward Riccati pass runs as a scan (:func:`lqr_backward_scan`).

    Measured on a 2-core CPU, one thread, under load (benchmarks/long_horizon.py, forward
    sweep, pendulum size n = 3, m = 1; docs/solver.md): at B = 1 the pass alone is faster from
    T = 20 (2.3x), a whole iteration from T = 50 (1.0x; 1.6x at T = 100, 2.4x at T = 1000);
    at B = 32 the pass from T = 200 (1.3x; 1.6x at T = 500-2000), a whole iteration is within
    +-20 % either way. The thresholds are those crossovers, by ``B n^2`` as for the implicit
    backward (:func:`dilqr_rl.grad.use_scan`). The same rule is used on other devices until
    measured there. :data:`FORWARD_SCAN` overrides it."""
    if FORWARD_SCAN is not None:
        return FORWARD_SCAN
    work = B * n * n
    return (work <= 25 and T >= 50) or (work <= 300 and T >= 200)


def _costates_scan(Fx: Tensor, cx: Tensor, cT: Tensor) -> Tensor:
    """``lam_T = cT``, ``lam_t = cx_t + Fx_t^T lam_{t+1}`` as a reverse scan of affine maps.

    :param Fx: ``(B, T, n, n)``; :param cx: ``(B, T, n)``; :param cT: ``(B, n)``
    :return: ``lam (B, T+1, n)``
    """
    M = torch.cat([Fx.transpose(-1, -2), torch.zeros_like(Fx[:, :1])], 1)
    d = torch.cat([cx, cT[:, None]], 1)
    # the suffix t..T applies the later maps first: op(earlier, later) = earlier o later
    _, lam = associative_scan(lambda a, b: _combine_affine(b, a), (M, d), reverse=True)
    return lam


def _pass(F: Tensor, C: Tensor, c: Tensor, CT: Tensor, cT: Tensor, mu: Tensor | None,
          fr: Tensor) -> tuple[Tensor, ...]:
    """Steps 2-3 of the module docstring for the free set ``fr (B, T, m)``.

    :return: ``K (B, T, m, n)``, ``k (B, T, m)``, ``S (B, T+1, n, n)``, ``s (B, T+1, n)``,
        ``Quu (B, T, m, m)`` (unmasked, without ``mu``), ``qu (B, T, m)``, ``pd (B, T)``,
        ``pivot (B,)``
    """
    n = F.shape[2]
    m = F.shape[3] - n
    Fx, Fu = F[..., :n], F[..., n:]
    eye = torch.eye(m, dtype=F.dtype, device=F.device)
    Cuu = C[..., n:, n:]
    Creg = C if mu is None else torch.cat(
        [C[..., :n, :], torch.cat([C[..., n:, :n], Cuu + mu[:, None, None, None] * eye], -1)], -2)
    S, s = _value_functions(*_held_eliminated(F, Creg, c, n, fr), torch.zeros_like(c[..., :n]),
                            CT, cT)
    # 3. every step's Q from S_{t+1}, as one step of the sequential pass
    S1, s1 = S[:, 1:], s[:, 1:]
    FuTS = Fu.transpose(-1, -2) @ S1  # (B, T, m, n)
    Quu = Cuu + FuTS @ Fu  # unmasked, without mu (as LQRGains.Quu)
    Qux = C[..., n:, :n] + FuTS @ Fx
    qu = c[..., n:] + (Fu.transpose(-1, -2) @ s1[..., None])[..., 0]
    Hm = _masked(Quu if mu is None else Quu + mu[:, None, None, None] * eye, fr)
    rhs = torch.cat([qu[..., None], Qux], -1) * fr[..., None].to(F.dtype)
    if m == 1:  # closed form, no LAPACK (docs/pitfalls.md)
        h = Hm[..., 0, 0]
        pd = h > 0
        kK = -rhs / torch.where(pd, h, 1.0)[..., None, None]
        pivot = torch.where(fr[..., 0], Quu[..., 0, 0], torch.inf).amin(1)
    else:
        L, info = torch.linalg.cholesky_ex(Hm)
        pd = info == 0
        kK = -torch.cholesky_solve(rhs, L)
        pivot = _pivots(torch.diagonal(L, dim1=-2, dim2=-1), fr, pd, mu)
    kK = torch.where(pd[..., None, None], kK, 0.0)
    return kK[..., 1:], kK[..., 0], S, s, Quu, qu, pd, pivot


def lqr_backward_scan(F: Tensor, C: Tensor, c: Tensor, CT: Tensor, cT: Tensor, *,
                      mu: Tensor | None = None, free: Tensor | None = None,
                      at_lower: Tensor | None = None, at_upper: Tensor | None = None,
                      box_lower: Tensor | None = None, box_upper: Tensor | None = None,
                      closed_loop: bool = False) -> tuple[LQRGains, Tensor]:
    """The projected Riccati pass of :func:`dilqr_rl.lqr.lqr_backward` (deviation
    coordinates, ``f = 0``, costates always) by associative scans, on the proximal problem
    (``C_uu + mu I``; module docstring).

    :param F: ``(B, T, n, n+m)``; :param C: ``(B, T, n+m, n+m)``; :param c: ``(B, T, n+m)``
    :param CT: ``(B, n, n)``; :param cT: ``(B, n)``; :param mu: ``(B,)`` or ``None``
    :param free: ``(B, T, m)`` bool or ``None``; :param at_lower: ``(B, T, m)`` bool or
        ``None``, with :param at_upper: the projected-Newton held set (as ``lqr_backward``)
    :param box_lower: ``(B, T, 1)`` or ``None``, with :param box_upper: the ``m = 1`` step box;
        a sample whose free step leaves it is reported as not applicable
    :param closed_loop: the closed loop's gradients (``lqr_backward``'s ``closed_loop``). The
        held set then depends on the value functions: it is guessed (every control on a bound),
        the pass solved, the held set recomputed from its ``qu``; up to three times, until it
        is reproduced (then it is the sequential pass's). Samples where it never is do not
        apply
    :return: the gains (``V``, ``v``: the proximal problem's value functions; ``boxed`` all
        ``False`` when a box is given) and ``applies (B,)`` bool: the samples whose result
        equals the sequential pass's (every regularized free ``Quu`` positive definite, no
        clamp, finite); the others must be redone sequentially
    """
    B, T, n, nz = F.shape
    m = nz - n
    if (at_lower is None) != (at_upper is None):
        raise ValueError("at_lower and at_upper go together")
    if (box_lower is None) != (box_upper is None):
        raise ValueError("box_lower and box_upper go together")
    base = torch.ones(B, T, m, dtype=torch.bool, device=F.device) if free is None else free
    consistent = torch.ones(B, dtype=torch.bool, device=F.device)
    if closed_loop:
        fr = base if at_lower is None else base & ~(at_lower | at_upper)
        for _ in range(3):
            K, k, S, s, Quu, qu, pd_t, pivot = _pass(F, C, c, CT, cT, mu, fr)
            if at_lower is None:
                break
            new = base & ~_held(qu, at_lower, at_upper)
            consistent = (new == fr).flatten(1).all(1)
            if bool(consistent.all()):
                break
            fr = new
        lam, gu, Kg = s, qu, K
    else:
        lam = _costates_scan(F[..., :n], c[..., :n], cT)
        gu = c[..., n:] + (F[..., n:].transpose(-1, -2) @ lam[:, 1:, :, None])[..., 0]
        fr = base if at_lower is None else base & ~_held(gu, at_lower, at_upper)
        K, k, S, s, Quu, qu, pd_t, pivot = _pass(F, C, c, CT, cT, mu, fr)
        Kg = None
    ok = pd_t.all(1)
    applies = ok & consistent & torch.isfinite(k).flatten(1).all(1) & \
        torch.isfinite(K).flatten(1).all(1) & torch.isfinite(S).flatten(1).all(1)
    boxed = None
    if box_lower is not None:
        out = fr & ((k < box_lower) | (k > box_upper))
        applies = applies & ~out.flatten(1).any(1)
        boxed = torch.zeros(B, dtype=torch.bool, device=F.device)
    return LQRGains(K, k, fr, ok, pivot, Quu, lam, gu, boxed, S, s, Kg), applies


def _merge(g: LQRGains, part: LQRGains, idx: Tensor) -> LQRGains:
    """``g`` with the samples ``idx`` replaced by ``part``'s (fields present in both)."""
    names = ("K", "k", "free", "ok", "pivot", "Quu", "lam", "gu", "boxed", "V", "v", "Kg")
    vals = [getattr(g, a) if getattr(part, a) is None or getattr(g, a) is None
            else getattr(g, a).index_copy(0, idx, getattr(part, a)) for a in names]
    if part.boxed is not None and g.boxed is None:
        vals[8] = torch.zeros(g.k.shape[0], dtype=torch.bool, device=g.k.device).index_copy(
            0, idx, part.boxed)
    return LQRGains(*vals)


def riccati_pass(F: Tensor, C: Tensor, c: Tensor, CT: Tensor, cT: Tensor, *,
                 mu: Tensor | None = None, free: Tensor | None = None,
                 at_lower: Tensor | None = None, at_upper: Tensor | None = None,
                 costates: bool = True, box_lower: Tensor | None = None,
                 box_upper: Tensor | None = None, closed_loop: bool = False) -> LQRGains:
    """The forward solver's Riccati pass (arguments and result as
    :func:`dilqr_rl.lqr.lqr_backward`, ``f = 0``): by :func:`lqr_backward_scan` where
    :func:`use_scan_forward` picks it, the samples where the scan does not apply (module
    docstring) redone by the sequential pass; else the sequential pass."""
    B, T, n, nz = F.shape
    kw = dict(mu=mu, free=free, at_lower=at_lower, at_upper=at_upper, box_lower=box_lower,
              box_upper=box_upper)
    flag = {"closed_loop": closed_loop}
    if not use_scan_forward(B, T, n, nz - n, F.device):
        return lqr_backward(F, C, c, CT, cT, costates=costates, **kw, **flag)
    g, applies = lqr_backward_scan(F, C, c, CT, cT, **kw, **flag)
    if bool(applies.all()):  # one host synchronisation
        return g
    r = torch.nonzero(~applies)[:, 0]
    sub = {key: None if v is None else v[r] for key, v in kw.items()}
    return _merge(g, lqr_backward(F[r], C[r], c[r], CT[r], cT[r], costates=True, **sub, **flag),
                  r)
