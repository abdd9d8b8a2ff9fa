"""The barrier flag checked later (persistent_config.DEFERRED_BARRIER_CHECK, issue 17).

Read at once, a persistent launch's flag waits for the kernel, so the host cannot queue the
next layer's work meanwhile. Deferred, a launch reads nothing back during the call and gives
the same bits; a failed one is loud (NaN outputs, as under a CUDA graph capture), the next
launch warns, and from then on every flag is read at once and a failed launch reruns on
stepwise. The interpreter's plans are not cooperative, so the tests defer by plan.
"""
import collections
import importlib
import warnings
from dataclasses import replace

import pytest
import torch
from rnn_testing import assert_close, outputs_and_grads, twin_modules

from lstm_triton import FallbackWarning, persistent
from lstm_triton.kernels import grid_sync

I, H, T, B = 5, 6, 4, 3


@pytest.fixture
def defer(monkeypatch):
    """defer["on"]: every persistent plan checks its flag later, as a cooperative CUDA plan
    does with the setting on. The process-wide state is the test's own."""
    state = {"on": True}
    real = persistent.persistent_plan

    def plan(*args):
        found, reason = real(*args)
        if found is not None and state["on"]:
            found = replace(found, deferred_check=True)
        return found, reason
    monkeypatch.setattr(persistent, "persistent_plan", plan)
    monkeypatch.setattr(persistent, "_deferred_refused", False)
    monkeypatch.setattr(grid_sync, "_PENDING", collections.deque())
    return state


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_deferred_launch_reads_nothing_back_and_gives_the_same_bits(cell, defer,
                                                                      monkeypatch):
    torch.manual_seed(0)
    module, _ = twin_modules(cell, I, H, num_layers=2, bidirectional=True,
                             backend="persistent")
    x = torch.randn(T, B, I, requires_grad=True)
    weights_out = [torch.randn(T, B, 2 * H)] + [torch.randn(4, B, H)] * 2
    defer["on"] = False
    at_once = outputs_and_grads(module, x, None, weights_out, [x])
    reads, queued = [], []
    real_read, real_queue = grid_sync.barrier_failed, grid_sync._flag_on_host
    monkeypatch.setattr(grid_sync, "barrier_failed", lambda s: reads.append(s) or real_read(s))
    monkeypatch.setattr(grid_sync, "_flag_on_host", lambda s: queued.append(s) or real_queue(s))
    defer["on"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        later = outputs_and_grads(module, x, None, weights_out, [x])
    assert not reads and len(queued) == 8  # 2 layers x 2 directions x (forward, backward)
    for a, b in zip([at_once[0], *at_once[1], *at_once[2]], [later[0], *later[1], *later[2]]):
        assert torch.equal(a, b)
    # every flag but the last launch's was read by the launch after it
    assert len(grid_sync._PENDING) == 1 and grid_sync.deferred_failures() == 0
    assert not grid_sync._PENDING


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_failed_deferred_launch_is_nan_and_the_next_launch_warns_then_reruns(cell, defer,
                                                                             monkeypatch):
    kernels = importlib.import_module(f"lstm_triton.kernels.persistent_{cell}")
    monkeypatch.setattr(kernels, "new_sync_state", grid_sync.failed_sync_state)
    new_empty = torch.Tensor.new_empty  # NaN-poisoned by conftest: finite here, so that
    monkeypatch.setattr(torch.Tensor, "new_empty",  # any NaN comes from launch_failed
                        lambda self, *size, **kw: new_empty(self, *size, **kw).fill_(7.0))
    torch.manual_seed(0)
    module, oracle = twin_modules(cell, I, H, backend="persistent")
    x = torch.randn(T, B, I)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)  # nothing was read back yet
        out, finals = module(x)
    for tensor in (out,) + (finals if isinstance(finals, tuple) else (finals,)):
        assert tensor.isnan().all()
    with torch.no_grad(), pytest.warns(FallbackWarning) as record:
        out, finals = module(x)
    said = [str(w.message) for w in record]
    assert persistent.DEFERRED_FAILED in said[0] and persistent.BARRIER_FAILED in said[1]
    assert persistent._deferred_refused
    want_out, want_finals = oracle(x.double())  # rerun on stepwise: right again
    assert_close(out, want_out, torch.float32, "output")
    for got, want in zip(finals if isinstance(finals, tuple) else (finals,),
                         want_finals if isinstance(want_finals, tuple) else (want_finals,)):
        assert_close(got, want, torch.float32, "final state")
