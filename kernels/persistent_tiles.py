"""Helpers shared by the persistent LSTM and GRU kernels (forward and backward).

Every persistent kernel does, per step, one small recurrent matmul
`acc (BLOCK_B, N) += A (BLOCK_B, K) @ W (K, N)` where
  A: rows of a packed (N_rows, K) matrix written by all programs at the previous
     step (forward: h_{t-1} from y, or h0 for rows that start here; backward:
     the gate gradients of the step undone before), and
  W: this program's slice of W_hh (forward: the rows of all gates of its units,
     fused into one tile, see `gate_columns`; backward: W_hh[:, units], K = n_gates*H),
plus the bookkeeping of the packed schedule (batch size and first row of a step).

Two shapes keep the tensor cores busy at small batch, where A has only 16 rows
(one mma tile) and Triton cannot split M across warps (compiling for sm_90
without a GPU shows the warps then each repeat the whole product):
  - forward fuses the gates into one dot N = 4*BLOCK_H wide, which the warps split;
  - a dot too narrow for that (backward's N = BLOCK_H) runs on SPLIT independent
    K-chunks (a batched dot, summed after), which the warps split instead
    (persistent_config.split_k chooses SPLIT).
A resident W is held as NP pieces of such chunks, each (SPLIT, KP / SPLIT, N)
(`resident_weights`); a streamed W is read SPLIT chunks of BLOCK_K
at a time, each batch summed before the next.

DOT selects how a matmul runs (chosen by the launcher from the dtype and the
device, see persistent_config.dot_mode):
  0: tl.dot on the operands as stored (float16/bfloat16 tensor cores on a GPU),
  1: tl.dot on float32 operands in IEEE precision (float32 tensors; bfloat16 under
     the interpreter, whose bfloat16 dot is wrong),
  2: broadcast-multiply-sum in the accumulator's dtype (float64: no float64 dot),
  3: tl.dot on float32 operands as 3xTF32 (a plan option: persistent_config.tf32x3).
"""
import triton
import triton.language as tl


@triton.jit
def tensor_core_dot(a, w, DOT: tl.constexpr):
    """a @ w (2-D, or batched 3-D) on tensor cores, float32 result (DOT 0 or 1)."""
    if DOT == 0:
        return tl.dot(a, w)
    if DOT == 3:  # a = a_hi + a_lo in tf32, three products: float32 on tensor cores
        return tl.dot(a.to(tl.float32), w.to(tl.float32), input_precision="tf32x3")
    return tl.dot(a.to(tl.float32), w.to(tl.float32), input_precision="ieee")


@triton.jit
def split_dot(a, w, acc, DOT: tl.constexpr):
    """acc + sum_s a[s] @ w[s]; a: (SPLIT, BLOCK_B, KS), w: (SPLIT, KS, N), acc: (BLOCK_B, N)."""
    if a.shape[0] == 1:  # one chunk: a 2-D dot (Triton 3.6 puts a 3-D dot's warps on dim 0)
        a = tl.reshape(a, (a.shape[1], a.shape[2])).to(acc.dtype if DOT == 2 else a.dtype)
        w = tl.reshape(w, (w.shape[1], w.shape[2])).to(acc.dtype if DOT == 2 else w.dtype)
        if DOT == 2:
            part = tl.sum(a[:, :, None] * w[None, :, :], axis=1)
        else:
            part = tensor_core_dot(a, w, DOT)
    elif DOT == 2:
        part = tl.sum(tl.sum(a.to(acc.dtype)[:, :, :, None] * w.to(acc.dtype)[:, None, :, :],
                             axis=2), axis=0)
    else:
        part = tl.sum(tensor_core_dot(a, w, DOT), axis=0)
    return acc + part.to(acc.dtype)


@triton.jit
def k_chunks(k0, SPLIT: tl.constexpr, KS: tl.constexpr):
    """Indices k0 + s*KS + kk of SPLIT chunks of KS, shaped for an A tile (SPLIT, 1, KS) and
    for a W tile (SPLIT, KS, 1)."""
    first = k0 + tl.arange(0, SPLIT)[:, None, None] * KS
    return first + tl.arange(0, KS)[None, None, :], first + tl.arange(0, KS)[None, :, None]


