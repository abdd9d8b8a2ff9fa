"""Persistent LSTM kernels: the whole time loop of one layer-direction in one launch.

Each program owns BLOCK_H hidden units (all four gates i, f, g, o of them) and
every batch row (padded to BLOCK_B). Per step, forward:
    pre = gx[rows of t] + h_{t-1} @ W_hh[q*H + units, :]^T      (q = i, f, g, o)
    c = f * c + i * g ;  m = o * tanh(c)    -> y[rows of t, units]
and one grid meeting (kernels/grid_sync.py): a program arrives once its slice of
h_t is stored and waits for the others just before it needs h_t, loading the
next step's input projection in between. The four gates of the program's units
are one fused tile, so one dot per step serves them all
(persistent_tiles.gate_columns). h_{t-1} is read from the rows of y written at the
previous step (rows that start at t, possible in the reverse direction of a
packed batch, read h0), so y itself is the exchange buffer: its rows are
written once and never overwritten, so no double buffer is needed. c, and the
own slice of h (for h_n), stay in registers; rows past a step's batch size
keep their state, as in the stepwise backend.

Backward undoes the steps in reverse order, carrying dh and dc in registers:
    dh[rows < bs of the step undone before] = dgates[those rows] @ W_hh[:, units]
then the pointwise LSTM backward of the step. The gate gradients (N, 4H) are
both the output (for the weight-gradient GEMMs after the loop) and the
exchange buffer of the recurrence. One extra iteration after the last step
produces dh0.

With a projection (proj_size = P), h_t = m_t W_hr^T is P wide and needs all of
m_t: each program writes its units of m_t to an (N, H) buffer (also what backward
saves), the grid meets a second time, and each program projects a BLOCK_O slice
of the P columns (W_hr streamed from L2; it is small next to W_hh). Backward
likewise: the program's P-columns of dr = dy + dh are written to an (N, P)
buffer (the dW_hr GEMM's input), a second meeting, then dm = dr W_hr[:, units].
Without a projection BLOCK_O = BLOCK_H and the columns of h are the units.

Issue 18's options are constexpr flags, with stepwise's math (cell_math: zoneout,
row_keep, recurrent_scale): KEEP zeroes c_{t-1} / h_{t-1} where a segment restarts,
ZONE_C / ZONE_H are zoneout, and with KEEP or DROP (recurrent dropout) the exchange
buffer is `xin` (N, R), h_t * keep_next * drop, written next to y (`h0in` = h0 * keep *
drop for rows that start from h0). Backward carries the direct part of dL/dh_{t-1}
(zoneout's, dh_n at first) in registers and scales the exchanged gradient by keep * drop.

The launchers return None when the grid barrier failed (grid not co-resident);
the caller then reruns the stepwise backend. Every tensor they take is row-major (ops.py
makes the states, weights and incoming gradients so; the rest are fresh buffers), so they
pass row strides from the shapes: twelve stride() calls cost ~4 µs a launch (issue 17).
The variant masks keep their own strides (a zoneout mask in eval has row stride 0). A
pointer that the launch's flags leave unread (W_hr without PROJ, the saved gates without
SAVE, the masks of options that are off) is passed as None, which Triton makes a constexpr:
a plain layer's launch then keys and passes ten tensors fewer.
"""
import triton
import triton.language as tl

from .cell_math import (load_gates4, lstm_cell_backward, lstm_cell_forward, recurrent_scale,
                        row_keep, store_gates4, zoneout, zoneout_backward)
from .config import state_dtype
from .grid_sync import launch_failed, new_sync_state
from .launch import prepared
from .persistent_config import (PersistentPlan, forward_plan, launch_constants, pad_dot,
                                schedule_tensors, split_k)
from .persistent_tiles import (backward_step_rows, forward_step_rows, gate_columns, load_rows,
                               program_tile, recurrent_matmul, recurrent_matmul_partials,
                               recurrent_source, resident_weights, split_gates, step_at,
                               step_rows, step_tile)
from .step_tags import exchange_arrive, exchange_start, exchange_wait
from .step_variant import variant_args
from .tiles import load_gate, store_gate


