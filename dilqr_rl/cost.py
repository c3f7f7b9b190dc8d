"""Costs ``J = sum_{t<T} c(x_t, u_t; phi) + c_T(x_T; phi)``.

A cost is an ``nn.Module`` whose parameters ``phi`` form a dict of named tensors
(:meth:`Cost.params`). The solver evaluates it with explicit parameter values so that
per-sample overrides (a value with a leading batch dim ``B``) and the implicit gradient's
VJP go through the same code:

- ``stage(x, u, P)``: ``x: (..., n)``, ``u: (..., m)``, ``P[k]: (..., *shape_k)`` -> ``(...)``
- ``terminal(x, P)``: ``x: (..., n)`` -> ``(...)``

:class:`QuadraticCost` has closed-form derivatives; :class:`FunctionCost` wraps any
differentiable ``c(x, u)`` and gets its gradient and Hessian from autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .models import hessian_rows

__all__ = ["Cost", "QuadraticCost", "FunctionCost", "WEIGHT_FLOOR"]

#: lower bound of a positive cost parameter (:meth:`Cost.lower_bounds`): a learned weight
#: pushed through zero makes the cost non-convex, which the controller refuses (``ValueError``)
WEIGHT_FLOOR = 1e-6


def _pshape(P: Mapping[str, Tensor], key: str, batch: tuple[int, ...], shape: tuple[int, ...]):
    """Reshape a parameter with leading dims ``(B,)`` (or none) to broadcast over ``batch``."""
    v = P[key]
    lead = v.shape[: v.dim() - len(shape)]
    extra = len(batch) - len(lead)
    return v.reshape(*lead, *([1] * extra), *shape) if extra > 0 else v


class Cost(nn.Module):
    """Base class. Subclasses implement :meth:`stage` and :meth:`terminal`.

    Derivatives default to autograd; subclasses may override :meth:`quadratize`.
    """

    n_state: int
    n_ctrl: int

    def params(self) -> dict[str, Tensor]:
        """The named parameter tensors (differentiable)."""
        return dict(self.named_parameters())

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.params().items()}

    def positive_params(self) -> tuple[str, ...]:
        """Names of the parameters that must stay positive (weights); default none. Learners
        keep them positive: optimizers project them onto :meth:`lower_bounds`, and
        per-observation corrections multiply them (``exp``) instead of adding to them."""
        return ()

    def lower_bounds(self) -> dict[str, float]:
        """Lower bound of each constrained parameter by name: ``WEIGHT_FLOOR`` for every
        entry of a :meth:`positive_params` parameter."""
        return {k: WEIGHT_FLOOR for k in self.positive_params()}

    def stage(self, x: Tensor, u: Tensor, P: Mapping[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def terminal(self, x: Tensor, P: Mapping[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def total(self, x: Tensor, u: Tensor, P: Mapping[str, Tensor]) -> Tensor:
        """Trajectory cost ``(B,)`` of ``x: (B, T+1, n)``, ``u: (B, T, m)``, ``P[k]: (B, ...)``."""
        B, T = u.shape[:2]
        Pt = {k: _pshape(P, k, (B, T), s) for k, s in self.param_shapes().items()}
        Pf = {k: _pshape(P, k, (B,), s) for k, s in self.param_shapes().items()}
        return self.stage(x[:, :-1], u, Pt).sum(-1) + self.terminal(x[:, -1], Pf)

    def quadratize(self, x: Tensor, u: Tensor, P: Mapping[str, Tensor]
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Gradients and Hessians of every stage and of the terminal cost.

        :param x: ``(B, T+1, n)``; :param u: ``(B, T, m)``; :param P: values ``(B, ...)``
        :return: ``c (B, T, n+m)``, ``C (B, T, n+m, n+m)``, ``cT (B, n)``, ``CT (B, n, n)``
        """
        B, T, m = u.shape
        n = x.shape[-1]
        shapes = self.param_shapes()
        z = torch.cat([x[:, :-1], u], -1).reshape(B * T, n + m)
        Pn = {k: _pshape(P, k, (B, T), s).expand(B, T, *s).reshape(B * T, *s)
              for k, s in shapes.items()}
        Pf = {k: _pshape(P, k, (B,), s).expand(B, *s) for k, s in shapes.items()}

        def phi(zz: Tensor) -> Tensor:
            return self.stage(zz[..., :n], zz[..., n:], Pn).sum()

        def phiT(xx: Tensor) -> Tensor:
            return self.terminal(xx, Pf).sum()

        graph = torch.is_grad_enabled() and (z.requires_grad or
                                             any(v.requires_grad for v in P.values()))
        xT = x[:, -1]
        c, C = _grad_hess(phi, z, graph)
        cT, CT = _grad_hess(phiT, xT, graph)
        return c.reshape(B, T, n + m), C.reshape(B, T, n + m, n + m), cT, CT


