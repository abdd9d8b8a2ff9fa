"""Fused LSTM step kernels (stepwise backend): gates, cell and hidden update.

Per timestep the recurrent GEMM `h_{t-1} @ W_hh^T` runs on cuBLAS (torch);
these kernels fuse everything pointwise around it. Gate order is torch's:
i, f, g, o.

    forward:  i, f, o = sigmoid(.), g = tanh(.)   of  gx + rec
              c_t = f * c_{t-1} + i * g ;  m_t = o * tanh(c_t)
    backward: from dm_t (= dh_t, or dh_t @ W_hr with a projection) and the
              carried dc, the pre-activation gradient of all four gates,
              and dc_{t-1} = dc * f.

Issue 18's options are constexpr flags (kernels/step_variant.py; all off compiles the
plain cell): KEEP zeroes c_{t-1} (and h_{t-1} for zoneout) where the segment restarts;
ZONE_C / ZONE_H blend the new state with the entering one (zoneout); CARRY writes the
next recurrent GEMM's input h_t * keep_next * drop (forward), or carries the direct part
of dL/dh_{t-1} (backward, which also scales the GEMM's gradient by the same factor).
With zoneout of c, backward recomputes the unzoned c_t = f c_{t-1} + i g from the gates.
"""
import triton
import triton.language as tl

from .cell_math import (load_gates4, lstm_cell_backward, lstm_cell_forward, recurrent_scale,
                        row_keep, store_gates4, zoneout, zoneout_backward)
from .config import compute_dtype, pointwise_launch
from .launch import prepared
from .step_variant import kernel_args
from .tiles import load_gate, load_previous, store_gate, tile_index


