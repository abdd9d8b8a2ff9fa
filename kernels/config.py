"""Where the kernels run and with which block sizes: one place for launch configs.

Block sizes for the pointwise step kernels are not tuned yet (no GPU
measurement has been taken for this project); they are the usual
bandwidth-kernel choice of a few thousand elements per program. The
interpreter runs programs one after another in Python, so there we use as few,
as large programs as possible.
"""
import functools
import os

import triton


@functools.lru_cache(maxsize=None)
def interpreting() -> bool:
    """True when Triton kernels run through the CPU interpreter. Read once, as Triton itself
    does when it decorates the kernels at import (setting the variable later changes
    nothing there either); cached because every step launch asks (issue 17)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def pointwise_launch(n_rows: int, n_units: int) -> tuple[tuple[int, int], int, int]:
    """(grid, BLOCK_B, BLOCK_H) of a step kernel over an (n_rows, n_units) tile."""
    return _pointwise_launch(n_rows, n_units, interpreting())


@functools.lru_cache(maxsize=4096)
def _pointwise_launch(n_rows, n_units, interpret):
    """Cached: it runs once per launch, and triton.next_power_of_2 / cdiv are
    constexpr_functions on Triton 3.9, ~20 µs of host time per launch uncached."""
    if interpret:
        block_b = triton.next_power_of_2(max(n_rows, 1))
        block_h = triton.next_power_of_2(max(n_units, 1))
    else:
        block_h = min(triton.next_power_of_2(max(n_units, 1)), 128)
        block_b = min(triton.next_power_of_2(max(n_rows, 1)), max(1, 2048 // block_h))
    return (triton.cdiv(n_rows, block_b), triton.cdiv(n_units, block_h)), block_b, block_h


# One cell step in one launch (kernels/cell_fused.py) runs where all B rows fit one program's
# tile and the weights are small: there a cell step is launch-bound, and one launch replaces
# three (two cuBLAS GEMMs and the step kernel). The limits are a guess, unmeasured on a GPU
# (issue 17; the first GPU run must time both roads and set them): each of the H / 16
# programs reads its 4 x 16 rows of W_ih and W_hh once, as a GEMV would, so up to a few
# hundred units it should be no slower than cuBLAS and saves two launches.
FUSED_CELL_MAX_BATCH = 32
FUSED_CELL_MAX_HIDDEN = 256
FUSED_CELL_MAX_INPUT = 1024


def fused_cell_launch(batch: int, n_in: int, hidden: int, dtype, on_gpu: bool = True):
    """(grid, BLOCK_B, BLOCK_H, BLOCK_K, DOT, COMPUTE) of a fused cell step, or None where
    the step runs on the GEMMs and the step kernel instead (config above). Cached, with the
    dot mode and compute dtype: a cell call asks once per step (issue 17)."""
    return _fused_cell_launch(batch, n_in, hidden, dtype, on_gpu, interpreting())


def _dot_and_compute(dtype, on_gpu):
    """(DOT, COMPUTE) of a fused kernel's matmuls and math for this dtype and device."""
    import torch

    from .persistent_config import dot_mode
    return dot_mode(dtype, torch.device("cuda" if on_gpu else "cpu")), compute_dtype(dtype)


