"""Pure-PyTorch reference: the math of one layer-direction, step by step.

Runs on any device and dtype (float64 for the tests' oracle) and is
differentiated by autograd. It walks the same Schedule as the kernels, so it
also serves packed batches. The "reference" backend of the modules runs it.
"""
import torch
import torch.nn.functional as F

from .schedule import Schedule

LN_EPS = 1e-5  # the layer-normalised cells' epsilon (issue 18), torch.nn.LayerNorm's default


def _ln(v, weight, bias=None):
    """Layer norm over the last dimension (all gates of a row), as the kernels compute it."""
    return F.layer_norm(v, v.shape[-1:], weight, bias, LN_EPS)


def _run(sched: Schedule, x, h0, step):
    h, outputs = h0, [None] * sched.steps
    for t in sched.order():
        bs = sched.batch_sizes[t]
        h_new = step(t, x[sched.rows(t)], h[:bs])
        outputs[t] = h_new
        h = torch.cat([h_new, h[bs:]])
    return torch.cat(outputs) if outputs else x.new_empty(0, h0.shape[1]), h


def lstm_layer(x, sched, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, ln=None):
    """y (N, P), h_n (B, P), c_n (B, H) of one LSTM layer-direction over packed rows x (N, I).

    ln: None, or (ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias) for the
    layer-normalised cell: gates = LN_ih(x W_ih^T) + LN_hh(h W_hh^T) + b_ih + b_hh,
    m = o * tanh(LN_c(c_t)) with c_t carried unnormalised."""
    c = [c0]

    def step(t, x_t, h):
        bs = x_t.shape[0]
        if ln is None:
            gates = x_t @ w_ih.t() + h @ w_hh.t()
        else:
            gates = _ln(x_t @ w_ih.t(), ln[0]) + _ln(h @ w_hh.t(), ln[1])
        if b_ih is not None:
            gates = gates + b_ih + b_hh
        i, f, g, o = gates.chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c[0][:bs] + torch.sigmoid(i) * torch.tanh(g)
        c[0] = torch.cat([c_new, c[0][bs:]])
        m = torch.sigmoid(o) * torch.tanh(c_new if ln is None else _ln(c_new, ln[2], ln[3]))
        return m @ w_hr.t() if w_hr is not None else m

    y, h_n = _run(sched, x, h0, step)
    return y, h_n, c[0]


def gru_layer(x, sched, h0, w_ih, w_hh, b_ih=None, b_hh=None, ln=None):
    """y (N, H), h_n (B, H) of one GRU layer-direction (torch's gate order r, z, n).

    ln: None, or (ln_ih_weight, ln_hh_weight): gx = LN_ih(x W_ih^T) + b_ih,
    gh = LN_hh(h W_hh^T) + b_hh."""

    def step(t, x_t, h):
        gx, gh = x_t @ w_ih.t(), h @ w_hh.t()
        if ln is not None:
            gx, gh = _ln(gx, ln[0]), _ln(gh, ln[1])
        gx = gx + (b_ih if b_ih is not None else 0)
        gh = gh + (b_hh if b_hh is not None else 0)
        x_r, x_z, x_n = gx.chunk(3, dim=1)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h

    return _run(sched, x, h0, step)


def layer(cell, x, sched, h0, c0, weights, ln=None):
    """y, h_n, c_n (None for GRU) of one layer-direction; weights (w_ih, w_hh, b_ih, b_hh,
    w_hr), absent ones None; ln the layer-norm parameters (lstm_layer, gru_layer) or None.
    The "reference" backend, the layers that need what only autograd through plain ops
    gives (rnn.needs_reference), and double backward (ops.py, layer_norm.py) run this."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    if cell == "lstm":
        return lstm_layer(x, sched, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ln)
    y, h_n = gru_layer(x, sched, h0, w_ih, w_hh, b_ih, b_hh, ln)
    return y, h_n, None
