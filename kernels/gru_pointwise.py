"""Fused GRU step kernels (stepwise backend). Gate order is torch's: r, z, n.

    r = sigmoid(gx_r + rec_r) ; z = sigmoid(gx_z + rec_z)
    n = tanh(gx_n + r * rec_n)          (rec includes b_hh, so b_hn sits inside r * .)
    h_t = (1 - z) * n + z * h_{t-1}

Backward, from dh (output gradient plus the carried recurrent gradient):
    dn = dh (1 - z) (1 - n^2);  dz = dh (h_{t-1} - n) z (1 - z);  dr = dn rec_n r (1 - r)
    d gx = [dr, dz, dn],  d rec = [dr, dz, dn * r],  dh_{t-1} = dh * z + d rec @ W_hh

Issue 18's options are constexpr flags, as in lstm_pointwise.py (kernels/step_variant.py):
KEEP zeroes h_{t-1} where the segment restarts, ZONE_H blends h_t with it (zoneout),
CARRY writes the next GEMM input h_t * keep_next * drop (forward) or carries the direct
part of dL/dh_{t-1} in its own buffer, dh_rec then holding only d rec @ W_hh (backward).
"""
import triton
import triton.language as tl

from .cell_math import (gru_cell_backward, gru_cell_forward, load_gates4, recurrent_scale,
                        row_keep, store_gates3, store_gates4, zoneout,
                        zoneout_backward)
from .config import compute_dtype, pointwise_launch
from .launch import prepared
from .step_variant import kernel_args
from .tiles import load_gate, load_previous, store_gate, tile_index


@triton.jit
def gru_step_fwd_kernel(
    gx_ptr, rec_ptr,  # (n, 3H): x W_ih^T + b_ih and h W_hh^T + b_hh
    h_state_ptr,  # (B, H) recurrent state, read and updated in place for rows < n
    y_ptr,  # (n, H) output rows
    gates_ptr,  # (n, 4H) r, z, n, rec_n for backward
    keep_ptr, keep_next_ptr, drop_ptr, zc_ptr, zh_ptr, carry_ptr,  # step_variant.py
    n_rows, H,
    stride_gx, stride_rec, stride_hs, stride_y, stride_gates,
    n_next, stride_drop, stride_zc, stride_zh, stride_carry,
    SAVE: tl.constexpr,
    KEEP: tl.constexpr, SCALE_KEEP: tl.constexpr, DROP: tl.constexpr, ZONE_C: tl.constexpr,
    ZONE_H: tl.constexpr, CARRY: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, units, mask = tile_index(BLOCK_B, BLOCK_H, n_rows, H)
    x_r = load_gate(gx_ptr, rows, units, stride_gx, 0, H, mask, COMPUTE)
    x_z = load_gate(gx_ptr, rows, units, stride_gx, 1, H, mask, COMPUTE)
    x_n = load_gate(gx_ptr, rows, units, stride_gx, 2, H, mask, COMPUTE)
    rec_r = load_gate(rec_ptr, rows, units, stride_rec, 0, H, mask, COMPUTE)
    rec_z = load_gate(rec_ptr, rows, units, stride_rec, 1, H, mask, COMPUTE)
    rec_n = load_gate(rec_ptr, rows, units, stride_rec, 2, H, mask, COMPUTE)
    h_prev = load_gate(h_state_ptr, rows, units, stride_hs, 0, H, mask, COMPUTE)
    if KEEP:
        h_prev = h_prev * row_keep(keep_ptr, rows, n_rows, COMPUTE)
    r, z, n, h = gru_cell_forward(x_r, x_z, x_n, rec_r, rec_z, rec_n, h_prev)
    if ZONE_H:
        h = zoneout(load_gate(zh_ptr, rows, units, stride_zh, 0, H, mask, COMPUTE), h_prev, h)
    store_gate(h_state_ptr, rows, units, stride_hs, 0, H, h, mask)
    store_gate(y_ptr, rows, units, stride_y, 0, H, h, mask)
    if CARRY:
        scale = recurrent_scale(keep_next_ptr, n_next, drop_ptr, stride_drop, rows, units, H,
                                mask, SCALE_KEEP, DROP, COMPUTE)
        store_gate(carry_ptr, rows, units, stride_carry, 0, H, h * scale, mask & (rows < n_next))
    if SAVE:
        store_gates4(gates_ptr, rows, units, stride_gates, H, r, z, n, rec_n, mask)


@triton.jit
def gru_step_bwd_kernel(
    dy_ptr, dh_rec_ptr,  # (n, H) output gradient rows; (B, H) carried gradient, in/out
    gates_ptr,  # (n, 4H) r, z, n, rec_n saved by forward
    h_prev_ptr, n_prev, h0_ptr,  # h_{t-1}: rows < n_prev from the previous step's output, others h0
    dgx_ptr, drec_ptr,  # (n, 3H) gradients of the input and recurrent pre-activations (out)
    keep_ptr, keep_next_ptr, drop_ptr, zc_ptr, zh_ptr, carry_ptr,  # step_variant.py
    n_rows, H,
    stride_dy, stride_dhr, stride_gates, stride_hp, stride_h0, stride_dgx, stride_drec,
    n_next, stride_drop, stride_zc, stride_zh, stride_carry,
    KEEP: tl.constexpr, SCALE_KEEP: tl.constexpr, DROP: tl.constexpr, ZONE_C: tl.constexpr,
    ZONE_H: tl.constexpr, CARRY: tl.constexpr,
    COMPUTE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, units, mask = tile_index(BLOCK_B, BLOCK_H, n_rows, H)
    dh = load_gate(dy_ptr, rows, units, stride_dy, 0, H, mask, COMPUTE)
    dh_rec = load_gate(dh_rec_ptr, rows, units, stride_dhr, 0, H, mask, COMPUTE)
    if SCALE_KEEP or DROP:
        dh_rec = dh_rec * recurrent_scale(keep_next_ptr, n_next, drop_ptr, stride_drop, rows,
                                          units, H, mask, SCALE_KEEP, DROP, COMPUTE)
    dh += dh_rec
    if CARRY:
        dh += load_gate(carry_ptr, rows, units, stride_carry, 0, H, mask, COMPUTE)
    if ZONE_H:
        z_h = load_gate(zh_ptr, rows, units, stride_zh, 0, H, mask, COMPUTE)
        dh_kept, dh = zoneout_backward(z_h, dh)
    r, z, n, rec_n = load_gates4(gates_ptr, rows, units, stride_gates, H, mask, COMPUTE)
    h_prev = load_previous(h_prev_ptr, h0_ptr, rows, units, stride_hp, stride_h0, n_prev, H,
                           mask, COMPUTE)

    if KEEP:
        keep = row_keep(keep_ptr, rows, n_rows, COMPUTE)
        h_prev = h_prev * keep

    d_r, d_z, d_n, dh_direct = gru_cell_backward(dh, r, z, n, rec_n, h_prev)
    if ZONE_H:
        dh_direct += dh_kept
    if KEEP:
        dh_direct = dh_direct * keep
    store_gates3(dgx_ptr, rows, units, stride_dgx, H, d_r, d_z, d_n, mask)
    store_gates3(drec_ptr, rows, units, stride_drec, H, d_r, d_z, d_n * r, mask)
    if CARRY:  # dh_rec is the GEMM's gradient alone, overwritten by the caller's next GEMM
        store_gate(carry_ptr, rows, units, stride_carry, 0, H, dh_direct, mask)
    else:
        store_gate(dh_rec_ptr, rows, units, stride_dhr, 0, H, dh_direct, mask)


def gru_step_fwd(gx, rec, h_state, y, gates, variant=None):
    """One GRU step over the first `gx.shape[0]` rows; h_state (B, H) updated in place;
    variant: a step_variant.StepVariant, or None for the plain cell."""
    n, H = gx.shape[0], h_state.shape[1]
    if n == 0:
        return
    grid, block_b, block_h = pointwise_launch(n, H)
    save = gates is not None
    pointers, integers, flags = kernel_args(variant)
    prepared(gru_step_fwd_kernel)[grid](
        gx, rec, h_state, y, gates if save else gx, *pointers,
        n, H,
        gx.stride(0), rec.stride(0), h_state.stride(0), y.stride(0), gates.stride(0) if save else 0,
        *integers,
        SAVE=save, COMPUTE=compute_dtype(gx.dtype), BLOCK_B=block_b, BLOCK_H=block_h, **flags,
    )


def gru_step_bwd(dy, dh_rec, gates, h_prev, n_prev, h0, dgx, drec, variant=None):
    """Backward of one GRU step; dh_rec rows < n become dh * z (the caller adds d rec @ W_hh).
    With a variant (step_variant.StepVariant) dh_rec is only read (the GEMM's gradient,
    scaled in the kernel) and the direct part goes to variant.carry."""
    n, H = dy.shape[0], dh_rec.shape[1]
    if n == 0:
        return
    grid, block_b, block_h = pointwise_launch(n, H)
    pointers, integers, flags = kernel_args(variant)
    prepared(gru_step_bwd_kernel)[grid](
        dy, dh_rec, gates, h_prev if h_prev is not None else h0, n_prev, h0, dgx, drec,
        *pointers,
        n, H,
        dy.stride(0), dh_rec.stride(0), gates.stride(0),
        h_prev.stride(0) if h_prev is not None else 0, h0.stride(0),
        dgx.stride(0), drec.stride(0), *integers,
        COMPUTE=compute_dtype(dy.dtype), BLOCK_B=block_b, BLOCK_H=block_h, **flags,
    )
