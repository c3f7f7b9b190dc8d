"""Parallel-in-time LQR: the Riccati pass and the rollout as associative scans.

Same problem, notation and results as :func:`dilqr_rl.lqr.lqr_solve` (batch-major ``B``,
``T``, ``n``, ``m``; ``z_t = [x_t; u_t]``)::

    min  sum_{t<T} 1/2 z_t^T C_t z_t + c_t^T z_t  +  1/2 x_T^T C_T x_T + c_T^T x_T
    s.t. x_{t+1} = F_t z_t + f_t,   x_0 given,   u_{t,i} = 0 for the held controls,

but with ``O(log T)`` sequential depth instead of ``O(T)``, following Särkkä & García-Fernández,
"Temporal parallelization of dynamic programming and linear quadratic control", IEEE TAC 2023
(below: *S&GF*):

1. *Elimination* (per step, parallel over ``B, T``). Held controls are removed by zeroing their
   columns of ``F_u``, their rows/columns of ``C`` and their entries of ``c_u`` (identity on the
   diagonal of ``C_uu``), so they come out as exactly zero. The cross term ``C_ux`` and the linear
   term ``c_u`` are removed by the change of variables ``u = w - R^-1 (C_ux x + c_u)`` with
   ``R = C_uu`` (S&GF treat the cost without cross terms; this reduces to their form): the step
   costs ``1/2 w^T R w + 1/2 x^T Q~ x + q~^T x`` (+ const) under ``x' = A~ x + F_u w + b~``,
   ``Q~ = C_xx - C_xu R^-1 C_ux``, ``q~ = c_x - C_xu R^-1 c_u``, ``A~ = F_x - F_u R^-1 C_ux``,
   ``b~ = f - F_u R^-1 c_u``. The value functions (as functions of ``x``) do not change.
2. *Backward scan* of conditional value functions (S&GF, the parallel LQT backward pass). The
   element ``(A, b, C, eta, J)`` of the segment ``t -> s`` stands for the cost-to-go from
   ``x_t = x`` that reaches ``x_s = y``::

       V_{t->s}(x, y) = 1/2 x^T J x + eta^T x + max_lam [lam^T (y - A x - b) - 1/2 lam^T C lam]

   One step is ``(A~, b~, F_u R^-1 F_u^T, q~, Q~)``; the terminal element is ``(0, 0, 0, c_T,
   C_T)``. Combining ``V_{t->s}`` with ``V_{s->r}`` (minimizing over ``x_s``) gives, with
   ``M = I + C_1 J_2`` (1 the earlier segment, 2 the later)::

       A = A_2 M^-1 A_1                  b   = A_2 M^-1 (b_1 - C_1 eta_2) + b_2
       C = A_2 M^-1 C_1 A_2^T + C_2      eta = A_1^T M^-T (eta_2 + J_2 b_1) + eta_1
       J = A_1^T M^-T J_2 A_1 + J_1

   (S&GF's combination rule, with the sign of ``eta`` flipped: their cost is ``- eta^T x``).
   The suffix ``t -> T`` (terminal element included) has ``A = 0, b = 0, C = 0`` and its
   ``(J, eta) = (S_t, s_t)``: the value function ``V_t(x) = 1/2 x^T S_t x + s_t^T x + const``.
3. *Gains* (parallel over ``t``) from ``S_{t+1}``, ``s_{t+1}`` exactly as one Riccati step:
   ``Quu = C_uu + F_u^T S F_u``, ``Qux = C_ux + F_u^T S F_x``, ``qu = c_u + F_u^T (S f + s)``,
   ``[k, K] = -Quu^-1 [qu, Qux]`` on the free controls.
4. *Forward scan* of the closed-loop affine maps ``x_{t+1} = (F_x + F_u K_t) x_t + F_u k_t + f_t``
   (composition of affine maps is associative; ``x_0`` is folded into the first map).
5. *Multipliers* ``lam_t = grad V_t(x_t) = S_t x_t + s_t`` (the envelope theorem gives the
   costate recursion of :func:`dilqr_rl.lqr.costates` for the gradient of the value function).

Requirements beyond those of the sequential pass: ``C_uu`` restricted to the free controls must
be invertible at every step (the elimination divides by it; S&GF's ``U_k^-1``), and the ``I +
C_1 J_2`` of the combinations must be (they are, with eigenvalues ``>= 1``, when ``C_uu`` is
positive definite and the ``C_t``, ``C_T`` positive semi-definite). ``C`` and ``C_T`` are taken
symmetric, as in :mod:`dilqr_rl.lqr`. No regularization.

Cost: ``O(T)`` small-matrix work in ``O(log T)`` batched tensor operations (the Python-level
loop is over the scan's levels only). On a CPU with one thread the sequential pass is faster
for short horizons (benchmarks/long_horizon.py measures the crossover).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["associative_scan", "lqr_solve_scan"]

Elems = tuple[Tensor, ...]


def associative_scan(op: Callable[[Elems, Elems], Elems], elems: Sequence[Tensor],
                     reverse: bool = False) -> Elems:
    """Inclusive scan of an associative ``op`` along dim 1, in ``O(log N)`` calls of ``op``.

    The odd/even recursion of ``jax.lax.associative_scan`` (Blelloch 1990): combine neighbouring
    pairs, scan the ``N // 2`` pairs recursively, then fill in the even positions with one more
    batched ``op``. Each level calls ``op`` twice on all its pairs at once.

    :param op: ``op(a, b) -> ab``: ``a`` and ``b`` are tuples of tensors with the layout of
        ``elems`` (``(B, N', ...)``, the same ``N'`` in both), ``a`` the *earlier* elements in time
        (lower index) and ``b`` the later ones, whatever ``reverse`` is; returns their combination,
        a tuple of the same shapes. Must be associative, elementwise along dims 0 and 1
    :param elems: tensors ``(B, N, ...)`` (any trailing shapes, the same ``B`` and ``N >= 1``)
    :param reverse: ``False``: ``out[:, t] = e_0 . e_1 . ... . e_t`` (prefixes);
        ``True``: ``out[:, t] = e_t . e_{t+1} . ... . e_{N-1}`` (suffixes)
    :return: a tuple of tensors of the shapes of ``elems``
    """
    elems = tuple(elems)
    if not elems:
        raise ValueError("associative_scan: elems is empty")
    if any(e.dim() < 2 for e in elems):
        raise ValueError("associative_scan: every element needs a batch dim 0 and a time dim 1")
    B, N = elems[0].shape[:2]
    if any(e.shape[:2] != (B, N) for e in elems):
        raise ValueError("associative_scan: the elements disagree on (B, N): "
                         f"{[tuple(e.shape[:2]) for e in elems]}")
    if N == 0:
        raise ValueError("associative_scan: the time axis (dim 1) is empty")
    if reverse:
        # suffixes of the sequence are prefixes of the reversed sequence, combined with the
        # arguments swapped (the later element in time comes first in the reversed order)
        out = _scan(lambda a, b: op(b, a), tuple(e.flip(1) for e in elems))
        return tuple(o.flip(1) for o in out)
    return _scan(op, elems)


def _scan(op: Callable[[Elems, Elems], Elems], elems: Elems) -> Elems:
    """Prefix scan along dim 1 (see :func:`associative_scan`); recursion depth ``log2 N``."""
    N = elems[0].shape[1]
    if N < 2:
        return elems
    # pairs (0, 1), (2, 3), ...: their scan gives the prefixes ending at 1, 3, 5, ...
    odd = _scan(op, op(tuple(e[:, 0:N - 1:2] for e in elems), tuple(e[:, 1::2] for e in elems)))
    # prefixes ending at 2, 4, ...: (prefix ending at 2i+1) . e_{2i+2}
    n_even = (N - 1) // 2
    if n_even > 0:
        rest = op(tuple(o[:, :n_even] for o in odd), tuple(e[:, 2::2] for e in elems))
        even = tuple(torch.cat([e[:, :1], r], 1) for e, r in zip(elems, rest, strict=True))
    else:
        even = tuple(e[:, :1] for e in elems)
    out = []
    for ev, od in zip(even, odd, strict=True):
        if N % 2:  # one more even than odd: pad the odd ones, interleave, trim
            od = torch.cat([od, ev[:, -1:]], 1)
        both = torch.stack([ev, od], 2)  # (B, ceil(N/2), 2, ...)
        out.append(both.flatten(1, 2)[:, :N])
    return tuple(out)


def _solve(A: Tensor, R: Tensor) -> Tensor:
    """``A^-1 R`` for ``A (..., k, k)``, ``R (..., k, r)``; a division for ``k = 1`` (a batched
    LAPACK call per tiny matrix is slow on CPU: docs/pitfalls.md)."""
    return R / A if A.shape[-1] == 1 else torch.linalg.solve(A, R)


def _combine_value(e1: Elems, e2: Elems) -> Elems:
    """S&GF's combination of conditional value functions ``V_{t->s}`` (``e1``, earlier) and
    ``V_{s->r}`` (``e2``, later) into ``V_{t->r}`` (formulas: module docstring, step 2).

    Each ``e = (A (B, N, n, n), b (B, N, n), C (B, N, n, n), eta (B, N, n), J (B, N, n, n))``.
    """
    A1, b1, C1, eta1, J1 = e1
    A2, b2, C2, eta2, J2 = e2
    n = A1.shape[-1]
    eye = torch.eye(n, dtype=A1.dtype, device=A1.device)
    CJ = C1 @ torch.cat([J2, eta2[..., None]], -1)  # [C1 J2, C1 eta2]
    JA = J2 @ torch.cat([A1, b1[..., None]], -1)  # [J2 A1, J2 b1]
    # M^-1 for M = I + C1 J2 (M^-T = (I + J2 C1)^-1). An explicit inverse: on CPU one batched
    # getri and two products beat two batched LU solves on these tiny matrices; inv_ex does
    # not synchronize with the device to check for singularity
    Mi = torch.linalg.inv_ex(eye + CJ[..., :n])[0]
    X = Mi @ torch.cat([A1, (b1 - CJ[..., n])[..., None], C1], -1)  # (B, N, n, 2n+1)
    Y = Mi.transpose(-1, -2) @ torch.cat(
        [JA[..., :n], (eta2 + JA[..., n])[..., None]], -1)  # (B, N, n, n+1)
    AX = A2 @ X
    C = AX[..., n + 1:] @ A2.transpose(-1, -2) + C2
    AY = A1.transpose(-1, -2) @ Y
    J = AY[..., :n] + J1
    return (AX[..., :n], AX[..., n] + b2, 0.5 * (C + C.transpose(-1, -2)), AY[..., n] + eta1,
            0.5 * (J + J.transpose(-1, -2)))


def _combine_affine(e1: Elems, e2: Elems) -> Elems:
    """Composition of the affine maps ``x -> M1 x + d1`` (``e1``, earlier) then ``M2 x + d2``:
    ``(M2 M1, M2 d1 + d2)``. ``M (B, N, n, n)``, ``d (B, N, n)``."""
    M1, d1 = e1
    M2, d2 = e2
    Md = M2 @ torch.cat([M1, d1[..., None]], -1)
    return Md[..., :-1], Md[..., -1] + d2


def _check(F, C, c, CT, cT, x0, f, free) -> tuple[int, int, int, int]:
    """Shapes, dtypes and devices of :func:`lqr_solve_scan`'s inputs; ``(B, T, n, m)``."""
    named = {"F": F, "C": C, "c": c, "CT": CT, "cT": cT, "x0": x0, "f": f}
    for name, v in named.items():
        if v is None and name == "f":
            continue
        if not isinstance(v, Tensor):
            raise ValueError(f"lqr_solve_scan: {name} must be a tensor, got {type(v).__name__}")
    if not x0.is_floating_point():
        raise ValueError(f"lqr_solve_scan: x0 must be floating point, got {x0.dtype}")
    if x0.dim() != 2:
        raise ValueError(f"lqr_solve_scan: x0 must be (B, n), got {tuple(x0.shape)}")
    if F.dim() != 4:
        raise ValueError(f"lqr_solve_scan: F must be (B, T, n, n+m), got {tuple(F.shape)}")
    B, n = x0.shape
    _, T, nF, nz = F.shape
    m = nz - n
    if B == 0:
        raise ValueError("lqr_solve_scan: empty batch (B = 0)")
    if T == 0:
        raise ValueError("lqr_solve_scan: empty horizon (T = 0)")
    if F.shape[0] != B or nF != n or m < 1:
        raise ValueError(f"lqr_solve_scan: F must be (B, T, n, n+m) = ({B}, T, {n}, {n}+m) with "
                         f"m >= 1 (x0 is {tuple(x0.shape)}), got {tuple(F.shape)}")
    want = {"C": (B, T, nz, nz), "c": (B, T, nz), "CT": (B, n, n), "cT": (B, n),
            "f": (B, T, n)}
    for name, shape in want.items():
        v = named[name]
        if v is not None and tuple(v.shape) != shape:
            raise ValueError(f"lqr_solve_scan: {name} must be {shape}, got {tuple(v.shape)}")
    for name, v in named.items():
        if v is not None and (v.dtype != x0.dtype or v.device != x0.device):
            raise ValueError(f"lqr_solve_scan: {name} is {v.dtype} on {v.device}; every input "
                             f"must be {x0.dtype} on {x0.device} (as x0)")
    if free is not None:
        if not isinstance(free, Tensor) or free.dtype != torch.bool:
            raise ValueError("lqr_solve_scan: free must be a bool tensor (B, T, m)")
        if tuple(free.shape) != (B, T, m):
            raise ValueError(f"lqr_solve_scan: free must be {(B, T, m)}, got "
                             f"{tuple(free.shape)}")
        if free.device != x0.device:
            raise ValueError(f"lqr_solve_scan: free is on {free.device}, x0 on {x0.device}")
    return B, T, n, m


def lqr_solve_scan(F: Tensor, C: Tensor, c: Tensor, CT: Tensor, cT: Tensor, x0: Tensor,
                   f: Tensor | None = None, free: Tensor | None = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`dilqr_rl.lqr.lqr_solve` with ``O(log T)`` sequential depth (associative scans).

    Same arguments, semantics and results (up to rounding): the minimizer of the LQR with the
    held controls (``free`` False) fixed at zero, and the multipliers of its constraints. The
    method and its extra requirement (``C_uu`` invertible on the free controls): module
    docstring. Differentiable by autograd (torch operations only).

    :param F: ``(B, T, n, n+m)`` dynamics ``x_{t+1} = F_t [x_t; u_t] + f_t``
    :param C: ``(B, T, n+m, n+m)`` symmetric stage Hessians (cross terms ``C_ux`` allowed)
    :param c: ``(B, T, n+m)`` stage linear terms
    :param CT: ``(B, n, n)`` symmetric terminal Hessian; :param cT: ``(B, n)`` terminal linear
        term
    :param x0: ``(B, n)`` initial state; its dtype and device are those of every input and
        output
    :param f: ``(B, T, n)`` affine dynamics terms, or ``None`` (zero)
    :param free: ``(B, T, m)`` bool, ``False`` for the controls held at zero; ``None``: all free
    :return: ``x (B, T+1, n)``, ``u (B, T, m)``, ``lam (B, T+1, n)`` with ``lam_t`` the
        multiplier of ``x_t``'s constraint as in :func:`dilqr_rl.lqr.lqr_solve`
        (``lam_T = C_T x_T + c_T``, ``lam_t = [C_t z_t + c_t]_x + F_{x,t}^T lam_{t+1}``)
    :raises ValueError: on inputs of the wrong shape, dtype or device
    """
    B, T, n, m = _check(F, C, c, CT, cT, x0, f, free)
    Fx, Fu, Cxx, Cux, Cuu, cx, cu = _held_eliminated(F, C, c, n, free)
    fz = torch.zeros(B, T, n, dtype=x0.dtype, device=x0.device) if f is None else f
    S, s = _value_functions(Fx, Fu, Cxx, Cux, Cuu, cx, cu, fz, CT, cT)
    K, k = _gains(Fx, Fu, Cux, Cuu, cu, fz, S[:, 1:], s[:, 1:])
    x = _closed_loop_states(Fx, Fu, K, k, fz, x0)
    u = (K @ x[:, :-1, :, None])[..., 0] + k  # (B, T, m)
    # 5. multipliers: lam_t = grad V_t(x_t)
    lam = (S @ x[..., None])[..., 0] + s  # (B, T+1, n)
    return x, u, lam


def _held_eliminated(F: Tensor, C: Tensor, c: Tensor, n: int, free: Tensor | None
                     ) -> tuple[Tensor, ...]:
    """The blocks ``F_x, F_u, C_xx, C_ux, C_uu, c_x, c_u`` with the held controls eliminated:
    zero columns of ``F_u``, zero rows/columns of ``C`` and entries of ``c_u``, identity on
    their diagonal of ``C_uu`` (so they solve to zero)."""
    Fx, Fu = F[..., :n], F[..., n:]  # (B, T, n, n), (B, T, n, m)
    Cxx, Cux, Cuu = C[..., :n, :n], C[..., n:, :n], C[..., n:, n:]
    cx, cu = c[..., :n], c[..., n:]
    if free is not None:
        mf = free.to(F.dtype)  # (B, T, m)
        Fu = Fu * mf[..., None, :]
        Cux = Cux * mf[..., :, None]
        Cuu = Cuu * mf[..., :, None] * mf[..., None, :] + torch.diag_embed(1.0 - mf)
        cu = cu * mf
    return Fx, Fu, Cxx, Cux, Cuu, cx, cu


def _value_functions(Fx, Fu, Cxx, Cux, Cuu, cx, cu, fz, CT, cT) -> tuple[Tensor, Tensor]:
    """Steps 1-2 of the module docstring: the elimination of ``C_ux`` and ``c_u``, then the
    backward scan. :return: ``S (B, T+1, n, n)``, ``s (B, T+1, n)`` of the value functions
    ``V_t(x) = 1/2 x^T S_t x + s_t^T x``."""
    B, _, n = fz.shape
    dt, dev = fz.dtype, fz.device
    FuT = Fu.transpose(-1, -2)  # (B, T, m, n)
    # 1. elimination of C_ux and c_u: u = w - R^-1 (C_ux x + c_u), R = C_uu
    G = _solve(Cuu, torch.cat([Cux, cu[..., None], FuT], -1))  # R^-1 [C_ux, c_u, F_u^T]
    Gx, gu, GF = G[..., :n], G[..., n], G[..., n + 1:]
    CxuT = Cux.transpose(-1, -2)  # C_xu (B, T, n, m)
    A_el = Fx - Fu @ Gx  # A~ (B, T, n, n)
    b_el = fz - (Fu @ gu[..., None])[..., 0]  # b~ (B, T, n)
    C_el = Fu @ GF  # F_u R^-1 F_u^T (B, T, n, n)
    J_el = Cxx - CxuT @ Gx  # Q~ (B, T, n, n)
    eta_el = cx - (CxuT @ gu[..., None])[..., 0]  # q~ (B, T, n)

    # 2. backward scan over T stage elements and the terminal one (A = b = C = 0)
    zn = torch.zeros(B, 1, n, dtype=dt, device=dev)
    znn = torch.zeros(B, 1, n, n, dtype=dt, device=dev)
    elems = (torch.cat([A_el, znn], 1), torch.cat([b_el, zn], 1),
             torch.cat([0.5 * (C_el + C_el.transpose(-1, -2)), znn], 1),
             torch.cat([eta_el, cT[:, None]], 1),
             torch.cat([0.5 * (J_el + J_el.transpose(-1, -2)), CT[:, None]], 1))
    _, _, _, s, S = associative_scan(_combine_value, elems, reverse=True)
    return S, s


def _gains(Fx, Fu, Cux, Cuu, cu, fz, S1, s1) -> tuple[Tensor, Tensor]:
    """Step 3: the gains ``K (B, T, m, n)``, ``k (B, T, m)`` of every step at once, as one
    Riccati step from ``(S_{t+1}, s_{t+1})`` (``S1``, ``s1``)."""
    m = Fu.shape[-1]
    FuT = Fu.transpose(-1, -2)  # (B, T, m, n)
    FuTS = FuT @ S1  # (B, T, m, n)
    Quu = Cuu + FuTS @ Fu  # (B, T, m, m); identity on held rows/cols
    Qux = Cux + FuTS @ Fx  # (B, T, m, n); zero on held rows
    qu = cu + (FuT @ (s1 + (S1 @ fz[..., None])[..., 0])[..., None])[..., 0]  # (B, T, m)
    rhs = torch.cat([qu[..., None], Qux], -1)  # (B, T, m, 1+n)
    if m == 1:
        # as the sequential scalar pass: no step where Quu is exactly singular
        h = Quu[..., 0, 0]
        use = (h != 0).to(fz.dtype)
        kK = -rhs * (use / torch.where(h != 0, h, 1.0))[..., None, None]
    else:
        kK = -torch.linalg.solve(Quu, rhs)
    return kK[..., 1:], kK[..., 0]


def _closed_loop_states(Fx, Fu, K, k, fz, x0) -> Tensor:
    """Step 4: the forward scan of the closed-loop affine maps, ``x0`` folded into the first
    one. :return: ``x (B, T+1, n)``"""
    Mcl = Fx + Fu @ K  # (B, T, n, n)
    dcl = (Fu @ k[..., None])[..., 0] + fz  # (B, T, n)
    d0 = (Mcl[:, 0] @ x0[..., None])[..., 0] + dcl[:, 0]
    Mcl = torch.cat([torch.zeros_like(Mcl[:, :1]), Mcl[:, 1:]], 1)
    dcl = torch.cat([d0[:, None], dcl[:, 1:]], 1)
    _, xs = associative_scan(_combine_affine, (Mcl, dcl))
    return torch.cat([x0[:, None], xs], 1)
