"""The eager fast path (ops.rnn_layer_fast) gives the custom op's bits, and is taken only
where nothing traces or intercepts the call.

In plain eager a layer runs the op's implementation directly (under an autograd Function
when a backward follows); torch.compile, torch.export, torch.jit.trace and dispatch modes
see the custom op. Both roads must agree bit for bit, forward and every gradient.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lstm_triton import TritonGRU, TritonLSTM, ops

CASES = [
    pytest.param("lstm", "stepwise", None, False, id="lstm-stepwise-padded"),
    pytest.param("lstm", "stepwise", [3, 2, 2, 1], True, id="lstm-stepwise-packed-reverse-proj"),
    pytest.param("gru", "stepwise", [3, 3, 1], False, id="gru-stepwise-packed-reverse"),
    pytest.param("lstm", "persistent", None, True, id="lstm-persistent-padded-proj"),
    pytest.param("gru", "persistent", [2, 1, 1], False, id="gru-persistent-packed"),
]


def layer_inputs(cell, batch_sizes, proj, dtype=torch.float32):
    """rnn_layer's tensor arguments at awkward sizes (B=3, I=5, H=7, P=4), fresh random."""
    batch, n_in, hidden = 3, 5, 7
    out = 4 if (proj and cell == "lstm") else hidden
    gates = (4 if cell == "lstm" else 3) * hidden
    sizes = torch.tensor(batch_sizes) if batch_sizes else None
    n_rows = sum(batch_sizes) if batch_sizes else 4 * batch

    def leaf(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=True)

    return dict(x=leaf(n_rows, n_in), batch_sizes=sizes, h0=leaf(batch, out),
                c0=leaf(batch, hidden) if cell == "lstm" else None, w_ih=leaf(gates, n_in),
                w_hh=leaf(gates, out), b_ih=leaf(gates), b_hh=leaf(gates),
                w_hr=leaf(out, hidden) if (proj and cell == "lstm") else None)


def run(fn, cell, backend, inputs, reverse):
    """Outputs (y, h_n, c_n) and the gradients of every input from one random cotangent."""
    y, h_n, c_n, *_ = fn(cell, backend, inputs["x"], inputs["batch_sizes"], inputs["h0"],
                         inputs["c0"], inputs["w_ih"], inputs["w_hh"], inputs["b_ih"],
                         inputs["b_hh"], inputs["w_hr"], reverse, True)
    outs = [y, h_n] + ([c_n] if cell == "lstm" else [])
    gen = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
    leaves = [t for k, t in inputs.items() if k != "batch_sizes" and t is not None]
    grads = torch.autograd.grad(outs, leaves, cotangents)
    return outs, grads, outs[0].grad_fn


@pytest.mark.parametrize("cell, backend, batch_sizes, proj", CASES)
def test_eager_path_gives_the_custom_ops_bits(cell, backend, batch_sizes, proj):
    reverse = batch_sizes is not None
    inputs = layer_inputs(cell, batch_sizes, proj)
    fast, fast_grads, fast_fn = run(ops.rnn_layer_fast, cell, backend, inputs, reverse)
    op, op_grads, op_fn = run(ops.rnn_layer, cell, backend, inputs, reverse)
    assert type(fast_fn).__name__ == "_EagerLayerBackward"  # the fast path ran
    assert type(op_fn).__name__ != "_EagerLayerBackward"
    for a, b in zip(fast + list(fast_grads), op + list(op_grads)):
        assert torch.equal(a, b)


def test_inference_call_keeps_no_graph_and_saves_nothing():
    inputs = layer_inputs("lstm", None, False)
    with torch.no_grad():
        y, h_n, c_n, *saved = ops.rnn_layer_fast("lstm", "stepwise", *inputs.values(), False,
                                                 False)
    assert y.grad_fn is None and not y.requires_grad
    assert all(s.numel() == 0 for s in saved)


class _Seen(TorchDispatchMode):
    """Records the ops dispatched under it."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_sees_the_custom_op():
    """FakeTensorMode, FlopCounterMode and profilers' modes must see one op per layer, as
    torch.compile and torch.export do: under any dispatch mode the op runs."""
    inputs = layer_inputs("gru", None, False)
    with _Seen() as seen:
        ops.rnn_layer_fast("gru", "stepwise", *inputs.values(), False, True)
    assert any("lstm_triton.rnn_layer" in op for op in seen.ops), seen.ops


@pytest.mark.parametrize("make", [lambda: TritonLSTM(3, 4, num_layers=2, backend="stepwise"),
                                  lambda: TritonGRU(3, 4, bidirectional=True, backend="stepwise")],
                         ids=["lstm-2-layers", "gru-bidirectional"])
def test_compiled_module_gives_the_eager_paths_bits(make):
    """torch.compile (one graph: fullgraph) runs the custom op; eager runs the fast path;
    outputs and parameter gradients are the same bits."""
    module = make()
    x = torch.randn(5, 2, 3)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)

    def outputs_and_grads(fn):
        module.zero_grad()
        y, _ = fn(x)
        y.pow(2).sum().backward()
        return [y.detach()] + [p.grad.clone() for p in module.parameters()]

    for a, b in zip(outputs_and_grads(compiled), outputs_and_grads(module)):
        assert torch.equal(a, b)


def test_batched_gradients_go_through_the_custom_op(monkeypatch):
    """Autograd's batched gradients (is_grads_batched=True: vmap over the backward) reach
    the backward as Batched tensors of type Tensor: the backward must take the op, whose
    batching rule (batching.py) runs the implementation once per member on plain tensors,
    never the implementation on the batched ones; the result is the per-cotangent loop's."""
    seen = []
    real, real_impl = ops.rnn_layer_backward, ops._rnn_layer_backward_impl

    def spy(*args):
        seen.append("op")
        return real(*args)

    def impl(*args):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        assert not ops._batched(*tensors), "the implementation ran on batched gradients"
        return real_impl(*args)

    monkeypatch.setattr(ops, "rnn_layer_backward", spy)
    monkeypatch.setattr(ops, "_rnn_layer_backward_impl", impl)
    inputs = layer_inputs("gru", None, False)
    y, *_ = ops.rnn_layer_fast("gru", "stepwise", *inputs.values(), False, True)
    cotangents = torch.randn(2, *y.shape)
    (batched,) = torch.autograd.grad(y, inputs["x"], cotangents, is_grads_batched=True,
                                     retain_graph=True)
    assert seen == ["op"]
    for k in range(2):
        (one,) = torch.autograd.grad(y, inputs["x"], cotangents[k], retain_graph=True)
        torch.testing.assert_close(batched[k], one, rtol=0, atol=0)
