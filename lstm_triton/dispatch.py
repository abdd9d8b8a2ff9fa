"""Backend choice, in one place.

  "reference"  pure-PyTorch loop (autograd), any device: the oracle, and what
               CPU tensors get by default when Triton cannot run (no interpreter).
  "stepwise"   per step: cuBLAS recurrent GEMM + one fused Triton kernel.
  "persistent" the whole time loop in one Triton launch (kernels/persistent_*).
  "auto"       picks among them from the table below.

Thresholds: no GPU measurement has been taken for this project yet, so "auto"
makes no speed claim. It sends CUDA tensors to "stepwise" until the lab's
persistent-vs-stepwise sweep (reports/) justifies a boundary. To change that,
edit AUTO_CUDA_BACKEND (one name), or replace it by a rule over
`persistent_plan` (e.g. persistent when a plan exists and batch <= some measured
size), with the measurement that justifies it next to it.

"persistent" is a request, served per layer-direction by `persistent_plan`;
what it cannot serve runs on "stepwise", explicitly (persistent.py warns once
per reason):
  - LSTM with proj_size > 0: the projection h = m W_hr^T needs a second grid
    barrier per step (every program needs all of m); not built yet.
  - batches whose per-program state (gate accumulators, c, h) would take more
    than half of one SM's register file: there the recurrent GEMM is
    compute-bound and cuBLAS (stepwise) is the right tool.
  - any device other than CUDA (or the CPU under TRITON_INTERPRET=1).
  - at run time: a launch whose grid barrier could not meet (the GPU was busy
    with other work, so the grid was not co-resident) reruns on stepwise.
A W_hh slice too large to keep on chip is not a fallback: it streams from L2
(kernels/persistent_config.py computes the limit from the device).
"""
from .kernels.config import interpreting

BACKENDS = ("auto", "stepwise", "persistent", "reference")


def validate_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def triton_can_run(device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def choose_backend(requested, device):
    """The backend that runs a forward call on tensors of `device`."""
    if requested == "reference":
        return "reference"
    if not triton_can_run(device):
        if requested == "auto":
            return "reference"
        raise RuntimeError(
            f"backend={requested!r} runs Triton kernels, which need CUDA tensors (or the Triton "
            f"interpreter: set TRITON_INTERPRET=1 before importing lstm_triton); got tensors "
            f"on {device}. Use backend='auto' or 'reference' for this device.")
    if requested == "auto":
        return AUTO_CUDA_BACKEND if device.type == "cuda" else "stepwise"
    return requested


# What "auto" runs for CUDA tensors. "stepwise" until a persistent-vs-stepwise GPU sweep
# committed under reports/raw/ shows where the persistent kernel wins.
AUTO_CUDA_BACKEND = "stepwise"


def persistent_plan(cell, device, dtype, batch, hidden, out_size):
    """(plan, None) when the persistent kernel can run this layer-direction, else (None, reason).

    cell: "lstm" | "gru"; state (batch, out_size) with out_size == hidden unless the LSTM
    has a projection. The plan (grid, block sizes, resident or streamed W_hh) comes from
    kernels/persistent_config.py, which reads the device's SM count and register file.
    """
    from .kernels.persistent_config import plan

    if out_size != hidden:
        return None, ("proj_size > 0 has no persistent kernel (the projection needs a second "
                      "grid barrier per step)")
    return plan(4 if cell == "lstm" else 3, device, dtype, batch, hidden)
