"""One cell step in one launch: both GEMMs and the gates in one kernel (issue 17).

A TritonLSTMCell / TritonGRUCell call on the stepwise road is three GPU calls: cuBLAS for
x W_ih^T, cuBLAS for h W_hh^T, then the fused step kernel (lstm_pointwise.py /
gru_pointwise.py). At the sizes a per-step cell runs at (a decoder or a policy acting one
step at a time: a few rows, a few hundred units) each call is a few microseconds of launch
and of host work for almost no arithmetic. Here one program owns BLOCK_H units of every
gate for all B rows (so W_ih and W_hh are each read once by the whole grid, as a GEMV
reads them), accumulates [x | h] @ [W_ih | W_hh]^T for its four gates in one fused tile
(persistent_tiles.gate_columns: unit-major columns, split by split_gates), and applies the
same cell math as the step kernels (cell_math.py). What it saves for backward is what the
step kernel saves, in the same layout, so backward is the step road's (cell_step.py).

The GRU keeps the input and recurrent parts apart (n = tanh(x_n + r * rec_n)): two tiles.
config.fused_cell_launch decides where this runs (small B and H), and the block sizes.
A small layer's time loop runs the same kernels once a step on its input projection
(PROJECTED, row offsets; kernels/fused_steps.py).
"""
import functools

import triton
import triton.language as tl

from .cell_math import gru_cell_forward, lstm_cell_forward, store_gates4
from .launch import Constants, prepared
from .persistent_tiles import gate_columns, load_w_tile, split_dot, split_gates
from .tiles import load_gate, store_gate


@triton.jit
def gate_matmul(acc, a_ptr, stride_a, rows, n_rows, K, w_ptr, stride_wk, stride_wn, cols, col_ok,
                BLOCK_K: tl.constexpr, DOT: tl.constexpr):
    """acc (BLOCK_B, N) + A[rows, :K] @ W[:K, cols], K in chunks of BLOCK_K; W[k, n] is at
    w_ptr + k * stride_wk + n * stride_wn (a row-major (gates*H, K) weight read as W^T:
    stride_wk = 1). DOT: persistent_tiles' modes."""
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + rows * stride_a + ks[None, :], mask=(rows < n_rows) & (ks[None, :] < K),
                    other=0.0)
        w = load_w_tile(w_ptr, ks[:, None], K, cols, col_ok, stride_wk, stride_wn)  # (BLOCK_K, N)
        acc = split_dot(a[None, :, :], w[None, :, :], acc, DOT)
    return acc


@triton.jit
def cell_products(x_ptr, stride_x, h0_ptr, stride_h0, w_ih_ptr, stride_wih, w_hh_ptr,
                  stride_whh, b_ih_ptr, b_hh_ptr, B, I, H, N_GATES: tl.constexpr,
                  HAS_BIAS: tl.constexpr, PROJECTED: tl.constexpr, BLOCK_B: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr,
                  COMPUTE: tl.constexpr):
    """This program's tile (all B rows, int64 [BLOCK_B, 1]; its units [1, BLOCK_H]; mask)
    and (x W_ih^T + b_ih, h0 W_hh^T + b_hh) over its gate columns, as two fused
    (BLOCK_B, 4*BLOCK_H) tiles (split_gates splits each into its gates). PROJECTED: x_ptr
    already holds x W_ih^T + b_ih (a layer's input projection, one GEMM for all steps), read
    as it is; HAS_BIAS then adds b_hh alone."""
    rows = tl.arange(0, BLOCK_B).to(tl.int64)[:, None]
    units = (tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H))[None, :]
    cols, col_ok = gate_columns(BLOCK_H, H, N_GATES)
    if PROJECTED:
        acc_x = tl.load(x_ptr + rows * stride_x + cols, mask=(rows < B) & col_ok,
                        other=0.0).to(COMPUTE)
    else:
        acc_x = gate_matmul(tl.zeros((BLOCK_B, 4 * BLOCK_H), COMPUTE), x_ptr, stride_x, rows, B,
                            I, w_ih_ptr, 1, stride_wih, cols, col_ok, BLOCK_K, DOT)
    acc_h = gate_matmul(tl.zeros((BLOCK_B, 4 * BLOCK_H), COMPUTE), h0_ptr, stride_h0, rows, B,
                        H, w_hh_ptr, 1, stride_whh, cols, col_ok, BLOCK_K, DOT)
    if HAS_BIAS:
        if not PROJECTED:
            acc_x += tl.load(b_ih_ptr + cols, mask=col_ok, other=0.0).to(COMPUTE)
        acc_h += tl.load(b_hh_ptr + cols, mask=col_ok, other=0.0).to(COMPUTE)
    return rows, units, (rows < B) & (units < H), acc_x, acc_h


