"""The drop-in contract: TritonLSTM / TritonGRU are nn.LSTM / nn.GRU to their users."""
import math

import pytest
import torch
from torch import nn

from lstm_triton import TritonGRU, TritonLSTM
from lstm_triton import dispatch
from rnn_testing import interpreter_only

PAIRS = [pytest.param(TritonLSTM, nn.LSTM, {"proj_size": 3}, id="lstm-proj"),
         pytest.param(TritonLSTM, nn.LSTM, {}, id="lstm"),
         pytest.param(TritonGRU, nn.GRU, {}, id="gru")]
OPTIONS = dict(num_layers=2, bidirectional=True, bias=True, batch_first=True, dropout=0.25)


@pytest.mark.parametrize("ours, theirs, extra", PAIRS)
def test_same_seed_same_parameters_and_same_following_draw(ours, theirs, extra):
    torch.manual_seed(123)
    a = ours(5, 6, **OPTIONS, **extra)
    after_a = torch.randn(4)
    torch.manual_seed(123)
    b = theirs(5, 6, **OPTIONS, **extra)
    after_b = torch.randn(4)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(after_a, after_b)


@pytest.mark.parametrize("ours, theirs, extra", PAIRS)
def test_state_dict_moves_both_ways(ours, theirs, extra):
    a, b = ours(5, 6, **OPTIONS, **extra), theirs(5, 6, **OPTIONS, **extra)
    b.load_state_dict(a.state_dict())
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    c = ours(5, 6, **OPTIONS, **extra)
    c.load_state_dict(theirs(5, 6, **OPTIONS, **extra).state_dict())  # strict: same keys


@pytest.mark.parametrize("ours, theirs, extra", PAIRS)
def test_is_a_torch_module_with_its_repr_and_conversions(ours, theirs, extra):
    m = ours(5, 6, **extra, backend="stepwise")
    assert isinstance(m, theirs)
    assert repr(m).startswith(type(m).__name__ + "(5, 6") and "backend='stepwise'" in repr(m)
    m.flatten_parameters()
    m = m.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    out = m(torch.randn(3, 2, 5, dtype=torch.float64))[0]
    assert out.dtype == torch.float64


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        TritonLSTM(3, 4, backend="cudnn")


def test_triton_backends_on_cpu_without_interpreter_say_what_to_do(monkeypatch):
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    cpu = torch.device("cpu")
    assert dispatch.choose_backend("auto", cpu) == "torch"  # torch's own CPU kernels
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dispatch.choose_backend("stepwise", cpu)


@interpreter_only
def test_auto_runs_the_kernels_under_the_interpreter():
    assert dispatch.choose_backend("auto", torch.device("cpu")) == "stepwise"


def test_allocations_are_poisoned_in_tests():
    """The harness itself: an element a kernel never writes reads as NaN."""
    assert math.isnan(torch.empty(3)[1].item())
    assert math.isnan(torch.zeros(2).new_empty(4)[0].item())


@interpreter_only
@pytest.mark.parametrize("backend", ["stepwise", "persistent"])
@pytest.mark.parametrize("ours, theirs, extra", PAIRS)
def test_a_weight_set_as_a_plain_tensor_is_the_one_used(ours, theirs, extra, backend):
    """What a WeightDrop-style wrapper does: it removes a registered weight and sets a plain
    tensor of that name in its place. Each call reads the weights by name, so the module
    runs the tensor set, as getattr would find it (torch's own module needs its flat
    weights refreshed first)."""
    torch.manual_seed(0)
    a, b = ours(5, 6, num_layers=2, **extra, backend=backend), theirs(5, 6, num_layers=2, **extra)
    b.load_state_dict(a.state_dict())
    for module in (a, b):
        weight = module._parameters.pop("weight_hh_l1")
        setattr(module, "weight_hh_l1", weight.detach() * 0.5)  # lands in the __dict__
    b._init_flat_weights()
    x = torch.randn(4, 3, 5)
    out, _ = a(x)
    torch.testing.assert_close(out, b(x)[0], rtol=1e-5, atol=1e-5)
    a.weight_hh_l1 = a.weight_hh_l1 * 2  # the plain tensor changed: the call sees it
    assert not torch.allclose(a(x)[0], out)
