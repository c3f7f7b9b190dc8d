"""The policies' optimizer: Adam with a learning-rate factor and a lower bound per group."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .actor import DiLQRActor

__all__ = ["ScaledAdam", "param_groups"]


class ScaledAdam(torch.optim.Adam):
    """Adam whose parameter groups may carry an ``lr_scale`` (default 1) and a ``lower`` bound.

    SB3 sets every group's ``lr`` from its schedule before each update, so a group-specific
    learning rate must be a factor: the physical parameters (``g ~ 10``) need steps far larger
    than a network's weights (``controller_lr_scale`` of the policies).

    After each step the parameters of a group with ``lower`` (a float) are clamped to it
    (projected gradient). :func:`param_groups` puts each constrained parameter in such a group
    with the bound its owner declares: the model's :meth:`dilqr_rl.Dynamics.lower_bounds` (PPO
    alone once drove a pendulum's length to -0.15) and the cost's
    :meth:`dilqr_rl.Cost.lower_bounds` (an RL update can push a control weight through zero,
    and the controller then refuses the non-convex cost in the middle of training).
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        saved = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * g.get("lr_scale", 1.0)
        try:
            with torch.enable_grad():
                loss = super().step(closure)
            for g in self.param_groups:
                if g.get("lower") is not None:
                    for p in g["params"]:
                        p.clamp_(min=g["lower"])
            return loss
        finally:
            for g, lr in zip(self.param_groups, saved, strict=True):
                g["lr"] = lr


def param_groups(params: Iterable[nn.Parameter], actor: DiLQRActor,
                 lr_scale: float) -> list[dict[str, Any]]:
    """Optimizer groups for ``params`` (a policy's or an SB3 actor's), chosen by object:
    first the parameters outside ``actor``; then the actor's unconstrained ones (the cost
    network's, unbounded model and cost parameters) at ``lr * lr_scale``; then each
    constrained physical or cost parameter alone, at ``lr * lr_scale`` with its declared
    lower bound. Parameters that do not require grad are left out."""
    scale = float(lr_scale)
    trainable = [p for p in params if p.requires_grad]
    mine = {id(p) for p in actor.parameters()}
    groups: list[dict[str, Any]] = [{"params": [p for p in trainable if id(p) not in mine]}]
    bounds: dict[int, float] = {}
    for module in (actor.ctrl.dynamics, actor.ctrl.cost):
        named = dict(module.named_parameters())
        bounds.update({id(named[k]): lo for k, lo in module.lower_bounds().items()})
    other = []
    for p in trainable:
        if id(p) in bounds:
            groups.append({"params": [p], "lr_scale": scale, "lower": bounds[id(p)]})
        elif id(p) in mine:
            other.append(p)
    if other:
        groups.insert(1, {"params": other, "lr_scale": scale})
    return groups
