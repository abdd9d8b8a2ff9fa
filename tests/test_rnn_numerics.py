"""TritonLSTM / TritonGRU give nn.LSTM / nn.GRU's numbers: outputs, final states and
every gradient (input, initial states, each parameter), against torch in float64."""
import pytest
import torch

from rnn_testing import (DEVICE, KERNEL_BACKENDS, TOLERANCES, TORCH_MODULES, as_tuple,
                         assert_close, assert_runs_close, outputs_and_grads, twin_modules)

CELLS = ["lstm", "gru"]

# (input_size, hidden_size, seq_len, batch, module kwargs, states given)
CONFIGS = {
    "base": (5, 7, 6, 3, {}, True),
    "no-states": (5, 7, 6, 3, {}, False),
    "T1-B1": (3, 10, 1, 1, {}, True),
    "odd-H100": (4, 100, 3, 2, {}, True),
    "no-bias": (5, 6, 5, 2, {"bias": False}, True),
    "batch-first": (5, 6, 5, 3, {"batch_first": True}, True),
    "layers3": (4, 6, 4, 2, {"num_layers": 3}, True),
    "bidirectional": (5, 6, 5, 3, {"bidirectional": True}, True),
    "bidir-layers2-batch-first": (3, 5, 4, 2, {"bidirectional": True, "num_layers": 2,
                                               "batch_first": True}, True),
    "unbatched": (5, 7, 6, None, {}, True),
    "unbatched-bidir-layers2": (4, 5, 3, None, {"bidirectional": True, "num_layers": 2}, False),
    "proj": (5, 7, 6, 3, {"proj_size": 4}, True),
    "proj-bidir-layers2": (4, 6, 5, 2, {"proj_size": 3, "bidirectional": True,
                                        "num_layers": 2}, True),
}
LSTM_ONLY = {"proj", "proj-bidir-layers2"}


def cell_configs(names):
    """(cell, config) pairs: proj_size is an LSTM option, so GRU skips those configs."""
    return [pytest.param(cell, name, id=f"{cell}-{name}") for cell in CELLS for name in names
            if not (cell == "gru" and name in LSTM_ONLY)]


def make_inputs(module, cfg, dtype, device=DEVICE):
    input_size, hidden, seq_len, batch, kwargs, with_states = cfg
    shape = (seq_len, input_size) if batch is None else (
        (batch, seq_len, input_size) if kwargs.get("batch_first") else (seq_len, batch, input_size))
    x = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
    if not with_states:
        return x, None, [x]
    n = module.num_layers * (2 if module.bidirectional else 1)
    lead = (n,) if batch is None else (n, batch)
    proj = getattr(module, "proj_size", 0)
    h0 = torch.randn(*lead, proj or hidden, dtype=dtype, device=device, requires_grad=True)
    if module.mode == "LSTM":
        c0 = torch.randn(*lead, hidden, dtype=dtype, device=device, requires_grad=True)
        return x, (h0, c0), [x, h0, c0]
    return x, h0, [x, h0]


def upcast(x, hx, inputs):
    cast = lambda t: t.detach().to(torch.float64).requires_grad_()  # noqa: E731
    x64 = cast(x)
    if hx is None:
        return x64, None, [x64]
    hx64 = tuple(cast(s) for s in as_tuple(hx))
    return x64, (hx64 if len(hx64) == 2 else hx64[0]), [x64, *hx64]


def loss_weights(out, finals, dtype):
    return [torch.randn(out.shape, dtype=torch.float64)] + [
        torch.randn(f.shape, dtype=torch.float64) for f in finals]


