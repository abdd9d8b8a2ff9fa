"""Backend choice, in one place.

  "reference"  pure-PyTorch loop (autograd), any device: the oracle.
  "torch"      torch's own module (nn.LSTM.forward / nn.GRU.forward on the same
               parameters): cuDNN on CUDA, ATen's kernels on the CPU.
  "stepwise"   per step: cuBLAS recurrent GEMM + one fused Triton kernel.
  "persistent" the whole time loop in one Triton launch (kernels/persistent_*).
  "auto"       picks among them, below.

"auto":
  - meta tensors (shape inference), whatever the request: "torch".
  - CPU tensors: "stepwise" under TRITON_INTERPRET=1 (that is how the CPU tests run
    the kernels), else "torch" (Triton cannot run there; torch's CPU LSTM is faster
    than the reference loop).
  - CUDA tensors: the fastest backend *measured* at the nearest case of the lab's
    sweeps, from lstm_triton/dispatch_table.py, which bench/calibrate.py writes from a
    raw CSV under reports/raw/ (the table names its CSV). Nearest means the smallest
    sum of |log2| ratios over batch, hidden size and sequence length, among
    measurements of the same cell, dtype, pass (inference or training) and GPU
    compute capability. A Triton backend is listed only where it beat cuDNN there.
  - No measurement within a factor of MAX_LOG2_DISTANCE (in that sum), another GPU
    generation, or an empty table: "torch", i.e. cuDNN. That default is what makes
    "auto is never meaningfully behind cuDNN" true before any measurement exists:
    as of this writing the table is empty (no GPU sweep has run), so auto on CUDA
    runs cuDNN until a sweep shows a Triton backend faster.

"persistent" is a request, served per layer-direction by `persistent_plan`;
what it cannot serve runs on "stepwise", explicitly (persistent.py warns once
per reason):
  - batches above persistent_config.MAX_BATCH (16): compiled for sm_90, the
    backward spills registers beyond it (B=32 LSTM: up to 660 B a thread), until a
    GPU run says otherwise.
  - batches whose per-program state (gate accumulators, c, h) would take more
    than half of one SM's register file: there the recurrent GEMM is
    compute-bound and cuBLAS (stepwise) is the right tool.
  - any device other than CUDA (or the CPU under TRITON_INTERPRET=1).
  - at run time: a launch whose grid barrier could not meet (the GPU was busy
    with other work, so the grid was not co-resident) reruns on stepwise.
A W_hh slice too large to keep on chip is not a fallback: it streams from L2
(kernels/persistent_config.py computes the limit from the device).
"""
import math
import warnings
from dataclasses import dataclass

import torch

from . import dispatch_table
from .kernels.config import interpreting

BACKENDS = ("auto", "stepwise", "persistent", "torch", "reference")
TRITON_BACKENDS = ("stepwise", "persistent")

# Beyond this many octaves (summed over batch, hidden, seq_len) from every measured
# case, a measurement says nothing about the query: auto runs cuDNN.
MAX_LOG2_DISTANCE = 2.0
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
               torch.float64: "fp64"}


@dataclass(frozen=True)
class Workload:
    """What "auto" looks at: one module call (all layers share cell, dtype and shape)."""
    cell: str  # "lstm" | "gru"
    dtype: torch.dtype  # the dtype the layers run in (after autocast)
    batch: int
    hidden: int
    seq_len: int
    training: bool  # a backward will follow (grad enabled and something requires grad)

    @property
    def pass_(self) -> str:
        return "fwdbwd" if self.training else "fwd"


class FallbackWarning(RuntimeWarning):
    """A call ran, but not as requested: backend="persistent" served (part of) it on
    stepwise, or a cooperative launch was refused and ran plain. A RuntimeWarning, so
    existing filters keep working; filter this class to silence or to fail on exactly
    these (the tests make it an error wherever a fallback would hide a bug)."""


_warned = set()  # keys of the fallbacks already reported in this process


def warn_fallback(message: str, key=None, stacklevel: int = 3):
    """A FallbackWarning; with a `key`, only the first time the process sees that key (a
    static reason), without one every time (a barrier that failed at run time).
    stacklevel counts from the caller of warn_fallback."""
    if key is not None:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(f"lstm_triton: {message}", FallbackWarning, stacklevel=stacklevel + 1)


def validate_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def triton_can_run(device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def choose_backend(requested, device, workload=None):
    """The backend that runs a forward call on tensors of `device`.

    workload: a Workload for "auto" on CUDA (None, e.g. a cell's single step: stepwise).
    """
    if requested in ("reference", "torch"):
        return requested
    if device.type == "meta":  # shapes only: torch's own forward answers them
        return "torch"
    if not triton_can_run(device):
        if requested == "auto":
            return "torch"
        raise RuntimeError(
            f"backend={requested!r} runs Triton kernels, which need CUDA tensors (or the Triton "
            f"interpreter: set TRITON_INTERPRET=1 before importing lstm_triton); got tensors "
            f"on {device}. Use backend='auto', 'torch' or 'reference' for this device.")
    if requested == "auto":
        if device.type != "cuda" or workload is None:
            return "stepwise"
        return auto_cuda_backend(workload, torch.cuda.get_device_capability(device))
    return requested


def auto_cuda_backend(workload, capability, table=None):
    """The backend measured fastest at the nearest measured case (module docstring)."""
    table = dispatch_table.MEASURED if table is None else table
    cap = f"{capability[0]}.{capability[1]}"
    dtype = DTYPE_NAMES.get(workload.dtype)
    best, best_d = "torch", None
    for row in table:
        cell, row_cap, row_dtype, pass_, batch, hidden, seq_len, backend = row[:8]
        if (cell, row_cap, row_dtype, pass_) != (workload.cell, cap, dtype, workload.pass_):
            continue
        d = (abs(math.log2(workload.batch / batch)) + abs(math.log2(workload.hidden / hidden))
             + abs(math.log2(workload.seq_len / seq_len)))
        if d > MAX_LOG2_DISTANCE:
            continue
        if best_d is None or d < best_d:
            best, best_d = backend, d
        elif d == best_d and backend != best:
            best = "torch"  # equally near cases disagree: take no chance
    return best


def persistent_plan(cell, device, dtype, batch, hidden, out_size):
    """(plan, None) when the persistent kernel can run this layer-direction, else (None, reason).

    cell: "lstm" | "gru"; state (batch, out_size) with out_size == hidden unless the LSTM
    has a projection (then out_size = proj_size, two grid meetings per step). The plan
    (grid, block sizes, resident or streamed W_hh) comes from
    kernels/persistent_config.py, which reads the device's SM count and register file.
    """
    from .kernels.persistent_config import plan

    return plan(4 if cell == "lstm" else 3, device, dtype, batch, hidden, out_size)
