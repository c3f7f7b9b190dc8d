"""Imitation baselines that do not differentiate through the controller.

- :class:`LSTMPolicy`: DiffMPC's ``nn`` baseline (``imitation_nonconvex/il_exp.py``): the
  initial state is embedded, an ``LSTMCell`` unrolls over the horizon and decodes one control
  per step, feeding the embedded control back in. Hidden size 256 as DiffMPC.
- :class:`MLPPolicy`: initial state -> the whole control sequence ``(T, m)`` in one shot.
- :func:`sysid_loss`: next-state prediction error of a parameterized model on the expert
  transitions (DiffMPC's ``sysid``); the learned model is then used by the known-cost iLQR.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import dilqr_rl as dl

__all__ = ["LSTMPolicy", "MLPPolicy", "sysid_loss"]


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class LSTMPolicy(nn.Module):
    """``x0 (B, n) -> u (B, T, m)`` by an LSTM over the horizon (DiffMPC's ``lstm_forward``).

    :param n_state: ``n``; :param n_ctrl: ``m``; :param horizon: ``T``
    :param hidden: width of the embeddings and of the LSTM cell
    """

    def __init__(self, n_state: int, n_ctrl: int, horizon: int, hidden: int = 256):
        super().__init__()
        self.horizon = horizon
        self.state_emb = _mlp([n_state, hidden, hidden, hidden])
        self.ctrl_emb = _mlp([n_ctrl, hidden, hidden, hidden])
        self.decode = _mlp([hidden, hidden, hidden, n_ctrl])
        self.cell = nn.LSTMCell(hidden, hidden)

    def forward(self, x0: Tensor) -> Tensor:
        y = self.state_emb(x0)
        state = None
        us = []
        for _ in range(self.horizon):
            state = self.cell(y, state)
            u = self.decode(state[1])
            us.append(u)
            y = self.ctrl_emb(u)
        return torch.stack(us, 1)


class MLPPolicy(nn.Module):
    """``x0 (B, n) -> u (B, T, m)`` by a two-hidden-layer MLP.

    :param n_state: ``n``; :param n_ctrl: ``m``; :param horizon: ``T``
    :param hidden: hidden width
    """

    def __init__(self, n_state: int, n_ctrl: int, horizon: int, hidden: int = 256):
        super().__init__()
        self.horizon, self.n_ctrl = horizon, n_ctrl
        self.net = _mlp([n_state, hidden, hidden, horizon * n_ctrl])

    def forward(self, x0: Tensor) -> Tensor:
        return self.net(x0).reshape(x0.shape[0], self.horizon, self.n_ctrl)


def sysid_loss(dynamics: dl.Dynamics, theta: Tensor, x: Tensor, u: Tensor) -> Tensor:
    """Mean squared next-state prediction error ``mean |f(x_t, u_t; theta) - x_{t+1}|^2``.

    :param theta: model parameters ``(p,)``
    :param x: expert states ``(B, T+1, n)``; :param u: expert controls ``(B, T, m)``
    """
    pred = dynamics.step(x[:, :-1], u, theta)
    return (pred - x[:, 1:]).pow(2).mean()
