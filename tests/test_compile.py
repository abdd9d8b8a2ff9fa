"""torch.compile(fullgraph=True) over models using the Triton modules, opcheck of the ops, and
torch.jit.trace.

fullgraph=True turns any graph break into an error, so a passing compile means
each layer-direction is one opaque custom op in the graph. Numbers must equal
eager, forward and backward. On CPU the kernels run in Triton's interpreter
inside those ops; inductor compiles the rest of the model (the embedding, the
head, the loss) into C++.
"""
import pytest
import torch
from rnn_testing import assert_close
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import lstm_triton
from lstm_triton import TritonGRU, TritonGRUCell, TritonLSTM
from lstm_triton.ops import rnn_layer, rnn_layer_backward

DTYPE = torch.float64


class Classifier(nn.Module):
    """Tokens -> embedding -> recurrent encoder -> mean over time -> linear."""

    def __init__(self, rnn):
        super().__init__()
        self.embed = nn.Embedding(10, 3)
        self.rnn = rnn
        out_size = getattr(rnn, "proj_size", 0) or rnn.hidden_size
        self.head = nn.Linear(out_size * (2 if rnn.bidirectional else 1), 2)

    def forward(self, tokens, hx=None):
        y, state = self.rnn(self.embed(tokens), hx)
        h = state[0] if isinstance(state, tuple) else state
        return self.head(y.mean(1)) + h.sum()


class Decoder(nn.Module):
    """A step-by-step decoder loop over a cell (unrolled by the compiler)."""

    def __init__(self):
        super().__init__()
        self.cell = TritonGRUCell(3, 4, backend="stepwise")

    def forward(self, xs, h):
        for x in xs.unbind(0):
            h = self.cell(x, h)
        return h


def forward_backward(model, *inputs):
    model.zero_grad()
    out = model(*inputs)
    out.square().sum().backward()
    return out, [p.grad.clone() for p in model.parameters()]


def check_same_as_eager(model, compiled, *inputs):
    out, grads = forward_backward(compiled, *inputs)
    ref_out, ref_grads = forward_backward(model, *inputs)
    assert_close(out, ref_out, DTYPE, "compiled forward")
    for (name, _), got, want in zip(model.named_parameters(), grads, ref_grads, strict=True):
        assert_close(got, want, DTYPE, f"compiled grad of {name}")


MODELS = [
    pytest.param(lambda: TritonLSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2,
                                    batch_first=True, backend="stepwise"),
                 "inductor", id="lstm-inductor"),
    pytest.param(lambda: TritonGRU(3, 4, bidirectional=True, batch_first=True,
                                   backend="stepwise"),
                 "aot_eager", id="gru-aot_eager"),
    pytest.param(lambda: TritonGRU(3, 4, num_layers=2, batch_first=True, backend="persistent"),
                 "aot_eager", id="gru-persistent-aot_eager"),
    # auto: the kernels under the interpreter; on CUDA whatever dispatch picks (cuDNN with
    # no measurement), which must compile too
    pytest.param(lambda: TritonLSTM(3, 4, batch_first=True), "inductor", id="lstm-auto-inductor"),
    pytest.param(lambda: TritonLSTM(3, 4, batch_first=True, backend="torch"), "aot_eager",
                 id="lstm-torch-aot_eager"),
]


@pytest.mark.parametrize("make_rnn, compiler", MODELS)
def test_compiled_model_matches_eager(make_rnn, compiler):
    torch._dynamo.reset()
    model = Classifier(make_rnn()).to(DTYPE)
    compiled = torch.compile(model, fullgraph=True, backend=compiler)
    check_same_as_eager(model, compiled, torch.randint(0, 10, (3, 5)))
    if compiler == "aot_eager":  # a new sequence length recompiles (or reuses a dynamic graph)
        check_same_as_eager(model, compiled, torch.randint(0, 10, (3, 2)))


def test_compiled_model_with_initial_state():
    torch._dynamo.reset()
    model = Classifier(TritonLSTM(3, 4, batch_first=True, backend="stepwise")).to(DTYPE)
    hx = tuple(torch.randn(1, 2, 4, dtype=DTYPE) for _ in range(2))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    check_same_as_eager(model, compiled, torch.randint(0, 10, (2, 4)), hx)


class PackedEncoder(nn.Module):
    """Variable-length batches: pack, encode, take each sequence's final state."""

    def __init__(self):
        super().__init__()
        self.rnn = TritonLSTM(3, 4, bidirectional=True, backend="stepwise")

    def forward(self, packed, hx):
        out, (h_n, c_n) = self.rnn(packed, hx)
        return out.data.sum(0) + h_n.sum((0, 2)).sum() + c_n.square().sum()


