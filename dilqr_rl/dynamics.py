"""Discrete-time dynamics models ``x_{t+1} = f(x_t, u_t; theta)``.

Every model is an ``nn.Module`` whose learnable physical parameters are ``nn.Parameter`` s.
The solver talks to a model through one functional entry point,

    ``step(x, u, theta) -> x_next``,  ``x: (..., n)``, ``u: (..., m)``, ``theta: (..., p)``,

where ``theta`` is the flat vector of the model's parameters (``theta()`` builds it from the
module, differentiably) and all leading dimensions broadcast. A per-sample override is just a
``theta`` of shape ``(B, p)``.

First and second derivatives come from autograd over all ``B*T`` pairs at once (one reverse
pass per output row: the linearizations are one vectorized computation, the paper's
"parallelization", section 4.4). Built-in models may provide analytic Jacobians for speed;
tests compare them with ``torch.func``.

A user model subclasses :class:`Dynamics`, registers its parameters and implements a batched
``forward(x, u)``; nothing else is needed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

__all__ = ["Dynamics", "Pendulum", "CartPole", "Rocket"]


class Dynamics(nn.Module):
    """Base class of a discrete-time model ``x_next = f(x, u; theta)``.

    Subclasses set ``n_state``, ``n_ctrl`` and (for the built-ins) override :meth:`step`.
    A generic subclass only implements ``forward(x, u)`` with ``x: (..., n)``,
    ``u: (..., m)``, returning ``(..., n)``, using its own ``nn.Parameter`` s; :meth:`step`
    then evaluates it with any parameter vector through ``torch.func.functional_call``.
    """

    n_state: int
    n_ctrl: int
    #: Default box bounds on the controls (``None``: unbounded); a controller may override.
    u_lower: float | None = None
    u_upper: float | None = None
    #: Whether every parameter is a positive physical quantity (masses, lengths, inertias,
    #: gravity). Trainers that update the parameters (``dilqr_rl.sb3``) then keep them
    #: positive; a generic model keeps the default ``False`` (signed parameters).
    positive_params: bool = False

    # ------------------------------------------------------------------ parameters
    def param_names(self) -> list[str]:
        """Names of the parameters that make up ``theta``, in order."""
        return [name for name, _ in self.named_parameters()]

    def theta(self) -> Tensor:
        """The flat parameter vector ``(p,)``, differentiable w.r.t. the module parameters."""
        params = [p.reshape(-1) for _, p in self.named_parameters()]
        if not params:
            return torch.zeros(0)
        return torch.cat(params)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        out, i = {}, 0
        for name, p in self.named_parameters():
            out[name] = theta[..., i : i + p.numel()].reshape(p.shape)
            i += p.numel()
        return out

    # ------------------------------------------------------------------ evaluation
    def step(self, x: Tensor, u: Tensor, theta: Tensor) -> Tensor:
        """One step with an explicit parameter vector.

        :param x: states ``(..., n)``
        :param u: controls ``(..., m)``
        :param theta: parameters ``(..., p)`` or ``(p,)``; leading dims broadcast with ``x``
        :return: next states ``(..., n)``
        """
        if theta.dim() <= 1:
            return functional_call(self, self._unflatten(theta), (x, u))
        batch = torch.broadcast_shapes(x.shape[:-1], u.shape[:-1], theta.shape[:-1])
        xs = x.expand(*batch, x.shape[-1]).reshape(-1, x.shape[-1])
        us = u.expand(*batch, u.shape[-1]).reshape(-1, u.shape[-1])
        ths = theta.expand(*batch, theta.shape[-1]).reshape(-1, theta.shape[-1])

        def one(th: Tensor, xi: Tensor, ui: Tensor) -> Tensor:
            return functional_call(self, self._unflatten(th), (xi, ui))

        return vmap(one)(ths, xs, us).reshape(*batch, self.n_state)

    def jacobians(self, x: Tensor, u: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Linearization ``F = [df/dx, df/du]`` at every pair, all pairs at once.

        :param x: ``(N, n)``; :param u: ``(N, m)``; :param theta: ``(N, p)`` or ``(p,)``
        :return: ``(x_next (N, n), F (N, n, n+m))``; differentiable (``grad="unroll"``) when
            grad mode is on and an input requires grad
        """
        n = self.n_state
        z = torch.cat([x, u], -1)
        return jacobian_rows(lambda zz: self.step(zz[..., :n], zz[..., n:], theta), z,
                             _wants_graph(z, theta))

    def weighted_hessian(self, x: Tensor, u: Tensor, theta: Tensor, lam: Tensor) -> Tensor:
        """``sum_i lam_i d^2 f_i / dz^2`` at every pair, ``z = [x; u]``.

        This is the second-order dynamics term of the Lagrangian Hessian that iLQR's forward
        pass (and DiffMPC's backward) drops; the exact fixed-point gradient needs it.

        :param x: ``(N, n)``; :param u: ``(N, m)``; :param theta: ``(N, p)`` or ``(p,)``
        :param lam: multipliers ``(N, n)``
        :return: ``(N, n+m, n+m)``
        """
        n = self.n_state
        z = torch.cat([x, u], -1)
        return hessian_rows(lambda zz: (lam * self.step(zz[..., :n], zz[..., n:], theta)).sum(),
                            z, _wants_graph(z, theta, lam))


