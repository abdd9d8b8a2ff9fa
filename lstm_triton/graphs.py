"""CUDA-graph replay of a whole stepwise layer call: host cost O(1) per call, not O(T).

A stepwise layer launches a GEMM and a Triton kernel per timestep; at small sizes the
host's Python per step is the speed (issue 17). On CUDA, the eager path (ops.rnn_layer_fast)
runs a stepwise forward or backward through `run`: the first call of a key runs plainly
(it compiles the kernels and creates cuBLAS's handles, which a capture may not do) and then
captures the same call on static buffers; later calls copy their tensors into the static
inputs, replay the graph, and return clones of the static outputs.

  key      the function, its non-tensor arguments (cell, backend, reverse, save, the
           packed batch sizes...) and every tensor argument's shape, strides, dtype and
           device: one graph per (shapes, dtypes, backend, training).
  inputs   every tensor argument is copied into its static buffer at each replay,
           weights included: an optimizer step (in place) or new weight tensors are seen,
           and nothing captured depends on a caller's tensor staying alive.
  outputs  cloned at each replay: the next replay overwrites the static ones, and a
           caller may hold the previous call's outputs (or, training, its saved tensors
           for a backward that has not run yet).
  bound    at most MAX_GRAPHS graphs, least recently used dropped first.
  fallback plain launches when already inside a capture (the caller's graph records
           them), when graphs are off (ENABLED), off CUDA, and for any key whose capture
           failed (warned once per reason: FallbackWarning).

On the CPU, `SIMULATE = True` (the tests) replaces torch.cuda.CUDAGraph by SimulatedGraph,
which records the call during "capture" (graph_capture.capturing says True inside it) and
reruns it on the static buffers at each replay: the key, the buffers, the cache bound,
weight updates and the fallbacks are what it checks; tests/test_gpu.py checks real graphs.
"""
import contextlib
from collections import OrderedDict

import torch

from .dispatch import warn_fallback
from .kernels import graph_capture

# Opt-in until a GPU run has checked it (tests/test_gpu.py, in the first-contact command's
# tests phase): so far only the CPU simulation has run it, and its static buffers double
# the memory of each captured call (inputs, outputs and saved activations).
ENABLED = False
SIMULATE = False  # the CPU tests: capture and replay simulated (SimulatedGraph)
MAX_GRAPHS = 16

_graphs = OrderedDict()  # key -> _Graphed, least recently used first
_uncapturable = set()  # keys whose capture failed: plain launches from then on


class SimulatedGraph:
    """torch.cuda.CUDAGraph's contract on the CPU: `capture()` records `fn` on the static
    inputs (with graph_capture.capturing True, as on a capturing stream), `replay()`
    recomputes into the same static output tensors."""

    def __init__(self):
        self.fn = None

    @contextlib.contextmanager
    def capture(self):
        real = graph_capture.capturing
        graph_capture.capturing = lambda device: True
        try:
            yield
        finally:
            graph_capture.capturing = real

    def replay(self):
        self.fn()


class _Graphed:
    """One captured call: static inputs, the graph, static outputs."""

    def __init__(self, fn, args, skip):
        # tensors copied in at each replay (not `skip`: the packed schedule, keyed by value)
        self.positions = [k for k, a in enumerate(args)
                          if isinstance(a, torch.Tensor) and a is not skip]
        self.static_args = list(args)
        for k in self.positions:
            self.static_args[k] = args[k].clone()
        if SIMULATE:
            self.graph = SimulatedGraph()
            with self.graph.capture():
                self.outputs = fn(*self.static_args)  # the capture's run: outputs allocated

            def rerun():
                for out, new in zip(self.outputs, fn(*self.static_args)):
                    out.copy_(new)
            self.graph.fn = rerun
        else:
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: a backward's capture runs on autograd's device thread, and the
            # default ("global") would make other threads' CUDA calls fail meanwhile
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.outputs = fn(*self.static_args)

    def __call__(self, args):
        for k in self.positions:
            self.static_args[k].copy_(args[k])
        self.graph.replay()
        out = [t.clone() for t in self.outputs]
        return tuple(out) if isinstance(self.outputs, tuple) else out


def _key(fn, args, batch_sizes):
    """fn, its non-tensor arguments, each tensor's (shape, strides, dtype, device), and the
    packed schedule's values (they decide the launches)."""
    parts = [fn, None if batch_sizes is None else tuple(batch_sizes.tolist())]
    for a in args:
        if a is batch_sizes:
            continue
        if isinstance(a, torch.Tensor):
            parts.append((tuple(a.shape), a.stride(), a.dtype, a.device))
        else:
            parts.append(a)
    return tuple(parts)


def _eligible(device) -> bool:
    if not ENABLED:
        return False
    if SIMULATE:
        return not graph_capture.capturing(device)
    return device.type == "cuda" and not torch.cuda.is_current_stream_capturing()


def run(fn, args, device, batch_sizes=None):
    """fn(*args), replayed from a CUDA graph when possible (module docstring).

    batch_sizes: the packed schedule's (T,) CPU tensor among args, or None."""
    if not _eligible(device):
        return fn(*args)
    key = _key(fn, args, batch_sizes)
    if key in _uncapturable:
        return fn(*args)
    graphed = _graphs.get(key)
    if graphed is not None:
        _graphs.move_to_end(key)
        return graphed(args)
    out = fn(*args)  # first use: plain (compiles, warms cuBLAS), then capture for next time
    try:
        graphed = _Graphed(fn, args, batch_sizes)
    except Exception as error:  # a capture the driver or an op refused: stay plain
        _uncapturable.add(key)
        reason = f"{type(error).__name__}: {str(error)[:200]}"
        warn_fallback(f"a stepwise call could not be captured in a CUDA graph ({reason}); "
                      "it launches plainly", key=("graph", reason))
        return out
    _graphs[key] = graphed
    while len(_graphs) > MAX_GRAPHS:
        _graphs.popitem(last=False)
    return out


def clear():
    """Drop every captured graph (and the record of captures that failed)."""
    _graphs.clear()
    _uncapturable.clear()
