"""Imitation baselines that do not differentiate through the controller.

- :class:`LSTMPolicy`: DiffMPC's ``nn`` baseline (``imitation_nonconvex/il_exp.py``): the
  initial state is embedded, an ``LSTMCell`` unrolls over the horizon and decodes one control
  per step, feeding the embedded control back in. Hidden size 256 as DiffMPC.
- :class:`MLPPolicy`: initial state -> the whole control sequence ``(T, m)`` in one shot.

(DiffMPC's ``sysid`` baseline fits the model on :func:`dilqr_rl.models.transition_loss`, see
``agents/learners.py``.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LSTMPolicy", "MLPPolicy"]


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

