"""Autograd beyond one backward: double backward (create_graph=True), forward-mode AD
(torch.autograd.forward_ad, torch.func.jvp) and torch.func transforms (grad of a
functional_call) give torch's numbers. The custom ops have no forward-mode formula and
no derivative of their backward, so these run the pure-PyTorch reference math
(rnn.needs_reference, ops._differentiable_backward); a plain backward still runs the
kernels, and so do batched gradients (is_grads_batched, jacobian/hessian with
vectorize=True) and torch.func.vmap alone: one op call per vmapped member."""
import warnings

import pytest
import torch
from rnn_testing import DEVICE, KERNEL_BACKENDS, assert_close, twin_modules
from torch.autograd import forward_ad

from lstm_triton import (FallbackWarning, TritonGRU, TritonGRUCell, TritonLSTM, TritonLSTMCell,
                         reference)

I, H = 3, 4
F64 = torch.float64


def modules(cell, backend):
    return twin_modules(cell, I, H, num_layers=2, bidirectional=True, dtype=F64,
                        backend=backend)


def output(module, x):
    return module(x)[0]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_double_backward_of_a_gradient_penalty_matches_torch(cell, backend):
    module, oracle = modules(cell, backend)
    x = torch.randn(5, 2, I, dtype=F64, requires_grad=True)

    def penalty_grads(rnn):
        out, finals = rnn(x)
        loss = out.pow(2).sum() + sum(f.sum() for f in (finals if cell == "lstm" else [finals]))
        dx, = torch.autograd.grad(loss, x, create_graph=True)
        return torch.autograd.grad(dx.pow(2).sum(), [x, *rnn.parameters()])

    for k, (got, want) in enumerate(zip(penalty_grads(module), penalty_grads(oracle))):
        assert_close(got, want, F64, f"second-order gradient {k}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forward_mode_ad_matches_torch_and_says_it_runs_the_reference(cell, backend,
                                                                     monkeypatch):
    monkeypatch.setattr("lstm_triton.dispatch._warned", set())
    module, oracle = modules(cell, backend)
    x, v = torch.randn(5, 2, I, dtype=F64), torch.randn(5, 2, I, dtype=F64)
    with pytest.warns(FallbackWarning, match="forward-mode AD"):
        _, tangent = torch.func.jvp(lambda t: output(module, t), (x,), (v,))
    _, want = torch.func.jvp(lambda t: output(oracle, t), (x,), (v,))
    assert want.abs().max() > 1e-3  # a zero tangent (what jvp gave before) would fail
    assert_close(tangent, want, F64, "jvp tangent")
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(x, v)
        tangent = forward_ad.unpack_dual(output(module, dual)).tangent
    assert_close(tangent, want, F64, "forward_ad tangent")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_func_grad_of_the_parameters_matches_torch(cell, backend):
    module, oracle = modules(cell, backend)
    x = torch.randn(5, 2, I, dtype=F64)

    def grads(rnn):
        params = dict(rnn.named_parameters())
        loss = lambda p: torch.func.functional_call(rnn, p, (x,))[0].pow(2).sum()  # noqa: E731
        return torch.func.grad(loss)(params)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        got = grads(module)
    want = grads(oracle)
    for name in want:
        assert_close(got[name], want[name], F64, name)


