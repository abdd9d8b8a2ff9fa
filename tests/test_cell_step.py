"""A cell call's one-step road (lstm_triton/cell_step.py, issue 17).

In plain eager a TritonLSTMCell / TritonGRUCell call skips the layer's machinery and runs
the stepwise layer's one step directly. It must give the layer op's bits, forward and every
gradient; it must be taken only where the layer's road would have skipped the custom op
(so compile, dispatch modes, resets and forward-mode AD still see what they saw); and
double backward and gradcheck must hold on it.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lstm_triton import TritonGRUCell, TritonLSTMCell, cell_step, ops

B, I, H = 3, 5, 7


def leaves(cell, bias, dtype=torch.float32):
    gates = (4 if cell == "lstm" else 3) * H

    def leaf(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=True)

    return dict(x=leaf(B, I), h0=leaf(B, H), c0=leaf(B, H) if cell == "lstm" else None,
                w_ih=leaf(gates, I), w_hh=leaf(gates, H), b_ih=leaf(gates) if bias else None,
                b_hh=leaf(gates) if bias else None)


def outputs_and_grads(cell, inputs, by_layer_op):
    t = inputs
    if by_layer_op:
        _, h1, c1, *_ = ops.rnn_layer(cell, "stepwise", t["x"], None, t["h0"], t["c0"], t["w_ih"],
                                      t["w_hh"], t["b_ih"], t["b_hh"], None, False, True)
        outs = [h1, c1] if cell == "lstm" else [h1]
    else:
        outs = list(cell_step.step(cell, t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"],
                                   t["b_ih"], t["b_hh"]))
    gen = torch.Generator().manual_seed(7)
    cotangents = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
    wrt = [v for v in t.values() if v is not None]
    return outs, torch.autograd.grad(outs, wrt, cotangents)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_one_step_road_gives_the_layer_ops_bits(cell, bias):
    torch.manual_seed(0)
    inputs = leaves(cell, bias)
    fast, fast_grads = outputs_and_grads(cell, inputs, by_layer_op=False)
    op, op_grads = outputs_and_grads(cell, inputs, by_layer_op=True)
    for a, b in zip(fast + list(fast_grads), op + list(op_grads)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [TritonLSTMCell, TritonGRUCell])
def test_the_road_is_taken_in_plain_eager_only(cls):
    torch.manual_seed(0)
    cell = cls(I, H, backend="stepwise")
    x = torch.randn(B, I, requires_grad=True)
    first = cell(x)
    first = first[0] if isinstance(first, tuple) else first
    assert type(first.grad_fn).__name__.endswith("CellStepBackward")

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record():
        cell(x)
    assert any("lstm_triton.rnn_layer" in name for name in seen)  # the layer op, not the road

    out = cell(x, reset=torch.tensor([True, False, True]))  # resets: the layer's road
    out = out[0] if isinstance(out, tuple) else out
    assert not type(out.grad_fn).__name__.endswith("CellStepBackward")


@pytest.mark.parametrize("cls", [TritonLSTMCell, TritonGRUCell])
def test_gradcheck_and_double_backward_on_the_road(cls):
    torch.manual_seed(0)
    cell = cls(I, H, backend="stepwise").double()
    x = torch.randn(2, I, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, H, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, H, dtype=torch.float64, requires_grad=True)

    def fn(x, h, c):
        return cell(x, (h, c)) if cls is TritonLSTMCell else cell(x, h)

    assert torch.autograd.gradcheck(fn, (x, h, c))
    assert torch.autograd.gradgradcheck(fn, (x, h, c))
