"""The parallel-in-time LQR (dilqr_rl/scan.py) against the sequential Riccati pass and a dense
KKT solve; the associative scan against sequential folds."""

import math

import pytest
import torch

import dilqr_rl as dl
from dilqr_rl.lqr import costates
from dilqr_rl.scan import associative_scan, lqr_solve_scan

from .test_lqr import dense_kkt, random_lqr

F64 = torch.float64


def _max_rel_err(got, ref):
    """``max |got - ref| / max(1, max |ref|)`` over the three outputs, each on its own scale."""
    return max(float((g - r).abs().max()) / max(1.0, float(r.abs().max()))
               for g, r in zip(got, ref, strict=True))


# ----------------------------------------------------------------------------- the scan helper

@pytest.mark.parametrize("N", [1, 2, 3, 4, 5, 7, 8, 13, 64, 100])
@pytest.mark.parametrize("reverse", [False, True])
def test_associative_scan_sums(N, reverse):
    g = torch.Generator().manual_seed(N)
    a = torch.randn(3, N, 2, generator=g, dtype=F64)
    (out,) = associative_scan(lambda x, y: (x[0] + y[0],), (a,), reverse=reverse)
    ref = a.flip(1).cumsum(1).flip(1) if reverse else a.cumsum(1)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("N", [1, 2, 3, 6, 11, 33])
@pytest.mark.parametrize("reverse", [False, True])
def test_associative_scan_keeps_the_order_of_a_non_commutative_op(N, reverse):
    """Matrix products (earlier element on the right, as the composition of linear maps):
    ``out[t] = M_t ... M_0`` forward, ``M_{N-1} ... M_t`` in reverse; and the number of calls
    of ``op`` is ``O(log N)``."""
    g = torch.Generator().manual_seed(100 + N)
    M = torch.randn(2, N, 3, 3, generator=g, dtype=F64) / 2
    calls = []

    def op(a, b):
        calls.append(a[0].shape[1])
        return (b[0] @ a[0],)

    (out,) = associative_scan(op, (M,), reverse=reverse)
    for t in range(N):
        idx = range(t + 1) if not reverse else range(t, N)
        ref = torch.eye(3, dtype=F64).expand(2, 3, 3)
        for s in idx:
            ref = M[:, s] @ ref
        torch.testing.assert_close(out[:, t], ref, rtol=1e-12, atol=1e-12)
    assert len(calls) <= 2 * max(1, math.ceil(math.log2(N)))