def check_against_torch(cell, cfg, dtype, backend):
    input_size, hidden, _, _, kwargs, _ = cfg
    module, oracle = twin_modules(cell, input_size, hidden, dtype=dtype, backend=backend, **kwargs)
    x, hx, inputs = make_inputs(module, cfg, dtype)
    x64, hx64, inputs64 = upcast(x, hx, inputs)

    with torch.no_grad():
        shapes = oracle(x64, hx64)
    weights = loss_weights(shapes[0], as_tuple(shapes[1]), dtype)
    out, finals, grads = outputs_and_grads(module, x, hx, weights, inputs)
    out64, finals64, grads64 = outputs_and_grads(oracle, x64, hx64, weights, inputs64)

    assert out.dtype == dtype and out.shape == out64.shape
    assert_close(out, out64, dtype, "output")
    for i, (f, f64) in enumerate(zip(finals, finals64)):
        assert f.dtype == dtype and f.shape == f64.shape
        assert_close(f, f64, dtype, f"final state {i}")
    names = [f"input {i}" for i in range(len(inputs))] + [n for n, _ in module.named_parameters()]
    for name, g, g64 in zip(names, grads, grads64):
        assert g is not None, f"no gradient for {name}"
        assert g.dtype == dtype
        assert_close(g, g64, dtype, f"grad of {name}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"),
                                   pytest.param(torch.float64, id="fp64")])
@pytest.mark.parametrize("cell, config", cell_configs(CONFIGS))
def test_matches_torch_forward_and_every_gradient(cell, config, dtype, backend):
    check_against_torch(cell, CONFIGS[config], dtype, backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [pytest.param(torch.float16, id="fp16"),
                                   pytest.param(torch.bfloat16, id="bf16")])
@pytest.mark.parametrize(
    "cell, config", cell_configs(["base", "bidir-layers2-batch-first", "proj", "odd-H100"]))
def test_half_precision_matches_torch(cell, config, dtype, backend):
    """float16 / bfloat16 storage, float32 accumulation: within 1e-2 of float64 torch."""
    check_against_torch(cell, CONFIGS[config], dtype, backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype, increment", [
    pytest.param(torch.float16, 4e-4, id="fp16"), pytest.param(torch.bfloat16, 3e-3, id="bf16")])
