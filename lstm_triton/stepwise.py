"""Stepwise backend: one layer-direction, cuBLAS GEMMs around fused Triton step kernels.

Forward: one GEMM projects the inputs of all timesteps (`x @ W_ih^T` plus
biases, n_gates*H wide); then per step one recurrent GEMM `h @ W_hh^T` and one
fused pointwise kernel. Backward: per step one fused pointwise kernel and the
recurrent GEMM `dgates @ W_hh`; the weight gradients and dx are big GEMMs over
all steps after the loop (never per-step weight GEMMs).

What forward saves for backward (`save=True`):
  LSTM: activated gates (N, 4H) in the input dtype, cell states (N, H) in the
        compute dtype, and the unprojected outputs m (N, H) when proj_size > 0.
  GRU:  r, z, n and the recurrent part of n (N, 4H) in the input dtype.
Backward recomputes nothing else; h_{t-1} is read from the outputs y and h0.

A layer with issue 18's per-call options (a variants.Variant: resets, recurrent dropout,
zoneout) runs the loops of stepwise_variants.py, on the same kernels with their flags on.
"""
import torch
import torch.nn.functional as F

from .kernels import fused_steps
from .kernels.config import fused_cell_launch, state_dtype
from .kernels.gru_pointwise import gru_step_bwd, gru_step_fwd
from .kernels.lstm_pointwise import lstm_step_bwd, lstm_step_fwd
from .schedule import Schedule
from .variants import NONE


def input_projection(x, w_ih, bias):
    """(N, I) @ (G*H, I)^T + bias for all timesteps at once: one cuBLAS GEMM. F.linear is
    exactly that (aten::linear of a 2-D input is addmm(bias, x, w^T), or mm without a
    bias) in one call from Python, which matters to a cell's step (issue 17)."""
    return F.linear(x, w_ih, bias)


def previous_states(y, h0, sched: Schedule):
    """(N, P) state each row's step started from: the previous step's output or h0."""
    batch = h0.shape[0]
    if sched.padded:  # every step runs the whole batch: a shift of y
        if sched.reverse:
            return torch.cat([y[batch:], h0])
        return torch.cat([h0, y[: y.shape[0] - batch]])
    return torch.cat([y, h0]).index_select(0, sched.previous_index(y.device))


def column_sum(dg):
    """Bias gradient, summed in float32 for half types (deterministic: no atomics)."""
    state = state_dtype(dg.dtype)
    return dg.sum(0) if state == dg.dtype else dg.sum(0, dtype=state).to(dg.dtype)


def lstm_weight_grads(dgates, x, y, h0, sched, w_ih, has_bias, need_dx, dr=None, m_all=None,
                      prev=None):
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr) from the gate gradients of all steps (N, 4H)
    and, with a projection, the gradients dr (N, P) of the projected outputs and the
    unprojected outputs m_all (N, H): big GEMMs after the loop, shared by every backend.
    db_ih == db_hh (both biases enter the same pre-activation), returned as two tensors.
    prev: (N, P) the recurrent GEMM's inputs, when they are not the previous states."""
    db = column_sum(dgates) if has_bias else None
    prev = previous_states(y, h0, sched) if prev is None else prev
    return (dgates @ w_ih if need_dx else None, dgates.t() @ x,
            dgates.t() @ prev, db, None if db is None else db.clone(),
            dr.t() @ m_all if dr is not None else None)


def gru_weight_grads(dgx, drec, x, y, h0, sched, w_ih, has_bias, need_dx, prev=None):
    """(dx, dw_ih, dw_hh, db_ih, db_hh) from the input and recurrent pre-activation
    gradients of all steps (N, 3H each), shared by every backend (prev: as for the LSTM)."""
    prev = previous_states(y, h0, sched) if prev is None else prev
    return (dgx @ w_ih if need_dx else None, dgx.t() @ x,
            drec.t() @ prev,
            column_sum(dgx) if has_bias else None, column_sum(drec) if has_bias else None)


def output_grad(dy_t, dh_rec, bs, w_hr, dh_all_t, dm_buf):
    """(dm, dh_carried) of an LSTM backward step, from the step's rows of dy (and of dh_all
    with a projection): the gradient of the step's unprojected output m_t, and the carried
    recurrent gradient the step kernel still has to add (None with a projection, where it
    is folded in here: dh_all = dy + dh_rec, dm = dh_all W_hr)."""
    if w_hr is None:
        return dy_t, dh_rec
    torch.add(dy_t, _head(dh_rec, bs), out=dh_all_t)
    dm = _head(dm_buf, bs)
    torch.mm(dh_all_t, w_hr, out=dm)
    return dm, None


