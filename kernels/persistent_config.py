"""Launch plans for the persistent kernels: grid, block sizes, resident or streamed W_hh.

Nothing here is tuned: no GPU measurement exists for this project yet. Every
limit is derived from the device's own properties, never from a model name:

  grid      one program per slice of BLOCK_H hidden units, and never more programs
            than SMs. One program per SM is co-resident on an idle GPU whatever the
            kernel's register / shared-memory use (a compiled program always fits one
            SM), so the grid barrier can complete; on a busy GPU the bounded barrier
            (grid_sync.py) fails and the launcher falls back instead of hanging.
  BLOCK_H   the smallest power of two >= 16 (tl.dot's minimum) that keeps the grid
            within the SM count: as many programs as possible share the weight reads.
  BLOCK_B   the batch padded to a power of two >= 16 (tl.dot's minimum).
  resident  W_hh slice (forward: H x 4*BLOCK_H, the fused gate tile; backward:
            n_gates*H x BLOCK_H, in K-chunks, see split_k) loaded once before the time
            loop when it fits in half of one program's shared memory (Triton keeps a
            loop-invariant tl.dot operand in shared memory: compiling for sm_90 shows
            the slice's bytes in the kernel's shared-memory size); otherwise streamed
            from L2 in BLOCK_K chunks every step. float32 is resident only on the
            Triton versions in FP32_RESIDENT_TRITON: Triton 3.9's LLVM aborts
            (SLPVectorizer assertion) compiling the resident LSTM forward with IEEE
            float32 dots for sm_90, and an abort cannot be caught; Triton 3.6 (the GPU
            image's) compiles all four resident float32 kernels. Both found by
            compile-only checks without a GPU (tests/test_persistent.py).

Under the interpreter (CPU tests) programs run one after another, so a barrier
with two programs would wait forever: the plan is a single program whose
BLOCK_H covers every hidden unit.
"""
from dataclasses import dataclass, replace

import torch
import triton

from .config import interpreting

# Matmul modes (persistent_tiles.split_dot).
DOT_NATIVE, DOT_IEEE_F32, DOT_FMA = 0, 1, 2

# Polls of the grid barrier before a program gives up. One poll is an atomic read
# from L2 plus two bar.syncs (under 1 us on a GPU), so this is at most about a second:
# far longer than any step, short enough that a grid that cannot meet drains quickly.
SPIN_LIMIT = 1 << 20

MIN_DOT = 16  # tl.dot needs every dimension >= 16

# The recurrent dot's K is cut into SPLIT independent chunks (one batched dot, summed
# after: persistent_tiles.split_dot) when its tile is narrower than WIDE_N columns. At
# batch <= 16 the dot has one 16-row mma tile, so its warps can only split N: forward's
# fused gate tile (4 * BLOCK_H >= 64 columns) gives each warp its own columns, but
# backward's (BLOCK_H = 16 columns) would have every warp repeat the same product. With
# one chunk per warp the warps split K instead. Chosen from the code Triton 3.6 (the GPU
# image's) and 3.9 generate for sm_90 (mma instructions per SM sub-partition, registers,
# spills: `python -m bench.compiled`; the exploration is in reports/NOTES.md), not yet timed.
WIDE_N = 64
NUM_WARPS = 8  # with 4, ptxas spills the resident kernels' operand tiles

# Triton versions (major, minor) known to compile the resident float32 kernels for sm_90
# (see the module docstring); any other version streams float32 weights.
FP32_RESIDENT_TRITON = {(3, 6)}