def test_half_precision_carries_the_cell_state_in_float32(dtype, increment, backend):
    """float16 / bfloat16 layers keep c in float32 between steps, as cuDNN does: with f = i = 1
    and g = `increment`, c grows by less than half an ulp of the half type per step (from
    c0 = 1), so a cell state stored in the half type between steps never moves, while the
    true c_T = 1 + T * increment, several times the dtype's tolerance away. T = 120 steps."""
    from lstm_triton import TritonLSTM

    hidden, steps = 2, 120
    module = TritonLSTM(1, hidden, dtype=dtype, backend=backend)
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        module.bias_ih_l0[: 2 * hidden] = 10.0  # i and f saturate to 1 (b_ih + b_hh = 20)
        module.bias_hh_l0[: 2 * hidden] = 10.0
        module.bias_ih_l0[2 * hidden: 3 * hidden] = increment  # g = tanh(increment)
    oracle = torch.nn.LSTM(1, hidden, dtype=torch.float64)
    oracle.load_state_dict({k: v.to(torch.float64) for k, v in module.state_dict().items()})
    x = torch.zeros(steps, 1, 1, dtype=dtype)
    hx = (torch.zeros(1, 1, hidden, dtype=dtype), torch.ones(1, 1, hidden, dtype=dtype))
    with torch.no_grad():
        out, (h_n, c_n) = module(x, hx)
        want, (want_h, want_c) = oracle(x.double(), tuple(s.double() for s in hx))
    assert (want_c - 1).min() > 2 * sum(TOLERANCES[dtype]) * want_c.max()  # at stake
    assert_close(c_n, want_c, dtype, "final cell state")
    assert_close(out, want, dtype, "output")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_kernels_match_the_pure_pytorch_reference(cell, backend):
    """Second oracle: the package's own reference backend, same weights, float64."""
    from lstm_triton import TritonGRU, TritonLSTM

    cls = TritonLSTM if cell == "lstm" else TritonGRU
    kwargs = dict(num_layers=2, bidirectional=True, dtype=torch.float64)
    module = cls(4, 6, backend=backend, **kwargs)
    ref = cls(4, 6, backend="reference", **kwargs)
    ref.load_state_dict(module.state_dict())
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    out, finals = module(x)
    out_ref, finals_ref = ref(x)
    assert_close(out, out_ref, torch.float64, "output")
    for f, f_ref in zip(as_tuple(finals), as_tuple(finals_ref)):
        assert_close(f, f_ref, torch.float64, "final state")
    g = torch.autograd.grad(out.sum() + as_tuple(finals)[0].sum(), [x, *module.parameters()])
    g_ref = torch.autograd.grad(out_ref.sum() + as_tuple(finals_ref)[0].sum(),
                                [x, *ref.parameters()])
    for a, b in zip(g, g_ref):
        assert_close(a, b, torch.float64, "gradient")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_dropout_between_layers_in_training_mode(cell, backend):
    """Same seed, same dropout masks as the reference backend; eval mode drops nothing."""
    from lstm_triton import TritonGRU, TritonLSTM

    cls = TritonLSTM if cell == "lstm" else TritonGRU
    module = cls(4, 6, num_layers=3, dropout=0.5, dtype=torch.float64, backend=backend)
    ref = cls(4, 6, num_layers=3, dropout=0.5, dtype=torch.float64, backend="reference")
    ref.load_state_dict(module.state_dict())
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    torch.manual_seed(7)
    out = module(x)[0]
    torch.manual_seed(7)
    out_ref = ref(x)[0]
    assert_close(out, out_ref, torch.float64, "training-mode output")
    module.eval()
    ref.eval()
    out_eval = module(x)[0]
    assert not torch.allclose(out, out_eval), "dropout changed nothing in training mode"
    assert_close(out_eval, ref(x)[0], torch.float64, "eval-mode output")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_dropout_one_drops_every_input_of_the_upper_layers_only(cell, backend):
    """dropout=1 is deterministic on every device (cuDNN's masks included): layers 2 and up
    see zeros, the first layer sees x, and the last layer's output and the final states are
    never dropped. Oracle: torch's one-layer modules, stacked by hand."""
    layers, hidden = 3, 5
    module, _ = twin_modules(cell, 4, hidden, num_layers=layers, dropout=1.0, backend=backend)
    x = torch.randn(6, 2, 4)
    with torch.no_grad():
        out, finals = module(x)
        want, want_finals = x.double(), []
        for k in range(layers):
            one = TORCH_MODULES[cell](want.shape[-1], hidden, dtype=torch.float64)
            one.load_state_dict({n.replace(f"_l{k}", "_l0"): p.double()
                                 for n, p in module.state_dict().items() if n.endswith(f"_l{k}")})
            want, state = one(want if k == 0 else torch.zeros_like(want))
            want_finals.append(as_tuple(state))
    assert_close(out, want, torch.float32, "training-mode output")
    for got, parts in zip(as_tuple(finals), zip(*want_finals)):
        assert_close(got, torch.cat(parts), torch.float32, "training-mode final state")


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="cuDNN draws nn.LSTM's dropout masks from its own generator")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_dropout_is_torchs_own_masks_scale_and_placement(cell, backend):
    """Against torch itself, not the reference backend (which shares the module's layer loop,
    so a wrong p, or dropout after the last layer, passed the test above): with the same seed,
    training-mode dropout draws torch's masks, scales the kept values by 1 / (1 - p) with
    p = dropout (0.3, not 0.5: p and 1 - p must differ), and acts between layers only, never
    on the last layer's output nor on the final states; gradients flow through the same
    masks. On the CPU, where torch's RNNs draw their masks from torch's generator."""
    module, oracle = twin_modules(cell, 4, 6, num_layers=3, dropout=0.3, dtype=torch.float64,
                                  backend=backend)
    assert module.training and oracle.training
    x = torch.randn(5, 2, 4, dtype=torch.float64, requires_grad=True)
    n_states = 2 if cell == "lstm" else 1
    weights_out = [torch.randn(5, 2, 6, dtype=torch.float64)] + \
                  [torch.randn(3, 2, 6, dtype=torch.float64) for _ in range(n_states)]
    torch.manual_seed(7)
    out, finals, grads = outputs_and_grads(module, x, None, weights_out, [x])
    torch.manual_seed(7)
    assert_runs_close((out, finals, grads), outputs_and_grads(oracle, x, None, weights_out, [x]),
                      torch.float64, "training-mode ")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_float64(cell, backend):
    """Finite differences agree with backward for input, states and every parameter."""
    from torch.func import functional_call

    kwargs = {"proj_size": 2} if cell == "lstm" else {}
    module, _ = twin_modules(cell, 2, 3, num_layers=2, bidirectional=True, dtype=torch.float64,
                             backend=backend, **kwargs)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    n_state = module.num_layers * 2
    h0 = torch.randn(n_state, 2, 2 if cell == "lstm" else 3, dtype=torch.float64,
                     requires_grad=True)
    c0 = torch.randn(n_state, 2, 3, dtype=torch.float64, requires_grad=True)

    def run(x, h0, c0, *params):
        hx = (h0, c0) if cell == "lstm" else h0
        out, finals = functional_call(module, dict(zip(names, params)), (x, hx))
        return (out, *as_tuple(finals))

    assert torch.autograd.gradcheck(run, (x, h0, c0, *params), fast_mode=True)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_float64_full_jacobian(cell, backend):
    """The slow, element-by-element gradcheck on the smallest layer."""
    module, _ = twin_modules(cell, 2, 2, dtype=torch.float64, backend=backend)
    x = torch.randn(2, 1, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 1, 2, dtype=torch.float64, requires_grad=True)

    def run(x, h0):
        hx = (h0, torch.ones_like(h0) * 0.3) if cell == "lstm" else h0
        out, finals = module(x, hx)
        return (out, *as_tuple(finals))

    assert torch.autograd.gradcheck(run, (x, h0))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_same_bits_run_to_run(cell, backend):
    """No atomics in reductions: forward and every gradient are bitwise reproducible."""
    module, _ = twin_modules(cell, 4, 6, num_layers=2, bidirectional=True, backend=backend)
    x = torch.randn(5, 3, 4, requires_grad=True)

    def run():
        out, finals = module(x)
        grads = torch.autograd.grad(out.pow(2).sum() + as_tuple(finals)[0].sum(),
                                    [x, *module.parameters()])
        return [out, *as_tuple(finals), *grads]

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell, config",
                         cell_configs(["base", "proj-bidir-layers2", "no-states", "unbatched"]))