# A layer's loop (kernels/fused_steps.py) runs these kernels once a step: step t reads its
# rows of gx (from row0) and h_{t-1} (rows of y, from prev0) and writes its rows of y and of
# what backward saves (from row0), h_n again (STATE); c is the (B, H) state, read and
# written by the same program. B, row0 and prev0 vary from step to step, and every step
# launches one compiled kernel (launch.PreparedKernel.stepper): never specialised on.
@triton.jit(do_not_specialize=["B", "row0", "prev0"])
def lstm_cell_fused_kernel(
    x_ptr, h0_ptr, c0_ptr,  # (B, I) or gx (B, 4H: PROJECTED); (B, H); (B, H)
    w_ih_ptr, w_hh_ptr, b_ih_ptr, b_hh_ptr,  # (4H, I), (4H, H), (4H,), (4H,) (HAS_BIAS)
    h1_ptr, c1_ptr,  # (B, H) new states; c1 in the state dtype
    gates_ptr, c_save_ptr,  # (B, 4H) activated gates, (B, H) c1 again, for backward (SAVE)
    h_state_ptr,  # (B, H) h1 again (STATE)
    B, I, H, row0, prev0,
    stride_x, stride_h0, stride_c0, stride_wih, stride_whh, stride_h1, stride_c1,
    stride_gates, stride_cs, stride_hs,
    HAS_BIAS: tl.constexpr, SAVE: tl.constexpr, PROJECTED: tl.constexpr, STATE: tl.constexpr,
    DOT: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row0, prev0 = row0.to(tl.int64), prev0.to(tl.int64)
    x_ptr, h0_ptr, h1_ptr = x_ptr + row0 * stride_x, h0_ptr + prev0 * stride_h0, \
        h1_ptr + row0 * stride_h1
    rows, units, mask, acc_x, acc_h = cell_products(
        x_ptr, stride_x, h0_ptr, stride_h0, w_ih_ptr, stride_wih, w_hh_ptr, stride_whh, b_ih_ptr,
        b_hh_ptr, B, I, H, 4, HAS_BIAS, PROJECTED, BLOCK_B, BLOCK_H, BLOCK_K, DOT, COMPUTE)
    p_i, p_f, p_g, p_o = split_gates(acc_x + acc_h, BLOCK_B, BLOCK_H)
    c_prev = load_gate(c0_ptr, rows, units, stride_c0, 0, H, mask, COMPUTE)
    i, f, g, o, c, m = lstm_cell_forward(p_i, p_f, p_g, p_o, c_prev)
    store_gate(c1_ptr, rows, units, stride_c1, 0, H, c, mask)
    store_gate(h1_ptr, rows, units, stride_h1, 0, H, m, mask)
    if STATE:
        store_gate(h_state_ptr, rows, units, stride_hs, 0, H, m, mask)
    if SAVE:
        store_gates4(gates_ptr + row0 * stride_gates, rows, units, stride_gates, H, i, f, g, o,
                     mask)
        store_gate(c_save_ptr + row0 * stride_cs, rows, units, stride_cs, 0, H, c, mask)


@triton.jit(do_not_specialize=["B", "row0", "prev0"])
def gru_cell_fused_kernel(
    x_ptr, h0_ptr,  # (B, I) or gx (B, 3H: PROJECTED, b_ih in it); (B, H)
    w_ih_ptr, w_hh_ptr, b_ih_ptr, b_hh_ptr,  # (3H, I), (3H, H), (3H,), (3H,) (HAS_BIAS)
    h1_ptr,  # (B, H)
    gates_ptr,  # (B, 4H) r, z, n, rec_n for backward (SAVE)
    h_state_ptr,  # (B, H) h1 again (STATE)
    B, I, H, row0, prev0,
    stride_x, stride_h0, stride_wih, stride_whh, stride_h1, stride_gates, stride_hs,
    HAS_BIAS: tl.constexpr, SAVE: tl.constexpr, PROJECTED: tl.constexpr, STATE: tl.constexpr,
    DOT: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row0, prev0 = row0.to(tl.int64), prev0.to(tl.int64)
    x_ptr, h0_ptr, h1_ptr = x_ptr + row0 * stride_x, h0_ptr + prev0 * stride_h0, \
        h1_ptr + row0 * stride_h1
    rows, units, mask, acc_x, acc_h = cell_products(
        x_ptr, stride_x, h0_ptr, stride_h0, w_ih_ptr, stride_wih, w_hh_ptr, stride_whh, b_ih_ptr,
        b_hh_ptr, B, I, H, 3, HAS_BIAS, PROJECTED, BLOCK_B, BLOCK_H, BLOCK_K, DOT, COMPUTE)
    x_r, x_z, x_n, _ = split_gates(acc_x, BLOCK_B, BLOCK_H)
    rec_r, rec_z, rec_n, _ = split_gates(acc_h, BLOCK_B, BLOCK_H)
    h_prev = load_gate(h0_ptr, rows, units, stride_h0, 0, H, mask, COMPUTE)
    r, z, n, h = gru_cell_forward(x_r, x_z, x_n, rec_r, rec_z, rec_n, h_prev)
    store_gate(h1_ptr, rows, units, stride_h1, 0, H, h, mask)
    if STATE:
        store_gate(h_state_ptr, rows, units, stride_hs, 0, H, h, mask)
    if SAVE:
        store_gates4(gates_ptr + row0 * stride_gates, rows, units, stride_gates, H, r, z, n,
                     rec_n, mask)


def lstm_cell_fused(x, h0, c0, w_ih, w_hh, b_ih, b_hh, h1, c1, gates, c_save, launch):
    """One LSTM cell step into h1, c1 (and gates, c_save when not None: training).
    launch: config.fused_cell_launch's (grid, BLOCK_B, BLOCK_H, BLOCK_K, DOT, COMPUTE).
    Every tensor row-major and contiguous (cell_step's callers make them so): the row
    strides are the shapes' widths, not asked for (~0.25 µs a stride() call, ten a call)."""
    save = gates is not None
    (B, I), H = x.shape, h0.shape[1]
    prepared(lstm_cell_fused_kernel).launch_with(launch[0], (
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, h1, c1, gates, c_save, None,
        B, I, H, 0, 0, I, H, H, I, H, H, H, 4 * H if save else 0, H if save else 0, 0),
        _cell_constants(launch, b_ih is not None, save))


def gru_cell_fused(x, h0, w_ih, w_hh, b_ih, b_hh, h1, gates, launch):
    """One GRU cell step into h1 (and gates when not None: training); tensors as above."""
    save = gates is not None
    (B, I), H = x.shape, h0.shape[1]
    prepared(gru_cell_fused_kernel).launch_with(launch[0], (
        x, h0, w_ih, w_hh, b_ih, b_hh, h1, gates, None,
        B, I, H, 0, 0, I, H, I, H, H, 4 * H if save else 0, 0),
        _cell_constants(launch, b_ih is not None, save))


@functools.lru_cache(maxsize=1024)
def _cell_constants(launch, has_bias: bool, save: bool) -> Constants:
    """A cell call's constexprs, made once per (launch config, bias, save): a cell call is
    ~30 µs of host time, of which building and keying these was ~1 (issue 17)."""
    _, block_b, block_h, block_k, dot, compute = launch
    return Constants(HAS_BIAS=has_bias, SAVE=save, PROJECTED=False, STATE=False, DOT=dot,
                     COMPUTE=compute, BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k)
