"""torch's own samples for its RNN modules, run on ours.

`torch.testing._internal.common_modules.module_db` holds the constructor arguments and
forward inputs torch's test_modules.py tests nn.LSTM, nn.GRU, nn.LSTMCell and nn.GRUCell
with (two-layer, bias or not, bidirectional, batch_first, projections, given or default
states; every sample is unbatched). For each sample, on each backend and in torch's
train and eval modes, our module built on the same weights as torch's (load_state_dict)
must give torch's output and every gradient (inputs and parameters), the same on
non-contiguous inputs, and pass gradcheck in float64 with batched gradients on (autograd
runs the backward under vmap there: lstm_triton/batching.py).

Cost: the interpreter runs each step of each layer-direction as launches, persistent
with a single program, so the default run takes a chosen subset (the richest and the
plainest sample of each RNN, one sample of each cell; gradcheck in train mode, in fast
mode, over the inputs). `-m slow` runs every sample in both modes, with gradcheck over
the inputs and the parameters.
"""
import warnings

import pytest
import torch
from rnn_testing import assert_close

from lstm_triton import FallbackWarning, TritonGRU, TritonGRUCell, TritonLSTM, TritonLSTMCell

# torch's test-suite helpers need the `expecttest` package (scripts/setup.sh installs it).
common_modules = pytest.importorskip("torch.testing._internal.common_modules")

F64 = torch.float64
OURS = {torch.nn.LSTM: TritonLSTM, torch.nn.GRU: TritonGRU,
        torch.nn.LSTMCell: TritonLSTMCell, torch.nn.GRUCell: TritonGRUCell}
INFOS = {info.module_cls: info for info in common_modules.module_db if info.module_cls in OURS}
BACKENDS = ["stepwise", "persistent", "reference"]


def samples(torch_cls, training=True):
    """torch's samples for `torch_cls`: float64 inputs that require grad."""
    info = INFOS[torch_cls]
    return info.module_inputs_func(info, device="cpu", dtype=F64, requires_grad=True,
                                   training=training)


def describe(torch_cls, sample):
    """A readable id: LSTM(I2,H3,L2,proj2,bias,bidir,batch_first)+hx."""
    kwargs = dict(zip(("input_size", "hidden_size"), sample.constructor_input.args))
    kwargs.update(sample.constructor_input.kwargs)
    parts = [f"I{kwargs['input_size']}", f"H{kwargs['hidden_size']}"]
    if "num_layers" in kwargs:
        parts.append(f"L{kwargs['num_layers']}")
    if kwargs.get("proj_size"):
        parts.append(f"proj{kwargs['proj_size']}")
    flags = [("bias", True), ("bidirectional", False), ("batch_first", False)]
    parts += [name[:5] if name == "bidirectional" else name
              for name, default in flags if kwargs.get(name, default)]
    if "bias" in kwargs and not kwargs["bias"]:
        parts.append("no_bias")
    states = "+hx" if len(sample.forward_input.args) > 1 else ""
    return f"{torch_cls.__name__}({','.join(parts)}){states}"


def _richness(torch_cls, sample):
    kwargs = sample.constructor_input.kwargs
    return (sum(bool(kwargs.get(k)) for k in ("bias", "bidirectional", "batch_first",
                                              "proj_size"))
            + len(sample.forward_input.args))


def _params():
    """(class, sample index) for every sample; all but a chosen few are slow: per RNN the
    richest and the plainest sample, per cell the first (its second is the same module:
    bias=True is the default). Also the ids of the richest RNN samples."""
    params, richest = [], set()
    for torch_cls in OURS:
        found = list(samples(torch_cls))
        ranked = sorted(range(len(found)), key=lambda k: _richness(torch_cls, found[k]))
        chosen = {0} if torch_cls in (torch.nn.LSTMCell, torch.nn.GRUCell) else {
            ranked[0], ranked[-1]}
        seen = {}
        for k, sample in enumerate(found):
            name = describe(torch_cls, sample)
            seen[name] = seen.get(name, 0) + 1
            name += f"#{seen[name]}" if seen[name] > 1 else ""
            marks = () if k in chosen else (pytest.mark.slow,)
            params.append(pytest.param(torch_cls, k, id=name, marks=marks))
            if k == ranked[-1] and len(chosen) > 1:
                richest.add(name)
    return params, richest


SAMPLES, RICHEST = _params()
MODES = [pytest.param(True, id="train"), pytest.param(False, id="eval")]


def build(torch_cls, index, backend, training):
    """(ours, torch's) on the same weights in the same mode, and the sample's inputs."""
    sample = list(samples(torch_cls, training))[index]
    ctor = sample.constructor_input
    oracle = torch_cls(*ctor.args, **ctor.kwargs).to(F64).train(training)
    module = OURS[torch_cls](*ctor.args, **ctor.kwargs, backend=backend).to(F64)
    module.load_state_dict(oracle.state_dict())
    return module.train(training), oracle, sample.forward_input.args


