"""Pure-PyTorch reference: the math of one layer-direction, step by step.

Runs on any device and dtype (float64 for the tests' oracle) and is
differentiated by autograd. It walks the same Schedule as the kernels, so it
also serves packed batches. The "reference" backend of the modules runs it.

With a `variants.Variant` it also holds the equations of issue 18's options, for
the rows of step t (keep, rec, zone_c, zone_h as in variants.Variant):
    h_in = keep * h_{t-1},  c_in = keep * c_{t-1}       (segment resets)
    gates from (h_in * rec) @ W_hh^T                       (recurrent dropout)
    c_t = zone_c * c_in + (1 - zone_c) * c_new             (zoneout; likewise h)
and the zoned-out h_t is both the output and the next state. With `ln` (the layer-norm
parameters) it holds the layer-normalised cells (lstm_layer, gru_layer).
"""
import torch
import torch.nn.functional as F

from .schedule import Schedule
from .variants import NONE

LN_EPS = 1e-5  # the layer-normalised cells' epsilon (issue 18), torch.nn.LayerNorm's default


def _ln(v, weight, bias=None):
    """Layer norm over the last dimension (all gates of a row), as the kernels compute it."""
    return F.layer_norm(v, v.shape[-1:], weight, bias, LN_EPS)


def _run(sched: Schedule, x, h0, step, variant):
    h, outputs = h0, [None] * sched.steps
    for t in sched.order():
        rows, bs = sched.rows(t), sched.batch_sizes[t]
        h_in = h[:bs] if variant.keep is None else h[:bs] * variant.keep[rows, None].to(h.dtype)
        u = h_in if variant.rec is None else h_in * variant.rec[:bs].to(h.dtype)
        h_new = step(t, rows, x[rows], h_in, u)
        if variant.zone_h is not None:
            h_new = _zoneout(variant.zone_h[rows], h_in, h_new)
        outputs[t] = h_new
        h = torch.cat([h_new, h[bs:]])
    return torch.cat(outputs) if outputs else x.new_empty(0, h0.shape[1]), h


def _zoneout(z, previous, new):
    """z * previous + (1 - z) * new: a mask of 1 keeps the previous value exactly."""
    z = z.to(new.dtype)
    return z * previous + (1 - z) * new


def lstm_layer(x, sched, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, variant=NONE,
               ln=None):
    """y (N, P), h_n (B, P), c_n (B, H) of one LSTM layer-direction over packed rows x (N, I).

    ln: None, or (ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias) for the
    layer-normalised cell: gates = LN_ih(x W_ih^T) + LN_hh(h W_hh^T) + b_ih + b_hh,
    m = o * tanh(LN_c(c_t)) with c_t carried unnormalised."""
    c = [c0]

    def step(t, rows, x_t, h_in, u):
        bs = x_t.shape[0]
        if ln is None:
            gates = x_t @ w_ih.t() + u @ w_hh.t()
        else:
            gates = _ln(x_t @ w_ih.t(), ln[0]) + _ln(u @ w_hh.t(), ln[1])
        if b_ih is not None:
            gates = gates + b_ih + b_hh
        i, f, g, o = gates.chunk(4, dim=1)
        c_in = c[0][:bs]
        if variant.keep is not None:
            c_in = c_in * variant.keep[rows, None].to(c0.dtype)
        c_new = torch.sigmoid(f) * c_in + torch.sigmoid(i) * torch.tanh(g)
        m = torch.sigmoid(o) * torch.tanh(c_new if ln is None else _ln(c_new, ln[2], ln[3]))
        if variant.zone_c is not None:
            c_new = _zoneout(variant.zone_c[rows], c_in, c_new)
        c[0] = torch.cat([c_new, c[0][bs:]])
        return m @ w_hr.t() if w_hr is not None else m

    y, h_n = _run(sched, x, h0, step, variant)
    return y, h_n, c[0]


def gru_layer(x, sched, h0, w_ih, w_hh, b_ih=None, b_hh=None, variant=NONE, ln=None):
    """y (N, H), h_n (B, H) of one GRU layer-direction (torch's gate order r, z, n).

    ln: None, or (ln_ih_weight, ln_hh_weight): gx = LN_ih(x W_ih^T) + b_ih,
    gh = LN_hh(h W_hh^T) + b_hh."""

    def step(t, rows, x_t, h_in, u):
        gx, gh = x_t @ w_ih.t(), u @ w_hh.t()
        if ln is not None:
            gx, gh = _ln(gx, ln[0]), _ln(gh, ln[1])
        gx = gx + (b_ih if b_ih is not None else 0)
        gh = gh + (b_hh if b_hh is not None else 0)
        x_r, x_z, x_n = gx.chunk(3, dim=1)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h_in

    return _run(sched, x, h0, step, variant)


def layer(cell, x, sched, h0, c0, weights, variant=NONE, ln=None):
    """y, h_n, c_n (None for GRU) of one layer-direction; weights (w_ih, w_hh, b_ih, b_hh,
    w_hr), absent ones None; variant issue 18's per-call masks; ln the layer-norm
    parameters (lstm_layer, gru_layer) or None. The "reference" backend, the layers that
    need what only autograd through plain ops gives (rnn.needs_reference), and double
    backward (ops.py, layer_norm.py) run this."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    if cell == "lstm":
        return lstm_layer(x, sched, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, variant, ln)
    y, h_n = gru_layer(x, sched, h0, w_ih, w_hh, b_ih, b_hh, variant, ln)
    return y, h_n, None
