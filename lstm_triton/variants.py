"""Options beyond nn.LSTM / nn.GRU (issue 18): segment resets, zoneout, DropConnect on
W_hh (`weight_drop`), recurrent (variational) dropout and time-shared inter-layer dropout.

This file holds what the module driver needs before any kernel runs: the constructor
options and their checks, the `resets` argument's checks, and the random masks of one
forward call. Every mask is drawn here, from torch's generator on the input's device, in
one fixed order (per layer, per direction: weight drop, recurrent dropout, zoneout c,
zoneout h; then the inter-layer dropout), whatever the backend: so `torch.manual_seed`
reproduces a call bit for bit, and the reference backend sees the very masks the kernels
see.

What reaches a layer-direction (ops.rnn_layer) is a `Variant`: per-call tensors the
kernels read, each None when its option is off (then the kernels compile the plain cell:
every default is nn.LSTM / nn.GRU exactly). weight_drop and the inter-layer dropout need
no kernel support: a masked W_hh (gradient through the mask by autograd) and a masked
layer input.
"""
import numbers
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .kernels.config import state_dtype

# Constructor options and their defaults (nn.LSTM's behaviour). Class attributes of the
# modules hold these defaults too, so modules built without __init__ (lstm_triton.patch)
# behave as nn.LSTM.
DEFAULTS = {"zoneout": 0.0, "weight_drop": 0.0, "recurrent_dropout": 0.0,
            "variational_dropout": False}


class Variant(NamedTuple):
    """Per-call tensors of one layer-direction (rows are the layer's packed rows, N)."""
    keep: Optional[Tensor] = None  # (N,) 0 where the state entering the row's step is reset
    rec: Optional[Tensor] = None  # (B, P) recurrent-dropout mask, already scaled by 1/(1-p)
    zone_c: Optional[Tensor] = None  # (N, H) LSTM zoneout of c: 1 keeps c_{t-1} (eval: p)
    zone_h: Optional[Tensor] = None  # (N, P) zoneout of h, likewise

    @property
    def active(self) -> bool:
        return any(t is not None for t in self)


NONE = Variant()


def _check_probability(name, p):
    if isinstance(p, bool) or not isinstance(p, numbers.Number) or not 0 <= p < 1:
        raise ValueError(f"{name} should be a number in range [0, 1) representing a "
                         f"probability, got {p!r}; pass e.g. {name}=0.1.")
    return float(p)


def check_options(cell, zoneout, weight_drop, recurrent_dropout, variational_dropout):
    """The options as stored on the module: zoneout as a (p_cell, p_hidden) pair for the
    LSTM and a float for the GRU (its only state is h)."""
    if cell == "lstm" and isinstance(zoneout, (tuple, list)):
        if len(zoneout) != 2:
            raise ValueError(f"zoneout should be a float or a pair (p_cell, p_hidden), got "
                             f"{zoneout!r}.")
        zoneout = tuple(_check_probability("zoneout", p) for p in zoneout)
    else:
        zoneout = _check_probability("zoneout", zoneout)
    if not isinstance(variational_dropout, bool):
        raise ValueError(f"variational_dropout should be True or False, got "
                         f"{variational_dropout!r}.")
    return {"zoneout": zoneout, "weight_drop": _check_probability("weight_drop", weight_drop),
            "recurrent_dropout": _check_probability("recurrent_dropout", recurrent_dropout),
            "variational_dropout": variational_dropout}


def zoneout_pair(cell, zoneout):
    """(p_cell, p_hidden); the GRU has no cell state."""
    if isinstance(zoneout, tuple):
        return zoneout
    return (zoneout if cell == "lstm" else 0.0), zoneout


def options_repr(module) -> str:
    """", name=value" for each option that differs from its default."""
    return "".join(f", {k}={getattr(module, k)!r}" for k, v in DEFAULTS.items()
                   if getattr(module, k) not in (v, (v, v)))


def needs_kernels_of_this_project(module, resets) -> bool:
    """Whether a call uses anything torch's own nn.LSTM forward cannot run."""
    p_c, p_h = zoneout_pair(module.cell, module.zoneout)
    random = module.training and (module.weight_drop > 0 or module.recurrent_dropout > 0
                                  or (module.variational_dropout and module.dropout > 0))
    return resets is not None or p_c > 0 or p_h > 0 or random


# ---------------------------------------------------------------------------- resets
def _check_flags(name, what, flags, x, want, layout):
    """A bool tensor of shape `want` on x's device (`layout` names the shape for the user)."""
    if not isinstance(flags, Tensor):
        raise TypeError(f"{name}: {what} must be a bool Tensor, not {type(flags).__name__}.")
    if flags.dtype != torch.bool:
        raise RuntimeError(f"{name}: {what} must be a bool tensor, got dtype {flags.dtype}; "
                           f"convert it with {what}.bool() (True where a sequence starts "
                           f"afresh).")
    if tuple(flags.shape) != want:
        raise RuntimeError(f"{name}: {what} must have shape {layout} = {want}, got "
                           f"{tuple(flags.shape)}.")
    if flags.device != x.device:
        raise RuntimeError(f"{name}: {what} is on {flags.device} but the input on {x.device}; "
                           f"move it with {what}.to({str(x.device)!r}).")


def check_resets(name, resets, x, batched, batch_first, packed):
    """resets in the input's leading layout -> (T, B) bool, time-major (None stays None)."""
    if resets is None:
        return None
    if packed:
        raise ValueError(f"{name}: resets is not supported with a PackedSequence input; pass "
                         f"a padded (T, B, *) batch with resets of shape (T, B), or split the "
                         f"sequences at their resets before packing.")
    want = tuple(x.shape[:2]) if batched else tuple(x.shape[:1])
    layout = ("(batch, seq_len)" if batch_first else "(seq_len, batch)") if batched else \
        "(seq_len,)"
    _check_flags(name, "resets", resets, x, want, f"the input's leading dimensions {layout}")
    if not batched:
        return resets.unsqueeze(1)
    return resets.transpose(0, 1) if batch_first else resets


def check_cell_reset(name, reset, x):
    """A cell's `reset`: bool, (B,) for a batched input, a scalar for an unbatched one."""
    if reset is not None:
        want = tuple(x.shape[:1]) if x.dim() == 2 else ()
        _check_flags(name, "reset", reset, x, want, "(batch,) (a scalar for an unbatched input)")
    return reset


def keep_rows(resets, reverse, dtype):
    """(N,) 1 - reset of the state entering each row's step, in the layer's row order.

    The forward direction's state entering step t is zero where resets[t]; the reverse
    direction's where resets[t + 1] (its step T-1 starts from h0)."""
    keep = ~resets
    if reverse:
        keep = torch.cat([keep[1:], torch.ones_like(keep[:1])])
    return keep.reshape(-1).to(state_dtype(dtype))


# ---------------------------------------------------------------------------- masks
def bernoulli_like(shape, keep_probability, like, dtype=None):
    """0/1 mask, 1 with probability keep_probability, drawn from torch's generator. Drawn
    in float32 whatever the layer's dtype, so a float64 run (the tests' oracle) and a half
    one draw the same masks from the same seed."""
    probability = torch.full(shape, keep_probability, dtype=torch.float32, device=like.device)
    return torch.bernoulli(probability).to(dtype or like.dtype)


def dropout_mask(shape, p, like, dtype=None):
    """Inverted-dropout mask: 0 with probability p, else 1 / (1 - p)."""
    return bernoulli_like(shape, 1 - p, like, dtype).div_(1 - p)


def layer_variant(module, keep, w_hh, n_rows, batch, hidden, out_size, like):
    """(w_hh to run with, Variant) of one layer-direction for this call."""
    if keep is None and not needs_kernels_of_this_project(module, None):
        return w_hh, NONE  # a plain layer draws nothing (~4 µs a layer less, issue 17)
    training = module.training
    p_c, p_h = zoneout_pair(module.cell, module.zoneout)
    if training and module.weight_drop > 0:
        w_hh = w_hh * dropout_mask(w_hh.shape, module.weight_drop, w_hh)
    state = state_dtype(like.dtype)
    rec = None
    if training and module.recurrent_dropout > 0:
        rec = dropout_mask((batch, out_size), module.recurrent_dropout, like, state)

    def zone(p, width):
        if p == 0:
            return None
        if training:  # 1 keeps the previous state, drawn per element and step
            return bernoulli_like((n_rows, width), p, like, state)
        return like.new_full((1, width), p, dtype=state).expand(n_rows, width)

    return w_hh, Variant(keep, rec, zone(p_c, hidden), zone(p_h, out_size))


def inter_layer_dropout(module, layer_input, batch_sizes, batch):
    """The `dropout` between layers; with variational_dropout one mask per (sequence,
    feature) for the whole call instead of a fresh one per element."""
    p = module.dropout
    if not module.variational_dropout:
        return torch.nn.functional.dropout(layer_input, p, training=True)
    mask = dropout_mask((batch, layer_input.shape[1]), p, layer_input)
    return layer_input * mask[sequence_of_rows(batch_sizes, layer_input.shape[0], batch,
                                               layer_input.device)]


def sequence_of_rows(batch_sizes, n_rows, batch, device):
    """(N,) the sequence (batch position) of each time-major row: rows of step t are
    sequences 0..batch_sizes[t]-1, in a padded batch and a PackedSequence alike."""
    if batch_sizes is None:
        return torch.arange(batch, device=device).repeat(n_rows // batch if batch else 0)
    sizes = batch_sizes.to(torch.int64)
    starts = torch.cumsum(sizes, 0) - sizes
    rows = torch.arange(n_rows, dtype=torch.int64) - torch.repeat_interleave(starts, sizes)
    return rows.to(device)
