"""The batched LQR against an independent dense KKT solve; the box QP against brute force."""

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


@pytest.mark.parametrize("m,B", [(1, 8), (1, 80), (3, 8)])
def test_projected_pass_holds_exactly_the_outward_pushed_bound_controls(m, B):
    """With ``at_lower``/``at_upper`` the pass runs the costate recursion in its own loop and
    holds the controls on a bound whose true gradient pushes outward: the same gains as a
    pass given that held set explicitly, and the costates of the linearization. (B = 80 runs
    the batch-last m = 1 fast path.)"""
    n, T = 3, 6
    F, f, C, c, CT, cT, x0 = random_lqr(B, T, n, m, seed=21 + m)
    gen = torch.Generator().manual_seed(m)
    at_lo = torch.rand(B, T, m, generator=gen) < 0.3
    at_hi = ~at_lo & (torch.rand(B, T, m, generator=gen) < 0.3)
    mu = 0.1 * torch.rand(B, dtype=F64, generator=gen)
    g = dl.lqr_backward(F, C, c, CT, cT, mu=mu, at_lower=at_lo, at_upper=at_hi)
    lam = costates(F, c, cT)
    gu = c[..., n:] + (F[..., n:].transpose(-1, -2) @ lam[:, 1:, :, None])[..., 0]
    held = (at_lo & (gu > 0)) | (at_hi & (gu < 0))
    assert held.any() and (~held & (at_lo | at_hi)).any()  # both cases occur
    ref = dl.lqr_backward(F, C, c, CT, cT, mu=mu, free=~held)
    assert torch.equal(g.free, ~held)
    torch.testing.assert_close(g.lam, lam, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g.gu, gu, rtol=1e-12, atol=1e-12)
    for name in ("K", "k", "pivot"):
        torch.testing.assert_close(getattr(g, name), getattr(ref, name), rtol=1e-12, atol=1e-12)
    assert (g.k[held] == 0).all() and (g.K[held] == 0).all()


def test_pivot_is_the_smallest_eigenvalue_sign_of_the_reduced_hessian():
    """``pivot > 0`` exactly when the reduced Hessian over the free controls (the dense
    Hessian of the LQR's cost as a function of the controls) is positive definite."""
    n, T, m, B = 2, 4, 2, 24
    F, f, C, c, CT, cT, x0 = random_lqr(B, T, n, m, seed=3)
    C = C.clone()
    C[::2, :, n:, n:] -= 3.0 * torch.eye(m, dtype=F64)  # indefinite for half the samples
    free = torch.rand(B, T, m, generator=torch.Generator().manual_seed(0)) > 0.3
    g = dl.lqr_backward(F, C, c, CT, cT, free=free)
    for b in range(B):
        def J(uf, b=b):
            u = torch.zeros(T * m, dtype=F64).masked_scatter(free[b].reshape(-1), uf)
            x = torch.zeros(n, dtype=F64)
            tot = 0.0
            for t in range(T):
                z = torch.cat([x, u[t * m:(t + 1) * m]])
                tot = tot + 0.5 * z @ C[b, t] @ z
                x = F[b, t] @ z
            return tot + 0.5 * x @ CT[b] @ x
        H = torch.autograd.functional.hessian(J, torch.zeros(int(free[b].sum()), dtype=F64))
        lmin = torch.linalg.eigvalsh(H).min()
        assert bool(g.pivot[b] > 0) == bool(lmin > 0), (b, g.pivot[b], lmin)


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
    at_lo = torch.rand(B, T, 1, generator=torch.Generator().manual_seed(5)) < 0.3
    at_hi = ~at_lo & (torch.rand(B, T, 1, generator=torch.Generator().manual_seed(6)) < 0.3)
    mu = torch.rand(B, dtype=F64, generator=torch.Generator().manual_seed(4))
    for kw in ({"at_lower": at_lo, "at_upper": at_hi, "mu": mu}, {"free": free, "f": f},
               {"mu": mu, "costates": True}):
        a = lqr._riccati_scalar(F, Cc, 5 * c, CT, cT, kw.get("f"), kw.get("mu"), kw.get("free"),
                                kw.get("at_lower"), kw.get("at_upper"),
                                "at_lower" in kw or "costates" in kw)
        b = dl.lqr_backward(F, Cc, 5 * c, CT, cT, **kw)
        for name in ("K", "k", "pivot", "Quu", "lam", "gu"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-12,
                                       atol=1e-12, equal_nan=True)
        assert torch.equal(b.free, a.free) and torch.equal(b.ok, a.ok)
    assert not bool(a.ok.all())  # the concave samples are reported


@pytest.mark.parametrize("B", [8, 80])  # batch-major and batch-last (BATCH_LAST_MIN_B = 64)
@pytest.mark.parametrize("variant", ["projected", "masked_affine", "costates", "plain"])
def test_scalar_fast_paths_match_the_reference_pass(B, variant):
    """The m = 1 closed-form passes are labelled fast paths of one reference Riccati pass
    (:func:`dilqr_rl.lqr._riccati_reference`, any m): same gains, held sets, costates and
    pivots, including samples with a concave ``Quu`` (reported not ok)."""
    from dilqr_rl import lqr

    n, T = 3, 6
    F, f, C, c, CT, cT, x0 = random_lqr(B, T, n, 1, seed=40 + B)
    C = C.clone()
    C[: B // 4, :, n, n] -= 50.0  # concave in u for a quarter of the samples
    gen = torch.Generator().manual_seed(B)
    at_lo = torch.rand(B, T, 1, generator=gen) < 0.3
    at_hi = ~at_lo & (torch.rand(B, T, 1, generator=gen) < 0.3)
    free = torch.rand(B, T, 1, generator=gen) > 0.3
    mu = torch.rand(B, dtype=F64, generator=gen)
    kw = {"projected": {"mu": mu, "at_lower": at_lo, "at_upper": at_hi},
          "masked_affine": {"free": free, "f": f},
          "costates": {"mu": mu, "costates": True},
          "plain": {}}[variant]
    fast = dl.lqr_backward(F, C, c, CT, cT, **kw)
    ref = lqr._riccati_reference(F, C, c, CT, cT, kw.get("f"), kw.get("mu"), kw.get("free"),
                                 kw.get("at_lower"), kw.get("at_upper"),
                                 "at_lower" in kw or "costates" in kw)
    for name in ("K", "k", "Quu", "lam", "gu"):
        a, b = getattr(fast, name), getattr(ref, name)
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert torch.equal(fast.free, ref.free) and torch.equal(fast.ok, ref.ok)
    assert not bool(fast.ok.all()) and bool(fast.ok.any())
    # the reference reports -inf where a Cholesky failed; the scalar paths the value itself
    torch.testing.assert_close(fast.pivot[fast.ok], ref.pivot[ref.ok], rtol=1e-10, atol=1e-10)
    assert (fast.pivot[~fast.ok] <= 0).all() and (ref.pivot[~ref.ok] == -torch.inf).all()


def test_scalar_box_clamp_per_step_is_the_one_dimensional_box_qp():
    """``box_lower`` / ``box_upper`` (m = 1): every step's control is the minimizer of its
    scalar QP ``1/2 h k^2 + qu k`` over the box (the unconstrained one clamped), a clamped
    control has a zero gain row, ``boxed`` says where it happened; both layouts agree."""
    n, T, B = 3, 6, 80
    F, f, C, c, CT, cT, x0 = random_lqr(B, T, n, 1, seed=9)
    gen = torch.Generator().manual_seed(9)
    lo = -0.2 * torch.rand(B, T, 1, generator=gen, dtype=F64)
    hi = 0.2 * torch.rand(B, T, 1, generator=gen, dtype=F64)
    mu = torch.full((B,), 1e-3, dtype=F64)
    g = dl.lqr_backward(F, C, 5 * c, CT, cT, mu=mu, box_lower=lo, box_upper=hi)
    g8 = dl.lqr_backward(F[:8], C[:8], 5 * c[:8], CT[:8], cT[:8], mu=mu[:8], box_lower=lo[:8],
                         box_upper=hi[:8])  # the batch-major layout
    torch.testing.assert_close(g8.k, g.k[:8], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g8.K, g.K[:8], rtol=1e-12, atol=1e-12)
    assert torch.equal(g8.boxed, g.boxed[:8])
    assert ((g.k >= lo) & (g.k <= hi)).all()
    on_box = (g.k == lo) | (g.k == hi)
    assert on_box.any() and (~on_box).any() and torch.equal(g.boxed, on_box.any(-1).any(-1))
    assert (g.K[on_box[..., 0]] == 0).all()
    with pytest.raises(ValueError, match="m = 1"):
        F2, _, C2, c2, CT2, cT2, _ = random_lqr(2, T, n, 2, seed=1)
        dl.lqr_backward(F2, C2, c2, CT2, cT2, box_lower=lo[:2].expand(2, T, 2),
                        box_upper=hi[:2].expand(2, T, 2))
