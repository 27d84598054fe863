"""Taylor rules of recurrent cells: ``LSTMCell``, ``GRUCell`` and ``RNNCell`` (tanh and ReLU), as
the gate equations they compute (PyTorch's documented forms, gate order included).

The whole layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) run through PyTorch's decompositions into
these same operations; the cells have none, so their equations are written here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hope_attr.engine.jet import Jet
from hope_attr.engine.registry import register_rule


def _gates(
    x: object, h: object, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None
) -> object:
    return F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)


@register_rule(torch.lstm_cell)
def _lstm_cell(
    x: object, hx: tuple, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
) -> tuple[Jet, Jet]:  # fmt: skip
    """``i, f, g, o = sigmoid, sigmoid, tanh, sigmoid`` of the gates; ``c' = f c + i g``,
    ``h' = o tanh(c')``."""
    h, c = hx
    i, f, g, o = torch.chunk(_gates(x, h, w_ih, w_hh, b_ih, b_hh), 4, 1)
    cell = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


@register_rule(torch.gru_cell)
def _gru_cell(
    x: object, h: object, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
) -> Jet:  # fmt: skip
    """``r, z = sigmoid(.)``, ``n = tanh(W_in x + b_in + r (W_hn h + b_hn))``,
    ``h' = (1 - z) n + z h``."""
    x_r, x_z, x_n = torch.chunk(F.linear(x, w_ih, b_ih), 3, 1)
    h_r, h_z, h_n = torch.chunk(F.linear(h, w_hh, b_hh), 3, 1)
    reset, update = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    new = torch.tanh(x_n + reset * h_n)
    return (1 - update) * new + update * h


@register_rule(torch.rnn_tanh_cell)
def _rnn_tanh_cell(
    x: object, h: object, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
) -> Jet:  # fmt: skip
    return torch.tanh(_gates(x, h, w_ih, w_hh, b_ih, b_hh))


@register_rule(torch.rnn_relu_cell)
def _rnn_relu_cell(
    x: object, h: object, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
) -> Jet:  # fmt: skip
    return torch.relu(_gates(x, h, w_ih, w_hh, b_ih, b_hh))