def _prev_rows(tensor, sched, t):
    rows, n_prev = sched.previous(t)
    return (tensor[rows] if rows is not None else None), n_prev


def _steps(sched, *tensors):
    """Per-step row views of each (N, ...) tensor (None stays None), made in one call per
    tensor before the loop: slicing `tensor[rows]` in the loop cost ~1 µs a view, several
    views a step (issue 17)."""
    if sched.steps == 1:  # a cell call: the one step is the whole tensor
        return [(t,) for t in tensors]
    return [None if t is None else t.split(sched.batch_sizes) for t in tensors]


def _head(tensor, rows):
    """tensor[:rows] without a new view when it is all of it (the padded case)."""
    return tensor if rows == tensor.shape[0] else tensor[:rows]


# ---------------------------------------------------------------------------- LSTM
def fused_launch(x, sched, hidden, projected):
    """The blocks of kernels/fused_steps.py's loop (one launch a step: the recurrent GEMM
    inside the step kernel) where it runs this layer-direction, else None (callers with
    per-call options have gone to stepwise_variants.py already). Its sizes are a cell
    step's without the input GEMM (config.fused_cell_launch)."""
    if not fused_steps.runs(sched, projected):
        return None
    return fused_cell_launch(sched.batch_sizes[0], hidden, hidden, x.dtype, x.is_cuda)


def lstm_forward_buffers(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, save):
    """What an LSTM forward loop starts from (the plain loop and stepwise_variants'):
    gx (N, 4H) the input projection of every step, the states h (B, P) and c (B, H, in the
    state dtype), the outputs y (N, P) and m_all (N, H; y itself without a projection),
    the saved gates and cell states (None in inference), and the recurrent GEMM's buffer."""
    n_rows, batch, hidden = x.shape[0], h0.shape[0], w_hh.shape[0] // 4
    bias = None if b_ih is None else b_ih + b_hh
    gx = input_projection(x, w_ih, bias)  # (N, 4H)
    h_state = h0.clone()  # (B, P)
    c_state = c0.to(state_dtype(x.dtype)).clone()  # (B, H)
    y = x.new_empty(n_rows, h0.shape[1])
    m_all = x.new_empty(n_rows, hidden) if w_hr is not None else y
    gates = x.new_empty(n_rows, 4 * hidden) if save else None
    c_all = c_state.new_empty(n_rows, hidden) if save else None
    rec = x.new_empty(batch, 4 * hidden)
    return gx, h_state, c_state, y, m_all, gates, c_all, rec


def lstm_forward(x, sched, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, save, variant=NONE):
    """Returns y (N, P), h_n (B, P), c_n (B, H), gates, c_all, m_all (empty when unused)."""
    if variant.active:
        from . import stepwise_variants

        return stepwise_variants.lstm_forward(x, sched, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                              save, variant)
    proj = w_hr is not None
    launch = fused_launch(x, sched, w_hh.shape[1], proj)
    if launch is not None:
        return _lstm_forward_fused(x, sched, h0, c0, w_ih, w_hh, b_ih, b_hh, save, launch)
    gx, h_state, c_state, y, m_all, gates, c_all, rec = lstm_forward_buffers(
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, save)
    w_hh_t, w_hr_t = w_hh.t(), (w_hr.t() if proj else None)
    gx_s, m_s, y_s, gates_s, c_all_s = _steps(sched, gx, m_all, y, gates, c_all)
    for t in sched.order():
        bs = sched.batch_sizes[t]
        rec_t = _head(rec, bs)
        torch.mm(_head(h_state, bs), w_hh_t, out=rec_t)
        lstm_step_fwd(gx_s[t], rec_t, c_state, m_s[t], None if proj else h_state,
                      gates_s[t] if save else None, c_all_s[t] if save else None)
        if proj:
            torch.mm(m_s[t], w_hr_t, out=y_s[t])
            _head(h_state, bs).copy_(y_s[t])
    # Each unused slot is its own empty tensor: custom-op outputs may not alias each other.
    return (y, h_state, c_state.to(x.dtype),
            gates if save else x.new_empty(0), c_all if save else x.new_empty(0),
            m_all if proj and save else x.new_empty(0))