@triton.jit
def gate_columns(BLOCK_H: tl.constexpr, H, N_GATES: tl.constexpr):
    """Rows of W_hh behind the columns of this program's fused gate tile ((1, 4*BLOCK_H)),
    and which exist. Column j = 4u + q is gate q of the program's unit u: unit-major, so a
    unit's gates sit side by side and `split_gates` is mostly register-local. A GRU
    (N_GATES = 3) leaves every fourth column empty: tl.dot needs a power-of-two width."""
    j = tl.arange(0, 4 * BLOCK_H)
    unit = tl.program_id(0) * BLOCK_H + j // 4
    q = j % 4
    return (q * H + unit)[None, :], ((unit < H) & (q < N_GATES))[None, :]


@triton.jit
def split_gates(acc, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """(BLOCK_B, 4*BLOCK_H) fused gate tile -> its four (BLOCK_B, BLOCK_H) gates, q = 0..3."""
    even, odd = tl.split(tl.reshape(acc, (BLOCK_B, BLOCK_H, 2, 2)))  # column 4u + 2a + b
    q0, q2 = tl.split(even)
    q1, q3 = tl.split(odd)
    return q0, q1, q2, q3


@triton.jit
def recurrent_source(y_ptr, stride_y, h0_ptr, stride_h0, xin_ptr, stride_xin, h0in_ptr,
                     stride_h0in, MASKED: tl.constexpr):
    """(src, its row stride, alt, its row stride) the forward's recurrent matmul reads
    h_{t-1} from (load_rows): the outputs y and h0, or, when the GEMM input is masked (a
    reset's keep or recurrent dropout), the masked copies xin and h0in the steps write."""
    if MASKED:
        src_ptr, stride_src, alt_ptr, stride_alt = xin_ptr, stride_xin, h0in_ptr, stride_h0in
    else:
        src_ptr, stride_src, alt_ptr, stride_alt = y_ptr, stride_y, h0_ptr, stride_h0
    return src_ptr, stride_src, alt_ptr, stride_alt


@triton.jit
def step_rows(bs_ptr, off_ptr, t, T, B, PADDED: tl.constexpr):
    """(batch size, first packed row) of step t; (0, 0) when t is outside [0, T).
    A padded batch (PADDED) has B rows at every step, from row t * B: nothing to read, so
    its launch makes no schedule tensors (two allocations and three torch calls of host
    time, ~7 µs a launch, issue 17). A packed batch reads its (T,) batch sizes and offsets."""
    valid = (t >= 0) & (t < T)
    if PADDED:
        bs = tl.where(valid, B, 0)
        off = tl.where(valid, t.to(tl.int64) * B, 0)
    else:
        bs = tl.load(bs_ptr + t, mask=valid, other=0)
        off = tl.load(off_ptr + t, mask=valid, other=0)
    return bs, off


@triton.jit
def load_rows(src_ptr, src_row0, n_src, src_stride, alt_ptr, alt_stride, n_active, r, cols,
              n_cols):
    """Tile of the broadcast shape of (r, cols): row r < n_src from src[src_row0 + r],
    n_src <= r < n_active from alt[r] (the initial state), zero elsewhere. Read through L2
    (.cg): other programs wrote src since this program last looked."""
    col_ok = cols < n_cols
    from_src = (r < n_src) & col_ok
    from_alt = (r >= n_src) & (r < n_active) & col_ok
    a = tl.load(src_ptr + (src_row0 + r) * src_stride + cols, mask=from_src, other=0.0,
                cache_modifier=".cg")
    b = tl.load(alt_ptr + r * alt_stride + cols, mask=from_alt, other=0.0)
    return tl.where(from_src, a, b)


@triton.jit
def load_w_tile(w_ptr, ks, K, cols, col_ok, stride_k, stride_n):
    """Tile W[k, n] = w[ks * stride_k + cols * stride_n] (broadcast shapes), zero-padded."""
    offs = ks.to(tl.int64) * stride_k + cols.to(tl.int64) * stride_n
    return tl.load(w_ptr + offs, mask=(ks < K) & col_ok, other=0.0)


@triton.jit
def load_w_chunks(w_ptr, k0, K, cols, col_ok, stride_k, stride_n, SPLIT: tl.constexpr,
                  KP: tl.constexpr, TRANS: tl.constexpr = False):
    """Rows [k0, k0 + KP) of this program's W as SPLIT chunks (SPLIT, KP / SPLIT, N); TRANS:
    transposed, (SPLIT, N, KP / SPLIT), the M operand of a transposed dot (chunk_dot)."""
    ka, kw = k_chunks(k0, SPLIT, KP // SPLIT)
    # if / else, not an early return: Triton's code generator still builds what follows a
    # return under a constexpr `if` (and type-checks it)
    if TRANS:
        cols_t, ok_t = tl.trans(cols), tl.trans(col_ok)  # (N, 1)
        w = load_w_tile(w_ptr, ka, K, cols_t[None, :, :], ok_t[None, :, :], stride_k, stride_n)
    else:
        w = load_w_tile(w_ptr, kw, K, cols[None, :, :], col_ok[None, :, :], stride_k, stride_n)
    return w


@triton.jit
def chunk_dot(acc, w, k0, src_ptr, src_row0, n_src, src_stride, alt_ptr, alt_stride, n_active,
              r, K, SPLIT: tl.constexpr, KP: tl.constexpr, DOT: tl.constexpr,
              TRANS: tl.constexpr = False):
    """acc + A[:, k0:k0 + KP] @ w, w the chunks of `load_w_chunks` for the same rows; A's rows
    from `load_rows` (r: (BLOCK_B, 1) rows). TRANS: acc and w transposed, acc^T + w^T @ A^T:
    W's columns are the dot's M, the batch its N (issue 16's narrow forward: 4 gates x 8
    units = 32 rows of M while every tl.dot dimension stays >= 16)."""
    ka, kw = k_chunks(k0, SPLIT, KP // SPLIT)
    if TRANS:  # if / else: see load_w_chunks
        a_t = load_rows(src_ptr, src_row0, n_src, src_stride, alt_ptr, alt_stride, n_active,
                        tl.trans(r)[None, :, :], kw, K)  # (SPLIT, KS, BLOCK_B)
        acc = split_dot(w, a_t, acc, DOT)
    else:
        a = load_rows(src_ptr, src_row0, n_src, src_stride, alt_ptr, alt_stride, n_active,
                      r[None, :, :], ka, K)
        acc = split_dot(a, w, acc, DOT)
    return acc


@triton.jit
def resident_weights(w_ptr, K, cols, col_ok, stride_k, stride_n, RESIDENT: tl.constexpr,
                     SPLIT: tl.constexpr, KP: tl.constexpr, NP: tl.constexpr,
                     TRANS: tl.constexpr = False):
    """This program's W (K x len(cols)), loaded once and kept for every step when RESIDENT: a
    tuple of NP pieces of KP rows (a power of two), each SPLIT K-chunks. Pieces pad K less
    than one power of two (768 = 3 x 256, not 1024), and each dot stages only its piece of
    A (persistent_config.k_pieces). Else an empty tuple: W is streamed every step."""
    w = ()
    if RESIDENT:
        for p in tl.static_range(NP):
            w = w + (load_w_chunks(w_ptr, p * KP, K, cols, col_ok, stride_k, stride_n, SPLIT,
                                   KP, TRANS),)
    return w


@triton.jit
def recurrent_matmul(acc, src_ptr, src_row0, n_src, src_stride, alt_ptr, alt_stride, n_active,
                     r, w, w_ptr, cols, col_ok, stride_k, stride_n, K,
                     RESIDENT: tl.constexpr, SPLIT: tl.constexpr, KP: tl.constexpr,
                     NP: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr,
                     TRANS: tl.constexpr = False):
    """acc + A @ W: A's rows from `load_rows` (r: (BLOCK_B, 1) rows), W either the resident
    pieces `w` from `resident_weights` or streamed from w_ptr (as in `load_w_tile`), SPLIT
    chunks of BLOCK_K at a time, re-read from L2 every step. TRANS: the dot runs transposed
    (chunk_dot; `w` loaded with the same TRANS); acc and the result keep their layout."""
    if TRANS:
        acc = tl.trans(acc)
    if RESIDENT:
        for p in tl.static_range(NP):
            acc = chunk_dot(acc, w[p], p * KP, src_ptr, src_row0, n_src, src_stride, alt_ptr,
                            alt_stride, n_active, r, K, SPLIT, KP, DOT, TRANS)
    else:
        for k0 in range(0, K, SPLIT * BLOCK_K):
            w_k = load_w_chunks(w_ptr, k0, K, cols, col_ok, stride_k, stride_n, SPLIT,
                                SPLIT * BLOCK_K, TRANS)
            acc = chunk_dot(acc, w_k, k0, src_ptr, src_row0, n_src, src_stride, alt_ptr,
                            alt_stride, n_active, r, K, SPLIT, SPLIT * BLOCK_K, DOT, TRANS)
    if TRANS:
        acc = tl.trans(acc)
    return acc


@triton.jit
def recurrent_matmul_partials(acc, src_ptr, src_row0, n_src, src_stride, alt_ptr, alt_stride,
                              n_active, r, w, w_ptr, cols, col_ok, stride_k, stride_n, K,
                              RESIDENT: tl.constexpr, SPLIT: tl.constexpr, KP: tl.constexpr,
                              NP: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr,
                              TRANS: tl.constexpr = False):
    """`recurrent_matmul` with a resident W's pieces each summed into its own partial tile,
    the partials added once after the last piece (issue 16's split K, a plan option:
    persistent_config.with_chain). A warp's mma then form NP independent chains of KP/16
    instead of one of K/16, which the tensor core can overlap. A streamed W is unchanged."""
    if RESIDENT:
        # Each piece starts from a zero the compiler cannot prove is zero: from a literal zero,
        # Triton's combine pass would fold `partial + dot(a, w, 0)` into `dot(a, w, partial)`,
        # one chain again. (n_active * 0.0 is a float multiply, which is never folded.)
        if TRANS:
            acc = tl.trans(acc)
        zero = tl.zeros_like(acc) + n_active.to(acc.dtype) * 0.0
        total = acc
        for p in tl.static_range(NP):
            part = chunk_dot(zero, w[p], p * KP, src_ptr, src_row0, n_src, src_stride, alt_ptr,
                             alt_stride, n_active, r, K, SPLIT, KP, DOT, TRANS)
            total = total + part
        if TRANS:
            total = tl.trans(total)
    else:
        total = recurrent_matmul(acc, src_ptr, src_row0, n_src, src_stride, alt_ptr, alt_stride,
                                 n_active, r, w, w_ptr, cols, col_ok, stride_k, stride_n, K,
                                 RESIDENT, SPLIT, KP, NP, BLOCK_K, DOT, TRANS)
    return total


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
def step_tile(row, off, bs, unit_ok):
    """(active rows, mask of active rows x existing units, packed rows (int64)) of a step
    whose batch size is bs and whose first packed row is off."""
    active = row < bs
    return active, active & unit_ok, off + row


@triton.jit
def forward_step_rows(s, T, B, bs_ptr, off_ptr, REVERSE: tl.constexpr, PADDED: tl.constexpr):
    """(bs, off) of the s-th step processed and (bs_p, off_p) of the one processed before it."""
    bs, off = step_rows(bs_ptr, off_ptr, step_at(s, T, REVERSE), T, B, PADDED)
    bs_p, off_p = step_rows(bs_ptr, off_ptr, step_at(s - 1, T, REVERSE), T, B, PADDED)
    return bs, off, bs_p, off_p


@triton.jit
def backward_step_rows(s, T, B, bs_ptr, off_ptr, REVERSE: tl.constexpr, PADDED: tl.constexpr):
    """Backward's s-th iteration undoes forward step j = T-1-s: its rows, those of the step
    before it (c_{t-1} / h_{t-1}) and those of the step undone just before (the gradient
    exchange); steps outside [0, T) have no rows."""
    j = T - 1 - s
    bs, off, bs_p, off_p = forward_step_rows(j, T, B, bs_ptr, off_ptr, REVERSE, PADDED)
    bs_n, off_n = step_rows(bs_ptr, off_ptr, step_at(j + 1, T, REVERSE), T, B, PADDED)
    return bs, off, bs_p, off_p, bs_n, off_n
