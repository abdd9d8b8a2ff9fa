"""A small layer's time loop at one launch a step (kernels/fused_steps.py, issue 17).

The stepwise backend runs it where a cell step would fuse (config.fused_cell_launch) and
the loop's order allows (fused_steps.runs); there the rest of the specification
(test_rnn_numerics.py, test_packed.py, ...) runs on it. These tests say where it runs, and
keep the road it replaces at those sizes (the recurrent GEMM on torch, then the step
kernel) under the same specification.
"""
import pytest
import torch

from rnn_testing import as_tuple, twin_modules
from test_rnn_numerics import CONFIGS, check_against_torch

from lstm_triton import stepwise
from lstm_triton.kernels import fused_steps


@pytest.fixture
def fused_calls(monkeypatch):
    """Names of the fused loops run, in order."""
    calls = []
    for name in ("lstm_forward_steps", "lstm_backward_steps", "gru_forward_steps",
                 "gru_backward_steps"):
        def spy(*args, _run=getattr(fused_steps, name), _name=name):
            calls.append(_name.split("_")[1])
            return _run(*args)
        monkeypatch.setattr(fused_steps, name, spy)
    return calls


@pytest.fixture
def step_road(monkeypatch):
    """The stepwise backend with the fused loop off: its step road at every size."""
    monkeypatch.setattr(stepwise, "fused_launch", lambda *args, **kwargs: None)


def _train_once(module, x, **kwargs):
    out, finals = module(x, **kwargs)
    data = out.data if hasattr(out, "batch_sizes") else out
    (data.sum() + sum(f.sum() for f in as_tuple(finals))).backward()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("hidden, kwargs, lengths, resets, expected", [
    pytest.param(7, {}, None, False, ["forward", "backward"], id="one-layer"),
    pytest.param(7, {"bidirectional": True}, None, False, ["forward"] * 2 + ["backward"] * 2,
                 id="bidirectional"),
    # packed: a forward direction's step t runs the first rows of step t-1's; the reverse
    # direction's shorter sequences join late from h0, which the step road handles
    pytest.param(7, {"bidirectional": True}, [4, 3, 1], False, ["forward", "backward"],
                 id="packed-bidirectional"),
    pytest.param(7, {"proj_size": 3}, None, False, [], id="projection"),
    pytest.param(7, {}, None, True, [], id="resets"),
    pytest.param(257, {}, None, False, [], id="above-the-size-limit"),
])
def test_the_fused_loop_runs_where_it_should(cell, hidden, kwargs, lengths, resets, expected,
                                             fused_calls):
    """Layers without a projection or per-call options, padded or packed in the forward
    direction, at fused cell sizes (hidden <= 256 here) run the fused loop, forward and
    backward."""
    if cell == "gru" and "proj_size" in kwargs:
        pytest.skip("proj_size is an LSTM option")
    module, _ = twin_modules(cell, 3, hidden, backend="stepwise", **kwargs)
    x = torch.randn(4, 3, 3, requires_grad=True)
    if lengths is not None:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, lengths)
    extra = {"resets": torch.rand(4, 3) < 0.3} if resets else {}
    _train_once(module, x, **extra)
    assert fused_calls == expected


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"),
                                   pytest.param(torch.float64, id="fp64")])
@pytest.mark.parametrize("config", ["base", "T1-B1", "odd-H100", "no-bias",
                                    "bidir-layers2-batch-first", "unbatched"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_step_road_still_matches_torch(cell, config, dtype, step_road, fused_calls):
    """What the fused loop replaces at small sizes still gives nn.LSTM's / nn.GRU's numbers:
    outputs, final states and every gradient."""
    check_against_torch(cell, CONFIGS[config], dtype, "stepwise")
    assert fused_calls == []


@pytest.mark.parametrize("dtype", [pytest.param(torch.float16, id="fp16"),
                                   pytest.param(torch.bfloat16, id="bf16")])
@pytest.mark.parametrize("road", ["fused", "steps"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_both_roads_match_torch_in_half_precision(cell, road, dtype, monkeypatch, fused_calls):
    if road == "steps":
        monkeypatch.setattr(stepwise, "fused_launch", lambda *args, **kwargs: None)
    check_against_torch(cell, CONFIGS["bidir-layers2-batch-first"], dtype, "stepwise")
    assert bool(fused_calls) == (road == "fused")


@pytest.mark.parametrize("road", ["fused", "steps"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradcheck_float64_on_both_roads(cell, road, monkeypatch, fused_calls):
    """Finite differences agree with backward for input, states and every parameter, the
    final states of a packed batch included."""
    from torch.func import functional_call

    if road == "steps":
        monkeypatch.setattr(stepwise, "fused_launch", lambda *args, **kwargs: None)
    module, _ = twin_modules(cell, 2, 3, num_layers=2, dtype=torch.float64,
                             backend="stepwise")
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)

    def run(x, h0, c0, *params):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, [3, 2])
        hx = (h0, c0) if cell == "lstm" else h0
        out, finals = functional_call(module, dict(zip(names, params)), (packed, hx))
        return (out.data, *as_tuple(finals))

    inputs = (x, h0, c0, *params) if cell == "lstm" else (x, h0, *params)
    wrapped = run if cell == "lstm" else (lambda x, h0, *params: run(x, h0, None, *params))
    assert torch.autograd.gradcheck(wrapped, inputs, fast_mode=True)
    assert bool(fused_calls) == (road == "fused")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("backend", ["stepwise", "stepwise-steps", "persistent"])
def test_every_loop_reads_states_of_any_layout(backend, cell, monkeypatch):
    """The layer op's implementation can be handed states that are not row-major
    (autograd's batched gradients pass an expanded zero dh_n, strides (1, 0)): a
    transposed h0 / c0 / dc_n and an expanded dh_n give what their row-major copies give,
    bit for bit, forward and backward, on the fused loop, the step road and the
    persistent kernels."""
    from lstm_triton import ops

    if backend == "stepwise-steps":
        monkeypatch.setattr(stepwise, "fused_launch", lambda *args, **kwargs: None)
        backend = "stepwise"
    B, H, T, n_gates = 3, 5, 4, 4 if cell == "lstm" else 3
    f64 = dict(dtype=torch.float64)
    x = torch.randn(T * B, 6, **f64)
    w_ih, w_hh = torch.randn(n_gates * H, 6, **f64), torch.randn(n_gates * H, H, **f64)
    b_ih, b_hh = torch.randn(n_gates * H, **f64), torch.randn(n_gates * H, **f64)
    h0, c0, dc_n = (torch.randn(H, B, **f64).t() for _ in range(3))
    dh_n = torch.randn(B, 1, **f64).expand(B, H)
    dy = torch.randn(T * B, H, **f64)
    if cell == "gru":
        c0 = dc_n = None

    def run(h0, c0, dh_n, dc_n):
        y, h_n, c_n, *saved = ops._rnn_layer_impl(cell, backend, x, None, h0, c0, w_ih, w_hh,
                                                  b_ih, b_hh, None, False, True)
        grads = ops._rnn_layer_backward_impl(cell, backend, dy, dh_n, dc_n, x, None, h0, c0,
                                             w_ih, w_hh, None, y, *saved, False, True, True)
        return [y, h_n, c_n, *grads]

    got = run(h0, c0, dh_n, dc_n)
    want = run(*(t if t is None else t.contiguous() for t in (h0, c0, dh_n, dc_n)))
    assert not h0.is_contiguous() and dh_n.stride() == (1, 0)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
