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
            n_gates*H x BLOCK_H; both as power-of-two K pieces, see k_pieces) loaded
            once before the time loop when it and the A piece each dot stages fit in
            one program's shared memory (Triton keeps a loop-invariant tl.dot operand
            in shared memory: compiling for sm_90 shows exactly resident_bytes);
            otherwise streamed from L2 in BLOCK_K chunks every step. float32 is
            resident only on the Triton versions in FP32_RESIDENT_TRITON: Triton 3.9's
            LLVM aborts
            (SLPVectorizer assertion) compiling the resident LSTM forward with IEEE
            float32 dots for sm_90, and an abort cannot be caught; Triton 3.6 (the GPU
            image's) compiles all four resident float32 kernels. Both found by
            compile-only checks without a GPU (tests/test_persistent.py).

Under the interpreter (CPU tests) programs run one after another, so a barrier
with two programs would wait forever: the plan is a single program whose
BLOCK_H covers every hidden unit.
"""
import functools
import os
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
import triton

from .config import compute_dtype, interpreting
from .graph_capture import host_to_device
from .launch import Constants

# Matmul modes (persistent_tiles.split_dot). DOT_TF32X3 is a plan option only (`tf32x3`):
# float32 on tensor cores as three tf32 products, never chosen by dot_mode until a GPU
# measures its speed and error (reports/NOTES.md, issue 16).
DOT_NATIVE, DOT_IEEE_F32, DOT_FMA, DOT_TF32X3 = 0, 1, 2, 3

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
# Elements of A (BLOCK_B x KP) one dot of a resident W stages: see k_pieces. Compiled for
# sm_90 at B=16, H=1024 (Triton 3.9): two pieces of up to 2048 rows spilled 72 B/thread
# forward and 488 backward, 512-row pieces 72 and 292, 256-row pieces 304 and 296.
A_PIECE = 16 * 512
# What one more piece is taken to cost, in rows of K (k_pieces): a guess, not yet timed.
PIECE_ROWS = 16
MAX_PIECES = 16
# Shared memory left beside resident_bytes for the kernel's other staging (layout
# conversions); a plan that still does not compile is retried streamed (persistent.py).
SMEM_SLACK = 8 * 1024
NUM_WARPS = 8  # with 4, ptxas spills the resident kernels' operand tiles
MAX_REGS = 255  # registers a thread can address
# Launch the persistent grid as a CUDA cooperative launch (Triton's launch_cooperative_grid):
# the driver then starts it only with every program resident at once, so a GPU shared with
# other work (or a second persistent launch on another stream) delays it instead of
# leaving some programs spinning at the barrier until it fails and falls back. The bounded
# barrier stays as the guard; a launch the driver refuses is retried plain (persistent.py).
# Not yet run on a GPU: tests/test_gpu.py runs two full-grid launches at once both ways.
COOPERATIVE = True
# Outside a CUDA graph each persistent launch's barrier flag is read back right after it, so
# that a failed launch can be rerun on stepwise. That read waits for the kernel: the host
# cannot queue the next layer's or step's work meanwhile, and a call's host time grows with
# T (issue 17). With this on, a cooperative launch (which the driver starts only with its
# whole grid resident, so its barrier meets) is checked later without waiting, as under a
# capture: its outputs are NaN-filled on the device if the flag is set, and the next launch
# warns and reads every flag at once from then on (grid_sync.launch_failed, persistent.py).
# Off until a GPU run times it (bench/host.py's readback case: a 2-layer training step
# with the flag read at once and deferred) and tests/test_gpu.py shows cooperative
# launches meet beside other work.
DEFERRED_BARRIER_CHECK = False

# The largest batch a persistent launch takes; beyond it the layer runs on stepwise (with a
# FallbackWarning), whose cuBLAS GEMMs suit a large batch. Compiled for sm_90 as the runtime
# specialises (bench/compiled.py, bf16, H 256-1024, LSTM and GRU), nothing spills at a batch
# of 16 on Triton 3.6 or 3.9; at 32 the LSTM backward spills 184-660 B a thread from H=512
# (3.6; 192-468 on 3.9), at 64 every backward spills 0.6-2.5 KiB (the issue measured
# 13.8 KiB at 256) and compiles for up to 17 s on a CPU. Refused until a GPU run times
# B=32 and 64 against stepwise and cuDNN and says to raise it.
MAX_BATCH = 16

# Triton versions (major, minor) known to compile the resident float32 kernels for sm_90
# (see the module docstring); any other version streams float32 weights.
FP32_RESIDENT_TRITON = {(3, 6)}


def resident_bytes(k: int, n_cols: int, block_b: int, dtype, dot: int) -> tuple:
    """(W, A) bytes of shared memory a resident recurrent dot of K = k rows and n_cols
    columns holds: W's pieces (k_pieces), and the A piece each dot stages (float32 for
    DOT_IEEE_F32). Compiling the four kernels for sm_90 shows exactly W + A of shared memory
    (bench/compiled.py, Triton 3.6 and 3.9)."""
    kp, n_pieces = k_pieces(k, block_b)
    size = torch.tensor([], dtype=dtype).element_size()
    a_size = 4 if dot in (DOT_IEEE_F32, DOT_TF32X3) else size
    return kp * n_pieces * n_cols * size, block_b * kp * a_size


def split_k(k_rows: int, n_cols: int, num_warps: int) -> int:
    """SPLIT for a recurrent dot of n_cols columns whose K pieces have k_rows rows (see
    WIDE_N above); each chunk keeps tl.dot's minimum of 16 rows."""
    if n_cols >= WIDE_N:
        return 1
    return max(1, min(num_warps, k_rows // MIN_DOT))


@lru_cache(maxsize=1024)  # pure, and on every launch's host path (~5% of a short call's)
def k_pieces(k: int, block_b: int) -> tuple:
    """(KP, NP): a recurrent dot's K rows as NP pieces of KP rows, a power of two (tl.arange),
    KP * NP >= k, each A piece at most A_PIECE elements unless that takes more than
    MAX_PIECES pieces (each is unrolled in the kernel). A resident W is held as these pieces
    and each dot stages only its piece of A, so the pieces pad K far less than one power of
    two (768 = 3 x 256, not 1024) and bound the A tile in registers and shared memory, which
    at backward's K = 4H would otherwise be as large as W itself. KP (from a quarter of the
    cap up to the cap) minimises the rows the dots run, padding included, plus PIECE_ROWS a
    piece: padding is wasted mma, and each piece adds its own A load and dot."""
    cap = max(MIN_DOT, min(pad_dot(k), A_PIECE // block_b), pad_dot(triton.cdiv(k, MAX_PIECES)))
    sizes = [kp for kp in (MIN_DOT << i for i in range(32)) if cap // 4 <= kp <= cap]
    kp = min(sizes, key=lambda kp: (triton.cdiv(k, kp) * (kp + PIECE_ROWS), -kp))
    return kp, triton.cdiv(k, kp)


def recurrent_shape(n_gates: int, hidden: int, width: int, block_h: int, block_o: int,
                    backward: bool) -> tuple:
    """(K, N) of a kernel's recurrent dot. Forward: h_{t-1} (K = width, the columns of h) times
    the fused gate tile, 4 * block_h wide (a GRU's fourth slot is empty: tl.dot widths are
    powers of two). Backward: the gate gradients (K = n_gates * hidden) times W_hh's block_o
    columns of h. The same weights, padded differently (k_pieces)."""
    return (n_gates * hidden, block_o) if backward else (width, 4 * block_h)


def recurrent_dot(plan, n_gates: int, hidden: int, width: int, backward: bool) -> dict:
    """The constexprs KP, NP (k_pieces) and SPLIT (split_k) of a kernel's recurrent dot
    (recurrent_shape) under `plan`: what every launcher passes, in one place."""
    k, n_cols = recurrent_shape(n_gates, hidden, width, plan.block_h, plan.block_o, backward)
    kp, n_pieces = k_pieces(k, plan.block_b)  # cached: a new dict each call, the same values
    if backward:
        return dict(KP=kp, NP=n_pieces, SPLIT=split_k(kp, n_cols, plan.num_warps))
    partials = plan.chain > 0 and plan.resident
    if partials:  # pieces of at most `chain` mma of K = 16 each (with_chain), unrolled
        kp = max(min(pad_dot(k), MIN_DOT * plan.chain), pad_dot(triton.cdiv(k, MAX_PIECES)))
        n_pieces = triton.cdiv(k, kp)
    # narrow (forward_plan): the transposed dot's N is the batch, which its warps split by K
    n_dot = plan.block_b if plan.narrow else n_cols
    return dict(KP=kp, NP=n_pieces, SPLIT=split_k(kp, n_dot, plan.num_warps), PARTIALS=partials,
                TRANS=plan.narrow)


@lru_cache(maxsize=1024)
def launch_constants(plan, n_gates: int, hidden: int, width: int, backward: bool, dtype,
                     options: tuple) -> Constants:
    """Every keyword argument of one persistent launch but `options` (the launcher's own
    (name, value) pairs: its flags, BLOCK_O, the projection's split): the plan's blocks and
    matmul mode, the recurrent dot's constexprs (recurrent_dot), the compute dtype, the step
    tags' lanes and the launch options (launch_options). Made once per key as a
    launch.Constants: each launch rebuilt these ~25 arguments and hashed them into its
    cache key (issue 17)."""
    return Constants(
        **dict(options), RESIDENT=plan.resident, DOT=plan.dot, COMPUTE=compute_dtype(dtype),
        BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, BLOCK_K=plan.block_k,
        **recurrent_dot(plan, n_gates, hidden, width, backward), TAGS=tag_lanes(plan),
        **launch_options(plan))


def launch_options(plan) -> dict:
    """How every persistent kernel is launched under `plan` (warps, register cap,
    cooperative launch), in one place so the four launchers cannot drift apart."""
    return dict(num_warps=plan.num_warps, maxnreg=plan.max_regs,
                launch_cooperative_grid=plan.cooperative)


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
    # registers per thread ptxas may use (None: its default). A persistent program has an
    # SM to itself, but ptxas's own default aims at more than one block per SM: Triton
    # 3.9's ptxas capped the GRU backward at 128 registers and spilled (bench/compiled.py).
    max_regs: int = None
    # a cooperative launch (COOPERATIVE below); False once the driver refused one
    cooperative: bool = False
    # the barrier flag checked later, without waiting (DEFERRED_BARRIER_CHECK; cooperative
    # launches only)
    deferred_check: bool = False
    spin_limit: int = SPIN_LIMIT
    # forward split K (issue 16, with_chain): at most `chain` dependent mma per partial sum;
    # 0 = one accumulator for the whole K, the default until a GPU times both
    chain: int = 0
    # the step-tagged exchange (issue 16, with_step_tags, kernels/step_tags.py) instead of
    # grid_sync's shared arrival counter; off until a GPU times both
    step_tags: bool = False
    # the forward with the fewest units per program the SMs allow (down to 8) and its dot
    # transposed (issue 16, with_narrow_forward; forward_plan); backward keeps this plan's
    # layout. sms: the SM count the plan was made for (1 under the interpreter).
    narrow: bool = False
    sms: int = 0


def dot_mode(dtype, device) -> int:
    if dtype == torch.float64:
        return DOT_FMA
    if dtype == torch.float32:
        return DOT_IEEE_F32
    if dtype == torch.bfloat16 and device.type == "cpu":
        return DOT_IEEE_F32  # the interpreter's bfloat16 tl.dot returns garbage
    return DOT_NATIVE


@functools.lru_cache(maxsize=1024)
def pad_dot(n: int) -> int:
    """n rounded up to a power of two of at least MIN_DOT: a block size or K of a tl.dot.
    Cached: triton.next_power_of_2 is a slow constexpr_function on the host (Triton 3.9)."""
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


_PLANS = {}  # plan()'s answers, by its arguments and the settings it reads


def plan(n_gates: int, device, dtype, batch: int, hidden: int, width: int = 0, budget=None):
    """(PersistentPlan, None) when a persistent launch can serve this layer, else (None, reason).

    Memoised: every call plans each of its layers, which cost ~40 µs of host time (issue 17).
    The key holds the arguments and every module setting the plan reads (PLAN_OPTION,
    MAX_BATCH, COOPERATIVE, DEFERRED_BARRIER_CHECK, the interpreter, the device budget's source),
    so a changed setting plans afresh."""
    key = (n_gates, device, dtype, batch, hidden, width, budget, PLAN_OPTION, MAX_BATCH,
           COOPERATIVE, DEFERRED_BARRIER_CHECK, interpreting(), _gpu_budget,
           fp32_resident_compiles)
    found = _PLANS.get(key)
    if found is None:
        if len(_PLANS) >= 4096:
            _PLANS.clear()
        found = _PLANS[key] = _plan(n_gates, device, dtype, batch, hidden, width, budget)
    return found


def _plan(n_gates, device, dtype, batch, hidden, width, budget):
    """plan(), computed.

    width: columns of the recurrent state h, P for an LSTM with a projection (proj_size),
    else hidden (0 means hidden). Programs split the hidden units for the cell update and,
    with a projection, the P columns of h for the projection. budget: (SM count,
    register-file bytes, shared bytes per program) to plan a CUDA launch for instead of
    the device's own (bench/compiled.py plans for an H100 without one).
    """
    width = width or hidden
    if batch > MAX_BATCH:
        return None, (f"batch {batch} is above the persistent kernels' cap of {MAX_BATCH} "
                      "(persistent_config.MAX_BATCH: beyond it the compiled backward spills)")
    dot = dot_mode(dtype, device)
    block_b = pad_dot(batch)
    if device.type == "cpu":
        if not interpreting():
            return None, "Triton kernels need CUDA tensors or TRITON_INTERPRET=1"
        # W resident as on a GPU, and streamed for float64 as on a GPU (no float64 dot:
        # its broadcast product over a whole piece would pass Triton's tensor-size limit)
        return _with_option(PersistentPlan(grid=1, block_b=block_b, block_h=pad_dot(hidden),
                                           block_o=pad_dot(width), block_k=MIN_DOT,
                                           resident=dot != DOT_FMA, dot=dot, num_warps=4,
                                           sms=1)), None
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
    # Resident when W (both passes' layouts, recurrent_shape; the projection's W_hr slice
    # always streams) and a staged A piece fit one program's shared memory, and W is at
    # most half of the register file's bytes: ptxas's register use grows with W's pieces,
    # and compiling for sm_90 (bf16, B=16, 8 warps) shows no spill up to 96 KiB of W, up to
    # 292 B/thread at 128 KiB (H=1024), 0.35-1.4 KiB/thread at 192 KiB (H=1536, where
    # streaming is the safer guess until a GPU times both).
    need = [resident_bytes(*recurrent_shape(n_gates, hidden, width, block_h, block_o, bwd),
                           block_b, dtype, dot) for bwd in (False, True)]
    resident = ((dot == DOT_NATIVE or (dot == DOT_IEEE_F32 and fp32_resident_compiles()))
                and max(w + a for w, a in need) <= smem_bytes - SMEM_SLACK
                and max(w for w, _ in need) <= reg_bytes // 2)
    # float64 multiplies a (block_b, block_k, 4 * block_h) product in registers: keep it small.
    block_k = 4 if dot == DOT_FMA else 64
    return _with_option(PersistentPlan(
        grid=grid, block_b=block_b, block_h=block_h, block_o=block_o, block_k=block_k,
        resident=resident, dot=dot, num_warps=NUM_WARPS,
        max_regs=min(MAX_REGS, reg_bytes // 4 // (32 * NUM_WARPS)),
        cooperative=COOPERATIVE, deferred_check=COOPERATIVE and DEFERRED_BARRIER_CHECK,
        sms=n_sm)), None


def not_cooperative(p: PersistentPlan) -> PersistentPlan:
    """The same plan launched plainly (a driver that refuses a cooperative launch; tests),
    its barrier flag read at once: only a cooperative grid is sure to be resident."""
    return replace(p, cooperative=False, deferred_check=False)


def streamed(p: PersistentPlan, block_k: int = MIN_DOT) -> PersistentPlan:
    """The same plan with W_hh streamed from L2 in `block_k` chunks (tests; OutOfResources)."""
    return replace(p, resident=False, block_k=block_k)


def tf32x3(p: PersistentPlan) -> PersistentPlan:
    """The same plan with a float32 recurrent dot (DOT_IEEE_F32) run as 3xTF32 on tensor
    cores (issue 16's option; other dot modes are returned unchanged). Under the
    interpreter the dot is numpy's float32 matmul whatever the precision asked for, so the
    CPU tests check the kernels' wiring, not 3xTF32's rounding (tests/test_persistent.py)."""
    return replace(p, dot=DOT_TF32X3) if p.dot == DOT_IEEE_F32 else p


def with_chain(p: PersistentPlan, chain: int = 16) -> PersistentPlan:
    """The same plan with the forward's resident W_hh cut into pieces of 16 * chain rows, each
    summed into its own partial tile, the partials added once at the end of the step
    (persistent_tiles.recurrent_matmul_partials): no warp runs more than `chain` dependent
    mma (bench.compiled's `mma chain`), unless that takes more than MAX_PIECES pieces (each
    is unrolled; then the pieces grow). chain: a power of two. A streamed W is unchanged."""
    if chain < 1 or chain & (chain - 1):
        raise ValueError(f"chain must be a power of two >= 1, got {chain}")
    return replace(p, chain=chain)


def with_step_tags(p: PersistentPlan) -> PersistentPlan:
    """The same plan meeting through the step-tagged exchange (kernels/step_tags.py): each
    program publishes its arrivals in its own tag word, each consumer polls the tags."""
    return replace(p, step_tags=True)


NARROW_UNITS = 8  # 4 gates x 8 units: 32 rows, two mma tiles of M (tl.dot's minimum is 16)


def with_narrow_forward(p: PersistentPlan) -> PersistentPlan:
    """The same plan with the forward split into more, narrower programs (forward_plan)."""
    return replace(p, narrow=True)


def forward_plan(p: PersistentPlan, hidden: int, width: int) -> PersistentPlan:
    """The plan a forward launch runs. With the narrow option (issue 16) each program owns the
    fewest units that keep the grid within the SMs, down to NARROW_UNITS (96 programs at
    H=768, 128 at H=1024 on 132 SMs: half the W bytes and mma of each), and the recurrent dot
    runs transposed, W's fused gate tile as M (persistent_tiles.chunk_dot), so 8 units still
    give tl.dot 32 rows. Backward keeps `p` (its dot is BLOCK_H wide: 8 would be under
    tl.dot's 16). A projection (width != hidden) keeps `p` too: its BLOCK_O columns of h
    follow the grid. Under the interpreter (sms = 1) one program covers every unit, as
    always, and only H <= 8 runs 8 units; the transposed dot runs at every H."""
    if not p.narrow:
        return p
    if width != hidden or p.sms < 1:
        return replace(p, narrow=False)
    block_h = max(NARROW_UNITS, triton.next_power_of_2(triton.cdiv(hidden, p.sms)))
    block_h = min(block_h, p.block_h)
    return replace(p, grid=triton.cdiv(hidden, block_h), block_h=block_h, block_o=block_h)


def tag_lanes(p: PersistentPlan) -> int:
    """The kernels' TAGS under `p`: 0 for grid_sync's counter, else one tag word per program,
    rounded up to a power of two (the poll's vector width; lanes past the grid are masked)."""
    return triton.next_power_of_2(p.grid) if p.step_tags else 0


# Issue 16's options by name, for the lab's A/B comparisons (bench/first_contact.py's
# decomposition runs the same sweep once per option, each in its own process). The
# environment variable LSTM_TRITON_PLAN applies one to every persistent plan the process
# makes; it is read once, at import, so the host path pays nothing. Unset, the defaults
# run: an option becomes a default only when a GPU has timed it (reports/NOTES.md).
PLAN_OPTIONS = {"default": None, "chain16": lambda p: with_chain(p, 16), "tf32x3": tf32x3,
                "tags": with_step_tags, "narrow": with_narrow_forward,
                "narrow+tags": lambda p: with_step_tags(with_narrow_forward(p))}
PLAN_OPTION_NAME = os.environ.get("LSTM_TRITON_PLAN", "default")
if PLAN_OPTION_NAME not in PLAN_OPTIONS:
    raise ValueError(f"LSTM_TRITON_PLAN={PLAN_OPTION_NAME!r} is not a plan option: use one of "
                     f"{', '.join(PLAN_OPTIONS)} (or leave it unset for the defaults)")
PLAN_OPTION = PLAN_OPTIONS[PLAN_OPTION_NAME]


def _with_option(p: PersistentPlan) -> PersistentPlan:
    return PLAN_OPTION(p) if PLAN_OPTION else p


def schedule_tensors(sched, device):
    """(batch_sizes int32 (T,), offsets int64 (T,)) of a packed Schedule, for the kernels'
    masks, copied to the device (graph_capture.host_to_device); (None, None) for a padded
    one, whose rows the kernels compute (PADDED: persistent_tiles.step_rows)."""
    if sched.padded:
        return None, None
    return (host_to_device(torch.tensor(sched.batch_sizes, dtype=torch.int32), device),
            host_to_device(torch.tensor(sched.offsets, dtype=torch.int64), device))
