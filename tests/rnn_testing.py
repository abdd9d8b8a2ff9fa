"""Shared test helpers: devices, per-dtype tolerances, the float64 oracle, poisoning."""
import math

import pytest
import torch
from torch import nn

# The device the specification runs on: CUDA where present (conftest also makes it torch's
# default device, so plain torch.randn lands there), else the CPU through the interpreter.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Tests of the interpreter's own configuration (single-program plans, the bf16 upcast).
interpreter_only = pytest.mark.skipif(torch.cuda.is_available(),
                                      reason="checks the CPU interpreter configuration")

# (rtol, atol) against a float64 oracle run on the same (rounded) weights and inputs.
# atol is scaled by the oracle's largest magnitude, so summed weight gradients
# (reductions over every row) get an absolute slack that grows with them.
TOLERANCES = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 2e-2),
}

DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float64, id="fp64"),
]


def assert_close(actual, expected, dtype, what=""):
    """Compare with the dtype's tolerance; the message says where and by how much."""
    rtol, atol = TOLERANCES[dtype]
    expected = expected.detach().to(torch.float64)
    actual = actual.detach().to(device=expected.device, dtype=torch.float64)
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def poison_allocations(monkeypatch):
    nan = math.nan

    def poisoned(fn):
        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)
            if out.is_floating_point() and out.numel() and out.device.type != "meta":
                out.fill_(nan)
            return out
        return wrapper

    monkeypatch.setattr(torch, "empty", poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", poisoned(torch.Tensor.new_empty))


TORCH_MODULES = {"lstm": nn.LSTM, "gru": nn.GRU}


def twin_modules(cell, *args, dtype=torch.float32, device=DEVICE, backend="stepwise", **kwargs):
    """(Triton module, float64 torch oracle holding the same weights)."""
    from lstm_triton import TritonGRU, TritonLSTM

    cls = TritonLSTM if cell == "lstm" else TritonGRU
    module = cls(*args, dtype=dtype, device=device, backend=backend, **kwargs)
    oracle = TORCH_MODULES[cell](*args, dtype=torch.float64, device=device, **kwargs)
    oracle.load_state_dict({k: v.to(torch.float64) for k, v in module.state_dict().items()})
    return module, oracle


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def outputs_and_grads(module, x, hx, weights_out, inputs):
    """Run forward, then backward of a loss that touches the output and every final state
    with different random weights; return (output, final states, grads of `inputs` and params)."""
    out, finals = module(x, hx)
    finals = as_tuple(finals)
    data = out.data if hasattr(out, "batch_sizes") else out
    loss = (data * weights_out[0].to(data.dtype)).sum()
    for f, w in zip(finals, weights_out[1:]):
        loss = loss + (f * w.to(f.dtype)).sum()
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, inputs + params, allow_unused=True)
    return out, finals, grads

def assert_runs_close(got, want, dtype, what=""):
    """Two outputs_and_grads results agree: the output, every final state, every gradient."""
    (out, finals, grads), (out_w, finals_w, grads_w) = got, want
    assert len(finals) == len(finals_w) and len(grads) == len(grads_w)
    assert_close(out, out_w, dtype, f"{what}output")
    for f, f_w in zip(finals, finals_w):
        assert_close(f, f_w, dtype, f"{what}final state")
    for g, g_w in zip(grads, grads_w):
        assert_close(g, g_w, dtype, f"{what}gradient")


# Kernel backends the specification tests run on (the "reference" backend is the oracle).
KERNEL_BACKENDS = ["stepwise", "persistent"]