@pytest.mark.parametrize("cls", [TritonLSTMCell, TritonGRUCell])
def test_cells_jvp_matches_torch(cls):
    cell = cls(I, H, dtype=F64, device=DEVICE, backend="stepwise")
    oracle = (torch.nn.LSTMCell if cls is TritonLSTMCell else torch.nn.GRUCell)(I, H, dtype=F64)
    oracle.load_state_dict(cell.state_dict())
    x, v = torch.randn(2, I, dtype=F64), torch.randn(2, I, dtype=F64)
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        _, got = torch.func.jvp(lambda t: first(cell(t)), (x,), (v,))
    _, want = torch.func.jvp(lambda t: first(oracle(t)), (x,), (v,))
    assert_close(got, want, F64, "cell jvp tangent")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_plain_backward_runs_the_kernels_not_the_reference(cell, monkeypatch):
    def forbidden(*args):
        raise AssertionError("a plain forward/backward ran the reference layer")

    monkeypatch.setattr(reference, "layer", forbidden)
    module, oracle = modules(cell, "stepwise")
    x = torch.randn(5, 2, I, dtype=F64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        dx, = torch.autograd.grad(output(module, x).pow(2).sum(), x)
    want, = torch.autograd.grad(output(oracle, x).pow(2).sum(), x)
    assert_close(dx, want, F64, "dx")


# Batched gradients (issue 20): autograd runs the backward under vmap, one op call per
# member through the kernels (lstm_triton/batching.py). torch's own modules serve as oracle.
ALL_CLASSES = [pytest.param(c, id=c.__name__) for c in
               (TritonLSTM, TritonGRU, TritonLSTMCell, TritonGRUCell)]
TORCH_CLASSES = {TritonLSTM: torch.nn.LSTM, TritonGRU: torch.nn.GRU,
                 TritonLSTMCell: torch.nn.LSTMCell, TritonGRUCell: torch.nn.GRUCell}


def twins(cls, backend, input_size=I):
    """(ours, torch's) in float64 on the same weights; the RNNs one bidirectional layer."""
    kwargs = {} if cls in (TritonLSTMCell, TritonGRUCell) else dict(bidirectional=True)
    module = cls(input_size, H, dtype=F64, device=DEVICE, backend=backend, **kwargs)
    oracle = TORCH_CLASSES[cls](input_size, H, dtype=F64, device=DEVICE, **kwargs)
    oracle.load_state_dict(module.state_dict())
    return module, oracle


def first_output(module, x):
    out = module(x)
    return out[0] if isinstance(out, tuple) else out  # RNN output, LSTMCell h, GRUCell h


def an_input(cls, *shape):
    """(T, B, ...) for the RNNs, (B, ...) for the cells."""
    return torch.randn(*(shape[1:] if cls in (TritonLSTMCell, TritonGRUCell) else shape),
                       dtype=F64, device=DEVICE, requires_grad=True)


@pytest.fixture
def kernels_only(monkeypatch):
    """Fail if the call runs the reference layer or falls back with a warning."""
    def forbidden(*args):
        raise AssertionError("a batched call ran the reference layer instead of the kernels")

    monkeypatch.setattr(reference, "layer", forbidden)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        yield


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_is_grads_batched_and_vectorized_jacobian_match_torch(cls, backend, kernels_only):
    module, oracle = twins(cls, backend)
    x = an_input(cls, 3, 2, I)
    out = first_output(module, x)
    cotangents = torch.randn(3, *out.shape, dtype=F64, device=DEVICE)
    got = torch.autograd.grad(out, [x, *module.parameters()], cotangents, is_grads_batched=True)
    want = torch.autograd.grad(first_output(oracle, x), [x, *oracle.parameters()], cotangents,
                               is_grads_batched=True)
    for (name, _), g, w in zip([("x", None), *oracle.named_parameters()], got, want):
        assert g.shape == w.shape
        assert_close(g, w, F64, f"is_grads_batched gradient of {name}")
    # vectorize=True vmaps one backward per output element: keep the outputs few
    got = torch.autograd.functional.jacobian(lambda t: first_output(module, t).sum(-1), x,
                                             vectorize=True)
    want = torch.autograd.functional.jacobian(lambda t: first_output(oracle, t).sum(-1), x,
                                              vectorize=True)
    assert_close(got, want, F64, "jacobian(vectorize=True)")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_vectorized_hessian_matches_torch(cls, backend):
    module, oracle = twins(cls, backend, input_size=2)
    x = an_input(cls, 2, 1, 2).detach()

    def hessian(rnn):
        loss = lambda t: first_output(rnn, t).pow(2).sum()  # noqa: E731
        return torch.autograd.functional.hessian(loss, x, vectorize=True)

    want = hessian(oracle)
    assert want.abs().max() > 1e-3
    assert_close(hessian(module), want, F64, "hessian(vectorize=True)")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_func_vmap_over_the_modules_runs_the_kernels_and_matches_a_loop(cls, backend,
                                                                       kernels_only):
    """torch's own modules have no batching rule (aten::lstm / gru / lstm_cell under vmap
    raise), so the oracle is a Python loop over the vmapped dimension with torch's module.
    A gradient taken outside vmap flows back through each member's kernels."""
    module, oracle = twins(cls, backend)
    xs = torch.randn(3, *an_input(cls, 2, 2, I).shape, dtype=F64, device=DEVICE)
    xs_ours, xs_torch = xs.clone().requires_grad_(), xs.clone().requires_grad_()
    got = torch.func.vmap(lambda t: first_output(module, t), in_dims=1)(xs_ours.movedim(0, 1))
    want = torch.stack([first_output(oracle, t) for t in xs_torch])
    assert_close(got, want, F64, "vmap output")
    weights = torch.randn_like(want)
    got_grads = torch.autograd.grad((got * weights).sum(), [xs_ours, *module.parameters()])
    want_grads = torch.autograd.grad((want * weights).sum(), [xs_torch, *oracle.parameters()])
    for (name, _), g, w in zip([("xs", None), *oracle.named_parameters()], got_grads,
                               want_grads):
        assert_close(g, w, F64, f"gradient through vmap of {name}")


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_func_vmap_over_autograd_grad_uses_the_backward_ops_batching_rule(cls, kernels_only):
    """torch.func.vmap (not autograd's legacy vmap) over a backward: the backward op's own
    batching rule runs, here with the cotangents batched along dimension 1."""
    module, oracle = twins(cls, "stepwise")
    x = an_input(cls, 3, 2, I)
    out = first_output(module, x)
    cotangents = torch.randn(out.shape[0], 3, *out.shape[1:], dtype=F64, device=DEVICE)
    got = torch.func.vmap(lambda v: torch.autograd.grad(out, x, v, retain_graph=True)[0],
                          in_dims=1)(cotangents)
    want_out = first_output(oracle, x)
    want = torch.stack([torch.autograd.grad(want_out, x, v, retain_graph=True)[0]
                        for v in cotangents.unbind(1)])
    assert_close(got, want, F64, "vmap over autograd.grad")
