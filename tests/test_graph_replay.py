"""CUDA-graph replay of stepwise calls (lstm_triton/graphs.py), simulated on the CPU.

With graphs.SIMULATE a "capture" records the call on static buffers and a replay reruns
it there, so what is checked is the machinery: one graph per key, new inputs copied in,
outputs cloned out (a later replay never changes an earlier result), weights updated in
place seen, the cache bound, and plain launches inside an outer capture or after a failed
capture. Every replayed result must be the same bits as the plain call.
tests/test_gpu.py replays real CUDA graphs.
"""
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from lstm_triton import FallbackWarning, TritonGRU, TritonLSTM, graphs
from lstm_triton.kernels import graph_capture

I, H = 3, 5


@pytest.fixture
def simulated(monkeypatch):
    """Graph replay on, simulated; a fresh cache; replays counted."""
    monkeypatch.setattr(graphs, "SIMULATE", True)
    monkeypatch.setattr(graphs, "ENABLED", True)  # opt-in
    graphs.clear()
    replays = []
    real = graphs._Graphed.__call__

    def counted(self, args):
        replays.append(self)
        return real(self, args)

    monkeypatch.setattr(graphs._Graphed, "__call__", counted)
    yield replays
    graphs.clear()


def plain(fn):
    """fn() with graph replay off: the reference bits."""
    graphs.ENABLED = False
    try:
        return fn()
    finally:
        graphs.ENABLED = True


def train_step(module, x):
    """Outputs, final states and the gradients of the input and every parameter."""
    module.zero_grad()
    x = x.detach().requires_grad_()
    out, finals = module(x)
    finals = finals if isinstance(finals, tuple) else (finals,)
    data = out.data if hasattr(out, "batch_sizes") else out
    loss = data.pow(2).sum() + sum(f.sin().sum() for f in finals)
    loss.backward()
    return [data.detach(), *(f.detach() for f in finals), x.grad,
            *(p.grad.clone() for p in module.parameters())]


MODULES = [
    pytest.param(lambda: TritonLSTM(I, H, backend="stepwise"), id="lstm"),
    pytest.param(lambda: TritonLSTM(I, H, proj_size=2, bidirectional=True, backend="stepwise"),
                 id="lstm-proj-bidirectional"),
    pytest.param(lambda: TritonGRU(I, H, num_layers=2, backend="stepwise"), id="gru-2-layers"),
]


@pytest.mark.parametrize("make", MODULES)
def test_replayed_training_calls_give_the_plain_calls_bits(make, simulated):
    """Three training steps with fresh inputs: the first captures (forward and backward),
    the next two replay; each equals the plain call bit for bit."""
    module = make()
    for step in range(3):
        x = torch.randn(4, 2, I)
        got = train_step(module, x)
        want = plain(lambda: train_step(module, x))
        for a, b in zip(got, want):
            assert torch.equal(a, b), step
    assert len(simulated) >= 2 * module.num_layers  # the later steps replayed


def test_packed_batches_replay_per_schedule(simulated):
    """The packed schedule's values are part of the key: another set of lengths is another
    graph, the same lengths replay."""
    module = TritonGRU(I, H, backend="stepwise")

    def batch(lengths):
        return pack_sequence([torch.randn(n, I) for n in lengths])

    for lengths in ((4, 2, 1), (4, 2, 1), (3, 3)):
        x = batch(lengths)
        with torch.no_grad():
            got = module(x)[0].data
        want = plain(lambda: module(x)[0].data)
        assert torch.equal(got, want), lengths
    assert len(graphs._graphs) == 2 and len(simulated) == 1


def test_weights_changed_in_place_are_seen_by_the_replay(simulated):
    """An optimizer step between calls updates the weights in place; the replay uses them."""
    module = TritonLSTM(I, H, backend="stepwise")
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    x = torch.randn(4, 2, I)
    for _ in range(3):
        got = train_step(module, x)
        want = plain(lambda: train_step(module, x))
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        opt.step()
    assert simulated


def test_an_earlier_result_survives_later_replays(simulated):
    """Outputs are cloned out of the static buffers: two forwards before one backward (a
    decoder unrolled by hand) keep their own outputs and saved tensors."""
    module = TritonGRU(I, H, backend="stepwise")
    xs = [torch.randn(3, 2, I) for _ in range(4)]
    with torch.no_grad():
        module(xs[0])  # capture
    outs = [module(x)[0] for x in xs[1:]]  # training forwards: replays of another key
    loss = sum(o.pow(2).sum() for o in outs)
    loss.backward()
    got = [o.detach() for o in outs] + [p.grad.clone() for p in module.parameters()]
    module.zero_grad()

    def reference():
        outs = [module(x)[0] for x in xs[1:]]
        sum(o.pow(2).sum() for o in outs).backward()
        return [o.detach() for o in outs] + [p.grad.clone() for p in module.parameters()]
    for a, b in zip(got, plain(reference)):
        assert torch.equal(a, b)
    assert simulated


def test_the_cache_is_bounded_least_recently_used_first(simulated, monkeypatch):
    monkeypatch.setattr(graphs, "MAX_GRAPHS", 2)
    module = TritonGRU(I, H, backend="stepwise")
    with torch.no_grad():
        for steps in (2, 3, 4, 2):
            module(torch.randn(steps, 1, I))
    assert len(graphs._graphs) == 2
    lengths = sorted(key[4][0][0] for key in graphs._graphs)  # x's rows = steps * batch
    assert lengths == [2, 4], lengths  # T=3, used least recently, was dropped


def test_inside_an_outer_capture_launches_are_plain(simulated, monkeypatch):
    """A caller capturing its own graph records our launches: no graph of ours inside."""
    monkeypatch.setattr(graph_capture, "capturing", lambda device: True)
    module = TritonLSTM(I, H, backend="stepwise")
    with torch.no_grad():
        for _ in range(2):
            module(torch.randn(3, 2, I))
    assert not graphs._graphs and not simulated


def test_a_failed_capture_falls_back_to_plain_launches_once_warned(simulated, monkeypatch):
    def refuse(self):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs.SimulatedGraph, "capture", refuse)
    module = TritonGRU(I, H, backend="stepwise")
    x = torch.randn(3, 2, I)
    with pytest.warns(FallbackWarning, match="could not be captured"), torch.no_grad():
        first = module(x)[0]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error", FallbackWarning)
        again = module(x)[0]  # the key is known uncapturable: plain, no second warning
    assert torch.equal(first, again) and not graphs._graphs and not simulated
