"""The batched LQR against an independent dense KKT solve; the box QP against brute force."""

import itertools

import pytest
import torch

import dilqr_rl as dl
from dilqr_rl.lqr import costates

F64 = torch.float64


def random_lqr(B, T, n, m, seed):
    g = torch.Generator().manual_seed(seed)
    nz = n + m
    F = 0.5 * torch.randn(B, T, n, nz, generator=g, dtype=F64)
    f = torch.randn(B, T, n, generator=g, dtype=F64)
    R = torch.randn(B, T, nz, nz, generator=g, dtype=F64)
    C = R @ R.transpose(-1, -2) + 0.1 * torch.eye(nz, dtype=F64)
    c = torch.randn(B, T, nz, generator=g, dtype=F64)
    RT = torch.randn(B, n, n, generator=g, dtype=F64)
    CT = RT @ RT.transpose(-1, -2) + 0.1 * torch.eye(n, dtype=F64)
    cT = torch.randn(B, n, generator=g, dtype=F64)
    x0 = torch.randn(B, n, generator=g, dtype=F64)
    return F, f, C, c, CT, cT, x0


def dense_kkt(F, f, C, c, CT, cT, x0, fixed=None):
    """Solve one LQR (no batch) by a dense KKT system over w = (x_0..x_T, u_0..u_{T-1})."""
    T, n, nz = F.shape
    m = nz - n
    N = (T + 1) * n + T * m
    H = torch.zeros(N, N, dtype=F64)
    h = torch.zeros(N, dtype=F64)

    def xi(t):
        return slice(t * n, (t + 1) * n)

    def ui(t):
        return slice((T + 1) * n + t * m, (T + 1) * n + (t + 1) * m)

    for t in range(T):
        idx = torch.cat([torch.arange(N)[xi(t)], torch.arange(N)[ui(t)]])
        H[idx[:, None], idx[None, :]] += C[t]
        h[idx] += c[t]
    H[xi(T), xi(T)] += CT
    h[xi(T)] += cT
    rows, rhs = [], []
    A0 = torch.zeros(n, N, dtype=F64)
    A0[:, xi(0)] = torch.eye(n, dtype=F64)
    rows.append(A0)
    rhs.append(x0)
    for t in range(T):
        A = torch.zeros(n, N, dtype=F64)
        A[:, xi(t + 1)] = torch.eye(n, dtype=F64)
        A[:, xi(t)] = -F[t, :, :n]
        A[:, ui(t)] = -F[t, :, n:]
        rows.append(A)
        rhs.append(f[t])
    if fixed is not None:
        for t, i in zip(*torch.nonzero(fixed, as_tuple=True), strict=True):
            A = torch.zeros(1, N, dtype=F64)
            A[0, (T + 1) * n + t * m + i] = 1.0
            rows.append(A)
            rhs.append(torch.zeros(1, dtype=F64))
    A = torch.cat(rows)
    b = torch.cat(rhs)
    K = torch.zeros(N + A.shape[0], N + A.shape[0], dtype=F64)
    K[:N, :N], K[:N, N:], K[N:, :N] = H, A.T, A
    sol = torch.linalg.solve(K, torch.cat([-h, b]))
    w = sol[:N]
    x = w[: (T + 1) * n].reshape(T + 1, n)
    u = w[(T + 1) * n :].reshape(T, m)
    return x, u


