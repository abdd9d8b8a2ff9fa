"""Persistent GRU kernels: the whole time loop of one layer-direction in one launch.

Same structure as persistent_lstm.py (read its docstring): each program owns
BLOCK_H hidden units, all three gates r, z, n of them (one fused tile with an
empty fourth slot), and meets the grid once per step; y is the exchange buffer
of h_{t-1}. Forward per step:
    rec_q = h_{t-1} @ W_hh[q*H + units, :]^T + b_hh[q*H + units]     (q = r, z, n)
    r = sigmoid(gx_r + rec_r) ; z = sigmoid(gx_z + rec_z) ; n = tanh(gx_n + r * rec_n)
    h = (1 - z) * n + z * h_{t-1}        (own slice of h_{t-1} kept in registers)
Backward carries dh in registers; per step undone
    dh[rows < bs of the step undone before] += drec[those rows] @ W_hh[:, units]
then the pointwise GRU backward (kernels/gru_pointwise.py gives the formulas),
writing dgx and drec (N, 3H): the outputs for the weight-gradient GEMMs after
the loop, and drec is the recurrence's exchange buffer.

Issue 18's options are constexpr flags as in persistent_lstm.py: KEEP (resets), DROP
(recurrent dropout; with KEEP the exchange is `xin` = h_t * keep_next * drop and `h0in`),
ZONE_H (zoneout; ZONE_C is always off, the GRU has no cell state). Row strides come from
the shapes, as in persistent_lstm.py (every tensor the launchers take is row-major).
"""
import triton
import triton.language as tl

from .cell_math import (gru_cell_backward, gru_cell_forward, load_gates4, recurrent_scale,
                        row_keep, store_gates3, store_gates4, zoneout,
                        zoneout_backward)
from .grid_sync import launch_failed, new_sync_state
from .launch import prepared
from .persistent_config import PersistentPlan, forward_plan, launch_constants, schedule_tensors
from .persistent_tiles import (backward_step_rows, forward_step_rows, gate_columns, load_rows,
                               program_tile, recurrent_matmul, recurrent_matmul_partials,
                               recurrent_source, resident_weights, split_gates, step_at,
                               step_rows, step_tile)
from .step_tags import exchange_arrive, exchange_start, exchange_wait
from .step_variant import variant_args
from .tiles import load_gate, store_gate


