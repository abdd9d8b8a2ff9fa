"""CUDA graph capture: inside a capture, a call neither reads the device back on the host
nor copies from pageable host memory, and a failed persistent launch is loud (NaN), never
silently wrong.

On the CPU a capture is simulated: `graph_capture.capturing` says True and reading the
barrier flag on the host fails the test. tests/test_gpu.py captures and replays real graphs.
"""
import warnings

import pytest
import torch
from rnn_testing import DEVICE, assert_close, outputs_and_grads, twin_modules
from torch.nn.utils.rnn import pack_sequence

from lstm_triton import FallbackWarning
from lstm_triton.kernels import graph_capture, grid_sync, persistent_config
from lstm_triton.schedule import Schedule

I, H = 5, 6


@pytest.fixture
def capture(monkeypatch):
    """Every call below runs as if a CUDA graph were being captured."""
    def host_read(sync_state):
        raise AssertionError("the barrier flag was read on the host during a capture")

    monkeypatch.setattr(graph_capture, "capturing", lambda device: True)
    monkeypatch.setattr(grid_sync, "barrier_failed", host_read)


def test_failed_barrier_under_capture_fills_the_outputs_with_nan_on_the_device(capture):
    outputs = [torch.ones(3, 4), None, torch.zeros(5, dtype=torch.float64)]
    assert not grid_sync.launch_failed(grid_sync.failed_sync_state(DEVICE), outputs)
    assert all(out.isnan().all() for out in outputs if out is not None)
    met = [torch.ones(3, 4)]
    assert not grid_sync.launch_failed(grid_sync.new_sync_state(DEVICE), met)
    assert torch.equal(met[0], torch.ones(3, 4))


def test_outside_a_capture_a_failed_barrier_is_reported_to_the_host_for_the_fallback():
    outputs = [torch.ones(2)]
    assert grid_sync.launch_failed(grid_sync.failed_sync_state(DEVICE), outputs)
    assert not grid_sync.launch_failed(grid_sync.new_sync_state(DEVICE), outputs)
    assert torch.equal(outputs[0], torch.ones(2))  # the fallback reruns; nothing is filled


@pytest.mark.parametrize("backend", ["persistent", "stepwise"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_calls_under_capture_match_torch_padded_and_packed(cell, backend, capture):
    """Forward and every gradient, a padded batch and a packed bidirectional one (whose
    schedule and dW_hh row index go through graph_capture.host_to_device)."""
    module, oracle = twin_modules(cell, I, H, bidirectional=True, dtype=torch.float64,
                                  backend=backend)
    x = torch.randn(4, 3, I, dtype=torch.float64, requires_grad=True)
    packed = pack_sequence([torch.randn(n, I, dtype=torch.float64) for n in (5, 1, 3)],
                           enforce_sorted=False)
    for batch in (x, packed):
        data = batch.data if hasattr(batch, "batch_sizes") else batch
        n_states = 2 if cell == "lstm" else 1
        weights_out = [torch.randn(data.shape[:-1] + (2 * H,), dtype=torch.float64)] + \
                      [torch.randn(2, 3, H, dtype=torch.float64)] * n_states
        with warnings.catch_warnings():
            warnings.simplefilter("error", FallbackWarning)
            got = outputs_and_grads(module, batch, None, weights_out, [])
        want = outputs_and_grads(oracle, batch, None, weights_out, [])
        out, want_out = (o.data if hasattr(o, "batch_sizes") else o for o in (got[0], want[0]))
        assert_close(out, want_out, torch.float64, "output")
        for k, (g, w) in enumerate(zip(list(got[1]) + list(got[2]),
                                       list(want[1]) + list(want[2]))):
            assert_close(g, w, torch.float64, f"final state / gradient {k}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_failed_persistent_launch_under_capture_returns_nan_not_a_fallback(cell, capture,
                                                                          monkeypatch):
    """Inside a graph the host cannot rerun a launch on stepwise: its outputs are NaN."""
    kernels = __import__(f"lstm_triton.kernels.persistent_{cell}", fromlist=["x"])
    monkeypatch.setattr(kernels, "new_sync_state", grid_sync.failed_sync_state)
    new_empty = torch.Tensor.new_empty  # NaN-poisoned by conftest: make it finite here, so
    monkeypatch.setattr(torch.Tensor, "new_empty",  # any NaN comes from launch_failed
                        lambda self, *size, **kw: new_empty(self, *size, **kw).fill_(7.0))
    module, _ = twin_modules(cell, I, H, backend="persistent")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        out, finals = module(torch.randn(4, 3, I))
    for tensor in (out,) + (finals if isinstance(finals, tuple) else (finals,)):
        assert tensor.isnan().all()


def test_a_padded_schedule_needs_no_tensors_and_a_packed_one_is_copied(monkeypatch):
    """The kernels compute a padded batch's rows (PADDED), so nothing is made or copied
    for it; a packed batch's sizes and offsets are copied (host_to_device, which a capture
    replaces by a device fill)."""
    copies = []
    monkeypatch.setattr(persistent_config, "host_to_device",
                        lambda host, device: copies.append(host) or host.to(device))
    padded = Schedule.build(None, 12, 3, reverse=False)
    assert persistent_config.schedule_tensors(padded, DEVICE) == (None, None) and not copies
    packed = Schedule.build(torch.tensor([3, 2, 2, 1]), 8, 3, reverse=True)
    bs, off = persistent_config.schedule_tensors(packed, DEVICE)
    assert bs.tolist() == [3, 2, 2, 1] and off.tolist() == [0, 3, 5, 7] and len(copies) == 2
    empty = Schedule.build(None, 0, 3, reverse=False)  # no steps: padded, nothing to read
    assert persistent_config.schedule_tensors(empty, DEVICE) == (None, None)