def test_associative_scan_rejects_bad_elements():
    with pytest.raises(ValueError, match="empty"):
        associative_scan(lambda a, b: a, ())
    with pytest.raises(ValueError, match="disagree"):
        associative_scan(lambda a, b: a, (torch.zeros(2, 3), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="time axis"):
        associative_scan(lambda a, b: a, (torch.zeros(2, 0),))


# ------------------------------------------------------------------- the LQR against the pass

CASES = [  # (B, T, n, m)
    (2, 1, 3, 1), (3, 2, 3, 1), (2, 3, 4, 2), (3, 7, 5, 3), (2, 7, 2, 3),
    (4, 64, 3, 1), (2, 100, 5, 1), (2, 100, 4, 2), (80, 13, 3, 1),  # B = 80: batch-last ref
]


@pytest.mark.parametrize("B,T,n,m", CASES)
@pytest.mark.parametrize("with_f", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_scan_matches_sequential_lqr_solve(B, T, n, m, with_f, masked):
    """Random problems with cross terms ``C_ux`` and linear terms: states, controls and
    multipliers of the sequential pass to 1e-10 (relative to their scale, float64)."""
    F, f, C, c, CT, cT, x0 = random_lqr(B, T, n, m, seed=1000 * T + 10 * n + m)
    assert (C[..., n:, :n].abs() > 0).all()  # the cross terms are there
    f = f if with_f else None
    free = (torch.rand(B, T, m, generator=torch.Generator().manual_seed(T)) > 0.35) \
        if masked else None
    ref = dl.lqr_solve(F, C, c, CT, cT, x0, f=f, free=free)
    got = lqr_solve_scan(F, C, c, CT, cT, x0, f=f, free=free)
    for g_, r_ in zip(got, ref, strict=True):
        assert g_.shape == r_.shape and g_.dtype == F64
    assert _max_rel_err(got, ref) < 1e-10
    if masked:
        assert (got[1][~free] == 0).all()


def test_scan_all_held_and_all_free_steps():
    """Steps where every control is held (the state just drifts) next to free ones."""
    B, T, n, m = 2, 9, 3, 2
    F, f, C, c, CT, cT, x0 = random_lqr(B, T, n, m, seed=5)
    free = torch.ones(B, T, m, dtype=torch.bool)
    free[:, ::3] = False
    free[1] = False  # the second sample has no free control at all
    ref = dl.lqr_solve(F, C, c, CT, cT, x0, f=f, free=free)
    got = lqr_solve_scan(F, C, c, CT, cT, x0, f=f, free=free)
    assert _max_rel_err(got, ref) < 1e-10
    assert (got[1][~free] == 0).all()


def test_scan_with_indefinite_control_hessian():
    """The adjoint LQR may have an indefinite (nonsingular) ``C_uu``: the scan returns the same
    stationary point as the sequential pass's LU solve."""
    B, T, n, m = 4, 12, 3, 2
    F, f, C, c, CT, cT, x0 = random_lqr(B, T, n, m, seed=17)
    C = C.clone()
    C[::2, :, n:, n:] -= 2.0 * torch.eye(m, dtype=F64)
    ref = dl.lqr_solve(F, C, c, CT, cT, x0, f=f)
    got = lqr_solve_scan(F, C, c, CT, cT, x0, f=f)
    assert _max_rel_err(got, ref) < 1e-9


@pytest.mark.parametrize("n,m,T", [(3, 1, 6), (4, 2, 5), (2, 3, 4)])
@pytest.mark.parametrize("masked", [False, True])
def test_scan_matches_dense_kkt(n, m, T, masked):
    """An independent dense KKT solve; the multipliers satisfy the costate recursion and
    stationarity in the free controls."""
    B = 2
    F, f, C, c, CT, cT, x0 = random_lqr(B, T, n, m, seed=50 + n + m)
    free = (torch.rand(B, T, m, generator=torch.Generator().manual_seed(2)) > 0.4) \
        if masked else None
    x, u, lam = lqr_solve_scan(F, C, c, CT, cT, x0, f=f, free=free)
    for b in range(B):
        xr, ur = dense_kkt(F[b], f[b], C[b], c[b], CT[b], cT[b], x0[b],
                           fixed=None if free is None else ~free[b])
        torch.testing.assert_close(x[b], xr, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(u[b], ur, rtol=1e-10, atol=1e-10)
    z = torch.cat([x[:, :-1], u], -1)
    gz = (C @ z[..., None])[..., 0] + c
    torch.testing.assert_close(lam, costates(F, gz, (CT @ x[:, -1, :, None])[..., 0] + cT),
                               rtol=1e-10, atol=1e-10)
    stat_u = gz[..., n:] + (F[..., n:].transpose(-1, -2) @ lam[:, 1:, :, None])[..., 0]
    if free is not None:
        stat_u = stat_u[free]
    assert stat_u.abs().max() < 1e-10


@pytest.mark.parametrize("m", [1, 2])
def test_scan_long_horizon_with_an_unstable_open_loop(m):
    """T = 1000 steps of an open loop growing ~16 % a step (a pendulum near upright, dt = 0.05):
    every optimality condition of the scan's solution holds to 1e-9, equation by equation
    (dynamics, stationarity in x and in the free u, terminal). The multipliers come from the
    value functions (``lam_t = S_t x_t + s_t``), not from a costate recursion run backward
    through the open loop, whose rounding errors grow like the open loop."""
    B, T, n, dt = 2, 1000, 3, 0.05
    g = torch.Generator().manual_seed(m)
    W = torch.randn(B, 1, n, n, generator=g, dtype=F64)
    v = torch.randn(B, 1, n, 1, generator=g, dtype=F64)
    P = v @ v.transpose(-1, -2) / (v * v).sum(-2, keepdim=True)  # projector on v
    A = 2 * (W - W.transpose(-1, -2)) / n ** 0.5 + 3 * P  # oscillation + one growing mode
    Fx = torch.eye(n, dtype=F64) + dt * (A + 0.2 * torch.randn(B, T, n, n, generator=g,
                                                                 dtype=F64))
    F = torch.cat([Fx, dt * torch.randn(B, T, n, m, generator=g, dtype=F64)], -1)
    C = torch.diag_embed(0.5 + torch.rand(B, T, n + m, generator=g, dtype=F64))
    c = torch.randn(B, T, n + m, generator=g, dtype=F64)
    CT = 10 * torch.eye(n, dtype=F64).expand(B, n, n)
    cT = torch.randn(B, n, generator=g, dtype=F64)
    x0 = torch.randn(B, n, generator=g, dtype=F64)
    free = torch.rand(B, T, m, generator=g) > 0.1
    x, u, lam = lqr_solve_scan(F, C, c, CT, cT, x0, free=free)
    assert torch.linalg.eigvals(Fx).abs().amax(-1).min() > 1.01  # unstable at every step
    z = torch.cat([x[:, :-1], u], -1)
    gz = (C @ z[..., None])[..., 0] + c + (F.transpose(-1, -2) @ lam[:, 1:, :, None])[..., 0]
    for r in [(F @ z[..., None])[..., 0] - x[:, 1:], gz[..., :n] - lam[:, :-1],
              gz[..., n:] * free, (CT @ x[:, -1, :, None])[..., 0] + cT - lam[:, -1],
              x[:, 0] - x0]:
        assert r.abs().max() < 1e-9


def test_scan_float32_smoke():
    """float32 in, float32 out, close to the float64 solution on a well-conditioned problem."""
    B, T, n, m = 3, 50, 3, 1
    F, f, C, c, CT, cT, x0 = random_lqr(B, T, n, m, seed=3)
    F = F.clone()
    F[..., :n] = 0.9 * torch.eye(n, dtype=F64) + 0.05 * F[..., :n]
    ref = lqr_solve_scan(F, C, c, CT, cT, x0, f=f)
    args32 = [a.float() for a in (F, C, c, CT, cT, x0)]
    got = lqr_solve_scan(*args32, f=f.float())
    assert all(g.dtype == torch.float32 for g in got)
    assert all(torch.isfinite(g).all() for g in got)
    assert _max_rel_err([g.double() for g in got], ref) < 1e-4


def test_scan_is_differentiable_like_the_sequential_pass():
    """Autograd through the scan gives the sequential pass's gradients."""
    B, T, n, m = 2, 6, 3, 2
    F, f, C, c, CT, cT, x0 = random_lqr(B, T, n, m, seed=8)
    w = torch.randn(B, T + 1, n, generator=torch.Generator().manual_seed(0), dtype=F64)
    grads = []
    for solve in (dl.lqr_solve, lqr_solve_scan):
        Fr, cr, x0r = (a.clone().requires_grad_(True) for a in (F, c, x0))
        x, u, lam = solve(Fr, C, cr, CT, cT, x0r, f=f)
        loss = (w * x).sum() + u.square().sum() + (w * lam).sum()
        grads.append(torch.autograd.grad(loss, (Fr, cr, x0r)))
    for g_s, g_p in zip(*grads, strict=True):
        torch.testing.assert_close(g_p, g_s, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_scan_on_cuda_matches_cpu():
    B, T, n, m = 4, 37, 4, 2
    F, f, C, c, CT, cT, x0 = random_lqr(B, T, n, m, seed=9)
    free = torch.rand(B, T, m, generator=torch.Generator().manual_seed(4)) > 0.3
    ref = lqr_solve_scan(F, C, c, CT, cT, x0, f=f, free=free)
    got = lqr_solve_scan(*(a.cuda() for a in (F, C, c, CT, cT, x0)), f=f.cuda(),
                         free=free.cuda())
    assert all(g.device.type == "cuda" for g in got)
    assert _max_rel_err([g.cpu() for g in got], ref) < 1e-10


# --------------------------------------------------------------------------- input validation

def test_scan_validates_inputs():
    B, T, n, m = 2, 4, 3, 1
    F, f, C, c, CT, cT, x0 = random_lqr(B, T, n, m, seed=0)
    ok = dict(F=F, C=C, c=c, CT=CT, cT=cT, x0=x0, f=f)

    def call(**kw):
        args = {**ok, **kw}
        return lqr_solve_scan(args["F"], args["C"], args["c"], args["CT"], args["cT"],
                              args["x0"], f=args["f"], free=args.get("free"))

    call()  # fine as is
    bad = [
        (dict(F=F[..., :n]), "m >= 1"),  # no controls
        (dict(F=F[0]), "F must be"),
        (dict(C=C[..., :-1, :]), "C must be"),
        (dict(c=c[..., :-1]), "c must be"),
        (dict(CT=CT[:, :-1]), "CT must be"),
        (dict(cT=cT[:1]), "cT must be"),
        (dict(f=f[:, :-1]), "f must be"),
        (dict(x0=x0[:1]), "F must be"),
        (dict(x0=x0[0]), "x0 must be"),
        (dict(x0=x0.long()), "floating point"),
        (dict(C=C.float()), "as x0"),
        (dict(c=[1.0]), "must be a tensor"),
        (dict(free=torch.ones(B, T, m)), "bool"),
        (dict(free=torch.ones(B, T, m + 1, dtype=torch.bool)), "free must be"),
        (dict(F=F[:, :0], C=C[:, :0], c=c[:, :0], f=f[:, :0]), "empty horizon"),
        (dict(F=F[:0], C=C[:0], c=c[:0], f=f[:0], CT=CT[:0], cT=cT[:0], x0=x0[:0]),
         "empty batch"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            call(**kw)
