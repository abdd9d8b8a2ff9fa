"""An LSTM cell step's whole backward in one launch, at the smallest sizes (issue 17).

The step road's backward of a TritonLSTMCell call is seven GPU calls: the step kernel for
the gate gradients, then cuBLAS for dx = dgates W_ih, dh0 = dgates W_hh, dW_ih = dgates^T x,
dW_hh = dgates^T h0, and two reductions for the biases. At the sizes a cell is called once a
step (a decoder or a policy: a few rows, a few dozen units) each is a few microseconds of
launch and of host work for almost no arithmetic, and training a cell cost the host more
than torch's own cell (1.04-1.06×, reports/NOTES.md). Here one program holds the whole
step: the gate gradients of all B rows and H units (cell_math.lstm_cell_backward, as the
step kernel), then, gate by gate, their products with W_ih's and W_hh's rows of that gate,
with x and h0, and their column sums. One program, no atomics: the same bits every run.
config.fused_cell_backward_launch says where it runs (everything in one tile).
"""
import triton
import triton.language as tl

from .cell_math import load_gates4, lstm_cell_backward
from .launch import prepared
from .persistent_tiles import split_dot
from .tiles import load_gate, store_gate


@triton.jit
def gate_rows_product(d, w_ptr, q, H, K, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                      DOT: tl.constexpr):
    """d (BLOCK_B, BLOCK_H) @ W[q*H : q*H + H, :K] of a row-major (n_gates*H, K) W: gate q's
    share of dL/d(input of W)."""
    u = tl.arange(0, BLOCK_H)[:, None]
    k = tl.arange(0, BLOCK_K)[None, :]
    w = tl.load(w_ptr + (q * H + u).to(tl.int64) * K + k, mask=(u < H) & (k < K), other=0.0)
    acc = tl.zeros((d.shape[0], BLOCK_K), d.dtype)
    # d rounded to the weights' dtype first, as the step road stores dgates before its GEMMs
    return split_dot(d.to(w.dtype)[None, :, :], w[None, :, :], acc, DOT)


@triton.jit
def store_weight_grad(dw_ptr, q, H, K, d, a, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                      DOT: tl.constexpr):
    """Rows q*H.. of dW = d^T a: d (BLOCK_B, BLOCK_H) gate q's gradients, a (BLOCK_B, BLOCK_K)
    the inputs W multiplied (padded rows zero)."""
    acc = tl.zeros((BLOCK_H, BLOCK_K), d.dtype)
    dw = split_dot(tl.trans(d.to(a.dtype))[None, :, :], a[None, :, :], acc, DOT)
    u = tl.arange(0, BLOCK_H)[:, None]
    k = tl.arange(0, BLOCK_K)[None, :]
    tl.store(dw_ptr + (q * H + u).to(tl.int64) * K + k, dw.to(dw_ptr.dtype.element_ty),
             mask=(u < H) & (k < K))


@triton.jit
def gate_backward(d, q, x, h0, w_ih_ptr, w_hh_ptr, dw_ih_ptr, dw_hh_ptr, db_ih_ptr, db_hh_ptr,
                  dx, dh0, I, H, HAS_BIAS: tl.constexpr, DOT: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_I: tl.constexpr):
    """Everything gate q's pre-activation gradients d (BLOCK_B, BLOCK_H) contribute: to dx and
    dh0 (returned), to its rows of dW_ih, dW_hh and of both bias gradients (stored)."""
    dx += gate_rows_product(d, w_ih_ptr, q, H, I, BLOCK_H, BLOCK_I, DOT)
    dh0 += gate_rows_product(d, w_hh_ptr, q, H, H, BLOCK_H, BLOCK_H, DOT)
    store_weight_grad(dw_ih_ptr, q, H, I, d, x, BLOCK_H, BLOCK_I, DOT)
    store_weight_grad(dw_hh_ptr, q, H, H, d, h0, BLOCK_H, BLOCK_H, DOT)
    if HAS_BIAS:  # b_ih and b_hh enter the same pre-activation: the same gradient
        units = tl.arange(0, BLOCK_H)
        db = tl.sum(d, axis=0)
        tl.store(db_ih_ptr + q * H + units, db.to(db_ih_ptr.dtype.element_ty), mask=units < H)
        tl.store(db_hh_ptr + q * H + units, db.to(db_hh_ptr.dtype.element_ty), mask=units < H)
    return dx, dh0