def leaves(tree):
    return torch.utils._pytree.tree_leaves(tree)


def fresh(args, transform=lambda t: t):
    """The same inputs as new leaves (each module gets its own gradients)."""
    return torch.utils._pytree.tree_map(
        lambda t: transform(t.detach().clone()).requires_grad_(), args)


def noncontiguous(t):
    """t's values in a tensor whose last dimension has stride 2."""
    wide = torch.randn(*t.shape, 2, dtype=t.dtype)
    wide[..., 0] = t
    view = wide[..., 0]
    assert not view.is_contiguous() or t.numel() <= 1
    return view


def forward(module, args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)  # the reference backend says so
        return leaves(module(*args))


def gradients(module, args, outputs, weights):
    """Of a loss touching every output (weighted at random): the inputs, then parameters."""
    loss = sum((o * w).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(loss, leaves(args) + list(module.parameters()))


def assert_matches(module, oracle, args, our_args, what):
    oracle_args = fresh(args)
    want = forward(oracle, oracle_args)
    got = forward(module, our_args)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, f"{what} output {k}: shape {g.shape} != {w.shape}"
        assert_close(g, w, F64, f"{what} output {k}")
    weights = [torch.randn_like(w) for w in want]
    names = [f"input {k}" for k in range(len(leaves(args)))] + [
        n for n, _ in oracle.named_parameters()]
    want_grads = gradients(oracle, oracle_args, want, weights)
    got_grads = gradients(module, our_args, got, weights)
    assert len(got_grads) == len(want_grads) == len(names)
    for name, g, w in zip(names, got_grads, want_grads):
        assert_close(g, w, F64, f"{what} gradient of {name}")


@pytest.mark.parametrize("training", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("torch_cls,index", SAMPLES)
def test_outputs_and_every_gradient_match_torch(torch_cls, index, backend, training):
    module, oracle, args = build(torch_cls, index, backend, training)
    assert_matches(module, oracle, args, fresh(args), "contiguous")


def _slow_unless_train(params):
    return [pytest.param(*p.values, id=p.id, marks=(*p.marks, pytest.mark.slow))
            if p.values[0] is False else p for p in params]


def _gradcheck_cases():
    """sample x backend x mode; slow beyond the default subset's train mode, and for the
    richest RNN samples on persistent (~15 s of CPU each under the interpreter)."""
    cases = []
    for sample in SAMPLES:
        for backend in BACKENDS:
            for mode in MODES:
                slow = (any(m.name == "slow" for m in sample.marks) or mode.values[0] is False
                        or (backend == "persistent" and sample.id in RICHEST))
                cases.append(pytest.param(*sample.values, backend, mode.values[0],
                                          id=f"{sample.id}-{backend}-{mode.id}",
                                          marks=(pytest.mark.slow,) if slow else ()))
    return cases


@pytest.mark.parametrize("training", _slow_unless_train(MODES))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("torch_cls,index", SAMPLES)
def test_noncontiguous_inputs_match_torch(torch_cls, index, backend, training):
    module, oracle, args = build(torch_cls, index, backend, training)
    our_args = fresh(args, noncontiguous)
    assert any(not t.is_contiguous() for t in leaves(our_args))
    assert_matches(module, oracle, args, our_args, "non-contiguous")


@pytest.mark.parametrize("torch_cls,index,backend,training", _gradcheck_cases())
def test_gradcheck_with_batched_gradients(torch_cls, index, backend, training, request):
    """gradcheck in float64 with check_batched_grad=True (torch's test_grad), in fast mode
    (a random projection of the Jacobian: the full one costs minutes per sample under
    the interpreter), over the sample's inputs; the slow cases over the parameters too."""
    module, _, args = build(torch_cls, index, backend, training)
    inputs = fresh(args)
    full = request.node.get_closest_marker("slow") is not None
    params = dict(module.named_parameters()) if full else {}
    spec = torch.utils._pytree.tree_structure(inputs)
    n_inputs = len(leaves(inputs))

    def flat_outputs(*tensors):
        call_args = torch.utils._pytree.tree_unflatten(list(tensors[:n_inputs]), spec)
        swapped = dict(zip(params, tensors[n_inputs:]))
        out = torch.func.functional_call(module, swapped, tuple(call_args))
        return torch.cat([o.flatten() for o in leaves(out)])

    tensors = tuple(leaves(inputs)) + tuple(p.detach().clone().requires_grad_()
                                            for p in params.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        assert torch.autograd.gradcheck(flat_outputs, tensors, check_batched_grad=True,
                                        fast_mode=True)
