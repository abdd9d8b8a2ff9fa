"""Stepwise backend with issue 18's per-call options: segment resets, recurrent dropout
and zoneout (lstm_triton/variants.py), fused in the step kernels.

The loops are stepwise.py's, with three differences:
  - the recurrent GEMM reads `gemm_in`, h_{t-1} * keep_t * drop (resets zero the state
    entering a step, recurrent dropout masks it), which the step kernel of the previous
    step writes next to h_t (CARRY): no extra launch per step. Before the loop it is
    h0 * keep * drop of the first step.
  - the step kernels zero c_{t-1} (and the GRU's / zoneout's h_{t-1}) where keep is 0, and
    blend the new state with the entering one where zoneout is on.
  - backward keeps the GEMM's gradient `dgemm` (d gates @ W_hh) apart from the direct part
    `ddirect` of dL/dh_{t-1} (zoneout's and the GRU's z * dh): the next step kernel scales
    the first by keep * drop and adds the second. dL/dh0 = dgemm * keep * drop + ddirect.
With a projection (LSTM proj_size) the h side (zoneout of h, the next GEMM input) is
plain torch ops between the kernel and the projection GEMM; the c side stays fused.
dW_hh is the big GEMM over all steps of d gates and the GEMM inputs h_{t-1} * keep * drop.
Forward saves what stepwise.py saves; c_all holds the (zoned-out) carried cell states.
"""
import torch

from .kernels.config import state_dtype
from .kernels.gru_pointwise import gru_step_bwd, gru_step_fwd
from .kernels.lstm_pointwise import lstm_step_bwd, lstm_step_fwd
from .kernels.step_variant import StepVariant
from .stepwise import (_prev_rows, gru_weight_grads, input_projection, lstm_forward_buffers,
                       lstm_weight_grads, previous_states)
from .variants import sequence_of_rows


def scale_rows(variant, sched, t, n):
    """(n, P) or (n, 1) keep * drop of step t's first n rows, or None when both are off."""
    keep, drop = variant.keep, variant.rec
    scale = None if keep is None else keep[sched.rows(t)][:n, None]
    if drop is not None:
        scale = drop[:n] if scale is None else scale * drop[:n]
    return scale


def gemm_inputs(y, h0, sched, variant):
    """(N, P) what each row's recurrent GEMM read: h_{t-1} * keep * drop (for dW_hh)."""
    prev = previous_states(y, h0, sched)
    if variant.keep is not None:
        prev = prev * variant.keep[:, None].to(prev.dtype)
    if variant.rec is not None:
        seq = sequence_of_rows(None if sched.padded else torch.tensor(sched.batch_sizes),
                               y.shape[0], h0.shape[0], y.device)
        prev = prev * variant.rec.to(prev.dtype)[seq]
    return prev


def _step(variant, sched, order, k, forward, proj=False):
    """StepVariant of the k-th step in forward order; `forward` picks what CARRY means."""
    t = order[k]
    nxt = order[k + 1] if k + 1 < len(order) else None
    rows = sched.rows(t)
    keep, drop = variant.keep, variant.rec
    masked = keep is not None or drop is not None
    keep_next = keep[sched.rows(nxt)] if (keep is not None and nxt is not None) else None
    carry = not proj and (masked and nxt is not None if forward else True)
    return StepVariant(
        keep=None if keep is None else keep[rows], keep_next=keep_next,
        n_next=sched.batch_sizes[nxt] if nxt is not None else 0,
        drop=None if proj else drop,
        zone_c=None if variant.zone_c is None else variant.zone_c[rows],
        zone_h=None if (proj or variant.zone_h is None) else variant.zone_h[rows],
        carry=carry), nxt


def _blend(z, previous, new):
    z = z.to(torch.promote_types(new.dtype, z.dtype))
    return (z * previous + (1 - z) * new).to(new.dtype)