def _grad_hess(phi, z: Tensor, graph: bool) -> tuple[Tensor, Tensor]:
    """Per-pair gradient ``(N, d)`` and Hessian ``(N, d, d)`` of a pair-wise sum ``phi``."""
    with torch.enable_grad():
        zr = z if (graph and z.requires_grad) else z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(phi(zr), zr, create_graph=graph)
    return (g if graph else g.detach()), hessian_rows(phi, zr if graph else z, graph)


class QuadraticCost(Cost):
    """Quadratic cost over ``z = [x; u]``.

    Two forms, both learnable (every argument becomes an ``nn.Parameter``):

    - tracking (:meth:`tracking`): ``c = 1/2 sum_i w_i (z_i - g_i)^2``, terminal
      ``1/2 sum_i wT_i (x_i - g_i)^2``; parameters ``weights (n+m,)``, ``goal (n+m,)``,
      ``terminal_weights (n,)``.
    - full (constructor): ``c = 1/2 z^T C z + c^T z``, terminal ``1/2 x^T C_T x + c_T^T x``;
      parameters ``C (n+m, n+m)``, ``c (n+m,)``, ``C_T (n, n)``, ``c_T (n,)``.

    :param n_state: ``n``
    :param C: ``(n+m, n+m)`` stage Hessian (symmetrized when used)
    :param c: ``(n+m,)`` stage linear term
    :param C_T: ``(n, n)`` terminal Hessian; default the x-block of ``C``
    :param c_T: ``(n,)`` terminal linear term; default the x-part of ``c``
    """

    def __init__(self, n_state: int, C: Tensor, c: Tensor | None = None,
                 C_T: Tensor | None = None, c_T: Tensor | None = None, *, _tracking=None):
        super().__init__()
        self.n_state = int(n_state)
        if _tracking is not None:
            weights, goal, terminal_weights = _tracking
            nz = weights.shape[-1]
            self.n_ctrl = nz - self.n_state
            self.mode = "tracking"
            self.weights = nn.Parameter(weights)
            self.goal = nn.Parameter(goal)
            self.terminal_weights = nn.Parameter(terminal_weights)
            return
        C = torch.as_tensor(C, dtype=torch.get_default_dtype())
        if C.dim() != 2 or C.shape[0] != C.shape[1] or C.shape[0] <= self.n_state:
            raise ValueError(f"C must be square (n+m, n+m) with n+m > n_state={n_state}, "
                             f"got shape {tuple(C.shape)}")
        nz = C.shape[0]
        n = self.n_state
        self.n_ctrl = nz - n
        c = torch.zeros(nz, dtype=C.dtype) if c is None else torch.as_tensor(c, dtype=C.dtype)
        if c.shape != (nz,):
            raise ValueError(f"c must have shape ({nz},), got {tuple(c.shape)}")
        C_T = C[:n, :n].clone() if C_T is None else torch.as_tensor(C_T, dtype=C.dtype)
        c_T = c[:n].clone() if c_T is None else torch.as_tensor(c_T, dtype=C.dtype)
        if C_T.shape != (n, n) or c_T.shape != (n,):
            raise ValueError(f"C_T must be ({n}, {n}) and c_T ({n},), got {tuple(C_T.shape)} "
                             f"and {tuple(c_T.shape)}")
        self.mode = "full"
        self.C = nn.Parameter(C)
        self.c = nn.Parameter(c)
        self.C_T = nn.Parameter(C_T)
        self.c_T = nn.Parameter(c_T)

    @classmethod
    def tracking(cls, weights, goal, terminal_weights=None, *, n_state: int) -> QuadraticCost:
        """Diagonal tracking cost ``1/2 sum_i w_i (z_i - goal_i)^2``.

        :param weights: ``(n+m,)`` non-negative weights over ``[x; u]``; control weights > 0
        :param goal: ``(n+m,)`` target over ``[x; u]`` (usually zero on the controls)
        :param terminal_weights: ``(n,)``; default ``weights[:n]``
        :param n_state: ``n``
        """
        dt = torch.get_default_dtype()
        w = torch.as_tensor(weights, dtype=dt).clone()
        g = torch.as_tensor(goal, dtype=dt).clone()
        if w.dim() != 1 or g.shape != w.shape or w.shape[0] <= n_state:
            raise ValueError(f"weights and goal must both be (n+m,) with n+m > n_state="
                             f"{n_state}; got {tuple(w.shape)} and {tuple(g.shape)}")
        wT = w[:n_state].clone() if terminal_weights is None else \
            torch.as_tensor(terminal_weights, dtype=dt).clone()
        if wT.shape != (n_state,):
            raise ValueError(f"terminal_weights must be ({n_state},), got {tuple(wT.shape)}")
        return cls(n_state, None, _tracking=(w, g, wT))

    def positive_params(self) -> tuple[str, ...]:
        """The tracking form's ``weights`` and ``terminal_weights`` (the full form's ``C``
        must be positive semidefinite, which is not a bound per entry: none)."""
        return ("weights", "terminal_weights") if self.mode == "tracking" else ()

    # -------------------------------------------------------------- evaluation
    def stage(self, x: Tensor, u: Tensor, P: Mapping[str, Tensor]) -> Tensor:
        z = torch.cat([x, u], -1)
        if self.mode == "tracking":
            return 0.5 * (P["weights"] * (z - P["goal"]) ** 2).sum(-1)
        Cs = 0.5 * (P["C"] + P["C"].transpose(-1, -2))
        # (einsum: ~2x faster than the broadcast vector-matrix-vector matmul, measured)
        return (z * (0.5 * torch.einsum("...ij,...j->...i", Cs, z) + P["c"])).sum(-1)

    def terminal(self, x: Tensor, P: Mapping[str, Tensor]) -> Tensor:
        if self.mode == "tracking":
            g = P["goal"][..., : self.n_state]
            return 0.5 * (P["terminal_weights"] * (x - g) ** 2).sum(-1)
        Cs = 0.5 * (P["C_T"] + P["C_T"].transpose(-1, -2))
        return (x * (0.5 * torch.einsum("...ij,...j->...i", Cs, x) + P["c_T"])).sum(-1)

    def quadratize(self, x: Tensor, u: Tensor, P: Mapping[str, Tensor]
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        B, T, m = u.shape
        n = self.n_state
        z = torch.cat([x[:, :-1], u], -1)
        xT = x[:, -1]
        if self.mode == "tracking":
            w = P["weights"].expand(B, n + m)[:, None]
            goal = P["goal"].expand(B, n + m)
            wT = P["terminal_weights"].expand(B, n)
            c = w * (z - goal[:, None])
            C = torch.diag_embed(w.expand(B, T, n + m))
            return c, C, wT * (xT - goal[:, :n]), torch.diag_embed(wT)
        Cs = 0.5 * (P["C"] + P["C"].transpose(-1, -2)).expand(B, n + m, n + m)
        CT = 0.5 * (P["C_T"] + P["C_T"].transpose(-1, -2)).expand(B, n, n)
        c = (Cs[:, None] @ z[..., None])[..., 0] + P["c"].expand(B, n + m)[:, None]
        cT = (CT @ xT[..., None])[..., 0] + P["c_T"].expand(B, n)
        return c, Cs[:, None].expand(B, T, n + m, n + m), cT, CT

    def control_hessian(self, P: Mapping[str, Tensor]) -> Tensor:
        """The control block of the stage Hessian, ``(..., m, m)`` (must be positive definite)."""
        n = self.n_state
        if self.mode == "tracking":
            return torch.diag_embed(P["weights"][..., n:])
        Cs = 0.5 * (P["C"] + P["C"].transpose(-1, -2))
        return Cs[..., n:, n:]


class FunctionCost(Cost):
    """A cost from any differentiable functions.

    :param stage_fn: ``stage_fn(x (..., n), u (..., m), **params) -> (...)``
    :param terminal_fn: ``terminal_fn(x (..., n), **params) -> (...)``; default zero
    :param params: named initial parameter values; each becomes an ``nn.Parameter``
    :param n_state: ``n``; :param n_ctrl: ``m``
    :param positive: names of the parameters that must stay positive (weights), see
        :meth:`Cost.positive_params`
    """

    def __init__(self, stage_fn: Callable[..., Tensor],
                 terminal_fn: Callable[..., Tensor] | None = None,
                 params: Mapping[str, Tensor] | None = None, *, n_state: int, n_ctrl: int,
                 positive: Sequence[str] = ()):
        super().__init__()
        self.n_state, self.n_ctrl = int(n_state), int(n_ctrl)
        self.stage_fn, self.terminal_fn = stage_fn, terminal_fn
        for k, v in (params or {}).items():
            self.register_parameter(k, nn.Parameter(torch.as_tensor(
                v, dtype=torch.get_default_dtype()).clone()))
        positive = (positive,) if isinstance(positive, str) else tuple(positive)
        unknown = set(positive) - set(params or {})
        if unknown:
            raise ValueError(f"positive names unknown parameter(s) {sorted(unknown)}; the "
                             f"parameters are {list(params or {})}")
        self._positive = positive

    def positive_params(self) -> tuple[str, ...]:
        return self._positive

    def stage(self, x: Tensor, u: Tensor, P: Mapping[str, Tensor]) -> Tensor:
        return self.stage_fn(x, u, **P)

    def terminal(self, x: Tensor, P: Mapping[str, Tensor]) -> Tensor:
        if self.terminal_fn is None:
            return (x * 0).sum(-1)
        return self.terminal_fn(x, **P)

