"""Pure-PyTorch reference: the math of one layer-direction, step by step.

Runs on any device and dtype (float64 for the tests' oracle) and is
differentiated by autograd. It walks the same Schedule as the kernels, so it
also serves packed batches. The "reference" backend of the modules runs it.
"""
import torch

from .schedule import Schedule


def _run(sched: Schedule, x, h0, step):
    h, outputs = h0, [None] * sched.steps
    for t in sched.order():
        bs = sched.batch_sizes[t]
        h_new = step(t, x[sched.rows(t)], h[:bs])
        outputs[t] = h_new
        h = torch.cat([h_new, h[bs:]])
    return torch.cat(outputs) if outputs else x.new_empty(0, h0.shape[1]), h


def lstm_layer(x, sched, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None):
    """y (N, P), h_n (B, P), c_n (B, H) of one LSTM layer-direction over packed rows x (N, I)."""
    c = [c0]

    def step(t, x_t, h):
        bs = x_t.shape[0]
        gates = x_t @ w_ih.t() + h @ w_hh.t()
        if b_ih is not None:
            gates = gates + b_ih + b_hh
        i, f, g, o = gates.chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c[0][:bs] + torch.sigmoid(i) * torch.tanh(g)
        c[0] = torch.cat([c_new, c[0][bs:]])
        m = torch.sigmoid(o) * torch.tanh(c_new)
        return m @ w_hr.t() if w_hr is not None else m

    y, h_n = _run(sched, x, h0, step)
    return y, h_n, c[0]


def gru_layer(x, sched, h0, w_ih, w_hh, b_ih=None, b_hh=None):
    """y (N, H), h_n (B, H) of one GRU layer-direction (torch's gate order r, z, n)."""

    def step(t, x_t, h):
        gx = x_t @ w_ih.t() + (b_ih if b_ih is not None else 0)
        gh = h @ w_hh.t() + (b_hh if b_hh is not None else 0)
        x_r, x_z, x_n = gx.chunk(3, dim=1)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h

    return _run(sched, x, h0, step)


def layer(cell, x, sched, h0, c0, weights):
    """y, h_n, c_n (None for GRU) of one layer-direction; weights (w_ih, w_hh, b_ih, b_hh,
    w_hr), absent ones None. The "reference" backend, the layers that need what only
    autograd through plain ops gives (rnn.needs_reference), and double backward
    (ops.py) run this."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    if cell == "lstm":
        return lstm_layer(x, sched, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    y, h_n = gru_layer(x, sched, h0, w_ih, w_hh, b_ih, b_hh)
    return y, h_n, None