# ---------------------------------------------------------------------------- LSTM
def lstm_forward(x, sched, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, save, variant):
    """stepwise.lstm_forward with a variant: y, h_n, c_n, gates, c_all, m_all."""
    batch = h0.shape[0]
    proj = w_hr is not None
    keep, drop, zone_h = variant.keep, variant.rec, variant.zone_h
    gx, h_state, c_state, y, m_all, gates, c_all, rec = lstm_forward_buffers(
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, save)
    order = list(sched.order())
    masked = keep is not None or drop is not None
    gemm_in = h_state
    if masked and order:
        gemm_in = (h0 * scale_rows(variant, sched, order[0], batch)).to(h0.dtype)
    for k, t in enumerate(order):
        rows, bs = sched.rows(t), sched.batch_sizes[t]
        step, nxt = _step(variant, sched, order, k, True, proj)
        if step.carry:
            step = step._replace(carry=gemm_in)
        else:
            step = step._replace(carry=None)
        torch.mm(gemm_in[:bs], w_hh.t(), out=rec[:bs])
        lstm_step_fwd(gx[rows], rec[:bs], c_state, m_all[rows], None if proj else h_state,
                      gates[rows] if save else None, c_all[rows] if save else None, step)
        if proj:
            torch.mm(m_all[rows], w_hr.t(), out=y[rows])
            if zone_h is not None:
                h_in = h_state[:bs] if keep is None else h_state[:bs] * keep[rows, None]
                y[rows] = _blend(zone_h[rows], h_in, y[rows])
            h_state[:bs] = y[rows]
            if masked and nxt is not None:
                n = min(bs, sched.batch_sizes[nxt])
                gemm_in[:n] = h_state[:n] * scale_rows(variant, sched, nxt, n)
    return (y, h_state, c_state.to(x.dtype),
            gates if save else x.new_empty(0), c_all if save else x.new_empty(0),
            m_all if proj and save else x.new_empty(0))


def lstm_backward(dy, dh_n, dc_n, x, sched, h0, c0, w_ih, w_hh, w_hr, y, gates, c_all, m_all,
                  has_bias, need_dx, variant):
    """stepwise.lstm_backward with a variant: (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)."""
    n_rows, batch, hidden = x.shape[0], h0.shape[0], c0.shape[1]
    proj = w_hr is not None
    keep, zone_h = variant.keep, variant.zone_h
    dgemm = torch.zeros_like(dh_n)  # (B, P) d gates @ W_hh of the step undone last
    ddirect = dh_n.clone()  # (B, P) the rest of dL/dh entering that step (dh_n at first)
    dc = dc_n.to(state_dtype(x.dtype)).clone()  # (B, H)
    c0_state = c0.to(dc.dtype)
    dgates = x.new_empty(n_rows, 4 * hidden)
    dh_all = x.new_empty(n_rows, h0.shape[1]) if proj else None
    dm_buf = x.new_empty(batch, hidden) if proj else None
    order = list(sched.order())
    for k in reversed(range(len(order))):
        t = order[k]
        rows, bs = sched.rows(t), sched.batch_sizes[t]
        c_prev, n_prev = _prev_rows(c_all, sched, t)
        step, nxt = _step(variant, sched, order, k, False, proj)
        if proj:  # the h side in torch ops, the c side in the kernel
            dh = dy[rows] + ddirect[:bs]
            n = min(bs, sched.batch_sizes[nxt]) if nxt is not None else 0
            scale = scale_rows(variant, sched, nxt, n) if nxt is not None else None
            dh[:n] += dgemm[:n] * scale if scale is not None else dgemm[:n]
            direct = torch.zeros_like(dh)
            if zone_h is not None:
                z_h = zone_h[rows].to(dh.dtype)
                direct, dh = z_h * dh, (1 - z_h) * dh
            ddirect[:bs] = direct if keep is None else direct * keep[rows, None]
            dh_all[rows] = dh
            torch.mm(dh_all[rows], w_hr, out=dm_buf[:bs])
            lstm_step_bwd(dm_buf[:bs], None, dc, gates[rows], c_all[rows], c_prev, n_prev,
                          c0_state, dgates[rows], step._replace(carry=None))
        else:
            lstm_step_bwd(dy[rows], dgemm, dc, gates[rows], c_all[rows], c_prev, n_prev,
                          c0_state, dgates[rows], step._replace(carry=ddirect))
        torch.mm(dgates[rows], w_hh, out=dgemm[:bs])
    dh0 = _initial_state_grad(dgemm, ddirect, variant, sched, order)
    dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr = lstm_weight_grads(
        dgates, x, y, h0, sched, w_ih, has_bias, need_dx, dh_all, m_all,
        prev=gemm_inputs(y, h0, sched, variant))
    return dx, dh0, dc.to(x.dtype), dw_ih, dw_hh, db_ih, db_hh, dw_hr


