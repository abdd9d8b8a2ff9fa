"""Tile addressing shared by the step kernels.

Every step kernel works on a (BLOCK_B rows) x (BLOCK_H hidden units) tile of a
row-major (rows, n_gates * H) matrix. Row offsets are int64: rows * stride can
pass 2**31 for long packed sequences of wide layers.
"""
import triton
import triton.language as tl


@triton.jit
def tile_index(BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, n_rows, H):
    """Rows (int64, [BLOCK_B, 1]), units ([1, BLOCK_H]) and mask of this program's tile."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    units = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    rows = rows[:, None]
    units = units[None, :]
    mask = (rows < n_rows) & (units < H)
    return rows, units, mask


@triton.jit
def load_gate(ptr, rows, units, stride, q, H, mask, COMPUTE: tl.constexpr):
    """Gate q of the tile: columns q*H + units of a (rows, n_gates*H) matrix."""
    return tl.load(ptr + rows * stride + q * H + units, mask=mask, other=0.0).to(COMPUTE)


@triton.jit
def store_gate(ptr, rows, units, stride, q, H, value, mask):
    tl.store(ptr + rows * stride + q * H + units, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def load_previous(prev_ptr, init_ptr, rows, units, stride_prev, stride_init, n_prev, H, mask,
                  COMPUTE: tl.constexpr):
    """The state a backward step's rows started from: rows < n_prev continue the step
    processed before (prev_ptr), the others start from the initial state (init_ptr; only
    in the reverse direction of a packed batch, where short sequences join late)."""
    from_prev = rows < n_prev
    return tl.where(
        from_prev,
        load_gate(prev_ptr, rows, units, stride_prev, 0, H, mask & from_prev, COMPUTE),
        load_gate(init_ptr, rows, units, stride_init, 0, H, mask & (rows >= n_prev), COMPUTE),
    )
