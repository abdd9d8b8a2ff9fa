"""TritonLSTMCell / TritonGRUCell against nn.LSTMCell / nn.GRUCell.

Float64 values and every gradient (input, h, c, each parameter) over a few
chained steps, unbatched input, hx absent, gradcheck, the module contract
(parameters, init, state_dict) and bad input raising torch's exception types.
"""
import pytest
import torch
from lstm_triton.kernels import gru_pointwise, lstm_pointwise
from rnn_testing import KERNEL_BACKENDS, assert_close
from torch import nn

from lstm_triton import TritonGRUCell, TritonLSTMCell, cell_step

DTYPE = torch.float64
N_IN, H = 3, 5
CELLS = {"lstm": (TritonLSTMCell, nn.LSTMCell), "gru": (TritonGRUCell, nn.GRUCell)}


def twin_cells(cell, bias=True, dtype=DTYPE, backend="stepwise"):
    triton_cls, torch_cls = CELLS[cell]
    module = triton_cls(N_IN, H, bias=bias, dtype=dtype, backend=backend)
    oracle = torch_cls(N_IN, H, bias=bias, dtype=torch.float64)
    oracle.load_state_dict({k: v.to(torch.float64) for k, v in module.state_dict().items()})
    return module, oracle


def leaf(*shape):
    return torch.randn(*shape, dtype=DTYPE, requires_grad=True)


def unroll(module, xs, hx):
    """A decoder-style loop of cell calls; returns the states after every step."""
    outs = []
    for x in xs:
        hx = module(x, hx)
        outs.append(hx if isinstance(hx, tuple) else (hx,))
    return outs


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("bias", [pytest.param(True, id="bias"),
                                  pytest.param(False, id="nobias")])
@pytest.mark.parametrize("with_state", [pytest.param(True, id="hx"),
                                        pytest.param(False, id="no-hx")])