@pytest.mark.parametrize("n,m,T", [(3, 1, 6), (4, 2, 5), (5, 3, 4)])
def test_lqr_matches_dense_kkt(n, m, T):
    F, f, C, c, CT, cT, x0 = random_lqr(3, T, n, m, seed=n * 10 + m)
    x, u, lam = dl.lqr_solve(F, C, c, CT, cT, x0, f=f)
    for b in range(3):
        xr, ur = dense_kkt(F[b], f[b], C[b], c[b], CT[b], cT[b], x0[b])
        torch.testing.assert_close(x[b], xr, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(u[b], ur, rtol=1e-9, atol=1e-9)
    # multipliers: stationarity in u, C z + c + F^T lam_{t+1}, holds
    z = torch.cat([x[:, :-1], u], -1)
    gz = (C @ z[..., None])[..., 0] + c
    stat_u = gz[..., n:] + (F[..., n:].transpose(-1, -2) @ lam[:, 1:, :, None])[..., 0]
    assert stat_u.abs().max() < 1e-9
    torch.testing.assert_close(lam, costates(F, gz, (CT @ x[:, -1, :, None])[..., 0] + cT))


@pytest.mark.parametrize("m", [1, 2])
def test_masked_lqr_matches_dense_kkt_with_fixed_controls(m):
    n, T = 3, 5
    F, f, C, c, CT, cT, x0 = random_lqr(2, T, n, m, seed=7 + m)
    free = torch.rand(2, T, m, generator=torch.Generator().manual_seed(1)) > 0.4
    x, u, _ = dl.lqr_solve(F, C, c, CT, cT, x0, f=f, free=free)
    assert (u[~free] == 0).all()
    for b in range(2):
        xr, ur = dense_kkt(F[b], f[b], C[b], c[b], CT[b], cT[b], x0[b], fixed=~free[b])
        torch.testing.assert_close(u[b], ur, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(x[b], xr, rtol=1e-9, atol=1e-9)


def brute_force_box_qp(H, g, lo, hi):
    """Enumerate every assignment of each coordinate to {lower, free, upper}."""
    m = g.shape[0]
    best, best_x = None, None
    for assign in itertools.product((-1, 0, 1), repeat=m):
        x = torch.zeros(m, dtype=F64)
        fr = [i for i, a in enumerate(assign) if a == 0]
        for i, a in enumerate(assign):
            x[i] = lo[i] if a == -1 else hi[i] if a == 1 else 0.0
        if fr:
            fi = torch.tensor(fr)
            cl = torch.tensor([i for i in range(m) if i not in fr], dtype=torch.long)
            rhs = -g[fi] - (H[fi][:, cl] @ x[cl] if len(cl) else 0.0)
            x[fi] = torch.linalg.solve(H[fi][:, fi], rhs)
        if (x < lo - 1e-12).any() or (x > hi + 1e-12).any():
            continue
        val = 0.5 * x @ H @ x + g @ x
        if best is None or val < best:
            best, best_x = val, x
    return best_x


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_box_qp_matches_brute_force(m):
    gen = torch.Generator().manual_seed(m)
    B = 64
    R = torch.randn(B, m, m, generator=gen, dtype=F64)
    H = R @ R.transpose(-1, -2) + 0.2 * torch.eye(m, dtype=F64)
    g = 3 * torch.randn(B, m, generator=gen, dtype=F64)
    lo = -torch.rand(B, m, generator=gen, dtype=F64)
    hi = torch.rand(B, m, generator=gen, dtype=F64)
    x, free, ok = dl.box_qp(H, g, lo, hi, iters=50)
    assert ok.all()
    n_active = 0
    for b in range(B):
        xr = brute_force_box_qp(H[b], g[b], lo[b], hi[b])
        torch.testing.assert_close(x[b], xr, rtol=1e-8, atol=1e-9)
        at = (xr <= lo[b] + 1e-12) | (xr >= hi[b] - 1e-12)
        n_active += int(at.sum())
        assert torch.equal(~free[b], at)
    assert n_active > 0  # the test exercises active bounds


def test_boxed_riccati_m1_closed_form_matches_box_qp():
    """For m = 1 the Riccati pass clamps in closed form; the general box QP agrees."""
    n, T, m = 3, 4, 1
    F, f, C, c, CT, cT, x0 = random_lqr(16, T, n, m, seed=5)
    c = 5 * c
    lo = -0.3 * torch.ones(16, T, m, dtype=F64)
    hi = 0.3 * torch.ones(16, T, m, dtype=F64)
    g1 = dl.lqr_backward(F, C, c, CT, cT, lower=lo, upper=hi)
    # the same problem with a padded second control that has a huge weight reduces to m = 1
    F2 = torch.cat([F, torch.zeros(16, T, n, 1, dtype=F64)], -1)
    C2 = torch.zeros(16, T, n + 2, n + 2, dtype=F64)
    C2[..., : n + 1, : n + 1] = C
    C2[..., -1, -1] = 1.0
    c2 = torch.cat([c, torch.zeros(16, T, 1, dtype=F64)], -1)
    lo2 = torch.cat([lo, lo], -1)
    hi2 = torch.cat([hi, hi], -1)
    g2 = dl.lqr_backward(F2, C2, c2, CT, cT, lower=lo2, upper=hi2, boxqp_iters=50)
    torch.testing.assert_close(g2.k[..., 0], g1.k[..., 0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(g2.K[..., 0, :], g1.K[..., 0, :], rtol=1e-9, atol=1e-10)
    assert (~g1.free).any() and g1.free.any()
    assert torch.equal(g2.free[..., 0], g1.free[..., 0])


def test_ilqr_on_linear_problem_is_the_constrained_optimum():
    """On linear dynamics iLQR's fixed point satisfies the KKT conditions of the boxed QP:
    stationarity on free controls, outward-pointing gradient on clamped ones."""
    T = 8

    class Linear(dl.Dynamics):
        n_state, n_ctrl = 2, 1

        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor([[1.0, 0.1], [0.0, 1.0]], dtype=F64))
            self.b = torch.nn.Parameter(torch.tensor([0.0, 0.1], dtype=F64))

        def forward(self, x, u):
            return x @ self.a.T + u * self.b

    dyn = Linear()
    cost = dl.QuadraticCost.tracking([1.0, 0.1, 0.01], [0.0, 0, 0], n_state=2).double()
    ctrl = dl.DiLQR(dyn, cost, horizon=T, u_lower=-1.0, u_upper=1.0,
                    config=dl.ILQRConfig(max_iter=100, tol=1e-12))
    x0 = torch.tensor([[3.0, 0.0], [-1.0, 0.5]], dtype=F64)
    sol = ctrl(x0)
    assert sol.converged.all()
    # gradient of J w.r.t. u at the solution, by autograd through a rollout
    uu = sol.u.detach().clone().requires_grad_(True)
    xs = dl.rollout(dyn, x0, uu, dyn.theta().to(x0).expand(2, -1))
    J = cost.total(xs, uu, {k: v.expand(2, *v.shape) for k, v in cost.params().items()}).sum()
    (gu,) = torch.autograd.grad(J, uu)
    assert gu[sol.free].abs().max() < 1e-8
    at_lo = sol.u.detach() <= -1.0
    at_hi = sol.u.detach() >= 1.0
    assert at_lo.any() or at_hi.any()
    assert (gu[at_lo] >= -1e-10).all() and (gu[at_hi] <= 1e-10).all()


def test_scalar_riccati_batch_last_layout_matches():
    """From ``BATCH_LAST_MIN_B`` samples on CPU the m = 1 pass runs batch-last; it must equal
    the dense KKT solve (free and masked controls) and the batch-major pass (boxed, with
    Levenberg-Marquardt, an affine term, and some concave Quu)."""
    from dilqr_rl import lqr

    B, T, n = lqr.BATCH_LAST_MIN_B + 16, 5, 3
    F, f, C, c, CT, cT, x0 = random_lqr(B, T, n, 1, seed=11)
    x, u, _ = dl.lqr_solve(F, C, c, CT, cT, x0, f=f)
    free = torch.rand(B, T, 1, generator=torch.Generator().manual_seed(3)) > 0.4
    xm, um, _ = dl.lqr_solve(F, C, c, CT, cT, x0, f=f, free=free)
    for b in (0, B // 2, B - 1):
        xr, ur = dense_kkt(F[b], f[b], C[b], c[b], CT[b], cT[b], x0[b])
        torch.testing.assert_close(u[b], ur, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(x[b], xr, rtol=1e-9, atol=1e-9)
        xr, ur = dense_kkt(F[b], f[b], C[b], c[b], CT[b], cT[b], x0[b], fixed=~free[b])
        torch.testing.assert_close(um[b], ur, rtol=1e-9, atol=1e-9)
    Cc = C.clone()
    Cc[: B // 4, :, n, n] -= 50.0  # concave in u for a quarter of the samples
    lo = -0.3 * torch.ones(B, T, 1, dtype=F64)
    hi = 0.3 * torch.ones(B, T, 1, dtype=F64)
    hi[::5] = float("inf")
    mu = torch.rand(B, dtype=F64, generator=torch.Generator().manual_seed(4))
    for kw in ({"lower": lo, "upper": hi, "mu": mu, "f": f}, {"free": free, "f": f},
               {"mu": mu}):
        a = lqr._riccati_scalar(F, Cc, 5 * c, CT, cT, kw.get("f"), kw.get("mu"), kw.get("lower"),
                                kw.get("upper"), kw.get("free"))
        b = dl.lqr_backward(F, Cc, 5 * c, CT, cT, **kw)
        for name in ("K", "k", "dV"):
            # (a concave sample with an infinite bound is unbounded: NaN in both, ok False)
            torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-12,
                                       atol=1e-12, equal_nan=True)
        assert torch.equal(b.free, a.free) and torch.equal(b.ok, a.ok)
    assert not bool(a.ok.all())  # the concave samples are reported