@triton.jit(do_not_specialize=["T", "spin_limit"])
def lstm_persistent_fwd_kernel(
    gx_ptr,  # (N, 4H) x W_ih^T + b_ih + b_hh of every step
    h0_ptr, c0_ptr,  # (B, R), (B, H) initial states (R = P with a projection, else H)
    w_hh_ptr,  # (4H, R)
    w_hr_ptr,  # (P, H) projection (PROJ)
    y_ptr,  # (N, R) out, and h_{t-1} of the next step
    m_ptr,  # (N, H) unprojected outputs (PROJ: the exchange buffer of the projection)
    h_n_ptr, c_n_ptr,  # (B, R), (B, H) out
    gates_ptr, c_save_ptr,  # (N, 4H) activated gates, (N, H) cell states: out when SAVE
    bs_ptr, off_ptr, sync_ptr,  # (T,) batch sizes, (T,) first rows, int64 barrier word
    xin_ptr, h0in_ptr,  # (N, R), (B, R) masked GEMM inputs (KEEP or DROP)
    keep_ptr, drop_ptr, zc_ptr, zh_ptr,  # (N,), (B, R), (N, H), (N, R): issue 18's options
    T, B, H, R,
    stride_gx, stride_h0, stride_c0, stride_w, stride_whr, stride_y, stride_m, stride_hn,
    stride_cn, stride_gates, stride_cs, spin_limit,
    stride_xin, stride_h0in, stride_drop, stride_zc, stride_zh,
    KEEP: tl.constexpr, DROP: tl.constexpr, ZONE_C: tl.constexpr, ZONE_H: tl.constexpr,
    REVERSE: tl.constexpr, SAVE: tl.constexpr, PROJ: tl.constexpr, RESIDENT: tl.constexpr,
    DOT: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr, PROJ_SPLIT: tl.constexpr,
    KP: tl.constexpr, NP: tl.constexpr, PARTIALS: tl.constexpr, TAGS: tl.constexpr,
    TRANS: tl.constexpr, PADDED: tl.constexpr,
):
    row, units, unit_ok, state_mask = program_tile(BLOCK_B, BLOCK_H, B, H)
    # this program's columns of the recurrent state h (R wide): its units, or with a
    # projection a BLOCK_O slice of the P projected columns
    _, cols, col_ok, out_mask = program_tile(BLOCK_B, BLOCK_O, B, R)
    c = load_gate(c0_ptr, row, units, stride_c0, 0, H, state_mask, COMPUTE)  # (BLOCK_B, BLOCK_H)
    h = load_gate(h0_ptr, row, cols, stride_h0, 0, R, out_mask, COMPUTE)  # (BLOCK_B, BLOCK_O)
    # W_hh^T restricted to the four gates of this program's units: one (R, 4*BLOCK_H) tile
    w_rows, w_ok = gate_columns(BLOCK_H, H, 4)
    # TRANS (persistent_config.forward_plan's narrow option): held transposed, the dot's M
    w = resident_weights(w_hh_ptr, R, w_rows, w_ok, 1, stride_w, RESIDENT, SPLIT, KP, NP, TRANS)
    meetings: tl.constexpr = 2 if PROJ else 1  # per step: the projection needs all of m
    masked_in: tl.constexpr = KEEP or DROP  # the GEMM reads xin / h0in instead of y / h0
    src_ptr, stride_src, alt_ptr, stride_alt = recurrent_source(
        y_ptr, stride_y, h0_ptr, stride_h0, xin_ptr, stride_xin, h0in_ptr, stride_h0in, masked_in)
    # meeting 1: the whole grid is running (TAGS: step-tagged exchange, kernels/step_tags.py)
    n_prog, ok = exchange_start(sync_ptr, TAGS)
    s = 0
    while (s < T) & ok:
        bs, off, bs_p, off_p = forward_step_rows(s, T, B, bs_ptr, off_ptr, REVERSE, PADDED)
        active, mask, rows = step_tile(row, off, bs, unit_ok)
        # no other program writes the input projection: its load overlaps the wait
        x_i, x_f, x_g, x_o = load_gates4(gx_ptr, rows, units, stride_gx, H, mask, COMPUTE)
        c_in = c
        h_in = h
        if KEEP:
            keep = row_keep(keep_ptr + off, row, bs, COMPUTE)
            c_in = c * keep
            h_in = h * keep
        ok = exchange_wait(sync_ptr, meetings * s + 1, n_prog, spin_limit, TAGS)
        # h_{t-1}: rows continuing from the previous step from y, the others from h0
        if PARTIALS:  # a plan option (persistent_config.with_chain): one partial per W piece
            pre = recurrent_matmul_partials(tl.zeros((BLOCK_B, 4 * BLOCK_H), COMPUTE), src_ptr,
                                            off_p, tl.minimum(bs_p, bs), stride_src, alt_ptr,
                                            stride_alt, bs, row, w, w_hh_ptr, w_rows, w_ok, 1,
                                            stride_w, R, RESIDENT, SPLIT, KP, NP, BLOCK_K, DOT,
                                            TRANS)
        else:
            pre = recurrent_matmul(tl.zeros((BLOCK_B, 4 * BLOCK_H), COMPUTE), src_ptr, off_p,
                                   tl.minimum(bs_p, bs), stride_src, alt_ptr, stride_alt, bs,
                                   row, w, w_hh_ptr, w_rows, w_ok, 1, stride_w, R, RESIDENT,
                                   SPLIT, KP, NP, BLOCK_K, DOT, TRANS)
        pre_i, pre_f, pre_g, pre_o = split_gates(pre, BLOCK_B, BLOCK_H)
        i, f, g, o, c_new, m = lstm_cell_forward(pre_i + x_i, pre_f + x_f, pre_g + x_g,
                                                 pre_o + x_o, c_in)
        if ZONE_C:
            c_new = zoneout(load_gate(zc_ptr, rows, units, stride_zc, 0, H, mask, COMPUTE),
                            c_in, c_new)
        c = tl.where(active, c_new, c)
        if PROJ:  # h_t = m_t W_hr^T: every program needs all of m_t, hence a second meeting
            store_gate(m_ptr, rows, units, stride_m, 0, H, m, mask)
            exchange_arrive(sync_ptr, meetings * s + 2, TAGS)
            ok = ok & exchange_wait(sync_ptr, meetings * s + 2, n_prog, spin_limit, TAGS)
            h_t = recurrent_matmul(tl.zeros((BLOCK_B, BLOCK_O), COMPUTE), m_ptr, off, bs,
                                   stride_m, m_ptr, 0, bs, row, 0, w_hr_ptr, cols, col_ok, 1,
                                   stride_whr, H, False, PROJ_SPLIT, BLOCK_K, 1, BLOCK_K, DOT)
        else:
            h_t = m
        if ZONE_H:
            h_t = zoneout(load_gate(zh_ptr, rows, cols, stride_zh, 0, R, active & col_ok,
                                    COMPUTE), h_in, h_t)
        store_gate(y_ptr, rows, cols, stride_y, 0, R, h_t, active & col_ok)
        if masked_in:  # the next step's GEMM input: h_t * keep of the next step * drop
            bs_x, off_x = step_rows(bs_ptr, off_ptr, step_at(s + 1, T, REVERSE), T, B,
                                     PADDED)
            scale = recurrent_scale(keep_ptr + off_x, bs_x, drop_ptr, stride_drop, row, cols,
                                    R, active & col_ok, KEEP, DROP, COMPUTE)
            store_gate(xin_ptr, rows, cols, stride_xin, 0, R, h_t * scale,
                       active & col_ok & (row < bs_x))
        exchange_arrive(sync_ptr, meetings * (s + 1) + 1, TAGS)
        if SAVE:  # read by backward only: stored after the arrive, off the step's critical path
            store_gates4(gates_ptr, rows, units, stride_gates, H, i, f, g, o, mask)
            store_gate(c_save_ptr, rows, units, stride_cs, 0, H, c_new, mask)
        h = tl.where(active, h_t, h)
        s += 1
    store_gate(h_n_ptr, row, cols, stride_hn, 0, R, h, out_mask)
    store_gate(c_n_ptr, row, units, stride_cn, 0, H, c, state_mask)


