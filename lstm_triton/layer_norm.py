"""Layer-normalised LSTM / GRU layers (`layer_norm=True`, issue 18) on the stepwise structure.

One layer-direction, as stepwise.py runs the plain cells:
  - before the loop, one GEMM `a = x W_ih^T` for all timesteps and one kernel launch
    over all its rows for LN_ih (it does not depend on the recurrence), the biases
    folded in (both for the LSTM, b_ih for the GRU);
  - per step, one cuBLAS GEMM `rec = h_{t-1} W_hh^T` and one fused kernel holding
    whole rows: LN_hh, the gate math and (LSTM) LN_c
    (kernels/layer_norm_pointwise.py);
  - backward mirrors it: per step the fused kernel and one GEMM `drec @ W_hh`; after
    the loop one LN_ih backward launch over all rows, and the weight gradients as big
    GEMMs (stepwise.gru_weight_grads, whose input-side / recurrent-side split is exactly
    LN's: the input side's gradient is LN_ih's input gradient, the recurrent side's
    LN_hh's). The LN parameters' gradients are column sums of gradient * x_hat over
    all rows, summed in float32 for half types (deterministic, no atomics).

What forward saves (`save=True`), besides stepwise's gates, cell states (and m_all with
a projection): `hats`, the normalised values [a_hat (G*H) | r_hat (G*H) | c_hat (H, LSTM)]
per row in the input dtype, and `rstd` (N, 3 LSTM / 2 GRU) of LN_ih, LN_hh, LN_c in the
state dtype. Backward recomputes only tanh(LN_c(c_t)).

Backends: "stepwise" runs this; "persistent" falls back to it with a FallbackWarning
(reports/NOTES.md says why); "reference" runs reference.py's equations (rnn.run_layer);
"torch" cannot (nn.LSTM has no such cell) and is refused by the modules.
The layer is one custom op (torch.compile sees it as one node), like ops.rnn_layer.
"""
from typing import Optional

import torch
from torch import Tensor

from . import reference
from .dispatch import warn_fallback
from .kernels.config import state_dtype
from .kernels.layer_norm_pointwise import (gru_ln_step_bwd, gru_ln_step_fwd, lstm_ln_step_bwd,
                                           lstm_ln_step_fwd, ln_rows_bwd, ln_rows_fwd)
from .schedule import Schedule
from .ops import check_saved
from .stepwise import _prev_rows, column_sum, gru_weight_grads, output_grad

PERSISTENT_FALLBACK = (
    "backend='persistent' runs layer_norm=True layers on the stepwise backend: a row "
    "norm over all gates needs a second grid meeting per step in the persistent kernel, "
    "which is not built (see reports/NOTES.md)")


def column_sum_product(grad, x_hat):
    """Gradient of a layer norm's scale: sum over rows of grad * x_hat (float32 for halves)."""
    acc = state_dtype(grad.dtype)
    return (grad.to(acc) * x_hat.to(acc)).sum(0).to(grad.dtype)


# ---------------------------------------------------------------------------- LSTM
def lstm_forward(x, sched, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ln, save):
    """Returns y (N, P), h_n (B, P), c_n (B, H), gates, c_all, m_all, hats, rstd (the last
    five empty when unused). ln: (ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias)."""
    n_rows, batch, hidden = x.shape[0], h0.shape[0], w_hh.shape[0] // 4
    width, proj = 4 * hidden, w_hr is not None
    gx = x @ w_ih.t()  # (N, 4H); LN_ih replaces it in place, row by row
    hats = x.new_empty(n_rows, 2 * width + hidden) if save else None
    rstd = x.new_empty(n_rows, 3, dtype=state_dtype(x.dtype)) if save else None
    ln_rows_fwd(gx, ln[0], None if b_ih is None else b_ih + b_hh, gx,
                hats[:, :width] if save else None, rstd[:, 0] if save else None)
    h_state = h0.clone()  # (B, P)
    c_state = c0.to(state_dtype(x.dtype)).clone()  # (B, H)
    y = x.new_empty(n_rows, h0.shape[1])
    m_all = x.new_empty(n_rows, hidden) if proj else y
    gates = x.new_empty(n_rows, width) if save else None
    c_all = c_state.new_empty(n_rows, hidden) if save else None
    rec = x.new_empty(batch, width)
    for t in sched.order():
        rows, bs = sched.rows(t), sched.batch_sizes[t]
        torch.mm(h_state[:bs], w_hh.t(), out=rec[:bs])
        saved = (gates[rows], c_all[rows], hats[rows, width:2 * width], hats[rows, 2 * width:],
                 rstd[rows, 1], rstd[rows, 2]) if save else None
        lstm_ln_step_fwd(gx[rows], rec[:bs], ln[1:], c_state, m_all[rows],
                         None if proj else h_state, saved)
        if proj:
            torch.mm(m_all[rows], w_hr.t(), out=y[rows])
            h_state[:bs] = y[rows]
    empty = x.new_empty(0)
    return (y, h_state, c_state.to(x.dtype),
            gates if save else empty, c_all if save else empty.clone(),
            m_all if proj and save else empty.clone(), hats if save else empty.clone(),
            rstd if save else empty.clone())