@triton.jit
def lstm_step_fwd_kernel(
    gx_ptr, rec_ptr,  # (n, 4H): input part (both biases folded in) and recurrent part
    c_ptr,  # (B, H) cell state in COMPUTE dtype, updated in place for rows < n
    m_ptr, h_state_ptr,  # (n, H) output rows; (B, H) recurrent state (unprojected case)
    gates_ptr, c_save_ptr,  # (n, 4H) activated gates, (n, H) cell states, for backward
    keep_ptr, keep_next_ptr, drop_ptr, zc_ptr, zh_ptr, carry_ptr,  # step_variant.py
    n_rows, H,
    stride_gx, stride_rec, stride_c, stride_m, stride_hs, stride_gates, stride_cs,
    n_next, stride_drop, stride_zc, stride_zh, stride_carry,
    WRITE_H_STATE: tl.constexpr, SAVE: tl.constexpr,
    KEEP: tl.constexpr, SCALE_KEEP: tl.constexpr, DROP: tl.constexpr, ZONE_C: tl.constexpr,
    ZONE_H: tl.constexpr, CARRY: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, units, mask = tile_index(BLOCK_B, BLOCK_H, n_rows, H)
    x_i, x_f, x_g, x_o = load_gates4(gx_ptr, rows, units, stride_gx, H, mask, COMPUTE)
    r_i, r_f, r_g, r_o = load_gates4(rec_ptr, rows, units, stride_rec, H, mask, COMPUTE)
    c_prev = load_gate(c_ptr, rows, units, stride_c, 0, H, mask, COMPUTE)
    if KEEP:
        keep = row_keep(keep_ptr, rows, n_rows, COMPUTE)
        c_prev = c_prev * keep
    i, f, g, o, c, m = lstm_cell_forward(x_i + r_i, x_f + r_f, x_g + r_g, x_o + r_o, c_prev)
    if ZONE_C:
        c = zoneout(load_gate(zc_ptr, rows, units, stride_zc, 0, H, mask, COMPUTE), c_prev, c)
    if ZONE_H:  # unprojected layers only: h_{t-1} is the recurrent state
        h_prev = load_gate(h_state_ptr, rows, units, stride_hs, 0, H, mask, COMPUTE)
        if KEEP:
            h_prev = h_prev * keep
        m = zoneout(load_gate(zh_ptr, rows, units, stride_zh, 0, H, mask, COMPUTE), h_prev, m)
    store_gate(c_ptr, rows, units, stride_c, 0, H, c, mask)
    store_gate(m_ptr, rows, units, stride_m, 0, H, m, mask)
    if WRITE_H_STATE:
        store_gate(h_state_ptr, rows, units, stride_hs, 0, H, m, mask)
    if CARRY:
        scale = recurrent_scale(keep_next_ptr, n_next, drop_ptr, stride_drop, rows, units, H,
                                mask, SCALE_KEEP, DROP, COMPUTE)
        store_gate(carry_ptr, rows, units, stride_carry, 0, H, m * scale, mask & (rows < n_next))
    if SAVE:
        store_gates4(gates_ptr, rows, units, stride_gates, H, i, f, g, o, mask)
        store_gate(c_save_ptr, rows, units, stride_cs, 0, H, c, mask)


@triton.jit
def lstm_step_bwd_kernel(
    dm_ptr, dh_rec_ptr,  # (n, H) output gradient rows; (B, H) gradient carried from step t+1
    dc_ptr,  # (B, H) carried cell gradient in COMPUTE dtype, updated in place
    gates_ptr, c_save_ptr,  # (n, 4H), (n, H) saved by forward for this step
    c_prev_ptr, n_prev, c0_ptr,  # c_{t-1}: rows < n_prev from the previous step, others from c0
    dgates_ptr,  # (n, 4H) pre-activation gate gradients (out)
    keep_ptr, keep_next_ptr, drop_ptr, zc_ptr, zh_ptr, carry_ptr,  # step_variant.py
    n_rows, H,
    stride_dm, stride_dhr, stride_dc, stride_gates, stride_cs, stride_cp, stride_c0, stride_dg,
    n_next, stride_drop, stride_zc, stride_zh, stride_carry,
    ADD_DH_REC: tl.constexpr,
    KEEP: tl.constexpr, SCALE_KEEP: tl.constexpr, DROP: tl.constexpr, ZONE_C: tl.constexpr,
    ZONE_H: tl.constexpr, CARRY: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, units, mask = tile_index(BLOCK_B, BLOCK_H, n_rows, H)
    dm = load_gate(dm_ptr, rows, units, stride_dm, 0, H, mask, COMPUTE)
    if ADD_DH_REC:
        dh_rec = load_gate(dh_rec_ptr, rows, units, stride_dhr, 0, H, mask, COMPUTE)
        if SCALE_KEEP or DROP:
            dh_rec = dh_rec * recurrent_scale(keep_next_ptr, n_next, drop_ptr, stride_drop,
                                              rows, units, H, mask, SCALE_KEEP, DROP, COMPUTE)
        dm += dh_rec
    if CARRY:
        dm += load_gate(carry_ptr, rows, units, stride_carry, 0, H, mask, COMPUTE)
    direct = tl.zeros([BLOCK_B, BLOCK_H], COMPUTE)  # dL/dh_{t-1} not through the GEMM
    if ZONE_H:
        z_h = load_gate(zh_ptr, rows, units, stride_zh, 0, H, mask, COMPUTE)
        direct, dm = zoneout_backward(z_h, dm)
    i, f, g, o = load_gates4(gates_ptr, rows, units, stride_gates, H, mask, COMPUTE)
    c = load_gate(c_save_ptr, rows, units, stride_cs, 0, H, mask, COMPUTE)
    c_prev = load_previous(c_prev_ptr, c0_ptr, rows, units, stride_cp, stride_c0, n_prev, H,
                           mask, COMPUTE)

    if KEEP:
        keep = row_keep(keep_ptr, rows, n_rows, COMPUTE)
        c_prev = c_prev * keep

    dc = load_gate(dc_ptr, rows, units, stride_dc, 0, H, mask, COMPUTE)
    if ZONE_C:  # c holds the zoned-out state: the cell's own c_t is recomputed
        z_c = load_gate(zc_ptr, rows, units, stride_zc, 0, H, mask, COMPUTE)
        dc_kept, dc = zoneout_backward(z_c, dc)
        c = f * c_prev + i * g
    d_i, d_f, d_g, d_o, dc_prev = lstm_cell_backward(dm, dc, i, f, g, o, c, c_prev)
    if ZONE_C:
        dc_prev += dc_kept
    if KEEP:
        dc_prev = dc_prev * keep
        direct = direct * keep
    store_gates4(dgates_ptr, rows, units, stride_dg, H, d_i, d_f, d_g, d_o, mask)
    store_gate(dc_ptr, rows, units, stride_dc, 0, H, dc_prev, mask)
    if CARRY:
        store_gate(carry_ptr, rows, units, stride_carry, 0, H, direct, mask)


def lstm_step_fwd(gx, rec, c, m, h_state, gates, c_save, variant=None):
    """One LSTM step over the first `gx.shape[0]` batch rows.

    gx, rec: (n, 4H); c: (B, H) state, updated in place; m: (n, H) output rows;
    h_state: (B, H) recurrent state or None (projected layers set it themselves);
    gates, c_save: (n, 4H), (n, H) for backward, or None when nothing is saved;
    variant: a step_variant.StepVariant, or None for the plain cell.
    """
    n, H = gx.shape[0], c.shape[1]
    if n == 0:
        return
    grid, block_b, block_h = pointwise_launch(n, H)
    save = gates is not None
    pointers, integers, flags = kernel_args(variant)
    prepared(lstm_step_fwd_kernel)[grid](
        gx, rec, c, m, h_state if h_state is not None else m,
        gates if save else gx, c_save if save else c, *pointers,
        n, H,
        gx.stride(0), rec.stride(0), c.stride(0), m.stride(0),
        h_state.stride(0) if h_state is not None else 0,
        gates.stride(0) if save else 0, c_save.stride(0) if save else 0, *integers,
        WRITE_H_STATE=h_state is not None, SAVE=save, COMPUTE=compute_dtype(gx.dtype),
        BLOCK_B=block_b, BLOCK_H=block_h, **flags,
    )


def lstm_step_bwd(dm, dh_rec, dc, gates, c_save, c_prev, n_prev, c0, dgates, variant=None):
    """Backward of one LSTM step over the first `dm.shape[0]` rows.

    dm: (n, H) gradient of the step's output rows; dh_rec: (B, H) gradient
    carried through the recurrence, added to dm when given (None when the
    caller already folded it in, as the projected path does); dc: (B, H)
    carried cell gradient, replaced in place by dc_{t-1}; c_prev / c0: where
    c_{t-1} lives (rows < n_prev in c_prev, the rest in c0); dgates: (n, 4H) out;
    variant: a step_variant.StepVariant (dh_rec is then the GEMM's gradient, scaled in the
    kernel, and variant.carry the direct part), or None for the plain cell.
    """
    n, H = dm.shape[0], dc.shape[1]
    if n == 0:
        return
    grid, block_b, block_h = pointwise_launch(n, H)
    pointers, integers, flags = kernel_args(variant)
    prepared(lstm_step_bwd_kernel)[grid](
        dm, dh_rec if dh_rec is not None else dm, dc, gates, c_save,
        c_prev if c_prev is not None else c0, n_prev, c0, dgates, *pointers,
        n, H,
        dm.stride(0), dh_rec.stride(0) if dh_rec is not None else 0, dc.stride(0),
        gates.stride(0), c_save.stride(0),
        c_prev.stride(0) if c_prev is not None else 0, c0.stride(0), dgates.stride(0),
        *integers,
        ADD_DH_REC=dh_rec is not None, COMPUTE=compute_dtype(dm.dtype),
        BLOCK_B=block_b, BLOCK_H=block_h, **flags,
    )