def _wants_graph(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def jacobian_rows(fn, z: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """Per-pair Jacobians of a pair-wise function ``fn: (N, d) -> (N, k)``.

    One reverse pass per output coordinate over all pairs at once (pairs are independent, so
    the gradient of ``sum_pairs fn_i`` is the i-th Jacobian row of every pair). For the small
    ``k`` of control problems this measured ~3x faster on CPU than ``vmap`` over ``jvp``.

    :return: ``(fn(z) (N, k), J (N, k, d))``
    """
    with torch.enable_grad():
        zr = z if (create_graph and z.requires_grad) else z.detach().requires_grad_(True)
        out = fn(zr)
        rows = []
        for i in range(out.shape[-1]):
            (g,) = torch.autograd.grad(out[..., i].sum(), zr, retain_graph=True,
                                       create_graph=create_graph, allow_unused=True)
            rows.append(torch.zeros_like(zr) if g is None else g)
    J = torch.stack(rows, -2)
    return (out, J) if create_graph else (out.detach(), J.detach())


def hessian_rows(phi, z: Tensor, create_graph: bool = False) -> Tensor:
    """Per-pair Hessians ``(N, d, d)`` of ``phi(z) = sum_pairs phi_i(z_i)`` (block diagonal):
    one gradient with graph, then one reverse pass per coordinate (double backward)."""
    with torch.enable_grad():
        zr = z if (create_graph and z.requires_grad) else z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(phi(zr), zr, create_graph=True)
        rows = []
        for j in range(z.shape[-1]):
            if not g.requires_grad:  # phi is linear in z
                rows.append(torch.zeros_like(zr))
                continue
            (h,) = torch.autograd.grad(g[..., j].sum(), zr, retain_graph=True,
                                       create_graph=create_graph, allow_unused=True)
            rows.append(torch.zeros_like(zr) if h is None else h)
    H = torch.stack(rows, -2)
    return H if create_graph else H.detach()


def _param(value: float) -> nn.Parameter:
    return nn.Parameter(torch.tensor(float(value), dtype=torch.get_default_dtype()))


class Pendulum(Dynamics):
    """Torque-limited pendulum, identical to ``mpc.pytorch``'s ``PendulumDx`` (simple=True).

    State ``(cos th, sin th, thdot)`` (``th = 0`` upright), control torque, ``|u| <= 2``,
    parameters ``(g, m, l)``, ``dt = 0.05``, semi-implicit Euler::

        thdot' = thdot + dt * (3 g / (2 l) sin th + 3 u / (m l^2));  th' = th + dt thdot'

    Unlike ``PendulumDx`` the model does not clamp ``u``: the solver enforces the bounds, and a
    clamp inside the model would zero the gradient at them.
    """

    positive_params = True
    n_state = 3
    n_ctrl = 1
    u_lower = -2.0
    u_upper = 2.0

    def __init__(self, g: float = 10.0, m: float = 1.0, l: float = 1.0, dt: float = 0.05):
        super().__init__()
        self.g, self.m, self.l = _param(g), _param(m), _param(l)
        self.dt = float(dt)

    def theta(self) -> Tensor:
        return torch.stack([self.g, self.m, self.l])

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return self.step(x, u, self.theta())

    def step(self, x: Tensor, u: Tensor, theta: Tensor) -> Tensor:
        g, m, l = theta[..., 0], theta[..., 1], theta[..., 2]
        cos_th, sin_th, dth = x[..., 0], x[..., 1], x[..., 2]
        th = torch.atan2(sin_th, cos_th)
        new_dth = dth + self.dt * (3.0 * g / (2.0 * l) * sin_th + 3.0 * u[..., 0] / (m * l**2))
        new_th = th + new_dth * self.dt
        return torch.stack([torch.cos(new_th), torch.sin(new_th), new_dth], -1)

    def jacobians(self, x: Tensor, u: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        # Analytic linearization (the paper's section 4.6 idea: closed forms instead of
        # autograd); checked against torch.func in tests/test_dynamics.py.
        g, m, l = theta[..., 0], theta[..., 1], theta[..., 2]
        c, s, dth = x[..., 0], x[..., 1], x[..., 2]
        dt = self.dt
        r2 = c * c + s * s
        th = torch.atan2(s, c)
        a = 3.0 * g / (2.0 * l)
        b = 3.0 / (m * l**2)
        new_dth = dth + dt * (a * s + b * u[..., 0])
        new_th = th + new_dth * dt
        cn, sn = torch.cos(new_th), torch.sin(new_th)
        # d th / d(c, s) = (-s, c) / r2
        dth_dc, dth_ds = -s / r2, c / r2
        # new_dth derivatives w.r.t. (c, s, dth, u)
        ndth = torch.stack(
            [torch.zeros_like(c), dt * a.expand_as(c), torch.ones_like(c),
             (dt * b).expand_as(c)], -1)
        nth = torch.stack([dth_dc, dth_ds, torch.zeros_like(c), torch.zeros_like(c)], -1)
        nth = nth + dt * ndth
        F = torch.stack([-sn[..., None] * nth, cn[..., None] * nth, ndth], -2)
        return torch.stack([cn, sn, new_dth], -1), F


    def weighted_hessian(self, x: Tensor, u: Tensor, theta: Tensor, lam: Tensor) -> Tensor:
        # Closed form: thdot' is linear in (s, thdot, u), so only th' = atan2(s, c) + dt thdot'
        # curves, and sum_i lam_i hess f_i = alpha g g^T + beta hess(atan2) with
        # g = grad th', alpha = -(lam1 cos th' + lam2 sin th'), beta = lam2 cos th' - lam1 sin th'.
        g_, m, l = theta[..., 0], theta[..., 1], theta[..., 2]
        c, s, dth = x[..., 0], x[..., 1], x[..., 2]
        dt = self.dt
        r2 = c * c + s * s
        a = 3.0 * g_ / (2.0 * l)
        b = 3.0 / (m * l**2)
        new_th = torch.atan2(s, c) + dt * (dth + dt * (a * s + b * u[..., 0]))
        cn, sn = torch.cos(new_th), torch.sin(new_th)
        alpha = -(lam[..., 0] * cn + lam[..., 1] * sn)
        beta = lam[..., 1] * cn - lam[..., 0] * sn
        grad = torch.stack([-s / r2, c / r2 + dt * dt * a.expand_as(c),
                            torch.full_like(c, dt), (dt * dt * b).expand_as(c)], -1)
        H = alpha[..., None, None] * grad[..., :, None] * grad[..., None, :]
        r4 = r2 * r2
        hcc, hss, hcs = 2 * c * s / r4, -2 * c * s / r4, (s * s - c * c) / r4
        Hth = torch.stack([torch.stack([hcc, hcs], -1), torch.stack([hcs, hss], -1)], -2)
        return H + torch.nn.functional.pad(beta[..., None, None] * Hth, (0, 2, 0, 2))


class _CartPoleTerms(NamedTuple):
    """What the cart-pole's step, Jacobian and weighted Hessian share (all ``(...)``):
    ``th_acc = num / den``, ``x_acc = ci - pml th_acc c / M``."""

    g: Tensor
    mp: Tensor
    l: Tensor
    M: Tensor  # m_pole + m_cart
    pml: Tensor  # m_pole l
    c: Tensor  # cos th
    s: Tensor  # sin th
    w: Tensor  # thdot
    ci: Tensor  # (u + pml w^2 s) / M
    den: Tensor  # l (4/3 - mp c^2 / M)
    num: Tensor  # g s - c ci


def _cartpole_terms(x: Tensor, u: Tensor, theta: Tensor) -> _CartPoleTerms:
    g, mc, mp, l = theta[..., 0], theta[..., 1], theta[..., 2], theta[..., 3]
    c, s, w = x[..., 2], x[..., 3], x[..., 4]
    M = mp + mc
    pml = mp * l
    ci = (u[..., 0] + pml * w**2 * s) / M
    den = l * (4.0 / 3.0 - mp * c**2 / M)
    return _CartPoleTerms(g, mp, l, M, pml, c, s, w, ci, den, g * s - c * ci)


class CartPole(Dynamics):
    """Cart-pole, identical to ``mpc.pytorch``'s ``CartpoleDx``.

    State ``(x, xdot, cos th, sin th, thdot)`` (``th = 0`` upright), control force,
    ``|u| <= 100``, parameters ``(g, m_cart, m_pole, l)``, ``dt = 0.05``, explicit Euler.
    """

    positive_params = True
    n_state = 5
    n_ctrl = 1
    u_lower = -100.0
    u_upper = 100.0

    def __init__(self, g: float = 9.8, m_cart: float = 1.0, m_pole: float = 0.1,
                 l: float = 0.5, dt: float = 0.05):
        super().__init__()
        self.g, self.m_cart, self.m_pole, self.l = _param(g), _param(m_cart), _param(m_pole), \
            _param(l)
        self.dt = float(dt)

    def theta(self) -> Tensor:
        return torch.stack([self.g, self.m_cart, self.m_pole, self.l])

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return self.step(x, u, self.theta())

    def step(self, x: Tensor, u: Tensor, theta: Tensor) -> Tensor:
        t = _cartpole_terms(x, u, theta)
        th_acc = t.num / t.den
        x_acc = t.ci - t.pml * th_acc * t.c / t.M
        dt = self.dt
        new_th = torch.atan2(t.s, t.c) + dt * t.w
        return torch.stack([x[..., 0] + dt * x[..., 1], x[..., 1] + dt * x_acc,
                            torch.cos(new_th), torch.sin(new_th), t.w + dt * th_acc], -1)


    def jacobians(self, x: Tensor, u: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        # Analytic linearization (checked against torch.func in tests/test_dynamics.py).
        g, mp, l, M, pml, c, s, w, cart_in, den, num = _cartpole_terms(x, u, theta)
        pos, vel = x[..., 0], x[..., 1]
        dt = self.dt
        th_acc = num / den
        x_acc = cart_in - pml * th_acc * c / M
        r2 = c * c + s * s
        new_th = torch.atan2(s, c) + dt * w
        # partials w.r.t. (c, s, w, u)
        ci_s, ci_w, ci_u = pml * w**2 / M, 2 * pml * w * s / M, 1.0 / M
        ta_c = (-cart_in * den + num * 2 * l * mp * c / M) / den**2
        ta_s = (g - c * ci_s) / den
        ta_w = -c * ci_w / den
        ta_u = -c * ci_u / den
        k = pml / M
        xa_c = -k * (ta_c * c + th_acc)
        xa_s = ci_s - k * c * ta_s
        xa_w = ci_w - k * c * ta_w
        xa_u = ci_u - k * c * ta_u
        zero, one = torch.zeros_like(c), torch.ones_like(c)
        nt = [zero, zero, -s / r2, c / r2, torch.full_like(c, dt), zero]
        cn, sn = torch.cos(new_th), torch.sin(new_th)

        def row(*entries):
            return torch.stack([e.expand_as(c) for e in entries], -1)

        F = torch.stack([
            row(one, torch.full_like(c, dt), zero, zero, zero, zero),
            row(zero, one, dt * xa_c, dt * xa_s, dt * xa_w, dt * xa_u),
            row(*[-sn * e for e in nt]),
            row(*[cn * e for e in nt]),
            row(zero, zero, dt * ta_c, dt * ta_s, 1 + dt * ta_w, dt * ta_u),
        ], -2)
        xn = torch.stack([pos + dt * vel, vel + dt * x_acc, cn, sn, w + dt * th_acc], -1)
        return xn, F

    def weighted_hessian(self, x: Tensor, u: Tensor, theta: Tensor, lam: Tensor) -> Tensor:
        # Closed form over z = (pos, vel, cos, sin, w, u). pos' and vel' are linear in z
        # except through the accelerations, so only y = (c, s, w, u) curves:
        #   sum_i lam_i hess f_i = dt (lam1 hess x_acc + lam4 hess th_acc)
        #                          + alpha g g^T + beta hess(atan2)     (as in Pendulum)
        # with th_acc = num / den(c), num = g s - c ci, ci = (u + pml w^2 s) / M,
        # x_acc = ci - k c th_acc, k = pml / M; so hess x_acc = hess ci - k (c hess th_acc +
        # e_c grad th_acc^T + grad th_acc e_c^T). Written entry by entry (10 distinct ones,
        # 4 of them zero) because this runs on every B*T pair of every Newton-polish iteration.
        # Checked against double backward in tests/test_dynamics.py.
        g, mp, l, M, pml, c, s, w, ci, den, num = _cartpole_terms(x, u, theta)
        dt = self.dt
        k = pml / M
        ci_s, ci_w, ci_u = pml * w**2 / M, 2 * pml * w * s / M, 1.0 / M
        ci_ws, ci_ww = 2 * pml * w / M, 2 * pml * s / M
        d1, d2 = -2 * l * mp * c / M, -2 * l * mp / M  # den', den''
        dn0, dn1, dn2, dn3 = -ci, g - c * ci_s, -c * ci_w, -c * ci_u  # grad num over y
        iden, iden2 = 1.0 / den, 1.0 / den**2
        # grad th_acc
        gt0, gt1, gt2, gt3 = dn0 * iden - num * d1 * iden2, dn1 * iden, dn2 * iden, dn3 * iden
        lam1, lam2, lam3, lam4 = lam[..., 1], lam[..., 2], lam[..., 3], lam[..., 4]
        a = lam4 - lam1 * k * c  # weight of hess th_acc
        b = lam1 * k  # weight of the e_c grad th_acc^T terms
        # the angle th' = atan2(s, c) + dt w: alpha g g^T + beta hess(atan2)
        r2 = c * c + s * s
        new_th = torch.atan2(s, c) + dt * w
        cn, sn = torch.cos(new_th), torch.sin(new_th)
        alpha = -(lam2 * cn + lam3 * sn)
        beta = lam3 * cn - lam2 * sn
        g0, g1 = -s / r2, c / r2
        r4 = r2 * r2
        h00 = dt * (a * (-2 * dn0 * d1 * iden2 + num * (2 * d1**2 * iden * iden2 - d2 * iden2))
                    - 2 * b * gt0) + alpha * g0 * g0 + beta * (2 * c * s / r4)
        h01 = dt * (a * (-ci_s * iden - dn1 * d1 * iden2) - b * gt1) + alpha * g0 * g1 \
            + beta * ((s * s - c * c) / r4)
        h02 = dt * (a * (-ci_w * iden - dn2 * d1 * iden2) - b * gt2) + alpha * g0 * dt
        h03 = dt * (a * (-ci_u * iden - dn3 * d1 * iden2) - b * gt3)
        h11 = alpha * g1 * g1 + beta * (-2 * c * s / r4)
        h12 = dt * (lam1 * ci_ws - a * c * ci_ws * iden) + alpha * g1 * dt
        h22 = dt * (lam1 * ci_ww - a * c * ci_ww * iden) + alpha * dt * dt
        z = torch.zeros_like(c)
        h00, h01, h02, h03, h11, h12, h22 = (t.expand_as(c) for t in
                                             (h00, h01, h02, h03, h11, h12, h22))
        H = torch.stack([z, z, z, z, z, z,
                         z, z, z, z, z, z,
                         z, z, h00, h01, h02, h03,
                         z, z, h01, h11, h12, z,
                         z, z, h02, h12, h22, z,
                         z, z, h03, z, z, z], -1)
        return H.reshape(*c.shape, 6, 6)


class Rocket(Dynamics):
    """6-DoF rocket of PDP / Safe-PDP (docs/rocket.md), explicit Euler with ``dt = 0.1``.

    State (13): position ``r`` (inertial x-axis up), velocity ``v``, scalar-first unit
    quaternion ``q`` (body attitude), body rate ``w``. Control (3): body-frame thrust
    ``(Tx, Ty, Tz)``, ``|T_i| <= 20``. Parameters ``(Jx, Jy, Jz, m, l)``; gravity
    ``(-10, 0, 0)``; thrust acts at ``(-l/2, 0, 0)`` in the body frame. The quaternion is not
    renormalized by the model (as in the original code); :class:`dilqr_rl.envs.RocketEnv`
    renormalizes after each true step.
    """

    positive_params = True
    n_state = 13
    n_ctrl = 3
    u_lower = -20.0
    u_upper = 20.0
    gravity = 10.0

    def __init__(self, Jx: float = 0.5, Jy: float = 1.0, Jz: float = 1.0, m: float = 1.0,
                 l: float = 1.0, dt: float = 0.1):
        super().__init__()
        self.Jx, self.Jy, self.Jz = _param(Jx), _param(Jy), _param(Jz)
        self.m, self.l = _param(m), _param(l)
        self.dt = float(dt)

    def theta(self) -> Tensor:
        return torch.stack([self.Jx, self.Jy, self.Jz, self.m, self.l])

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return self.step(x, u, self.theta())

    @staticmethod
    def dcm(q: Tensor) -> Tensor:
        """Direction cosine matrix inertial -> body, ``q: (..., 4)`` -> ``(..., 3, 3)``."""
        q0, q1, q2, q3 = q.unbind(-1)
        rows = [
            [1 - 2 * (q2**2 + q3**2), 2 * (q1 * q2 + q0 * q3), 2 * (q1 * q3 - q0 * q2)],
            [2 * (q1 * q2 - q0 * q3), 1 - 2 * (q1**2 + q3**2), 2 * (q2 * q3 + q0 * q1)],
            [2 * (q1 * q3 + q0 * q2), 2 * (q2 * q3 - q0 * q1), 1 - 2 * (q1**2 + q2**2)],
        ]
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    def derivative(self, x: Tensor, u: Tensor, theta: Tensor) -> Tensor:
        """Continuous-time ``xdot = f_c(x, u; theta)``, shapes as :meth:`step`."""
        Jx, Jy, Jz, m, l = theta.unbind(-1)
        v, q, w = x[..., 3:6], x[..., 6:10], x[..., 10:13]
        q0, q1, q2, q3 = q.unbind(-1)
        wx, wy, wz = w.unbind(-1)
        Tx, Ty, Tz = u.unbind(-1)
        # v_dot = C(q)^T T_B / m + g_I
        C = self.dcm(q)
        acc = (C.transpose(-1, -2) @ u[..., None])[..., 0] / m[..., None]
        acc = acc + torch.stack([torch.full_like(Tx, -self.gravity), torch.zeros_like(Tx),
                                 torch.zeros_like(Tx)], -1)
        # q_dot = 1/2 Omega(w) q
        dq = 0.5 * torch.stack([
            -wx * q1 - wy * q2 - wz * q3,
            wx * q0 + wz * q2 - wy * q3,
            wy * q0 - wz * q1 + wx * q3,
            wz * q0 + wy * q1 - wx * q2,
        ], -1)
        # w_dot = J^-1 (r_T x T_B - w x (J w)), r_T = (-l/2, 0, 0)
        dw = torch.stack([
            (Jy - Jz) * wy * wz / Jx,
            ((l / 2) * Tz + (Jz - Jx) * wz * wx) / Jy,
            (-(l / 2) * Ty + (Jx - Jy) * wx * wy) / Jz,
        ], -1)
        return torch.cat([v, acc, dq, dw], -1)

    def step(self, x: Tensor, u: Tensor, theta: Tensor) -> Tensor:
        return x + self.dt * self.derivative(x, u, theta)


def angle_to_state(theta: Tensor | float, dtheta: Tensor | float = 0.0) -> Tensor:
    """Pendulum state ``(cos th, sin th, thdot)`` from an angle (helper for examples/tests)."""
    th = torch.as_tensor(theta, dtype=torch.get_default_dtype())
    dth = torch.as_tensor(dtheta, dtype=th.dtype).expand_as(th)
    return torch.stack([torch.cos(th), torch.sin(th), dth], -1)