def lstm_backward(dy, dh_n, dc_n, x, sched, h0, c0, w_ih, w_hh, w_hr, ln, y, gates, c_all,
                  m_all, hats, rstd, has_bias, need_dx):
    """Gradients (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, d ln_ih_weight,
    d ln_hh_weight, d ln_c_weight, d ln_c_bias); None where not applicable."""
    n_rows, hidden = x.shape[0], c0.shape[1]
    width, proj = 4 * hidden, w_hr is not None
    dh_rec = dh_n.clone()  # (B, P) gradient flowing into the state of the step being undone
    dc = dc_n.to(state_dtype(x.dtype)).clone()  # (B, H)
    c0_state = c0.to(dc.dtype)
    dgates = x.new_empty(n_rows, width)  # d pre-activations = d LN_ih output = d biases
    drec = x.new_empty(n_rows, width)  # d (h_{t-1} W_hh^T)
    dcn = x.new_empty(n_rows, hidden)  # d LN_c output
    dh_all = x.new_empty(n_rows, h0.shape[1]) if proj else None
    dm_buf = x.new_empty(h0.shape[0], hidden) if proj else None
    for t in reversed(sched.order()):
        rows, bs = sched.rows(t), sched.batch_sizes[t]
        c_prev, n_prev = _prev_rows(c_all, sched, t)
        dm, dh_carried = output_grad(dy[rows], dh_rec, bs, w_hr,
                                     dh_all[rows] if dh_all is not None else None, dm_buf)
        lstm_ln_step_bwd(dm, dh_carried, dc, gates[rows], c_prev, n_prev, c0_state,
                         (hats[rows, width:2 * width], hats[rows, 2 * width:], rstd[rows, 1],
                          rstd[rows, 2]), ln[1:], (dgates[rows], drec[rows], dcn[rows]))
        torch.mm(drec[rows], w_hh, out=dh_rec[:bs])
    a_hat = hats[:, :width]
    da = x.new_empty(n_rows, width)
    ln_rows_bwd(dgates, a_hat, rstd[:, 0], ln[0], da)
    dx, dw_ih, dw_hh, _, _ = gru_weight_grads(da, drec, x, y, h0, sched, w_ih, False, need_dx)
    db = column_sum(dgates) if has_bias else None
    return (dx, dh_rec, dc.to(x.dtype), dw_ih, dw_hh, db, None if db is None else db.clone(),
            dh_all.t() @ m_all if proj else None,
            column_sum_product(dgates, a_hat), column_sum_product(dgates, hats[:, width:2 * width]),
            column_sum_product(dcn, hats[:, 2 * width:]), column_sum(dcn))