@pytest.mark.parametrize("batch_shape", [pytest.param((3,), id="B3"),
                                         pytest.param((), id="unbatched"),
                                         pytest.param((1,), id="B1")])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_matches_torch(cell, batch_shape, with_state, bias, backend):
    module, oracle = twin_cells(cell, bias, backend=backend)
    xs = [leaf(*batch_shape, N_IN) for _ in range(3)]
    n_states = (2 if cell == "lstm" else 1) if with_state else 0
    states = [leaf(*batch_shape, H) for _ in range(n_states)]
    hx = None if not with_state else (tuple(states) if cell == "lstm" else states[0])

    got, want = unroll(module, xs, hx), unroll(oracle, xs, hx)
    weights = [[torch.randn(batch_shape + (H,), dtype=DTYPE) for _ in step] for step in want]
    losses = [sum((s * w).sum() for step, ws in zip(outs, weights) for s, w in zip(step, ws))
              for outs in (got, want)]
    for step, (g_step, w_step) in enumerate(zip(got, want)):
        for k, (g, w) in enumerate(zip(g_step, w_step)):
            assert g.shape == w.shape and g.dtype == w.dtype
            assert_close(g, w, DTYPE, f"step {step} state {k}")

    names = [f"x{t}" for t in range(len(xs))] + [f"hx[{k}]" for k in range(len(states))]
    inputs = xs + states
    grads = torch.autograd.grad(losses[0], inputs + list(module.parameters()))
    ref_grads = torch.autograd.grad(losses[1], inputs + list(oracle.parameters()))
    names += [n for n, _ in module.named_parameters()]
    for name, g, w in zip(names, grads, ref_grads, strict=True):
        assert_close(g, w, DTYPE, f"grad of {name}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_gradcheck(cell):
    """Every input and parameter (a smaller cell: gradcheck costs two calls per element)."""
    module = CELLS[cell][0](2, 3, dtype=DTYPE, backend="stepwise")
    x, h, c = leaf(2, 2), leaf(2, 3), leaf(2, 3)

    names = [n for n, _ in module.named_parameters()]

    def fn(x, h, c, *weights):
        hx = (h, c) if cell == "lstm" else h
        return torch.func.functional_call(module, dict(zip(names, weights)), (x, hx))

    weights = [p.detach().clone().requires_grad_() for p in module.parameters()]
    assert torch.autograd.gradcheck(fn, (x, h, c, *weights), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_is_a_torch_cell(cell):
    triton_cls, torch_cls = CELLS[cell]
    torch.manual_seed(3)
    module = triton_cls(N_IN, H)
    torch.manual_seed(3)
    plain = torch_cls(N_IN, H)
    assert isinstance(module, torch_cls)
    assert module.state_dict().keys() == plain.state_dict().keys()
    for name, p in plain.state_dict().items():
        assert torch.equal(module.state_dict()[name], p), f"same init for {name}"
    fresh = triton_cls(N_IN, H)
    fresh.load_state_dict(plain.state_dict())
    assert "backend='auto'" in repr(module)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_runs_one_launch_forward_and_one_or_the_step_kernel_backward(cell, monkeypatch):
    """One call at these sizes = one fused launch forward (both GEMMs and the gates:
    kernels/cell_fused.py); backward, the LSTM's one launch (kernels/cell_fused_backward.py),
    the GRU's the layers' fused step kernel and GEMMs (cell_step.py)."""
    module, _ = twin_cells(cell)
    kernels = gru_pointwise if cell == "gru" else lstm_pointwise
    assert getattr(cell_step, f"{cell}_step_bwd") is getattr(kernels, f"{cell}_step_bwd")
    calls = []
    for name in (f"{cell}_cell_fused", f"{cell}_step_fwd", f"{cell}_step_bwd",
                 "lstm_cell_fused_backward"):
        original = getattr(cell_step, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)
        monkeypatch.setattr(cell_step, name, counted)
    out = module(leaf(2, N_IN))
    (out[0] if isinstance(out, tuple) else out).sum().backward()
    backward = "lstm_cell_fused_backward" if cell == "lstm" else "gru_step_bwd"
    assert calls == [f"{cell}_cell_fused", backward]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_empty_batch(cell):
    module, oracle = twin_cells(cell)
    x = torch.randn(0, N_IN, dtype=DTYPE)
    got, want = module(x), oracle(x)
    got, want = (got, want) if cell == "lstm" else ((got,), (want,))
    assert [g.shape for g in got] == [w.shape for w in want]


BAD_INPUTS = [
    # input shape, state shape (None: no hx), exception type, message
    pytest.param((2, 2, N_IN), None, ValueError, r"Expected input to be 1D or 2D, got 3D",
                 id="3d-input"),
    pytest.param((2, N_IN + 1), None, RuntimeError, rf"inconsistent input_size: got {N_IN + 1}",
                 id="feature-size"),
    pytest.param((2, N_IN), (3, H), RuntimeError, r"Input batch size 2 doesn't match hidden0 batch "
                 r"size 3", id="state-batch"),
    pytest.param((2, N_IN), (2, H + 1), RuntimeError, rf"inconsistent hidden_size: got {H + 1}",
                 id="state-size"),
    pytest.param((2, N_IN), (2, 2, H), ValueError, r"Expected (hx\[0\]|hidden) to be 1D or 2D",
                 id="3d-state"),
]


@pytest.mark.parametrize("x_shape, h_shape, error, message", BAD_INPUTS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_bad_input_raises_like_torch(cell, x_shape, h_shape, error, message):
    module, oracle = twin_cells(cell)
    x = torch.randn(x_shape, dtype=DTYPE)
    hx = None
    if h_shape is not None:
        h = torch.randn(h_shape, dtype=DTYPE)
        hx = (h, torch.randn(h_shape, dtype=DTYPE)) if cell == "lstm" else h
    with pytest.raises(error):
        oracle(x, hx)
    with pytest.raises(error, match=message):
        module(x, hx)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_dtype_mismatch_raises_like_torch(cell):
    module, oracle = twin_cells(cell)
    x = torch.randn(2, N_IN, dtype=torch.float32)
    with pytest.raises(RuntimeError):
        oracle(x)
    with pytest.raises(RuntimeError, match=r"does not match weight dtype.*\.to\(torch.float64\)"):
        module(x)


def test_lstm_cell_state_must_be_a_tuple_like_torch():
    """A stacked (2, batch, hidden) tensor is not (h_0, c_0): TypeError, as in torch."""
    module, oracle = twin_cells("lstm")
    x, stacked = torch.randn(2, N_IN, dtype=DTYPE), torch.randn(2, 2, H, dtype=DTYPE)
    with pytest.raises(TypeError):
        oracle(x, stacked)
    with pytest.raises(TypeError, match="must be a tuple"):
        module(x, stacked)