@triton.jit(do_not_specialize=["T", "spin_limit"])
def lstm_persistent_bwd_kernel(
    dy_ptr,  # (N, R) gradient of y
    dh_n_ptr, dc_n_ptr,  # (B, R), (B, H) gradients of the final states
    gates_ptr, c_save_ptr, c0_ptr,  # (N, 4H), (N, H) saved by forward; (B, H) c0
    w_hh_ptr,  # (4H, R)
    w_hr_ptr,  # (P, H) projection (PROJ)
    dr_ptr,  # (N, P) out (PROJ): gradient of each step's projected output, all paths summed
    dgates_ptr,  # (N, 4H) out: pre-activation gate gradients, and the recurrence's exchange
    dh0_ptr, dc0_ptr,  # (B, R), (B, H) out
    bs_ptr, off_ptr, sync_ptr,
    keep_ptr, drop_ptr, zc_ptr, zh_ptr,  # issue 18's options, as in forward
    T, B, H, R,
    stride_dy, stride_dhn, stride_dcn, stride_gates, stride_cs, stride_c0, stride_w, stride_whr,
    stride_dr, stride_dg, stride_dh0, stride_dc0, spin_limit,
    stride_drop, stride_zc, stride_zh,
    KEEP: tl.constexpr, DROP: tl.constexpr, ZONE_C: tl.constexpr, ZONE_H: tl.constexpr,
    REVERSE: tl.constexpr, PROJ: tl.constexpr, RESIDENT: tl.constexpr, DOT: tl.constexpr,
    COMPUTE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr, SPLIT: tl.constexpr, PROJ_SPLIT: tl.constexpr, KP: tl.constexpr,
    NP: tl.constexpr, TAGS: tl.constexpr, PADDED: tl.constexpr,
):
    row, units, unit_ok, state_mask = program_tile(BLOCK_B, BLOCK_H, B, H)
    _, cols, col_ok, out_mask = program_tile(BLOCK_B, BLOCK_O, B, R)  # columns of h (forward)
    dh = load_gate(dh_n_ptr, row, cols, stride_dhn, 0, R, out_mask, COMPUTE)  # carried dh
    dc = load_gate(dc_n_ptr, row, units, stride_dcn, 0, H, state_mask, COMPUTE)  # carried dc
    variant: tl.constexpr = KEEP or DROP or ZONE_C or ZONE_H
    direct = dh  # variant: dL/dh_{t-1} not through the GEMM (zoneout's part; dh_n at first)
    K = 4 * H
    w = resident_weights(w_hh_ptr, K, cols, col_ok, stride_w, 1, RESIDENT, SPLIT, KP, NP)
    meetings: tl.constexpr = 2 if PROJ else 1
    n_prog, ok = exchange_start(sync_ptr, TAGS)
    s = 0
    while (s < T + 1) & ok:  # iteration T only finishes dh0
        bs, off, bs_p, off_p, bs_n, off_n = backward_step_rows(s, T, B, bs_ptr, off_ptr, REVERSE,
                                                                 PADDED)
        active, mask, rows = step_tile(row, off, bs, unit_ok)
        # what forward saved for this step (no other program writes it) overlaps the wait
        i, f, g, o = load_gates4(gates_ptr, rows, units, stride_gates, H, mask, COMPUTE)
        c = load_gate(c_save_ptr, rows, units, stride_cs, 0, H, mask, COMPUTE)
        c_prev = load_rows(c_save_ptr, off_p, tl.minimum(bs_p, bs), stride_cs, c0_ptr, stride_c0,
                           bs, row, units, H).to(COMPUTE)
        dy = load_gate(dy_ptr, rows, cols, stride_dy, 0, R, active & col_ok, COMPUTE)
        ok = exchange_wait(sync_ptr, meetings * s + 1, n_prog, spin_limit, TAGS)
        rec = recurrent_matmul(tl.zeros((BLOCK_B, BLOCK_O), COMPUTE), dgates_ptr, off_n, bs_n,
                               stride_dg, dgates_ptr, 0, bs_n, row, w, w_hh_ptr, cols, col_ok,
                               stride_w, 1, K, RESIDENT, SPLIT, KP, NP, BLOCK_K, DOT)
        if variant:
            if KEEP or DROP:
                rec = rec * recurrent_scale(keep_ptr + off_n, bs_n, drop_ptr, stride_drop, row,
                                            cols, R, (row < bs_n) & col_ok, KEEP, DROP, COMPUTE)
            dh = tl.where(row < bs_n, rec, 0.0) + direct
            dh_t = dy + dh
            direct_t = tl.zeros_like(dh_t)
            if ZONE_H:
                z_h = load_gate(zh_ptr, rows, cols, stride_zh, 0, R, active & col_ok, COMPUTE)
                direct_t, dh_t = zoneout_backward(z_h, dh_t)
            if KEEP:
                keep = row_keep(keep_ptr + off, row, bs, COMPUTE)
                direct_t = direct_t * keep
                c_prev = c_prev * keep
            direct = tl.where(active, direct_t, direct)
        else:
            dh = tl.where(row < bs_n, rec, dh)
            dh_t = dy + dh
        if PROJ:  # dm = (dy + dh) W_hr needs every column of dy + dh: a second meeting
            store_gate(dr_ptr, rows, cols, stride_dr, 0, R, dh_t, active & col_ok)
            exchange_arrive(sync_ptr, meetings * s + 2, TAGS)
            ok = ok & exchange_wait(sync_ptr, meetings * s + 2, n_prog, spin_limit, TAGS)
            dm = recurrent_matmul(tl.zeros((BLOCK_B, BLOCK_H), COMPUTE), dr_ptr, off, bs,
                                  stride_dr, dr_ptr, 0, bs, row, 0, w_hr_ptr, units, unit_ok,
                                  stride_whr, 1, R, False, PROJ_SPLIT, BLOCK_K, 1, BLOCK_K, DOT)
        else:
            dm = dh_t
        dc_cell = dc
        if ZONE_C:  # c_save holds the zoned-out state: the cell's own c_t is recomputed
            z_c = load_gate(zc_ptr, rows, units, stride_zc, 0, H, mask, COMPUTE)
            dc_kept, dc_cell = zoneout_backward(z_c, dc)
            c = f * c_prev + i * g
        d_i, d_f, d_g, d_o, dc_prev = lstm_cell_backward(dm, dc_cell, i, f, g, o, c, c_prev)
        if ZONE_C:
            dc_prev += dc_kept
        if KEEP:
            dc_prev = dc_prev * keep
        store_gates4(dgates_ptr, rows, units, stride_dg, H, d_i, d_f, d_g, d_o, mask)
        exchange_arrive(sync_ptr, meetings * (s + 1) + 1, TAGS)
        dc = tl.where(active, dc_prev, dc)
        s += 1
    store_gate(dh0_ptr, row, cols, stride_dh0, 0, R, dh, out_mask)
    store_gate(dc0_ptr, row, units, stride_dc0, 0, H, dc, state_mask)


def lstm_persistent_fwd(gx, sched, h0, c0, w_hh, w_hr, save, plan: PersistentPlan,
                        variant=None, h0in=None):
    """Recurrence of one LSTM layer-direction from its input projection.

    gx: (N, 4H) with both biases; h0: (B, R), c0: (B, H); w_hh: (4H, R); w_hr: (P, H) or
    None (then R = H). Returns (y (N, R), h_n (B, R), c_n (B, H), gates (N, 4H) | None,
    c_all (N, H) | None, m_all (N, H) | None: the unprojected outputs, with a projection
    and save) with stepwise.lstm_forward's dtypes, or None when the grid barrier failed.
    variant: a variants.Variant or None; with its keep or rec, h0in (B, R) is
    h0 * keep * drop of the rows' first step (persistent.py computes it).
    """
    n_rows, (batch, width), hidden = gx.shape[0], h0.shape, c0.shape[1]
    proj = w_hr is not None
    plan = forward_plan(plan, hidden, width)  # the narrow option's own grid (issue 16)
    ptrs, strides, flags = variant_args(variant, c0)
    constants = launch_constants(plan, 4, hidden, width, False, gx.dtype, flags + (
        ("REVERSE", sched.reverse), ("PADDED", sched.padded), ("SAVE", save), ("PROJ", proj),
        ("BLOCK_O", plan.block_o),
        # the projection's dot is BLOCK_O (often 16) wide, with K = H
        ("PROJ_SPLIT", split_k(pad_dot(hidden), plan.block_o, plan.num_warps))))
    bs, off = schedule_tensors(sched, gx.device)
    sync = new_sync_state(gx.device, constants["TAGS"])
    y = gx.new_empty(n_rows, width)
    m_all = gx.new_empty(n_rows, hidden) if proj else y
    h_n, c_n = h0.new_empty(batch, width), c0.new_empty(batch, hidden)
    gates = gx.new_empty(n_rows, 4 * hidden) if save else None
    c_all = gx.new_empty(n_rows, hidden, dtype=state_dtype(gx.dtype)) if save else None
    xin = gx.new_empty(n_rows, width) if h0in is not None else None
    prepared(lstm_persistent_fwd_kernel).launch_with((plan.grid,), (
        # None for a pointer the flags leave unread: no tensor to key or pass (module docstring)
        gx, h0, c0, w_hh, w_hr, y, m_all if proj else None, h_n, c_n, gates, c_all, bs, off,
        sync, xin, h0in, *ptrs,
        sched.steps, batch, hidden, width,
        # row strides from the shapes: every tensor here is row-major (module docstring)
        4 * hidden, width, hidden, width, hidden if proj else 0,
        width, hidden if proj else width, width, hidden,
        4 * hidden if save else 0, hidden if save else 0, plan.spin_limit,
        width if xin is not None else 0, width if h0in is not None else 0, *strides),
        constants)
    # m_all is y itself without a projection: NaN-filled once (under capture or deferred)
    if launch_failed(sync, (y, m_all if proj else None, h_n, c_n, gates, c_all),
                     plan.deferred_check):
        return None
    return y, h_n, c_n, gates, c_all, (m_all if proj and save else None)


def lstm_persistent_bwd(dy, dh_n, dc_n, sched, c0, w_hh, w_hr, gates, c_all,
                        plan: PersistentPlan, variant=None):
    """Backward recurrence of one LSTM layer-direction.

    Returns (dgates (N, 4H), dh0 (B, R), dc0 (B, H), dr (N, P) | None) in dy's dtype, or
    None when the grid barrier failed; dr (with a projection) is the gradient of each
    step's projected output, for dW_hr = dr^T m. Weight gradients and dx are GEMMs over
    dgates (caller).
    """
    n_rows, (batch, hidden), width = dy.shape[0], dc_n.shape, dh_n.shape[1]
    proj = w_hr is not None
    ptrs, strides, flags = variant_args(variant, c0)
    constants = launch_constants(plan, 4, hidden, width, True, dy.dtype, flags + (
        ("REVERSE", sched.reverse), ("PADDED", sched.padded), ("PROJ", proj),
        ("BLOCK_O", plan.block_o),
        # dm = dr W_hr: BLOCK_H wide, with K = P
        ("PROJ_SPLIT", split_k(pad_dot(width), plan.block_h, plan.num_warps))))
    bs, off = schedule_tensors(sched, dy.device)
    sync = new_sync_state(dy.device, constants["TAGS"])
    dgates = dy.new_empty(n_rows, 4 * hidden)
    dr = dy.new_empty(n_rows, width) if proj else None
    dh0, dc0 = dh_n.new_empty(batch, width), dy.new_empty(batch, hidden)
    prepared(lstm_persistent_bwd_kernel).launch_with((plan.grid,), (
        dy, dh_n, dc_n, gates, c_all, c0, w_hh, w_hr, dr, dgates, dh0, dc0, bs, off, sync,
        *ptrs,
        sched.steps, batch, hidden, width,
        # row strides from the shapes: every tensor here is row-major (module docstring)
        width, width, hidden, 4 * hidden, hidden, hidden, width, hidden if proj else 0,
        width if proj else 0, 4 * hidden, width, hidden, plan.spin_limit, *strides),
        constants)
    if launch_failed(sync, (dgates, dh0, dc0, dr), plan.deferred_check):
        return None
    return dgates, dh0, dc0, dr