# ----------------------------------------------------------------------------- GRU
def gru_forward(x, sched, h0, w_ih, w_hh, b_ih, b_hh, ln, save):
    """Returns y (N, H), h_n (B, H), gates (N, 4H: r, z, n, gh_n), hats, rstd (empty when
    unused). ln: (ln_ih_weight, ln_hh_weight)."""
    n_rows, batch, hidden = x.shape[0], h0.shape[0], h0.shape[1]
    width = 3 * hidden
    gx = x @ w_ih.t()  # (N, 3H); LN_ih (+ b_ih) replaces it in place
    hats = x.new_empty(n_rows, 2 * width) if save else None
    rstd = x.new_empty(n_rows, 2, dtype=state_dtype(x.dtype)) if save else None
    ln_rows_fwd(gx, ln[0], b_ih, gx, hats[:, :width] if save else None,
                rstd[:, 0] if save else None)
    h_state = h0.clone()
    y = x.new_empty(n_rows, hidden)
    gates = x.new_empty(n_rows, 4 * hidden) if save else None
    rec = x.new_empty(batch, width)
    for t in sched.order():
        rows, bs = sched.rows(t), sched.batch_sizes[t]
        torch.mm(h_state[:bs], w_hh.t(), out=rec[:bs])
        saved = (gates[rows], hats[rows, width:], rstd[rows, 1]) if save else None
        gru_ln_step_fwd(gx[rows], rec[:bs], ln[1], b_hh, h_state, y[rows], saved)
    empty = x.new_empty(0)
    return (y, h_state, gates if save else empty, hats if save else empty.clone(),
            rstd if save else empty.clone())


def gru_backward(dy, dh_n, x, sched, h0, w_ih, w_hh, ln, y, gates, hats, rstd, has_bias,
                 need_dx):
    """Gradients (dx, dh0, dw_ih, dw_hh, db_ih, db_hh, d ln_ih_weight, d ln_hh_weight)."""
    n_rows, hidden = x.shape[0], h0.shape[1]
    width = 3 * hidden
    dh_rec = dh_n.clone()
    dgx, dgh, drec = (x.new_empty(n_rows, width) for _ in range(3))
    for t in reversed(sched.order()):
        rows, bs = sched.rows(t), sched.batch_sizes[t]
        h_prev, n_prev = _prev_rows(y, sched, t)
        gru_ln_step_bwd(dy[rows], dh_rec, (gates[rows], hats[rows, width:], rstd[rows, 1]),
                        ln[1], h_prev, n_prev, h0, (dgx[rows], dgh[rows], drec[rows]))
        dh_rec[:bs].addmm_(drec[rows], w_hh)
    a_hat = hats[:, :width]
    da = x.new_empty(n_rows, width)
    ln_rows_bwd(dgx, a_hat, rstd[:, 0], ln[0], da)
    dx, dw_ih, dw_hh, _, _ = gru_weight_grads(da, drec, x, y, h0, sched, w_ih, False, need_dx)
    return (dx, dh_rec, dw_ih, dw_hh, column_sum(dgx) if has_bias else None,
            column_sum(dgh) if has_bias else None,
            column_sum_product(dgx, a_hat), column_sum_product(dgh, hats[:, width:]))


# ------------------------------------------------------------------ custom operators
def _ln_tuple(cell, ln_ih, ln_hh, ln_c_w, ln_c_b):
    return (ln_ih, ln_hh, ln_c_w, ln_c_b) if cell == "lstm" else (ln_ih, ln_hh)