@triton.jit
def lstm_cell_fused_bwd_kernel(
    dh1_ptr, dc1_ptr,  # (B, H) gradients of the new states
    gates_ptr, c_save_ptr,  # (B, 4H) activated gates, (B, H) c1 in the state dtype: forward's
    c0_ptr, x_ptr, h0_ptr,  # (B, H), (B, I), (B, H) the step's inputs
    w_ih_ptr, w_hh_ptr,  # (4H, I), (4H, H)
    dx_ptr, dh0_ptr, dc0_ptr,  # (B, I), (B, H), (B, H) out
    dw_ih_ptr, dw_hh_ptr, db_ih_ptr, db_hh_ptr,  # (4H, I), (4H, H), (4H,), (4H,) out
    B, I, H,  # every tensor row-major: row strides are these widths
    HAS_BIAS: tl.constexpr, DOT: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_I: tl.constexpr,
):
    rows = tl.arange(0, BLOCK_B).to(tl.int64)[:, None]
    units = tl.arange(0, BLOCK_H)[None, :]
    mask = (rows < B) & (units < H)
    dm = load_gate(dh1_ptr, rows, units, H, 0, H, mask, COMPUTE)
    dc = load_gate(dc1_ptr, rows, units, H, 0, H, mask, COMPUTE)
    i, f, g, o = load_gates4(gates_ptr, rows, units, 4 * H, H, mask, COMPUTE)
    c = load_gate(c_save_ptr, rows, units, H, 0, H, mask, COMPUTE)
    c_prev = load_gate(c0_ptr, rows, units, H, 0, H, mask, COMPUTE)
    d_i, d_f, d_g, d_o, dc_prev = lstm_cell_backward(dm, dc, i, f, g, o, c, c_prev)
    store_gate(dc0_ptr, rows, units, H, 0, H, dc_prev, mask)
    ks = tl.arange(0, BLOCK_I)[None, :]
    x = tl.load(x_ptr + rows * I + ks, mask=(rows < B) & (ks < I), other=0.0)
    h0 = tl.load(h0_ptr + rows * H + units, mask=mask, other=0.0)
    dx = tl.zeros((BLOCK_B, BLOCK_I), COMPUTE)
    dh0 = tl.zeros((BLOCK_B, BLOCK_H), COMPUTE)
    # padded rows and units hold zero gradients (their loads were zero), so they add nothing
    dx, dh0 = gate_backward(d_i, 0, x, h0, w_ih_ptr, w_hh_ptr, dw_ih_ptr, dw_hh_ptr, db_ih_ptr,
                            db_hh_ptr, dx, dh0, I, H, HAS_BIAS, DOT, BLOCK_H, BLOCK_I)
    dx, dh0 = gate_backward(d_f, 1, x, h0, w_ih_ptr, w_hh_ptr, dw_ih_ptr, dw_hh_ptr, db_ih_ptr,
                            db_hh_ptr, dx, dh0, I, H, HAS_BIAS, DOT, BLOCK_H, BLOCK_I)
    dx, dh0 = gate_backward(d_g, 2, x, h0, w_ih_ptr, w_hh_ptr, dw_ih_ptr, dw_hh_ptr, db_ih_ptr,
                            db_hh_ptr, dx, dh0, I, H, HAS_BIAS, DOT, BLOCK_H, BLOCK_I)
    dx, dh0 = gate_backward(d_o, 3, x, h0, w_ih_ptr, w_hh_ptr, dw_ih_ptr, dw_hh_ptr, db_ih_ptr,
                            db_hh_ptr, dx, dh0, I, H, HAS_BIAS, DOT, BLOCK_H, BLOCK_I)
    tl.store(dx_ptr + rows * I + ks, dx.to(dx_ptr.dtype.element_ty), mask=(rows < B) & (ks < I))
    store_gate(dh0_ptr, rows, units, H, 0, H, dh0, mask)


def lstm_cell_fused_backward(dh1, dc1, x, h0, c0, w_ih, w_hh, gates, c_save, has_bias, launch):
    """(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh) of one LSTM cell step (the biases' None
    without them). launch: config.fused_cell_backward_launch's blocks. Every tensor
    row-major and contiguous."""
    block_b, block_h, block_i, dot, compute = launch
    (B, I), H = x.shape, h0.shape[1]
    dx, dh0, dc0 = x.new_empty(B, I), x.new_empty(B, H), x.new_empty(B, H)
    dw_ih, dw_hh = w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape)
    db_ih = w_ih.new_empty(4 * H) if has_bias else None
    db_hh = w_ih.new_empty(4 * H) if has_bias else None
    prepared(lstm_cell_fused_bwd_kernel).launch(
        (1,), dh1, dc1, gates, c_save, c0, x, h0, w_ih, w_hh, dx, dh0, dc0, dw_ih, dw_hh,
        db_ih, db_hh, B, I, H,
        HAS_BIAS=has_bias, DOT=dot, COMPUTE=compute, BLOCK_B=block_b, BLOCK_H=block_h,
        BLOCK_I=block_i,
    )
    return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh
