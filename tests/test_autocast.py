"""Autocast: the Triton modules run in, and return, the dtypes torch's modules do.

torch's rule (lstm_triton.rnn.autocast_dtype): on CUDA, cuDNN RNNs run in
float16 whatever the autocast dtype; on the CPU, autocast casts `lstm` to the
CPU autocast dtype and leaves `gru` alone. Values are checked against a float64
oracle with the tolerance of the dtype the layer ran in; gradients must reach
the float32 parameters in float32.
"""
import pytest
import torch
from rnn_testing import (DEVICE, KERNEL_BACKENDS, TORCH_MODULES, as_tuple, assert_close,
                         interpreter_only, twin_modules)
from torch import nn
from torch.nn.utils.rnn import pack_sequence

from lstm_triton import TritonGRUCell, TritonLSTMCell

N_IN, H = 3, 4

CPU_CASES = [
    # cell, input dtype, initial state given
    pytest.param("lstm", torch.float32, False, id="lstm-fp32"),
    pytest.param("lstm", torch.float32, True, id="lstm-fp32-hx"),
    pytest.param("lstm", torch.bfloat16, True, id="lstm-bf16-input-hx"),
    pytest.param("gru", torch.float32, False, id="gru-fp32"),
    pytest.param("gru", torch.float32, True, id="gru-fp32-hx"),
    pytest.param("gru", torch.bfloat16, False, id="gru-bf16-input"),
]


def run(module, x, hx, device_type, dtype):
    with torch.autocast(device_type, dtype=dtype):
        out, finals = module(x, hx)
    return out, as_tuple(finals)


def check_like_torch(cell, x_dtype, with_state, device, autocast_dtype, options=None,
                     backend="stepwise"):
    options = options or {}
    module, oracle = twin_modules(cell, N_IN, H, device=device, backend=backend, **options)
    plain = TORCH_MODULES[cell](N_IN, H, device=device, **options)
    plain.load_state_dict(module.state_dict())
    x = torch.randn(2, 5, N_IN, device=device).to(x_dtype).requires_grad_()
    hx = None
    if with_state:
        states = [torch.randn(1, 5, H, device=device) for _ in range(2 if cell == "lstm" else 1)]
        hx = tuple(states) if cell == "lstm" else states[0]

    out, finals = run(module, x, hx, device.split(":")[0], autocast_dtype)
    ref_out, ref_finals = run(plain, x, hx, device.split(":")[0], autocast_dtype)
    assert out.dtype == ref_out.dtype
    assert [f.dtype for f in finals] == [f.dtype for f in ref_finals]

    hx64 = None
    if hx is not None:
        hx64 = tuple(s.double() for s in hx) if cell == "lstm" else hx.double()
    exact_out, exact_finals = oracle(x.double(), hx64)
    # Autocast GEMMs run in a 16-bit type even where the layer's output stays float32.
    assert_close(out, exact_out, torch.bfloat16, "output")
    for k, (got, want) in enumerate(zip(finals, as_tuple(exact_finals))):
        assert_close(got, want, torch.bfloat16, f"final state {k}")

    (out.float().sum() + sum(f.float().sum() for f in finals)).backward()
    assert x.grad is not None and x.grad.dtype == x.dtype
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.dtype == p.dtype, name
        assert torch.isfinite(p.grad).all(), name


@interpreter_only  # CPU autocast on the interpreted kernels
@pytest.mark.parametrize("cell, x_dtype, with_state", CPU_CASES)
def test_cpu_autocast_dtypes_like_torch(cell, x_dtype, with_state):
    check_like_torch(cell, x_dtype, with_state, "cpu", torch.bfloat16)


@interpreter_only  # CPU autocast on the interpreted kernels
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cpu_autocast_packed_like_torch(cell, x_dtype):
    """CPU autocast casts padded LSTM input only: packed batches keep their dtype."""
    module, _ = twin_modules(cell, N_IN, H, bidirectional=True)
    plain = TORCH_MODULES[cell](N_IN, H, bidirectional=True)
    plain.load_state_dict(module.state_dict())
    packed = pack_sequence([torch.randn(n, N_IN).to(x_dtype) for n in (2, 5, 1)],
                           enforce_sorted=False)
    out, finals = run(module, packed, None, "cpu", torch.bfloat16)
    ref_out, ref_finals = run(plain, packed, None, "cpu", torch.bfloat16)
    assert out.data.dtype == ref_out.data.dtype
    assert [f.dtype for f in finals] == [f.dtype for f in ref_finals]
    assert_close(out.data, ref_out.data, torch.bfloat16, "packed output vs torch's autocast")


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("autocast_dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cuda_autocast_dtypes_like_torch(cell, autocast_dtype, backend):
    """cuDNN runs LSTM and GRU in float16 under any CUDA autocast dtype; so do we."""
    check_like_torch(cell, torch.float32, True, "cuda", autocast_dtype, backend=backend)


@interpreter_only  # CPU autocast on the interpreted kernels
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cpu_autocast_cells_like_torch(cell, x_dtype):
    cls, torch_cls = (TritonLSTMCell, nn.LSTMCell) if cell == "lstm" else (TritonGRUCell,
                                                                            nn.GRUCell)
    module = cls(N_IN, H, backend="stepwise")
    plain = torch_cls(N_IN, H)
    plain.load_state_dict(module.state_dict())
    x = torch.randn(2, N_IN).to(x_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = as_tuple(module(x)), as_tuple(plain(x))
    assert [g.dtype for g in got] == [w.dtype for w in want]
    for k, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, torch.bfloat16, f"state {k} vs torch's autocast")
