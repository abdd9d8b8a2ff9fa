"""Backend choice, in one place.

  "reference"  pure-PyTorch loop (autograd), any device: the oracle, and what
               CPU tensors get by default when Triton cannot run (no interpreter).
  "stepwise"   per step: cuBLAS recurrent GEMM + one fused Triton kernel.
  "persistent" the whole time loop in one Triton launch (kernels/persistent_*).
  "auto"       picks among them from the table below.

Thresholds: no GPU measurement has been taken for this project yet, so "auto"
makes no speed claim. It sends CUDA tensors to "stepwise" until the lab's
persistent-vs-stepwise sweep (reports/) justifies a boundary.
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
        return "stepwise"
    return requested