def _lstm_forward_fused(x, sched, h0, c0, w_ih, w_hh, b_ih, b_hh, save, launch):
    """lstm_forward's loop at one launch a step (kernels/fused_steps.py); same outputs, and
    the same saved tensors, so either backward follows."""
    n_rows, hidden = x.shape[0], w_hh.shape[1]
    gx = input_projection(x, w_ih, None if b_ih is None else b_ih + b_hh)  # (N, 4H)
    c_state = c0.to(state_dtype(x.dtype)).clone()  # (B, H), updated in place: c_n
    y, h_n = x.new_empty(n_rows, hidden), x.new_empty(h0.shape)
    gates = x.new_empty(n_rows, 4 * hidden) if save else None
    c_all = c_state.new_empty(n_rows, hidden) if save else None
    fused_steps.lstm_forward_steps(gx, sched, h0, c_state, w_hh, y, h_n, gates, c_all, launch)
    return (y, h_n, c_state.to(x.dtype), gates if save else x.new_empty(0),
            c_all if save else x.new_empty(0), x.new_empty(0))


def lstm_backward(dy, dh_n, dc_n, x, sched, h0, c0, w_ih, w_hh, w_hr, y, gates, c_all, m_all,
                  has_bias, need_dx, variant=NONE):
    """Gradients (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr); None where not applicable."""
    if variant.active:
        from . import stepwise_variants

        return stepwise_variants.lstm_backward(dy, dh_n, dc_n, x, sched, h0, c0, w_ih, w_hh,
                                               w_hr, y, gates, c_all, m_all, has_bias, need_dx,
                                               variant)
    n_rows, hidden = x.shape[0], c0.shape[1]
    proj = w_hr is not None
    launch = fused_launch(x, sched, hidden, proj)
    if launch is not None:
        return _lstm_backward_fused(dy, dh_n, dc_n, x, sched, h0, c0, w_ih, w_hh, y, gates, c_all,
                                    has_bias, need_dx, launch)
    dh_rec = dh_n.clone()  # (B, P) gradient flowing into the state of the step being undone
    dc = dc_n.to(state_dtype(x.dtype)).clone()  # (B, H)
    c0_state = c0.to(dc.dtype)
    dgates = x.new_empty(n_rows, 4 * hidden)
    dh_all = x.new_empty(n_rows, h0.shape[1]) if proj else None
    dm_buf = x.new_empty(h0.shape[0], hidden) if proj else None
    dy_s, dh_all_s, gates_s, c_all_s, dgates_s = _steps(sched, dy, dh_all, gates, c_all, dgates)
    for t in reversed(sched.order()):
        bs = sched.batch_sizes[t]
        p, n_prev = sched.previous_step(t)
        c_prev = c_all_s[p] if p is not None else None
        dm, dh_carried = output_grad(dy_s[t], dh_rec, bs, w_hr,
                                     dh_all_s[t] if proj else None, dm_buf)
        lstm_step_bwd(dm, dh_carried, dc, gates_s[t], c_all_s[t], c_prev, n_prev, c0_state,
                      dgates_s[t])
        torch.mm(dgates_s[t], w_hh, out=_head(dh_rec, bs))
    dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr = lstm_weight_grads(
        dgates, x, y, h0, sched, w_ih, has_bias, need_dx, dh_all, m_all)
    return dx, dh_rec, dc.to(x.dtype), dw_ih, dw_hh, db_ih, db_hh, dw_hr


def _lstm_backward_fused(dy, dh_n, dc_n, x, sched, h0, c0, w_ih, w_hh, y, gates, c_all,
                        has_bias, need_dx, launch):
    """lstm_backward's loop at one launch a step (kernels/fused_steps.py): the kernels finish
    each recurrent GEMM; the last one, dL/dh_0, is one GEMM here."""
    dc = dc_n.to(state_dtype(x.dtype)).clone()  # (B, H): dc_n in, dc_0 out
    dgates = x.new_empty(x.shape[0], 4 * c0.shape[1])
    rows = fused_steps.lstm_backward_steps(dy, dh_n, dc, sched, c0.to(dc.dtype), w_hh, gates,
                                           c_all, dgates, launch)
    dh0 = torch.mm(dgates[rows], w_hh)  # the last step undone runs every row (runs())
    dx, dw_ih, dw_hh, db_ih, db_hh, _ = lstm_weight_grads(dgates, x, y, h0, sched, w_ih,
                                                          has_bias, need_dx)
    return dx, dh0, dc.to(x.dtype), dw_ih, dw_hh, db_ih, db_hh, None


