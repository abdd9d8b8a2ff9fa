"""`patch(model)`: swap torch's recurrent modules inside a model for their Triton twins.

    model = lstm_triton.patch(model)     # nn.LSTM -> TritonLSTM, nn.GRU -> TritonGRU, ...
    ...train / evaluate...
    model = lstm_triton.unpatch(model)   # and back

What is kept. The replacement takes over the original module's whole state
(its `__dict__`, with the containers copied): the SAME Parameter objects (so an
optimizer built before patching keeps updating the weights the model uses,
and `state_dict` is unchanged, keys and values), buffers, device, dtype,
training mode, every constructor option (num_layers, bias, batch_first,
dropout, bidirectional, proj_size) and registered hooks. Only the class
changes, so the forward runs on Triton kernels. A module that appears at
several places in the model is replaced by one shared replacement.

What is replaced: modules whose type is exactly nn.LSTM, nn.GRU, nn.LSTMCell
or nn.GRUCell. Subclasses are left alone (they may override forward), and so
are modules that are already Triton ones. Patch a model before wrapping it in
DistributedDataParallel or torch.compile, as for any change of modules.
"""
from torch import nn

from .cells import TritonGRUCell, TritonLSTMCell
from .dispatch import validate_backend
from .rnn import TritonGRU, TritonLSTM

TRITON_TWINS = {nn.LSTM: TritonLSTM, nn.GRU: TritonGRU,
                nn.LSTMCell: TritonLSTMCell, nn.GRUCell: TritonGRUCell}
TORCH_TWINS = {triton: plain for plain, triton in TRITON_TWINS.items()}


def _rebuild(module, cls):
    """A `cls` instance sharing `module`'s parameters, buffers, options and hooks."""
    new = cls.__new__(cls)
    state = {}
    for key, value in module.__dict__.items():
        if isinstance(value, dict):
            value = type(value)(value)  # OrderedDicts of parameters, buffers, hooks
        elif isinstance(value, list):
            value = list(value)  # nn.LSTM's _flat_weights / _flat_weights_names
        state[key] = value
    new.__dict__.update(state)
    return new


def _swap(model, convert):
    """Apply `convert` (module -> replacement or None) through the module tree."""
    replaced = {}  # id(original) -> replacement, so shared modules stay shared
    visited = set()

    def visit(module):
        if id(module) in visited:
            return
        visited.add(id(module))
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            if id(child) not in replaced:
                replacement = convert(child)
                if replacement is None:
                    visit(child)
                    continue
                replaced[id(child)] = replacement
            module._modules[name] = replaced[id(child)]

    root = convert(model)
    if root is not None:
        return root
    visit(model)
    return model


def patch(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace every nn.LSTM / nn.GRU / nn.LSTMCell / nn.GRUCell in `model` with its Triton twin.

    Returns the model, changed in place; when `model` itself is one of those
    modules, returns its replacement (so always use the return value).
    backend: the `backend` of the new modules ("auto" | "stepwise" | "persistent" | "reference").
    """
    validate_backend(backend)

    def convert(module):
        cls = TRITON_TWINS.get(type(module))
        if cls is None:
            return None
        new = _rebuild(module, cls)
        new._init_backend(backend)
        return new

    return _swap(model, convert)


def unpatch(model: nn.Module) -> nn.Module:
    """Turn every TritonLSTM / TritonGRU / TritonLSTMCell / TritonGRUCell back into torch's module.

    The inverse of `patch` (same Parameter objects again); it also converts
    Triton modules that were built directly rather than by `patch`.
    """

    def convert(module):
        cls = TORCH_TWINS.get(type(module))
        if cls is None:
            return None
        new = _rebuild(module, cls)
        del new.__dict__["backend"]
        return new

    return _swap(model, convert)
