"""The common TritonLSTM / TritonGRU call by the shortest road (issue 17).

The general road (rnn._TritonRNNDriver._run) serves every input layout, option, mode and
error. At small sizes its Python is a large part of a call's host time: ~25 µs of a
~120 µs one-layer persistent call on the host benchmark (reports/NOTES.md, issue 17's
fourth pass), the checks it makes for cases a common call is not, the per-layer hooks of
options that are off, `auto`'s Workload, a reference test per layer.

`plain_call` serves the call most models make: a 3-D tensor, states as torch takes them
(or none), every weight a registered parameter of the input's dtype and device, no option
beyond torch's own (no layer norm, zoneout, weight or recurrent dropout, no dropout
between layers while training), no autocast, plain eager (no compile, export, trace,
dispatch mode, functorch transform or forward-mode AD), and a Triton backend. It returns
None for anything else, every error included, and the general road then runs as before.
Both roads run the same layer op on the same tensors, so they give the same bits
(tests/test_plain_call.py checks forward and every gradient, and which road runs).
"""
import torch
from torch import Tensor
from torch.autograd import forward_ad

from . import ops
from .dispatch import Workload, choose_backend, triton_can_run

_NAMES = {}  # (layers, directions, bias, proj) -> each layer-direction's weight names


def weight_names(layers, directions, bias, proj):
    """torch's parameter names (weight_ih, weight_hh, bias_ih, bias_hh, weight_hr; None for
    an absent one) of each layer-direction, in order k = layer * directions + direction.
    Made once per shape of module: both roads read the weights by these names each call."""
    key = (layers, directions, bias, proj)
    names = _NAMES.get(key)
    if names is None:
        names = _NAMES[key] = [
            tuple(None if not wanted else f"{name}_l{layer}" + ("_reverse" if d else "")
                  for name, wanted in (("weight_ih", True), ("weight_hh", True),
                                       ("bias_ih", bias), ("bias_hh", bias),
                                       ("weight_hr", proj)))
            for layer in range(layers) for d in range(directions)]
    return names


def _plain_options(module) -> bool:
    """No option torch's module lacks acts in this call, and no dropout between layers."""
    return module.torch_twin_runs() and not (module.training and module.dropout > 0
                                             and module.num_layers > 1)


def _states(hx, x, shape_h, shape_c, lstm):
    """(h0, c0) or (h0,) as the layers take them (indexed by layer-direction), or None when
    hx is not a plain match."""
    if hx is None:  # each layer-direction's (B, .) zeros made as such: no select of a stack
        h0 = [x.new_zeros(shape_h[1:]) for _ in range(shape_h[0])]
        return (h0, [x.new_zeros(shape_c[1:]) for _ in range(shape_c[0])]) if lstm else (h0,)
    if lstm:
        if hx.__class__ not in (tuple, list) or len(hx) != 2:
            return None
        states, shapes = tuple(hx), (shape_h, shape_c)
    else:
        states, shapes = (hx,), (shape_h,)
    for s, shape in zip(states, shapes):
        if s.__class__ is not Tensor or s.shape != shape or s.dtype != x.dtype or \
                s.device != x.device:
            return None
    return states


def plain_call(module, x, hx):
    """module(x, hx) by the shortest road, or None for the general one (module docstring)."""
    if x.__class__ is not Tensor or x.dim() != 3 or not _plain_options(module):
        return None
    device, dtype = x.device, x.dtype
    if (x.shape[-1] != module.input_size or not triton_can_run(device)
            or torch.is_autocast_enabled(device.type)):
        return None
    params = module._parameters
    directions = 2 if module.bidirectional else 1
    proj = getattr(module, "proj_size", 0)
    weights = []
    for names in weight_names(module.num_layers, directions, module.bias, proj > 0):
        found = []
        for name in names:
            w = None if name is None else params.get(name)
            # a weight set another way (a wrapper's plain tensor) or of another dtype or
            # device: the general road
            if name is not None and (w is None or w.dtype != dtype or w.device != device):
                return None
            found.append(w)
        weights.append(found)
    if module.batch_first:
        x = x.transpose(0, 1)
    steps, batch, hidden = x.shape[0], x.shape[1], module.hidden_size
    if steps == 0 or batch == 0:
        return None
    lstm = module.cell == "lstm"
    n_states = module.num_layers * directions
    states = _states(hx, x, (n_states, batch, proj or hidden), (n_states, batch, hidden), lstm)
    if states is None:
        return None
    # the zero states made above are plain tensors, which ask nothing of these tests: only
    # a caller's hx needs them
    given = (x, *(states if hx is not None else ()), *(w for found in weights for w in found))
    if not ops.plain_eager(*given) or forward_ad._current_level >= 0:
        return None
    backend = module.backend
    if backend == "auto":
        training = ops.backward_follows(given)
        backend = choose_backend("auto", device, Workload(module.cell, dtype, batch, hidden,
                                                          steps, training))
    if backend not in ("stepwise", "persistent"):
        return None
    return _layers(module, x.reshape(-1, x.shape[-1]).contiguous(), states, weights, backend,
                   directions, steps, batch, lstm)


def _layers(module, rows, states, weights, backend, directions, steps, batch, lstm):
    """The layer loop of rnn._TritonRNNDriver._layers without its options, and the outputs
    in torch's layout."""
    layer_input = rows
    h_all, c_all = [], []
    for layer in range(module.num_layers):
        outs = []
        for direction in range(directions):
            k = layer * directions + direction
            w_ih, w_hh, b_ih, b_hh, w_hr = weights[k]
            h0 = states[0][k]
            c0 = states[1][k] if lstm else None
            args = (module.cell, backend, layer_input, None, h0, c0, w_ih.contiguous(),
                    w_hh.contiguous(), b_ih, b_hh, None if w_hr is None else w_hr.contiguous(),
                    direction == 1)
            save = ops.backward_follows((layer_input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr))
            y, h_n, c_n, *_ = ops.eager_layer(args + (save,), save)
            outs.append(y)
            h_all.append(h_n)
            c_all.append(c_n)
        layer_input = torch.cat(outs, dim=1) if directions == 2 else outs[0]
    output = layer_input.view(steps, batch, layer_input.shape[-1])
    if module.batch_first:
        output = output.transpose(0, 1)
    h_n = _stacked(h_all)
    return output, ((h_n, _stacked(c_all)) if lstm else h_n)


def _stacked(states):
    """The layer-directions' final states as torch returns them, (layers * directions, B, .);
    one layer-direction's as a view, which costs less than a stack (~1.6 against ~4.3 µs)."""
    if len(states) == 1:
        return states[0].view(1, *states[0].shape)
    return torch.stack(states)
