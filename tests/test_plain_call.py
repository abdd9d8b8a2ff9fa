"""The common module call's shortest road (lstm_triton/plain_call.py) gives the general
road's bits, forward and every gradient, and serves only the calls it may: everything
else, every error included, takes the general road (rnn._TritonRNNDriver._run)."""
import pytest
import torch

from lstm_triton import TritonGRU, TritonLSTM, plain_call, rnn
from rnn_testing import interpreter_only

pytestmark = interpreter_only


@pytest.fixture
def roads(monkeypatch):
    """Counts of calls served by each road."""
    taken = {"plain": 0, "general": 0}
    real_plain, real_run = plain_call.plain_call, rnn._TritonRNNDriver._run

    def plain(*args):
        out = real_plain(*args)
        taken["plain"] += out is not None
        return out

    def general(self, *args, **kwargs):
        taken["general"] += 1
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(rnn, "plain_call", plain)
    monkeypatch.setattr(rnn._TritonRNNDriver, "_run", general)
    return taken


def outputs_and_grads(module, x, hx):
    """The outputs and the gradients of x, hx and every parameter from fixed cotangents."""
    out, finals = module(x, hx)
    outs = [out] + list(finals if isinstance(finals, tuple) else (finals,))
    gen = torch.Generator().manual_seed(7)
    cotangents = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
    leaves = [x] + list(hx if isinstance(hx, tuple) else (hx,)) + list(module.parameters())
    return outs, torch.autograd.grad(outs, leaves, cotangents)


CASES = [
    pytest.param(TritonLSTM, dict(), "persistent", id="lstm-persistent"),
    pytest.param(TritonLSTM, dict(proj_size=3, num_layers=2, bidirectional=True,
                                  batch_first=True), "stepwise", id="lstm-proj-2x2-batch-first"),
    pytest.param(TritonGRU, dict(num_layers=2, bidirectional=True), "persistent",
                 id="gru-2x2-persistent"),
    pytest.param(TritonGRU, dict(bias=False, dropout=0.5), "auto", id="gru-no-bias-auto"),
]


@pytest.mark.parametrize("cls, options, backend", CASES)
def test_the_plain_road_gives_the_general_roads_bits(cls, options, backend, roads,
                                                     monkeypatch):
    torch.manual_seed(0)
    module = cls(5, 6, backend=backend, **options)
    batch, steps = 3, 4
    n_states = module.num_layers * (2 if module.bidirectional else 1)
    x = torch.randn(batch, steps, 5) if module.batch_first else torch.randn(steps, batch, 5)
    x.requires_grad_(True)
    h0 = torch.randn(n_states, batch, 3 if options.get("proj_size") else 6, requires_grad=True)
    hx = (h0, torch.randn(n_states, batch, 6, requires_grad=True)) if cls is TritonLSTM else h0
    counted = rnn.plain_call
    plain = outputs_and_grads(module, x, hx)
    assert roads == {"plain": 1, "general": 0}
    monkeypatch.setattr(rnn, "plain_call", lambda *args: None)  # the general road alone
    general = outputs_and_grads(module, x, hx)
    assert roads == {"plain": 1, "general": 1}
    for a, b in zip(plain[0] + list(plain[1]), general[0] + list(general[1])):
        assert torch.equal(a, b)
    # with the states the call makes: inference, and training through the weights alone
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            monkeypatch.setattr(rnn, "plain_call", counted)
            first = module(x.detach())
            monkeypatch.setattr(rnn, "plain_call", lambda *args: None)
            second = module(x.detach())
        assert roads == {"plain": 2 + grad, "general": 2 + grad}
        for a, b in zip(torch.utils._pytree.tree_leaves(first),
                        torch.utils._pytree.tree_leaves(second)):
            assert torch.equal(a, b)


def _calls():
    """(name, build the module, its call) of calls the plain road must leave alone."""
    x = torch.randn(4, 2, 5)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [4, 3])
    return [
        ("packed input", lambda: TritonLSTM(5, 6), lambda m: m(packed)),
        ("unbatched input", lambda: TritonLSTM(5, 6), lambda m: m(x[:, 0])),
        ("resets", lambda: TritonGRU(5, 6), lambda m: m(x, resets=torch.zeros(4, 2,
                                                                               dtype=torch.bool))),
        ("layer norm", lambda: TritonLSTM(5, 6, layer_norm=True), lambda m: m(x)),
        ("zoneout", lambda: TritonLSTM(5, 6, zoneout=0.1), lambda m: m(x)),
        ("recurrent dropout", lambda: TritonGRU(5, 6, recurrent_dropout=0.2), lambda m: m(x)),
        ("dropout between layers", lambda: TritonLSTM(5, 6, num_layers=2, dropout=0.3),
         lambda m: m(x)),
        ("autocast", lambda: TritonLSTM(5, 6), lambda m: _autocast(m, x)),
        ("states as a list of one", lambda: TritonLSTM(5, 6),
         lambda m: _raises(m, x, [torch.zeros(1, 2, 6)])),
        ("states of another shape", lambda: TritonGRU(5, 6),
         lambda m: _raises(m, x, torch.zeros(1, 3, 6))),
        ("input of another dtype", lambda: TritonGRU(5, 6),
         lambda m: _raises(m, x.double(), None)),
        ("input of another width", lambda: TritonGRU(5, 6),
         lambda m: _raises(m, torch.randn(4, 2, 4), None)),
        ("the torch backend", lambda: TritonLSTM(5, 6, backend="torch"), lambda m: m(x)),
        ("the reference backend", lambda: TritonLSTM(5, 6, backend="reference"),
         lambda m: m(x)),
        ("forward-mode AD", lambda: TritonGRU(5, 6), lambda m: _forward_ad(m, x)),
    ]


def _autocast(module, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return module(x)


def _raises(module, x, hx):
    with pytest.raises((RuntimeError, ValueError, IndexError)):
        module(x, hx)


def _forward_ad(module, x):
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        return module(fwAD.make_dual(x, torch.randn_like(x)))


@pytest.mark.parametrize("name, build, call", _calls(), ids=[c[0] for c in _calls()])
def test_other_calls_take_the_general_road(name, build, call, roads):
    torch.manual_seed(0)
    call(build())
    assert roads == {"plain": 0, "general": 1}, name


def test_a_registered_weight_of_another_dtype_takes_the_general_road(roads):
    module = TritonLSTM(5, 6)
    module.weight_hh_l0.data = module.weight_hh_l0.data.double()
    module(torch.randn(4, 2, 5))
    assert roads == {"plain": 0, "general": 1}