def split_k(k_pad: int, n_cols: int, num_warps: int) -> int:
    """SPLIT for a recurrent dot of K_PAD rows and n_cols columns (see WIDE_N above); each
    chunk keeps tl.dot's minimum of 16 rows."""
    if n_cols >= WIDE_N:
        return 1
    return max(1, min(num_warps, k_pad // MIN_DOT))


def fp32_resident_compiles(version: str = triton.__version__) -> bool:
    return tuple(int(p) for p in version.split(".")[:2]) in FP32_RESIDENT_TRITON


@dataclass(frozen=True)
class PersistentPlan:
    grid: int  # programs
    block_b: int  # padded batch rows
    block_h: int  # hidden units per program
    block_o: int  # columns of the recurrent state h per program (LSTM projection: of P)
    block_k: int  # K-chunk of the streamed matmul
    resident: bool  # W_hh slice held across the time loop
    dot: int  # DOT_* mode
    num_warps: int
    spin_limit: int = SPIN_LIMIT


def dot_mode(dtype, device) -> int:
    if dtype == torch.float64:
        return DOT_FMA
    if dtype == torch.float32:
        return DOT_IEEE_F32
    if dtype == torch.bfloat16 and device.type == "cpu":
        return DOT_IEEE_F32  # the interpreter's bfloat16 tl.dot returns garbage
    return DOT_NATIVE


def pad_dot(n: int) -> int:
    """n rounded up to a power of two of at least MIN_DOT: a block size or K of a tl.dot."""
    return max(MIN_DOT, triton.next_power_of_2(max(n, 1)))


def _gpu_budget(device):
    """(SM count, bytes of one SM's register file, shared-memory bytes one program may use)."""
    props = torch.cuda.get_device_properties(device)
    regs = getattr(props, "regs_per_multiprocessor", None)
    smem = getattr(props, "shared_memory_per_block_optin", None)
    if not regs or not smem:  # older torch: ask Triton's driver instead
        driver = triton.runtime.driver.active.utils.get_device_properties(
            device.index if device.index is not None else torch.cuda.current_device())
        regs, smem = regs or driver["max_num_regs"], smem or driver["max_shared_mem"]
    return props.multi_processor_count, 4 * regs, smem


def plan(n_gates: int, device, dtype, batch: int, hidden: int, width: int = 0, budget=None):
    """(PersistentPlan, None) when a persistent launch can serve this layer, else (None, reason).

    width: columns of the recurrent state h, P for an LSTM with a projection (proj_size),
    else hidden (0 means hidden). Programs split the hidden units for the cell update and,
    with a projection, the P columns of h for the projection. budget: (SM count,
    register-file bytes, shared bytes per program) to plan a CUDA launch for instead of
    the device's own (bench/compiled.py plans for an H100 without one).
    """
    width = width or hidden
    dot = dot_mode(dtype, device)
    block_b = pad_dot(batch)
    if device.type == "cpu":
        if not interpreting():
            return None, "Triton kernels need CUDA tensors or TRITON_INTERPRET=1"
        return PersistentPlan(grid=1, block_b=block_b, block_h=pad_dot(hidden),
                              block_o=pad_dot(width), block_k=MIN_DOT,
                              resident=True, dot=dot, num_warps=4), None
    if device.type != "cuda":
        return None, f"no persistent kernel for device type {device.type!r}"
    n_sm, reg_bytes, smem_bytes = budget or _gpu_budget(device)
    block_h = pad_dot(triton.cdiv(hidden, n_sm))
    grid = triton.cdiv(hidden, block_h)
    block_o = block_h if width == hidden else pad_dot(triton.cdiv(width, grid))
    # Per-program state kept in registers: n_gates accumulators + c/h + a gate tile,
    # float32, (block_b x block_h) each. Beyond half the register file (a large batch,
    # or a hidden size so large for the SM count that each program owns hundreds of
    # units) stepwise's cuBLAS GEMMs serve better: the step is no longer latency-bound.
    state_bytes = (n_gates + 2) * block_b * block_h * 4 + block_b * block_o * 4
    if state_bytes > reg_bytes // 2:
        return None, (f"batch {batch} x {block_h} hidden units per program need {state_bytes} "
                      f"bytes of state, more than half of one SM's {reg_bytes}-byte register file")
    # Forward holds K = width rows of a fused gate tile 4 * block_h wide (a GRU's fourth
    # slot is empty: tl.dot widths are powers of two), backward K = n_gates * hidden rows
    # of block_o columns: the same weights, padded differently. (The projection's W_hr
    # slice always streams.)
    padded = max(pad_dot(width) * 4 * block_h, pad_dot(n_gates * hidden) * block_o)
    weight_bytes = padded * torch.tensor([], dtype=dtype).element_size()
    resident = ((dot == DOT_NATIVE or (dot == DOT_IEEE_F32 and fp32_resident_compiles()))
                and weight_bytes <= smem_bytes // 2)
    # float64 multiplies a (block_b, block_k, 4 * block_h) product in registers: keep it small.
    block_k = 4 if dot == DOT_FMA else 64
    return PersistentPlan(grid=grid, block_b=block_b, block_h=block_h, block_o=block_o,
                          block_k=block_k, resident=resident, dot=dot,
                          num_warps=NUM_WARPS), None


def streamed(p: PersistentPlan, block_k: int = MIN_DOT) -> PersistentPlan:
    """The same plan with W_hh streamed from L2 in `block_k` chunks (tests; OutOfResources)."""
    return replace(p, resident=False, block_k=block_k)


def schedule_tensors(sched, device):
    """(batch_sizes int32 (T,), offsets int64 (T,)) of a Schedule, for the kernels' masks."""
    return (torch.tensor(sched.batch_sizes, dtype=torch.int32, device=device),
            torch.tensor(sched.offsets, dtype=torch.int64, device=device))