def _initial_state_grad(dgemm, ddirect, variant, sched, order):
    scale = scale_rows(variant, sched, order[0], dgemm.shape[0]) if order else None
    return (ddirect + (dgemm * scale if scale is not None else dgemm)).to(dgemm.dtype)


# ----------------------------------------------------------------------------- GRU
def gru_forward(x, sched, h0, w_ih, w_hh, b_ih, b_hh, save, variant):
    """stepwise.gru_forward with a variant: y, h_n, gates."""
    n_rows, batch, hidden = x.shape[0], h0.shape[0], h0.shape[1]
    gx = input_projection(x, w_ih, b_ih)  # (N, 3H)
    h_state = h0.clone()
    y = x.new_empty(n_rows, hidden)
    gates = x.new_empty(n_rows, 4 * hidden) if save else None
    rec = x.new_empty(batch, 3 * hidden)
    order = list(sched.order())
    masked = variant.keep is not None or variant.rec is not None
    gemm_in = h_state
    if masked and order:
        gemm_in = (h0 * scale_rows(variant, sched, order[0], batch)).to(h0.dtype)
    for k, t in enumerate(order):
        rows, bs = sched.rows(t), sched.batch_sizes[t]
        step, _ = _step(variant, sched, order, k, True)
        step = step._replace(carry=gemm_in if step.carry else None)
        if b_hh is None:
            torch.mm(gemm_in[:bs], w_hh.t(), out=rec[:bs])
        else:
            torch.addmm(b_hh, gemm_in[:bs], w_hh.t(), out=rec[:bs])
        gru_step_fwd(gx[rows], rec[:bs], h_state, y[rows], gates[rows] if save else None, step)
    return y, h_state, gates if save else x.new_empty(0)


def gru_backward(dy, dh_n, x, sched, h0, w_ih, w_hh, y, gates, has_bias, need_dx, variant):
    """stepwise.gru_backward with a variant: (dx, dh0, dw_ih, dw_hh, db_ih, db_hh)."""
    n_rows, hidden = x.shape[0], h0.shape[1]
    dgemm = torch.zeros_like(dh_n)
    ddirect = dh_n.clone()
    dgx = x.new_empty(n_rows, 3 * hidden)
    drec = x.new_empty(n_rows, 3 * hidden)
    order = list(sched.order())
    for k in reversed(range(len(order))):
        t = order[k]
        rows, bs = sched.rows(t), sched.batch_sizes[t]
        h_prev, n_prev = _prev_rows(y, sched, t)
        step, _ = _step(variant, sched, order, k, False)
        gru_step_bwd(dy[rows], dgemm, gates[rows], h_prev, n_prev, h0, dgx[rows], drec[rows],
                     step._replace(carry=ddirect))
        torch.mm(drec[rows], w_hh, out=dgemm[:bs])
    dh0 = _initial_state_grad(dgemm, ddirect, variant, sched, order)
    dx, dw_ih, dw_hh, db_ih, db_hh = gru_weight_grads(
        dgx, drec, x, y, h0, sched, w_ih, has_bias, need_dx,
        prev=gemm_inputs(y, h0, sched, variant))
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh
