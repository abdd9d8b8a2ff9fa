"""What `torch.jit.script` compiles for the Triton modules: torch's own ATen kernels.

TorchScript cannot call Triton (a scripted module runs in the TorchScript
interpreter, in C++ or on mobile, where there is no Python to launch kernels).
So each Triton module's `forward` starts with `if torch.jit.is_scripting():`,
a branch TorchScript compiles alone (it skips the other branch, the Python
driver), calling one of the functions below on the module's own parameters:
the same ATen ops `nn.LSTM` / `nn.GRU` / the cells run (`aten::lstm`,
`aten::gru`, `aten::lstm_cell`, `aten::gru_cell`), so a scripted model gives
torch's numbers, and it keeps the module's Parameter objects (training a
scripted model trains the same weights).

Scripted, the modules take padded tensors (batched or unbatched), not
PackedSequence: pack-aware TorchScript needs torch's own classes
(`lstm_triton.unpatch` the model before scripting it).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor, _VF


def _batch_first_layout(input: Tensor, batch_first: bool) -> Tuple[Tensor, bool, int]:
    """(batched input, whether it was batched, its batch dimension)."""
    batch_dim = 0 if batch_first else 1
    batched = input.dim() == 3
    if not batched:
        input = input.unsqueeze(batch_dim)
    return input, batched, batch_dim


def lstm(input: Tensor, hx: Optional[Tuple[Tensor, Tensor]], weights: List[Tensor], bias: bool,
         num_layers: int, dropout: float, training: bool, bidirectional: bool,
         batch_first: bool, hidden_size: int,
         proj_size: int) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """nn.LSTM's forward on padded input, as aten::lstm."""
    input, batched, batch_dim = _batch_first_layout(input, batch_first)
    n = num_layers * (2 if bidirectional else 1)
    if hx is None:
        batch = input.size(batch_dim)
        h0 = torch.zeros(n, batch, proj_size if proj_size > 0 else hidden_size,
                         dtype=input.dtype, device=input.device)
        c0 = torch.zeros(n, batch, hidden_size, dtype=input.dtype, device=input.device)
    else:
        h0, c0 = hx
        if not batched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
    out, h, c = _VF.lstm(input, [h0, c0], weights, bias, num_layers, dropout, training,
                         bidirectional, batch_first)
    if not batched:
        out, h, c = out.squeeze(batch_dim), h.squeeze(1), c.squeeze(1)
    return out, (h, c)


def gru(input: Tensor, hx: Optional[Tensor], weights: List[Tensor], bias: bool,
        num_layers: int, dropout: float, training: bool, bidirectional: bool,
        batch_first: bool, hidden_size: int) -> Tuple[Tensor, Tensor]:
    """nn.GRU's forward on padded input, as aten::gru."""
    input, batched, batch_dim = _batch_first_layout(input, batch_first)
    if hx is None:
        h0 = torch.zeros(num_layers * (2 if bidirectional else 1), input.size(batch_dim),
                         hidden_size, dtype=input.dtype, device=input.device)
    else:
        h0 = hx if batched else hx.unsqueeze(1)
    out, h = _VF.gru(input, h0, weights, bias, num_layers, dropout, training, bidirectional,
                     batch_first)
    if not batched:
        out, h = out.squeeze(batch_dim), h.squeeze(1)
    return out, h


def lstm_cell(input: Tensor, hx: Optional[Tuple[Tensor, Tensor]], w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor], b_hh: Optional[Tensor],
              hidden_size: int) -> Tuple[Tensor, Tensor]:
    """nn.LSTMCell's forward, as aten::lstm_cell."""
    batched = input.dim() == 2
    if not batched:
        input = input.unsqueeze(0)
    if hx is None:
        zeros = torch.zeros(input.size(0), hidden_size, dtype=input.dtype, device=input.device)
        h0, c0 = zeros, zeros
    else:
        h0, c0 = hx
        if not batched:
            h0, c0 = h0.unsqueeze(0), c0.unsqueeze(0)
    h, c = _VF.lstm_cell(input, [h0, c0], w_ih, w_hh, b_ih, b_hh)
    if not batched:
        h, c = h.squeeze(0), c.squeeze(0)
    return h, c


def gru_cell(input: Tensor, hx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
             b_ih: Optional[Tensor], b_hh: Optional[Tensor], hidden_size: int) -> Tensor:
    """nn.GRUCell's forward, as aten::gru_cell."""
    batched = input.dim() == 2
    if not batched:
        input = input.unsqueeze(0)
    if hx is None:
        h0 = torch.zeros(input.size(0), hidden_size, dtype=input.dtype, device=input.device)
    else:
        h0 = hx if batched else hx.unsqueeze(0)
    h = _VF.gru_cell(input, h0, w_ih, w_hh, b_ih, b_hh)
    return h if batched else h.squeeze(0)