@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["unsorted", "sorted"])
def test_compiled_packed_sequence_matches_eager(enforce_sorted):
    torch._dynamo.reset()
    model = PackedEncoder().to(DTYPE)
    lengths = (5, 2, 1) if enforce_sorted else (2, 5, 1)
    packed = pack_sequence([torch.randn(n, 3, dtype=DTYPE) for n in lengths],
                           enforce_sorted=enforce_sorted)
    hx = tuple(torch.randn(2, 3, 4, dtype=DTYPE) for _ in range(2))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    check_same_as_eager(model, compiled, packed, hx)


def test_compiled_cell_decoder_matches_eager():
    torch._dynamo.reset()
    model = Decoder().to(DTYPE)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    check_same_as_eager(model, compiled, torch.randn(3, 2, 3, dtype=DTYPE),
                        torch.randn(2, 4, dtype=DTYPE))


# ------------------------------------------------------------------------------ opcheck
def layer_args(cell, packed, proj):
    batch, n_in, hidden = 2, 3, 4
    n_gates = 4 if cell == "lstm" else 3
    batch_sizes = torch.tensor([2, 2, 1]) if packed else None
    n_rows = 5 if packed else 6

    def leaf(*shape):
        return torch.randn(*shape, dtype=DTYPE, requires_grad=True)

    out = 2 if proj else hidden
    return (cell, "stepwise", leaf(n_rows, n_in), batch_sizes, leaf(batch, out),
            leaf(batch, hidden) if cell == "lstm" else None, leaf(n_gates * hidden, n_in),
            leaf(n_gates * hidden, out), leaf(n_gates * hidden), leaf(n_gates * hidden),
            leaf(out, hidden) if proj else None, packed, True)


OPCHECK_CASES = [
    pytest.param("lstm", False, False, id="lstm-padded"),
    pytest.param("lstm", True, True, id="lstm-packed-reverse-proj"),
    pytest.param("gru", True, False, id="gru-packed-reverse"),
]


@pytest.mark.parametrize("cell, packed, proj", OPCHECK_CASES)
def test_opcheck_rnn_layer(cell, packed, proj):
    torch.library.opcheck(rnn_layer, layer_args(cell, packed, proj))


@pytest.mark.parametrize("cell, packed, proj", OPCHECK_CASES)
def test_opcheck_rnn_layer_backward(cell, packed, proj):
    args = layer_args(cell, packed, proj)
    (_, backend, x, batch_sizes, h0, c0, w_ih, w_hh, _b_ih, _, w_hr, reverse, _) = args
    with torch.no_grad():
        y, h_n, c_n, saved_0, saved_1, saved_2 = rnn_layer(*args)
    grads = [torch.randn_like(t) for t in (y, h_n)]
    dc_n = torch.randn_like(c_n) if cell == "lstm" else None
    detach = [t.detach() if t is not None else None for t in (x, h0, c0, w_ih, w_hh, w_hr)]
    x, h0, c0, w_ih, w_hh, w_hr = detach
    torch.library.opcheck(rnn_layer_backward, (
        cell, backend, grads[0], grads[1], dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y,
        saved_0, saved_1, saved_2, reverse, True, True))


@pytest.mark.parametrize("make", [lambda: TritonLSTM(3, 4, num_layers=2, dtype=DTYPE),
                                  lambda: TritonGRU(3, 4, dtype=DTYPE),
                                  lambda: TritonGRUCell(3, 4, dtype=DTYPE)],
                         ids=["lstm", "gru", "gru-cell"])
@pytest.mark.parametrize("mode", ["aten", "custom_op"])
def test_jit_trace_passes_its_check_and_the_traced_module_trains(make, mode):
    """torch.jit.trace (its default check reruns the trace without grad) of a module traced
    for inference, then used for training: outputs and gradients equal eager. By default the
    trace records torch's aten ops (lstm_triton/export.py); in "custom_op" mode it records
    the custom op, which then keeps what backward needs though traced under no_grad."""
    module = make()
    x = torch.randn(5, 2, 3, dtype=DTYPE) if not isinstance(module, TritonGRUCell) else \
        torch.randn(2, 3, dtype=DTYPE)
    with torch.no_grad(), lstm_triton.export_mode(mode):
        traced = torch.jit.trace(module, (x,))  # raises TracingCheckError if the graphs differ
    assert ("lstm_triton::rnn_layer" in str(traced.inlined_graph)) == (mode == "custom_op")

    def first(out):
        return out[0] if isinstance(out, tuple) else out

    params = list(module.parameters())
    got = first(traced(x))
    got_grads = torch.autograd.grad(got.pow(2).sum(), params)
    want = first(module(x))
    want_grads = torch.autograd.grad(want.pow(2).sum(), params)
    assert_close(got, want, DTYPE, "output")
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, DTYPE, "gradient")