def test_inference_under_no_grad_matches_torch(cell, config, backend):
    """torch.no_grad(): nothing is saved for backward, the numbers are the same."""
    input_size, hidden, _, _, kwargs, _ = CONFIGS[config]
    module, oracle = twin_modules(cell, input_size, hidden, dtype=torch.float32, backend=backend,
                                  **kwargs)
    x, hx, inputs = make_inputs(module, CONFIGS[config], torch.float32)
    x64, hx64, _ = upcast(x, hx, inputs)
    with torch.no_grad():
        out, finals = module(x, hx)
        expected, expected_finals = oracle(x64, hx64)
    assert not out.requires_grad
    assert_close(out, expected, torch.float32, "output")
    for f, e in zip(as_tuple(finals), as_tuple(expected_finals)):
        assert_close(f, e, torch.float32, "final state")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_forward_saves_for_backward_only_when_a_backward_can_follow(cell, backend, monkeypatch):
    """Inference (torch.no_grad, or nothing requiring grad) keeps no activations: the layer op
    runs with save=False and returns empty saved slots; with grad it saves. Saving anyway
    would give the same numbers, so only this says inference does not pay for training."""
    from lstm_triton import ops

    calls = []
    real = ops._rnn_layer_impl  # what every eager road runs (rnn.py's and plain_call.py's)

    def spy(*args):
        out = real(*args)
        save = args[12]  # rnn_layer's `save` (issue 18's variant masks trail it)
        calls.append((save, sum(t.numel() for t in out[3:])))
        return out

    monkeypatch.setattr(ops, "_rnn_layer_impl", spy)
    module, _ = twin_modules(cell, 3, 5, num_layers=2, bidirectional=True, backend=backend)
    x = torch.randn(4, 2, 3)
    with torch.no_grad():
        module(x)
    module.requires_grad_(False)
    module(x)  # grad mode on, but nothing requires grad
    assert len(calls) == 8 and all(save is False and n == 0 for save, n in calls), calls
    calls.clear()
    module.requires_grad_(True)
    module(x)
    assert len(calls) == 4 and all(save is True and n > 0 for save, n in calls), calls
