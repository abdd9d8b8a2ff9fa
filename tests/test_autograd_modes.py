"""Autograd beyond one backward: double backward (create_graph=True), forward-mode AD
(torch.autograd.forward_ad, torch.func.jvp) and torch.func transforms (grad of a
functional_call) give torch's numbers. The custom ops have no forward-mode formula and
no derivative of their backward, so these run the pure-PyTorch reference math
(rnn.needs_reference, ops._differentiable_backward); a plain backward still runs the
kernels."""
import warnings

import pytest
import torch
from rnn_testing import DEVICE, KERNEL_BACKENDS, assert_close, twin_modules
from torch.autograd import forward_ad

from lstm_triton import FallbackWarning, TritonGRUCell, TritonLSTMCell, reference

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
