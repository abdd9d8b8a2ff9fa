"""Helpers shared by the persistent LSTM and GRU kernels (forward and backward).

Every persistent kernel does, per step, one small recurrent matmul
`acc (BLOCK_B, BLOCK_H) += A (BLOCK_B, K) @ W (K, BLOCK_H)` where
  A: rows of a packed (N, K) matrix written by all programs at the previous
     step (forward: h_{t-1} from y, or h0 for rows that start here; backward:
     the gate gradients of the step undone before), and
  W: this program's slice of W_hh (forward: W_hh[q*H + units, :]^T per gate q;
     backward: W_hh[:, units], K = n_gates * H),
plus the bookkeeping of the packed schedule (batch size and first row of a step).

DOT selects how a matmul runs (chosen by the launcher from the dtype and the
device, see persistent_config.dot_mode):
  0: tl.dot on the operands as stored (float16/bfloat16 tensor cores on a GPU),
  1: tl.dot on float32 operands in IEEE precision (float32 tensors; bfloat16 under
     the interpreter, whose bfloat16 dot is wrong),
  2: broadcast-multiply-sum in the accumulator's dtype (float64: no float64 dot).
"""
import triton
import triton.language as tl


@triton.jit
def rec_dot(a, w, acc, DOT: tl.constexpr):
    """acc + a @ w; a: (BLOCK_B, BK), w: (BK, BLOCK_H), acc: (BLOCK_B, BLOCK_H)."""
    if DOT == 0:
        return tl.dot(a, w, acc)
    elif DOT == 1:
        return tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
    else:
        prod = a.to(acc.dtype)[:, :, None] * w.to(acc.dtype)[None, :, :]
        return acc + tl.sum(prod, axis=1)


@triton.jit
def step_rows(bs_ptr, off_ptr, t, T):
    """(batch size, first packed row) of step t; (0, 0) when t is outside [0, T)."""
    valid = (t >= 0) & (t < T)
    bs = tl.load(bs_ptr + t, mask=valid, other=0)
    off = tl.load(off_ptr + t, mask=valid, other=0)
    return bs, off


@triton.jit
def load_rows(src_ptr, src_row0, n_src, src_stride, alt_ptr, alt_stride, n_active, r, cols, n_cols):
    """(BLOCK_B, len(cols)) tile: row r < n_src from src[src_row0 + r], n_src <= r < n_active
    from alt[r] (the initial state), zero elsewhere. Read through L2 (.cg): other programs
    wrote src since this program last looked."""
    col_ok = cols < n_cols
    from_src = (r < n_src) & col_ok
    from_alt = (r >= n_src) & (r < n_active) & col_ok
    a = tl.load(src_ptr + (src_row0 + r) * src_stride + cols, mask=from_src, other=0.0,
                cache_modifier=".cg")
    b = tl.load(alt_ptr + r * alt_stride + cols, mask=from_alt, other=0.0)
    return tl.where(from_src, a, b)


@triton.jit
def load_w_tile(w_ptr, ks, K, cols, col_ok, stride_k, stride_n):
    """(len(ks), len(cols)) tile W[k, n] = w[k * stride_k + cols[n] * stride_n], zero-padded."""
    offs = ks[:, None].to(tl.int64) * stride_k + cols.to(tl.int64) * stride_n
    return tl.load(w_ptr + offs, mask=(ks[:, None] < K) & col_ok, other=0.0)


@triton.jit
def stream_matmul(acc, src_ptr, src_row0, n_src, src_stride, alt_ptr, alt_stride, n_active, r,
                  w_ptr, cols, col_ok, stride_k, stride_n, K,
                  BLOCK_K: tl.constexpr, DOT: tl.constexpr):
    """acc + A @ W with A from `load_rows` and W from `load_w_tile`, in K-chunks of BLOCK_K
    (the weight slice is re-read from L2 every step: the not-resident path)."""
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = load_rows(src_ptr, src_row0, n_src, src_stride, alt_ptr, alt_stride, n_active,
                      r, ks[None, :], K)
        w = load_w_tile(w_ptr, ks, K, cols, col_ok, stride_k, stride_n)
        acc = rec_dot(a, w, acc, DOT)
    return acc


@triton.jit
def step_at(j, T, REVERSE: tl.constexpr):
    """Timestep processed j-th by the forward loop (j outside [0, T) maps outside too)."""
    if REVERSE:
        t = T - 1 - j
    else:
        t = j
    return t


@triton.jit
def program_tile(BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, B, H):
    """This program's state tile: every batch row (int64, (BLOCK_B, 1)), its hidden units
    ((1, BLOCK_H)), which units exist, and the mask of real (row, unit) pairs."""
    row = tl.arange(0, BLOCK_B).to(tl.int64)[:, None]
    units = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)[None, :]
    unit_ok = units < H
    return row, units, unit_ok, (row < B) & unit_ok


@triton.jit
def forward_step_rows(s, T, bs_ptr, off_ptr, REVERSE: tl.constexpr):
    """(bs, off) of the s-th step processed and (bs_p, off_p) of the one processed before it."""
    bs, off = step_rows(bs_ptr, off_ptr, step_at(s, T, REVERSE), T)
    bs_p, off_p = step_rows(bs_ptr, off_ptr, step_at(s - 1, T, REVERSE), T)
    return bs, off, bs_p, off_p


@triton.jit
def backward_step_rows(s, T, bs_ptr, off_ptr, REVERSE: tl.constexpr):
    """Backward's s-th iteration undoes forward step j = T-1-s: its rows, those of the step
    before it (c_{t-1} / h_{t-1}) and those of the step undone just before (the gradient
    exchange); steps outside [0, T) have no rows."""
    j = T - 1 - s
    bs, off, bs_p, off_p = forward_step_rows(j, T, bs_ptr, off_ptr, REVERSE)
    bs_n, off_n = step_rows(bs_ptr, off_ptr, step_at(j + 1, T, REVERSE), T)
    return bs, off, bs_p, off_p, bs_n, off_n


@triton.jit
def backward_weight_slice(w_hh_ptr, K, units, unit_ok, stride_w,
                          RESIDENT: tl.constexpr, K_PAD: tl.constexpr):
    """W_hh[:, units] as a (K_PAD, BLOCK_H) tile kept for all steps when RESIDENT; else a
    placeholder (the streamed path re-reads the slice from L2 every step)."""
    if RESIDENT:
        w = load_w_tile(w_hh_ptr, tl.arange(0, K_PAD), K, units, unit_ok, stride_w, 1)
    else:
        w = 0
    return w


@triton.jit
def backward_recurrence(acc, ex_ptr, off_n, bs_n, stride_ex, w, w_hh_ptr, units, unit_ok,
                        stride_w, K, row, RESIDENT: tl.constexpr, K_PAD: tl.constexpr,
                        BLOCK_K: tl.constexpr, DOT: tl.constexpr):
    """acc + G @ W_hh[:, units], G = the (K-wide) gate gradients of the step undone just
    before, read from the exchange buffer ex: the recurrent part of this step's dh."""
    if RESIDENT:
        g = load_rows(ex_ptr, off_n, bs_n, stride_ex, ex_ptr, 0, bs_n, row,
                      tl.arange(0, K_PAD)[None, :], K)  # (BLOCK_B, K_PAD)
        out = rec_dot(g, w, acc, DOT)
    else:
        out = stream_matmul(acc, ex_ptr, off_n, bs_n, stride_ex, ex_ptr, 0, bs_n, row,
                            w_hh_ptr, units, unit_ok, stride_w, 1, K, BLOCK_K, DOT)
    return out