@triton.jit(do_not_specialize=["T", "spin_limit"])
def gru_persistent_fwd_kernel(
    gx_ptr,  # (N, 3H) x W_ih^T + b_ih of every step
    h0_ptr,  # (B, H)
    w_hh_ptr, b_hh_ptr,  # (3H, H), (3H,)
    y_ptr,  # (N, H) out, and h_{t-1} of the next step
    h_n_ptr,  # (B, H) out
    gates_ptr,  # (N, 4H) r, z, n, rec_n: out when SAVE
    bs_ptr, off_ptr, sync_ptr,
    xin_ptr, h0in_ptr,  # (N, H), (B, H) masked GEMM inputs (KEEP or DROP)
    keep_ptr, drop_ptr, zc_ptr, zh_ptr,  # issue 18's options (step_variant.variant_args)
    T, B, H,
    stride_gx, stride_h0, stride_w, stride_y, stride_hn, stride_gates, spin_limit,
    stride_xin, stride_h0in, stride_drop, stride_zc, stride_zh,
    KEEP: tl.constexpr, DROP: tl.constexpr, ZONE_C: tl.constexpr, ZONE_H: tl.constexpr,
    REVERSE: tl.constexpr, SAVE: tl.constexpr, HAS_BHH: tl.constexpr, RESIDENT: tl.constexpr,
    DOT: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr, SPLIT: tl.constexpr, KP: tl.constexpr,
    NP: tl.constexpr, PARTIALS: tl.constexpr, TAGS: tl.constexpr, TRANS: tl.constexpr,
    PADDED: tl.constexpr,
):
    row, units, unit_ok, state_mask = program_tile(BLOCK_B, BLOCK_H, B, H)
    h = load_gate(h0_ptr, row, units, stride_h0, 0, H, state_mask, COMPUTE)  # (BLOCK_B, BLOCK_H)
    # W_hh^T restricted to the three gates of this program's units: one (H, 4*BLOCK_H) tile
    w_rows, w_ok = gate_columns(BLOCK_H, H, 3)
    # TRANS (persistent_config.forward_plan's narrow option): held transposed, the dot's M
    w = resident_weights(w_hh_ptr, H, w_rows, w_ok, 1, stride_w, RESIDENT, SPLIT, KP, NP, TRANS)
    if HAS_BHH:  # b_hh in the same fused layout: the recurrent matmul starts from it
        b_hh = tl.load(b_hh_ptr + w_rows, mask=w_ok, other=0.0).to(COMPUTE)
    else:
        b_hh = tl.zeros(w_rows.shape, COMPUTE)
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
        x_r = load_gate(gx_ptr, rows, units, stride_gx, 0, H, mask, COMPUTE)
        x_z = load_gate(gx_ptr, rows, units, stride_gx, 1, H, mask, COMPUTE)
        x_n = load_gate(gx_ptr, rows, units, stride_gx, 2, H, mask, COMPUTE)
        h_in = h
        if KEEP:
            h_in = h * row_keep(keep_ptr + off, row, bs, COMPUTE)
        ok = exchange_wait(sync_ptr, s + 1, n_prog, spin_limit, TAGS)
        if PARTIALS:  # a plan option (persistent_config.with_chain): one partial per W piece
            rec = recurrent_matmul_partials(tl.zeros((BLOCK_B, 4 * BLOCK_H), COMPUTE) + b_hh,
                                            src_ptr, off_p, tl.minimum(bs_p, bs), stride_src,
                                            alt_ptr, stride_alt, bs, row, w, w_hh_ptr, w_rows,
                                            w_ok, 1, stride_w, H, RESIDENT, SPLIT, KP, NP,
                                            BLOCK_K, DOT, TRANS)
        else:
            rec = recurrent_matmul(tl.zeros((BLOCK_B, 4 * BLOCK_H), COMPUTE) + b_hh, src_ptr,
                                   off_p, tl.minimum(bs_p, bs), stride_src, alt_ptr, stride_alt,
                                   bs, row, w, w_hh_ptr, w_rows, w_ok, 1, stride_w, H, RESIDENT,
                                   SPLIT, KP, NP, BLOCK_K, DOT, TRANS)
        rec_r, rec_z, rec_n, _ = split_gates(rec, BLOCK_B, BLOCK_H)
        r, z, n, h_new = gru_cell_forward(x_r, x_z, x_n, rec_r, rec_z, rec_n, h_in)
        if ZONE_H:
            h_new = zoneout(load_gate(zh_ptr, rows, units, stride_zh, 0, H, mask, COMPUTE), h_in,
                            h_new)
        store_gate(y_ptr, rows, units, stride_y, 0, H, h_new, mask)
        if masked_in:  # the next step's GEMM input: h_t * keep of the next step * drop
            bs_x, off_x = step_rows(bs_ptr, off_ptr, step_at(s + 1, T, REVERSE), T, B,
                                     PADDED)
            scale = recurrent_scale(keep_ptr + off_x, bs_x, drop_ptr, stride_drop, row, units,
                                    H, mask, KEEP, DROP, COMPUTE)
            store_gate(xin_ptr, rows, units, stride_xin, 0, H, h_new * scale, mask & (row < bs_x))
        exchange_arrive(sync_ptr, s + 2, TAGS)
        if SAVE:  # read by backward only: stored after the arrive, off the step's critical path
            store_gates4(gates_ptr, rows, units, stride_gates, H, r, z, n, rec_n, mask)
        h = tl.where(active, h_new, h)
        s += 1
    store_gate(h_n_ptr, row, units, stride_hn, 0, H, h, state_mask)


@triton.jit(do_not_specialize=["T", "spin_limit"])
def gru_persistent_bwd_kernel(
    dy_ptr, dh_n_ptr,  # (N, H), (B, H)
    gates_ptr,  # (N, 4H) r, z, n, rec_n saved by forward
    y_ptr, h0_ptr,  # h_{t-1}: previous step's rows of y, or h0
    w_hh_ptr,  # (3H, H)
    dgx_ptr, drec_ptr,  # (N, 3H) out: gradients of the input and recurrent pre-activations
    dh0_ptr,  # (B, H) out
    bs_ptr, off_ptr, sync_ptr,
    keep_ptr, drop_ptr, zc_ptr, zh_ptr,  # issue 18's options, as in forward
    T, B, H,
    stride_dy, stride_dhn, stride_gates, stride_y, stride_h0, stride_w, stride_dgx,
    stride_drec, stride_dh0, spin_limit,
    stride_drop, stride_zc, stride_zh,
    KEEP: tl.constexpr, DROP: tl.constexpr, ZONE_C: tl.constexpr, ZONE_H: tl.constexpr,
    REVERSE: tl.constexpr, RESIDENT: tl.constexpr, DOT: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr,
    KP: tl.constexpr, NP: tl.constexpr, TAGS: tl.constexpr, PADDED: tl.constexpr,
):
    row, units, unit_ok, state_mask = program_tile(BLOCK_B, BLOCK_H, B, H)
    dh = load_gate(dh_n_ptr, row, units, stride_dhn, 0, H, state_mask, COMPUTE)  # carried dh
    K = 3 * H
    w = resident_weights(w_hh_ptr, K, units, unit_ok, stride_w, 1, RESIDENT, SPLIT, KP, NP)
    n_prog, ok = exchange_start(sync_ptr, TAGS)
    s = 0
    while (s < T + 1) & ok:  # iteration T only finishes dh0
        bs, off, bs_p, off_p, bs_n, off_n = backward_step_rows(s, T, B, bs_ptr, off_ptr, REVERSE,
                                                                 PADDED)
        active, mask, rows = step_tile(row, off, bs, unit_ok)
        # what forward saved for this step (no other program writes it) overlaps the wait
        dy = load_gate(dy_ptr, rows, units, stride_dy, 0, H, mask, COMPUTE)
        r, z, n, rec_n = load_gates4(gates_ptr, rows, units, stride_gates, H, mask, COMPUTE)
        h_prev = load_rows(y_ptr, off_p, tl.minimum(bs_p, bs), stride_y, h0_ptr, stride_h0,
                           bs, row, units, H).to(COMPUTE)
        ok = exchange_wait(sync_ptr, s + 1, n_prog, spin_limit, TAGS)
        rec = recurrent_matmul(tl.zeros((BLOCK_B, BLOCK_H), COMPUTE), drec_ptr, off_n, bs_n,
                               stride_drec, drec_ptr, 0, bs_n, row, w, w_hh_ptr, units, unit_ok,
                               stride_w, 1, K, RESIDENT, SPLIT, KP, NP, BLOCK_K, DOT)
        if KEEP or DROP:
            rec = rec * recurrent_scale(keep_ptr + off_n, bs_n, drop_ptr, stride_drop, row,
                                        units, H, (row < bs_n) & unit_ok, KEEP, DROP, COMPUTE)
        dh = tl.where(row < bs_n, dh + rec, dh)
        dh_t = dy + dh
        if ZONE_H:
            z_h = load_gate(zh_ptr, rows, units, stride_zh, 0, H, mask, COMPUTE)
            dh_kept, dh_t = zoneout_backward(z_h, dh_t)
        if KEEP:
            keep = row_keep(keep_ptr + off, row, bs, COMPUTE)
            h_prev = h_prev * keep
        d_r, d_z, d_n, dh_direct = gru_cell_backward(dh_t, r, z, n, rec_n, h_prev)
        if ZONE_H:
            dh_direct += dh_kept
        if KEEP:
            dh_direct = dh_direct * keep
        store_gates3(drec_ptr, rows, units, stride_drec, H, d_r, d_z, d_n * r, mask)
        exchange_arrive(sync_ptr, s + 2, TAGS)
        store_gates3(dgx_ptr, rows, units, stride_dgx, H, d_r, d_z, d_n, mask)  # read after it
        dh = tl.where(active, dh_direct, dh)
        s += 1
    store_gate(dh0_ptr, row, units, stride_dh0, 0, H, dh, state_mask)


def gru_persistent_fwd(gx, sched, h0, w_hh, b_hh, save, plan: PersistentPlan, variant=None,
                       h0in=None):
    """Recurrence of one GRU layer-direction from its input projection gx (N, 3H, with b_ih).

    Returns (y (N, H), h_n (B, H), gates (N, 4H) | None), or None when the barrier failed.
    variant, h0in: as for persistent_lstm.lstm_persistent_fwd.
    """
    n_rows, (batch, hidden) = gx.shape[0], h0.shape
    plan = forward_plan(plan, hidden, hidden)  # the narrow option's own grid (issue 16)
    ptrs, strides, flags = variant_args(variant, h0)
    constants = launch_constants(plan, 3, hidden, hidden, False, gx.dtype, flags + (
        ("REVERSE", sched.reverse), ("PADDED", sched.padded), ("SAVE", save),
        ("HAS_BHH", b_hh is not None)))
    bs, off = schedule_tensors(sched, gx.device)
    sync = new_sync_state(gx.device, constants["TAGS"])
    y = gx.new_empty(n_rows, hidden)
    h_n = h0.new_empty(batch, hidden)
    gates = gx.new_empty(n_rows, 4 * hidden) if save else None
    xin = gx.new_empty(n_rows, hidden) if h0in is not None else None
    prepared(gru_persistent_fwd_kernel).launch_with((plan.grid,), (
        # None for a pointer the flags leave unread, as in persistent_lstm.py
        gx, h0, w_hh, b_hh, y, h_n, gates, bs, off, sync, xin, h0in, *ptrs,
        sched.steps, batch, hidden,
        # row strides from the shapes: every tensor here is row-major (module docstring)
        3 * hidden, hidden, hidden, hidden, hidden, 4 * hidden if save else 0, plan.spin_limit,
        hidden if xin is not None else 0, hidden if h0in is not None else 0, *strides),
        constants)
    if launch_failed(sync, (y, h_n, gates), plan.deferred_check):
        return None
    return y, h_n, gates


def gru_persistent_bwd(dy, dh_n, sched, h0, w_hh, y, gates, plan: PersistentPlan,
                       variant=None):
    """Backward recurrence of one GRU layer-direction.

    Returns (dgx (N, 3H), drec (N, 3H), dh0 (B, H)), or None when the barrier failed.
    """
    n_rows, (batch, hidden) = dy.shape[0], h0.shape
    ptrs, strides, flags = variant_args(variant, h0)
    constants = launch_constants(plan, 3, hidden, hidden, True, dy.dtype, flags + (
        ("REVERSE", sched.reverse), ("PADDED", sched.padded)))
    bs, off = schedule_tensors(sched, dy.device)
    sync = new_sync_state(dy.device, constants["TAGS"])
    dgx, drec = dy.new_empty(n_rows, 3 * hidden), dy.new_empty(n_rows, 3 * hidden)
    dh0 = dh_n.new_empty(batch, hidden)
    prepared(gru_persistent_bwd_kernel).launch_with((plan.grid,), (
        dy, dh_n, gates, y, h0, w_hh, dgx, drec, dh0, bs, off, sync, *ptrs,
        sched.steps, batch, hidden,
        # row strides from the shapes: every tensor here is row-major (module docstring)
        hidden, hidden, 4 * hidden, hidden, hidden, hidden, 3 * hidden, 3 * hidden, hidden,
        plan.spin_limit, *strides),
        constants)
    if launch_failed(sync, (dgx, drec, dh0), plan.deferred_check):
        return None
    return dgx, drec, dh0
