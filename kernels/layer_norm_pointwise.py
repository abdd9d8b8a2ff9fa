"""Fused kernels of the layer-normalised cells (stepwise backend, `layer_norm=True`).

Each program holds whole rows (every gate of every unit: config.row_launch), so
the row reductions of a layer norm stay inside it: no atomics, the same bits run
to run. Gate order is torch's (LSTM i, f, g, o; GRU r, z, n).

    LN_ih, all timesteps at once before the loop (it does not depend on the state):
        gx = LN(x W_ih^T) * ln_ih_weight (+ b_ih + b_hh for the LSTM, + b_ih for the GRU)
    LSTM step, after the cuBLAS GEMM rec = h_{t-1} W_hh^T:
        pre = gx + LN(rec) * ln_hh_weight;  i, f, g, o, c_t as nn.LSTM
        m_t = o * tanh(LN(c_t) * ln_c_weight + ln_c_bias);  c_t is carried unnormalised
    GRU step:  gh = LN(rec) * ln_hh_weight + b_hh, then nn.GRU's equations on gx, gh.

Forward saves, per row, the normalised values (x_hat of LN_ih, LN_hh and LN_c) in
the input dtype and each norm's rstd in the state dtype; backward recomputes
nothing but tanh(LN_c(c_t)). The LN parameters' gradients are column sums of
(gradient * x_hat) over all rows, taken after the loop (lstm_triton/layer_norm.py).
"""
import triton
import triton.language as tl

from .cell_math import (gru_cell_backward, gru_cell_forward, load_gates4, lstm_cell_state,
                        lstm_output_backward, lstm_state_backward, store_gates3, store_gates4)
from .activations import tanh
from .config import compute_dtype, row_launch
from .launch import prepared
from .layer_norm_math import (ln_backward1, ln_backward3, ln_backward4, ln_normalise1,
                              ln_normalise3, ln_normalise4, load_row_stat, load_vector,
                              store_row_stat)
from .tiles import load_gate, load_previous, store_gate, tile_index