@torch.library.custom_op("lstm_triton::rnn_layer_norm", mutates_args=())
def rnn_layer_norm(
    cell: str, x: Tensor, batch_sizes: Optional[Tensor], h0: Tensor, c0: Optional[Tensor],
    w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
    w_hr: Optional[Tensor], ln_ih: Tensor, ln_hh: Tensor, ln_c_w: Optional[Tensor],
    ln_c_b: Optional[Tensor], reverse: bool, save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, h_n, c_n, gates, c_all, m_all, hats, rstd) of one layer-normalised
    layer-direction on the stepwise backend; unused slots are empty tensors."""
    sched = Schedule.build(batch_sizes, x.shape[0], h0.shape[0], reverse)
    ln = _ln_tuple(cell, ln_ih, ln_hh, ln_c_w, ln_c_b)
    if cell == "lstm":
        return lstm_forward(x, sched, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ln, save)
    y, h_n, gates, hats, rstd = gru_forward(x, sched, h0, w_ih, w_hh, b_ih, b_hh, ln, save)
    empty = x.new_empty(0)
    return y, h_n, empty, gates, empty.clone(), empty.clone(), hats, rstd


@rnn_layer_norm.register_fake
def _(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih, ln_hh, ln_c_w,
      ln_c_b, reverse, save):
    lstm = cell == "lstm"
    n_rows, hidden = x.shape[0], w_hh.shape[0] // (4 if lstm else 3)
    width = w_hh.shape[0]
    empty = x.new_empty(0)

    def saved(*shape, dtype=None):
        return x.new_empty(*shape, dtype=dtype) if save else empty.clone()

    state = state_dtype(x.dtype)
    return (x.new_empty(n_rows, h0.shape[1]), h0.new_empty(h0.shape),
            c0.new_empty(c0.shape) if lstm else empty.clone(),
            saved(n_rows, 4 * hidden),
            saved(n_rows, hidden, dtype=state) if lstm else empty.clone(),
            saved(n_rows, hidden) if (lstm and w_hr is not None) else empty.clone(),
            saved(n_rows, 2 * width + (hidden if lstm else 0)),
            saved(n_rows, 3 if lstm else 2, dtype=state))


@torch.library.custom_op("lstm_triton::rnn_layer_norm_backward", mutates_args=())
def rnn_layer_norm_backward(
    cell: str, dy: Tensor, dh_n: Tensor, dc_n: Optional[Tensor], x: Tensor,
    batch_sizes: Optional[Tensor], h0: Tensor, c0: Optional[Tensor], w_ih: Tensor,
    w_hh: Tensor, w_hr: Optional[Tensor], ln_ih: Tensor, ln_hh: Tensor,
    ln_c_w: Optional[Tensor], ln_c_b: Optional[Tensor], y: Tensor, gates: Tensor,
    c_all: Tensor, m_all: Tensor, hats: Tensor, rstd: Tensor, reverse: bool, has_bias: bool,
    need_dx: bool,
) -> list[Tensor]:
    """[dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, d ln_ih, d ln_hh, d ln_c_w,
    d ln_c_b]; empty where not applicable."""
    sched = Schedule.build(batch_sizes, x.shape[0], h0.shape[0], reverse)
    ln = _ln_tuple(cell, ln_ih, ln_hh, ln_c_w, ln_c_b)
    if cell == "lstm":
        grads = lstm_backward(dy, dh_n, dc_n, x, sched, h0, c0, w_ih, w_hh, w_hr, ln, y, gates,
                              c_all, m_all, hats, rstd, has_bias, need_dx)
    else:
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh, d_ih, d_hh = gru_backward(
            dy, dh_n, x, sched, h0, w_ih, w_hh, ln, y, gates, hats, rstd, has_bias, need_dx)
        grads = (dx, dh0, None, dw_ih, dw_hh, db_ih, db_hh, None, d_ih, d_hh, None, None)
    return [g if g is not None else x.new_empty(0) for g in grads]


@rnn_layer_norm_backward.register_fake
def _(cell, dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, ln_ih, ln_hh, ln_c_w,
      ln_c_b, y, gates, c_all, m_all, hats, rstd, reverse, has_bias, need_dx):
    empty = x.new_empty(0)
    lstm = cell == "lstm"
    like = lambda t, cond=True: t.new_empty(t.shape) if cond else empty.clone()  # noqa: E731
    bias = w_hh.new_empty(w_hh.shape[0]) if has_bias else empty
    return [like(x, need_dx), like(h0), like(c0, lstm), like(w_ih), like(w_hh),
            bias, bias.clone(), like(w_hr, w_hr is not None), like(ln_ih), like(ln_hh),
            like(ln_c_w, lstm), like(ln_c_b, lstm)]


# rnn_layer_norm's inputs that have gradients, by position, and the backward op's order
_GRAD_INPUTS = (1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)  # x, h0, c0, w_ih, w_hh, b_ih, b_hh,
#                                                         w_hr, ln_ih, ln_hh, ln_c_w, ln_c_b


def _setup_context(ctx, inputs, output):
    (cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih, ln_hh, ln_c_w, ln_c_b,
     reverse, save) = inputs
    y, _, _, gates, c_all, m_all, hats, rstd = output
    ctx.save_for_backward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih, ln_hh,
                          ln_c_w, ln_c_b, y, gates, c_all, m_all, hats, rstd)
    ctx.cell, ctx.reverse, ctx.save, ctx.has_bias = cell, reverse, save, b_ih is not None


def _backward(ctx, dy, dh_n, dc_n, *_unused_saved_grads):
    check_saved(ctx)
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _differentiable_backward(ctx, dy, dh_n, dc_n)
    (x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, _, w_hr, ln_ih, ln_hh, ln_c_w, ln_c_b, y,
     gates, c_all, m_all, hats, rstd) = ctx.saved_tensors
    lstm = ctx.cell == "lstm"
    dy = torch.zeros_like(y) if dy is None else dy.contiguous()
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n.contiguous()
    dc_n = (torch.zeros_like(c0) if dc_n is None else dc_n.contiguous()) if lstm else None
    grads = rnn_layer_norm_backward(
        ctx.cell, dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, ln_ih, ln_hh,
        ln_c_w, ln_c_b, y, gates, c_all, m_all, hats, rstd, ctx.reverse, ctx.has_bias,
        ctx.needs_input_grad[1])
    result = [None] * len(ctx.needs_input_grad)
    for k, g in zip(_GRAD_INPUTS, grads):
        if ctx.needs_input_grad[k]:  # (the op's empty tensors mark inputs without one)
            result[k] = g
    return tuple(result)


def _differentiable_backward(ctx, dy, dh_n, dc_n):
    """backward(create_graph=True): as ops._differentiable_backward, the gradients are
    taken through the pure-PyTorch reference layer recomputed from the saved inputs."""
    (x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih, ln_hh, ln_c_w,
     ln_c_b) = ctx.saved_tensors[:13]
    inputs = (None, x, None, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih, ln_hh, ln_c_w, ln_c_b)
    sched = Schedule.build(batch_sizes, x.shape[0], h0.shape[0], ctx.reverse)
    outputs = reference.layer(ctx.cell, x, sched, h0, c0, (w_ih, w_hh, b_ih, b_hh, w_hr),
                              ln=_ln_tuple(ctx.cell, ln_ih, ln_hh, ln_c_w, ln_c_b))
    pairs = [(o, g) for o, g in zip(outputs, (dy, dh_n, dc_n)) if o is not None and g is not None]
    wanted = [k for k in _GRAD_INPUTS if ctx.needs_input_grad[k] and inputs[k] is not None]
    grads = torch.autograd.grad([o for o, _ in pairs], [inputs[k] for k in wanted],
                                [g for _, g in pairs], create_graph=True, allow_unused=True)
    result = [None] * len(ctx.needs_input_grad)
    for k, g in zip(wanted, grads):
        result[k] = g
    return tuple(result)


rnn_layer_norm.register_autograd(_backward, setup_context=_setup_context)


def run_layer(cell, backend, x, batch_sizes, h0, c0, weights, ln, reverse, save):
    """One layer-normalised layer-direction on a Triton backend (rnn.run_layer routes it
    here): y (N, P), h_n (B, P), c_n (B, H) or None. ln: the layer-direction's LN
    parameters (ln_ih, ln_hh[, ln_c_weight, ln_c_bias])."""
    if backend == "persistent":
        warn_fallback(PERSISTENT_FALLBACK, key=PERSISTENT_FALLBACK)
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    ln_c_w, ln_c_b = (ln[2], ln[3]) if cell == "lstm" else (None, None)
    y, h_n, c_n, *_ = rnn_layer_norm(
        cell, x, batch_sizes, h0, c0, w_ih.contiguous(), w_hh.contiguous(), b_ih, b_hh,
        w_hr.contiguous() if w_hr is not None else None, ln[0].contiguous(),
        ln[1].contiguous(), ln_c_w, ln_c_b, reverse, save)
    return y, h_n, (c_n if cell == "lstm" else None)