# ----------------------------------------------------------------------------- GRU
def gru_forward(x, sched, h0, w_ih, w_hh, b_ih, b_hh, save, variant=NONE):
    """Returns y (N, H), h_n (B, H), gates (N, 4H: r, z, n, rec_n; empty when unused)."""
    if variant.active:
        from . import stepwise_variants

        return stepwise_variants.gru_forward(x, sched, h0, w_ih, w_hh, b_ih, b_hh, save,
                                             variant)
    n_rows, batch, hidden = x.shape[0], h0.shape[0], h0.shape[1]
    gx = input_projection(x, w_ih, b_ih)  # (N, 3H); b_hh stays with the recurrent part
    launch = fused_launch(x, sched, hidden, False)
    if launch is not None:  # one launch a step (kernels/fused_steps.py)
        y, h_n = x.new_empty(n_rows, hidden), x.new_empty(h0.shape)
        gates = x.new_empty(n_rows, 4 * hidden) if save else None
        fused_steps.gru_forward_steps(gx, sched, h0, w_hh, b_hh, y, h_n, gates, launch)
        return y, h_n, gates if save else x.new_empty(0)
    h_state = h0.clone()
    y = x.new_empty(n_rows, hidden)
    gates = x.new_empty(n_rows, 4 * hidden) if save else None
    rec = x.new_empty(batch, 3 * hidden)
    w_hh_t = w_hh.t()
    gx_s, y_s, gates_s = _steps(sched, gx, y, gates)
    for t in sched.order():
        bs = sched.batch_sizes[t]
        rec_t, h_t = _head(rec, bs), _head(h_state, bs)
        if b_hh is None:
            torch.mm(h_t, w_hh_t, out=rec_t)
        else:
            torch.addmm(b_hh, h_t, w_hh_t, out=rec_t)
        gru_step_fwd(gx_s[t], rec_t, h_state, y_s[t], gates_s[t] if save else None)
    return y, h_state, gates if save else x.new_empty(0)


def gru_backward(dy, dh_n, x, sched, h0, w_ih, w_hh, y, gates, has_bias, need_dx,
                 variant=NONE):
    """Gradients (dx, dh0, dw_ih, dw_hh, db_ih, db_hh)."""
    if variant.active:
        from . import stepwise_variants

        return stepwise_variants.gru_backward(dy, dh_n, x, sched, h0, w_ih, w_hh, y, gates,
                                              has_bias, need_dx, variant)
    n_rows, hidden = x.shape[0], h0.shape[1]
    dgx = x.new_empty(n_rows, 3 * hidden)
    drec = x.new_empty(n_rows, 3 * hidden)
    launch = fused_launch(x, sched, hidden, False)
    if launch is not None:  # one launch a step (kernels/fused_steps.py)
        direct = x.new_empty(h0.shape, dtype=state_dtype(x.dtype))  # dh z, carried in float32
        rows = fused_steps.gru_backward_steps(dy, dh_n, sched, h0, w_hh, y, gates, dgx, drec,
                                              direct, launch)
        dh_rec = torch.addmm(direct.to(x.dtype), drec[rows], w_hh)  # every row: runs()
    else:
        dh_rec = _gru_backward_steps(dy, dh_n, sched, h0, w_hh, y, gates, dgx, drec)
    dx, dw_ih, dw_hh, db_ih, db_hh = gru_weight_grads(dgx, drec, x, y, h0, sched, w_ih, has_bias,
                                                      need_dx)
    return dx, dh_rec, dw_ih, dw_hh, db_ih, db_hh


def _gru_backward_steps(dy, dh_n, sched, h0, w_hh, y, gates, dgx, drec):
    """gru_backward's step road into dgx, drec; returns dL/dh_0."""
    dh_rec = dh_n.clone()
    dy_s, y_s, gates_s, dgx_s, drec_s = _steps(sched, dy, y, gates, dgx, drec)
    for t in reversed(sched.order()):
        p, n_prev = sched.previous_step(t)
        gru_step_bwd(dy_s[t], dh_rec, gates_s[t], y_s[p] if p is not None else None, n_prev,
                     h0, dgx_s[t], drec_s[t])
        _head(dh_rec, sched.batch_sizes[t]).addmm_(drec_s[t], w_hh)
    return dh_rec