# ------------------------------------------------------------- LN_ih over all rows
@triton.jit
def ln_rows_fwd_kernel(
    a_ptr, w_ptr, bias_ptr,  # (n, C) rows to normalise; (C,) scale; (C,) bias added after
    out_ptr, a_hat_ptr, rstd_ptr,  # (n, C) out; (n, C) and (n,) saved for backward
    n_rows, C, stride_a, stride_out, stride_hat, stride_rstd,
    HAS_BIAS: tl.constexpr, SAVE: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows, cols, mask = tile_index(BLOCK_B, BLOCK_C, n_rows, C)
    a = load_gate(a_ptr, rows, cols, stride_a, 0, C, mask, COMPUTE)
    a_hat, rstd = ln_normalise1(a, mask, C)
    out = a_hat * load_vector(w_ptr, cols, 0, C, COMPUTE)
    if HAS_BIAS:
        out += load_vector(bias_ptr, cols, 0, C, COMPUTE)
    store_gate(out_ptr, rows, cols, stride_out, 0, C, out, mask)
    if SAVE:
        store_gate(a_hat_ptr, rows, cols, stride_hat, 0, C, a_hat, mask)
        store_row_stat(rstd_ptr, rows, stride_rstd, n_rows, rstd)


@triton.jit
def ln_rows_bwd_kernel(
    dout_ptr, a_hat_ptr, rstd_ptr, w_ptr,  # (n, C) dL/dout; saved (n, C), (n,); (C,)
    da_ptr,  # (n, C) dL/da (out)
    n_rows, C, stride_dout, stride_hat, stride_rstd, stride_da,
    COMPUTE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows, cols, mask = tile_index(BLOCK_B, BLOCK_C, n_rows, C)
    dx_hat = (load_gate(dout_ptr, rows, cols, stride_dout, 0, C, mask, COMPUTE)
              * load_vector(w_ptr, cols, 0, C, COMPUTE))
    a_hat = load_gate(a_hat_ptr, rows, cols, stride_hat, 0, C, mask, COMPUTE)
    rstd = load_row_stat(rstd_ptr, rows, stride_rstd, n_rows, COMPUTE)
    store_gate(da_ptr, rows, cols, stride_da, 0, C, ln_backward1(dx_hat, a_hat, rstd, mask, C),
               mask)


def ln_rows_fwd(a, weight, bias, out, a_hat, rstd):
    """out (n, C) = LN(a) * weight (+ bias); a_hat (n, C) and rstd (n,) saved unless None."""
    n, C = a.shape
    if n == 0:
        return
    grid, block_b, block_c, warps = row_launch(n, C, 1)
    save = a_hat is not None
    prepared(ln_rows_fwd_kernel)[grid](
        a, weight, bias if bias is not None else weight, out,
        a_hat if save else out, rstd if save else out,
        n, C, a.stride(0), out.stride(0), a_hat.stride(0) if save else 0,
        rstd.stride(0) if save else 0,
        HAS_BIAS=bias is not None, SAVE=save, COMPUTE=compute_dtype(a.dtype),
        BLOCK_B=block_b, BLOCK_C=block_c, num_warps=warps,
    )


def ln_rows_bwd(dout, a_hat, rstd, weight, da):
    """da (n, C) = the gradient of LN(a) * weight (+ bias) given dL/dout (n, C)."""
    n, C = dout.shape
    if n == 0:
        return
    grid, block_b, block_c, warps = row_launch(n, C, 1)
    prepared(ln_rows_bwd_kernel)[grid](
        dout, a_hat, rstd, weight, da,
        n, C, dout.stride(0), a_hat.stride(0), rstd.stride(0), da.stride(0),
        COMPUTE=compute_dtype(dout.dtype), BLOCK_B=block_b, BLOCK_C=block_c, num_warps=warps,
    )


# ------------------------------------------------------------------- LSTM step
@triton.jit
def lstm_ln_step_fwd_kernel(
    gx_ptr, rec_ptr,  # (n, 4H): LN_ih part (both biases in) and the raw h_{t-1} W_hh^T
    w_hh_ptr, w_c_ptr, b_c_ptr,  # (4H,) ln_hh_weight; (H,) ln_c_weight, ln_c_bias
    c_ptr,  # (B, H) cell state in COMPUTE dtype, updated in place for rows < n
    m_ptr, h_state_ptr,  # (n, H) output rows; (B, H) recurrent state (unprojected case)
    gates_ptr, c_save_ptr,  # (n, 4H) activated gates, (n, H) cell states, for backward
    r_hat_ptr, c_hat_ptr, rstd_r_ptr, rstd_c_ptr,  # (n, 4H), (n, H), (n,), (n,) saved
    n_rows, H,
    stride_gx, stride_rec, stride_c, stride_m, stride_hs, stride_gates, stride_cs,
    stride_rh, stride_ch, stride_rr, stride_rc,
    WRITE_H_STATE: tl.constexpr, SAVE: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, units, mask = tile_index(BLOCK_B, BLOCK_H, n_rows, H)
    x_i, x_f, x_g, x_o = load_gates4(gx_ptr, rows, units, stride_gx, H, mask, COMPUTE)
    r_i, r_f, r_g, r_o = load_gates4(rec_ptr, rows, units, stride_rec, H, mask, COMPUTE)
    r_i, r_f, r_g, r_o, rstd_r = ln_normalise4(r_i, r_f, r_g, r_o, mask, 4 * H)
    c_prev = load_gate(c_ptr, rows, units, stride_c, 0, H, mask, COMPUTE)
    i, f, g, o, c = lstm_cell_state(
        x_i + r_i * load_vector(w_hh_ptr, units, 0, H, COMPUTE),
        x_f + r_f * load_vector(w_hh_ptr, units, 1, H, COMPUTE),
        x_g + r_g * load_vector(w_hh_ptr, units, 2, H, COMPUTE),
        x_o + r_o * load_vector(w_hh_ptr, units, 3, H, COMPUTE), c_prev)
    c_hat, rstd_c = ln_normalise1(c, mask, H)
    m = o * tanh(c_hat * load_vector(w_c_ptr, units, 0, H, COMPUTE)
                 + load_vector(b_c_ptr, units, 0, H, COMPUTE))
    store_gate(c_ptr, rows, units, stride_c, 0, H, c, mask)
    store_gate(m_ptr, rows, units, stride_m, 0, H, m, mask)
    if WRITE_H_STATE:
        store_gate(h_state_ptr, rows, units, stride_hs, 0, H, m, mask)
    if SAVE:
        store_gates4(gates_ptr, rows, units, stride_gates, H, i, f, g, o, mask)
        store_gate(c_save_ptr, rows, units, stride_cs, 0, H, c, mask)
        store_gates4(r_hat_ptr, rows, units, stride_rh, H, r_i, r_f, r_g, r_o, mask)
        store_gate(c_hat_ptr, rows, units, stride_ch, 0, H, c_hat, mask)
        store_row_stat(rstd_r_ptr, rows, stride_rr, n_rows, rstd_r)
        store_row_stat(rstd_c_ptr, rows, stride_rc, n_rows, rstd_c)


@triton.jit
def lstm_ln_step_bwd_kernel(
    dm_ptr, dh_rec_ptr,  # (n, H) output gradient rows; (B, H) gradient carried from step t+1
    dc_ptr,  # (B, H) carried cell gradient in COMPUTE dtype, updated in place
    gates_ptr, c_prev_ptr, n_prev, c0_ptr,  # saved gates (n, 4H); c_{t-1} as in lstm_pointwise
    r_hat_ptr, c_hat_ptr, rstd_r_ptr, rstd_c_ptr,  # saved by forward for this step
    w_hh_ptr, w_c_ptr, b_c_ptr,  # LN parameters
    dgates_ptr, drec_ptr, dcn_ptr,  # (n, 4H) d pre-activations; (n, 4H) d rec; (n, H) d LN_c out
    n_rows, H,
    stride_dm, stride_dhr, stride_dc, stride_gates, stride_cp, stride_c0,
    stride_rh, stride_ch, stride_rr, stride_rc, stride_dg, stride_drec, stride_dcn,
    ADD_DH_REC: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, units, mask = tile_index(BLOCK_B, BLOCK_H, n_rows, H)
    dm = load_gate(dm_ptr, rows, units, stride_dm, 0, H, mask, COMPUTE)
    if ADD_DH_REC:
        dm += load_gate(dh_rec_ptr, rows, units, stride_dhr, 0, H, mask, COMPUTE)
    i, f, g, o = load_gates4(gates_ptr, rows, units, stride_gates, H, mask, COMPUTE)
    c_prev = load_previous(c_prev_ptr, c0_ptr, rows, units, stride_cp, stride_c0, n_prev, H,
                           mask, COMPUTE)
    # through m = o * tanh(cn), cn = LN_c(c_t): d pre_o, d cn, then LN_c's backward to d c_t
    c_hat = load_gate(c_hat_ptr, rows, units, stride_ch, 0, H, mask, COMPUTE)
    w_c = load_vector(w_c_ptr, units, 0, H, COMPUTE)
    d_o, d_cn = lstm_output_backward(
        dm, o, tanh(c_hat * w_c + load_vector(b_c_ptr, units, 0, H, COMPUTE)))
    rstd_c = load_row_stat(rstd_c_ptr, rows, stride_rc, n_rows, COMPUTE)
    dc = (load_gate(dc_ptr, rows, units, stride_dc, 0, H, mask, COMPUTE)
          + ln_backward1(d_cn * w_c, c_hat, rstd_c, mask, H))
    d_i, d_f, d_g, dc_prev = lstm_state_backward(dc, i, f, g, c_prev)
    store_gates4(dgates_ptr, rows, units, stride_dg, H, d_i, d_f, d_g, d_o, mask)
    store_gate(dc_ptr, rows, units, stride_dc, 0, H, dc_prev, mask)
    store_gate(dcn_ptr, rows, units, stride_dcn, 0, H, d_cn, mask)
    # LN_hh's backward: the pre-activation gradient reaches rec through ln_hh_weight
    rh_i, rh_f, rh_g, rh_o = load_gates4(r_hat_ptr, rows, units, stride_rh, H, mask, COMPUTE)
    rstd_r = load_row_stat(rstd_r_ptr, rows, stride_rr, n_rows, COMPUTE)
    dr_i, dr_f, dr_g, dr_o = ln_backward4(
        d_i * load_vector(w_hh_ptr, units, 0, H, COMPUTE),
        d_f * load_vector(w_hh_ptr, units, 1, H, COMPUTE),
        d_g * load_vector(w_hh_ptr, units, 2, H, COMPUTE),
        d_o * load_vector(w_hh_ptr, units, 3, H, COMPUTE),
        rh_i, rh_f, rh_g, rh_o, rstd_r, mask, 4 * H)
    store_gates4(drec_ptr, rows, units, stride_drec, H, dr_i, dr_f, dr_g, dr_o, mask)


def lstm_ln_step_fwd(gx, rec, ln, c, m, h_state, saved):
    """One layer-normalised LSTM step over the first `gx.shape[0]` batch rows.

    gx, rec: (n, 4H); ln: (ln_hh_weight, ln_c_weight, ln_c_bias); c: (B, H) state,
    updated in place; m: (n, H) output rows; h_state: (B, H) or None (projected layers);
    saved: (gates, c_save, r_hat, c_hat, rstd_r, rstd_c) rows of this step, or None.
    """
    n, H = gx.shape[0], c.shape[1]
    if n == 0:
        return
    grid, block_b, block_h, warps = row_launch(n, H, 4)
    save = saved is not None
    gates, c_save, r_hat, c_hat, rstd_r, rstd_c = saved if save else (gx, c, gx, c, c, c)
    prepared(lstm_ln_step_fwd_kernel)[grid](
        gx, rec, *ln, c, m, h_state if h_state is not None else m,
        gates, c_save, r_hat, c_hat, rstd_r, rstd_c,
        n, H,
        gx.stride(0), rec.stride(0), c.stride(0), m.stride(0),
        h_state.stride(0) if h_state is not None else 0,
        gates.stride(0), c_save.stride(0), r_hat.stride(0), c_hat.stride(0),
        rstd_r.stride(0), rstd_c.stride(0),
        WRITE_H_STATE=h_state is not None, SAVE=save, COMPUTE=compute_dtype(gx.dtype),
        BLOCK_B=block_b, BLOCK_H=block_h, num_warps=warps,
    )


def lstm_ln_step_bwd(dm, dh_rec, dc, gates, c_prev, n_prev, c0, saved_ln, ln, out):
    """Backward of one layer-normalised LSTM step over the first `dm.shape[0]` rows.

    As lstm_pointwise.lstm_step_bwd, plus saved_ln (r_hat, c_hat, rstd_r, rstd_c) of this
    step, ln (ln_hh_weight, ln_c_weight, ln_c_bias) and out (dgates, drec, dcn): the
    gradients of the pre-activations (n, 4H), of rec = h_{t-1} W_hh^T (n, 4H) and of
    LN_c's output (n, H).
    """
    n, H = dm.shape[0], dc.shape[1]
    if n == 0:
        return
    grid, block_b, block_h, warps = row_launch(n, H, 4)
    r_hat, c_hat, rstd_r, rstd_c = saved_ln
    dgates, drec, dcn = out
    prepared(lstm_ln_step_bwd_kernel)[grid](
        dm, dh_rec if dh_rec is not None else dm, dc, gates,
        c_prev if c_prev is not None else c0, n_prev, c0,
        r_hat, c_hat, rstd_r, rstd_c, *ln, dgates, drec, dcn,
        n, H,
        dm.stride(0), dh_rec.stride(0) if dh_rec is not None else 0, dc.stride(0),
        gates.stride(0), c_prev.stride(0) if c_prev is not None else 0, c0.stride(0),
        r_hat.stride(0), c_hat.stride(0), rstd_r.stride(0), rstd_c.stride(0),
        dgates.stride(0), drec.stride(0), dcn.stride(0),
        ADD_DH_REC=dh_rec is not None, COMPUTE=compute_dtype(dm.dtype),
        BLOCK_B=block_b, BLOCK_H=block_h, num_warps=warps,
    )


# -------------------------------------------------------------------- GRU step
@triton.jit
def gru_ln_step_fwd_kernel(
    gx_ptr, rec_ptr,  # (n, 3H): LN_ih(x W_ih^T) + b_ih; the raw h_{t-1} W_hh^T
    w_hh_ptr, b_hh_ptr,  # (3H,) ln_hh_weight, b_hh
    h_state_ptr,  # (B, H) recurrent state, read and updated in place for rows < n
    y_ptr,  # (n, H) output rows
    gates_ptr, r_hat_ptr, rstd_r_ptr,  # saved: (n, 4H) r, z, n, gh_n; (n, 3H); (n,)
    n_rows, H,
    stride_gx, stride_rec, stride_hs, stride_y, stride_gates, stride_rh, stride_rr,
    HAS_BIAS: tl.constexpr, SAVE: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, units, mask = tile_index(BLOCK_B, BLOCK_H, n_rows, H)
    x_r = load_gate(gx_ptr, rows, units, stride_gx, 0, H, mask, COMPUTE)
    x_z = load_gate(gx_ptr, rows, units, stride_gx, 1, H, mask, COMPUTE)
    x_n = load_gate(gx_ptr, rows, units, stride_gx, 2, H, mask, COMPUTE)
    rh_r, rh_z, rh_n, rstd_r = ln_normalise3(
        load_gate(rec_ptr, rows, units, stride_rec, 0, H, mask, COMPUTE),
        load_gate(rec_ptr, rows, units, stride_rec, 1, H, mask, COMPUTE),
        load_gate(rec_ptr, rows, units, stride_rec, 2, H, mask, COMPUTE), mask, 3 * H)
    gh_r = rh_r * load_vector(w_hh_ptr, units, 0, H, COMPUTE)
    gh_z = rh_z * load_vector(w_hh_ptr, units, 1, H, COMPUTE)
    gh_n = rh_n * load_vector(w_hh_ptr, units, 2, H, COMPUTE)
    if HAS_BIAS:
        gh_r += load_vector(b_hh_ptr, units, 0, H, COMPUTE)
        gh_z += load_vector(b_hh_ptr, units, 1, H, COMPUTE)
        gh_n += load_vector(b_hh_ptr, units, 2, H, COMPUTE)
    h_prev = load_gate(h_state_ptr, rows, units, stride_hs, 0, H, mask, COMPUTE)
    r, z, n, h = gru_cell_forward(x_r, x_z, x_n, gh_r, gh_z, gh_n, h_prev)
    store_gate(h_state_ptr, rows, units, stride_hs, 0, H, h, mask)
    store_gate(y_ptr, rows, units, stride_y, 0, H, h, mask)
    if SAVE:
        store_gates4(gates_ptr, rows, units, stride_gates, H, r, z, n, gh_n, mask)
        store_gates3(r_hat_ptr, rows, units, stride_rh, H, rh_r, rh_z, rh_n, mask)
        store_row_stat(rstd_r_ptr, rows, stride_rr, n_rows, rstd_r)


@triton.jit
def gru_ln_step_bwd_kernel(
    dy_ptr, dh_rec_ptr,  # (n, H) output gradient rows; (B, H) carried gradient, in/out
    gates_ptr, r_hat_ptr, rstd_r_ptr, w_hh_ptr,  # saved (n, 4H), (n, 3H), (n,); (3H,)
    h_prev_ptr, n_prev, h0_ptr,  # h_{t-1}: rows < n_prev from the previous step's output, others h0
    dgx_ptr, dgh_ptr, drec_ptr,  # (n, 3H) gradients of gx, of gh and of rec (out)
    n_rows, H,
    stride_dy, stride_dhr, stride_gates, stride_rh, stride_rr, stride_hp, stride_h0,
    stride_dgx, stride_dgh, stride_drec,
    COMPUTE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, units, mask = tile_index(BLOCK_B, BLOCK_H, n_rows, H)
    dh = load_gate(dy_ptr, rows, units, stride_dy, 0, H, mask, COMPUTE)
    dh += load_gate(dh_rec_ptr, rows, units, stride_dhr, 0, H, mask, COMPUTE)
    r, z, n, gh_n = load_gates4(gates_ptr, rows, units, stride_gates, H, mask, COMPUTE)
    h_prev = load_previous(h_prev_ptr, h0_ptr, rows, units, stride_hp, stride_h0, n_prev, H,
                           mask, COMPUTE)
    d_r, d_z, d_n, dh_direct = gru_cell_backward(dh, r, z, n, gh_n, h_prev)
    dgh_n = d_n * r
    store_gates3(dgx_ptr, rows, units, stride_dgx, H, d_r, d_z, d_n, mask)
    store_gates3(dgh_ptr, rows, units, stride_dgh, H, d_r, d_z, dgh_n, mask)
    store_gate(dh_rec_ptr, rows, units, stride_dhr, 0, H, dh_direct, mask)
    dr_r, dr_z, dr_n = ln_backward3(
        d_r * load_vector(w_hh_ptr, units, 0, H, COMPUTE),
        d_z * load_vector(w_hh_ptr, units, 1, H, COMPUTE),
        dgh_n * load_vector(w_hh_ptr, units, 2, H, COMPUTE),
        load_gate(r_hat_ptr, rows, units, stride_rh, 0, H, mask, COMPUTE),
        load_gate(r_hat_ptr, rows, units, stride_rh, 1, H, mask, COMPUTE),
        load_gate(r_hat_ptr, rows, units, stride_rh, 2, H, mask, COMPUTE),
        load_row_stat(rstd_r_ptr, rows, stride_rr, n_rows, COMPUTE), mask, 3 * H)
    store_gates3(drec_ptr, rows, units, stride_drec, H, dr_r, dr_z, dr_n, mask)


def gru_ln_step_fwd(gx, rec, ln_hh_weight, b_hh, h_state, y, saved):
    """One layer-normalised GRU step; h_state (B, H) updated in place; saved:
    (gates (n, 4H), r_hat (n, 3H), rstd_r (n,)) rows of this step, or None."""
    n, H = gx.shape[0], h_state.shape[1]
    if n == 0:
        return
    grid, block_b, block_h, warps = row_launch(n, H, 3)
    save = saved is not None
    gates, r_hat, rstd_r = saved if save else (gx, gx, gx)
    prepared(gru_ln_step_fwd_kernel)[grid](
        gx, rec, ln_hh_weight, b_hh if b_hh is not None else ln_hh_weight, h_state, y,
        gates, r_hat, rstd_r,
        n, H,
        gx.stride(0), rec.stride(0), h_state.stride(0), y.stride(0),
        gates.stride(0), r_hat.stride(0), rstd_r.stride(0),
        HAS_BIAS=b_hh is not None, SAVE=save, COMPUTE=compute_dtype(gx.dtype),
        BLOCK_B=block_b, BLOCK_H=block_h, num_warps=warps,
    )


def gru_ln_step_bwd(dy, dh_rec, saved, ln_hh_weight, h_prev, n_prev, h0, out):
    """Backward of one layer-normalised GRU step; dh_rec rows < n become dh * z (the
    caller adds drec @ W_hh); out: (dgx, dgh, drec), each (n, 3H)."""
    n, H = dy.shape[0], dh_rec.shape[1]
    if n == 0:
        return
    grid, block_b, block_h, warps = row_launch(n, H, 3)
    gates, r_hat, rstd_r = saved
    dgx, dgh, drec = out
    prepared(gru_ln_step_bwd_kernel)[grid](
        dy, dh_rec, gates, r_hat, rstd_r, ln_hh_weight,
        h_prev if h_prev is not None else h0, n_prev, h0, dgx, dgh, drec,
        n, H,
        dy.stride(0), dh_rec.stride(0), gates.stride(0), r_hat.stride(0), rstd_r.stride(0),
        h_prev.stride(0) if h_prev is not None else 0, h0.stride(0),
        dgx.stride(0), dgh.stride(0), drec.stride(0),
        COMPUTE=compute_dtype(dy.dtype), BLOCK_B=block_b, BLOCK_H=block_h, num_warps=warps,
    )