@functools.lru_cache(maxsize=4096)
def _fused_cell_launch(batch, n_in, hidden, dtype, on_gpu, interpret):
    import torch

    if not (0 < batch <= FUSED_CELL_MAX_BATCH and 0 < hidden <= FUSED_CELL_MAX_HIDDEN
            and n_in <= FUSED_CELL_MAX_INPUT):
        return None
    block_b = max(16, triton.next_power_of_2(batch))  # tl.dot: every dimension >= 16
    fp64 = dtype == torch.float64
    if interpret:  # one program, whole K chunks: the interpreter runs programs one by one
        block_h = max(4, triton.next_power_of_2(hidden))
        block_k = max(16, triton.next_power_of_2(max(n_in, hidden)))
        if fp64:  # no dot: a (BLOCK_B, BLOCK_K, 4 BLOCK_H) product, which Triton caps at 2**20
            block_k = max(16, min(block_k, (1 << 20) // (block_b * 4 * block_h)))
    else:  # 4 gates x 16 units = a 64-wide tile; float64 (no tensor cores) in short chunks
        block_h, block_k = 16, (16 if fp64 else 32)
    return ((triton.cdiv(hidden, block_h),), block_b, block_h, block_k,
            *_dot_and_compute(dtype, on_gpu))


# An LSTM cell step's whole backward in one program (kernels/cell_fused_backward.py) runs
# where every row, unit and input of the step fits one small tile: there the step road's
# seven GPU calls (the step kernel, four GEMMs, the bias sums) are launch-bound, and one
# replaces them. The limits are where it compiles for sm_90 without spilling on Triton 3.6
# (the GPU image's) and 3.9 (ptxas -v, 4 warps, float32 and bfloat16): tiles up to 16 rows,
# 16 units, 32 inputs (185-255 registers a thread, no spill); 32 rows spilled 48-416 bytes
# on 3.6, 32 units 124-424 bytes and 64 units 12-80 KB on 3.9. Wider cells need several
# programs (and the weight gradients as GEMMs): the step road. Unmeasured on a GPU.
FUSED_CELL_BACKWARD_MAX_BATCH = 16
FUSED_CELL_BACKWARD_MAX_HIDDEN = 16
FUSED_CELL_BACKWARD_MAX_INPUT = 32


def fused_cell_backward_launch(batch: int, n_in: int, hidden: int, dtype, on_gpu: bool = True):
    """(BLOCK_B, BLOCK_H, BLOCK_I, DOT, COMPUTE) of a one-program cell backward, or None
    where the backward runs on the step kernel and GEMMs (config above). Cached."""
    return _fused_cell_backward_launch(batch, n_in, hidden, dtype, on_gpu)


@functools.lru_cache(maxsize=4096)
def _fused_cell_backward_launch(batch, n_in, hidden, dtype, on_gpu):
    if not (0 < batch <= FUSED_CELL_BACKWARD_MAX_BATCH
            and 0 < hidden <= FUSED_CELL_BACKWARD_MAX_HIDDEN
            and 0 < n_in <= FUSED_CELL_BACKWARD_MAX_INPUT):
        return None
    tile = lambda n: max(16, triton.next_power_of_2(n))  # noqa: E731  tl.dot: >= 16
    return tile(batch), tile(hidden), tile(n_in), *_dot_and_compute(dtype, on_gpu)


def state_dtype(dtype):
    """Carried cell state / gradient (torch dtype): float32 for half types, else the dtype."""
    import torch

    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@functools.lru_cache(maxsize=None)
def compute_dtype(tensor_dtype):
    """Gate math runs in float32, or float64 when the module is float64 (gradcheck).
    Cached: it runs once per step launch."""
    import torch
    import triton.language as tl

    return tl.float64 if tensor_dtype == torch.float64 else tl.float32


def row_launch(n_rows: int, n_units: int, n_gates: int) -> tuple[tuple[int, int], int, int, int]:
    """(grid, BLOCK_B, BLOCK_H, num_warps) of a kernel whose programs each hold whole rows of
    n_gates * n_units values (a layer norm reduces over the row): BLOCK_H covers every
    unit; BLOCK_B (a power of two, as tl.arange needs) rows per program keep a program near
    the pointwise kernels' few thousand elements, one row when a row alone is wider. Wide
    rows get more warps: compiled for sm_90 with 4 warps, the LSTM step kernels took 128
    registers a thread at H=1024 and 220-242 at H=2048 (no spill); 16 warps: 40-84."""
    block_h = triton.next_power_of_2(max(n_units, 1))
    if interpreting():
        block_b = triton.next_power_of_2(max(n_rows, 1))
    else:
        cap = max(1, 4096 // (n_gates * block_h))
        block_b = min(triton.next_power_of_2(max(n_rows, 1)), 1 << (cap.bit_length() - 1))
    per_256 = max(1, n_gates * block_b * block_h // 256)  # ~8 values a thread at 32 a warp
    num_warps = min(16, max(4, 1 << (per_256.bit_length() - 1)))  # a power of two
    return (triton.cdiv(n_rows, block_b), 1), block_b, block_h, num_warps
