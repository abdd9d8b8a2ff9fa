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
or nn.GRUCell, and, with `subclasses=True`, modules of a subclass of one of
them (e.g. pytorch-forecasting's `class LSTM(RNN, nn.LSTM)`, whose forward
handles lengths and then calls `super().forward`). Such a module becomes an
instance of a class made on the fly, `class Theirs(TheirLSTM, TritonLSTM)`:
their forward and methods come first, and their `super().forward` reaches the
Triton forward. A subclass whose forward never calls torch's runs as before.
Without the option, patch leaves subclasses alone and warns once per class.
Modules that are already Triton ones are left alone. Patch a model before
wrapping it in DistributedDataParallel or torch.compile, as for any change of
modules.
"""
import warnings

from torch import nn

from .cells import TritonGRUCell, TritonLSTMCell
from .dispatch import validate_backend
from .rnn import TritonGRU, TritonLSTM

TRITON_TWINS = {nn.LSTM: TritonLSTM, nn.GRU: TritonGRU,
                nn.LSTMCell: TritonLSTMCell, nn.GRUCell: TritonGRUCell}
TORCH_TWINS = {triton: plain for plain, triton in TRITON_TWINS.items()}
_combined = {}  # (their subclass, Triton twin) -> the class combining them
_warned_subclasses = set()


def _rebuild_combined(subclass, twin, state):
    """Unpickling a module of a combined class (the class itself is made on the fly)."""
    module = combined_class(subclass, twin).__new__(combined_class(subclass, twin))
    module.__setstate__(state)
    return module


def combined_class(subclass, twin):
    """`class X(subclass, twin)`, one per pair: the user's subclass of a torch RNN with its
    Triton twin after it, so the subclass's methods win and its super() calls reach the
    Triton forward. It pickles by rebuilding (it is not importable by name)."""
    key = (subclass, twin)
    if key not in _combined:
        def __reduce_ex__(self, protocol):
            return _rebuild_combined, (subclass, twin, self.__getstate__())

        _combined[key] = type(subclass.__name__, (subclass, twin), {
            "__module__": subclass.__module__, "__qualname__": subclass.__qualname__,
            "__reduce_ex__": __reduce_ex__, "_lstm_triton_subclass": subclass})
    return _combined[key]


def _twin_of_subclass(cls):
    """The Triton twin for a subclass of a torch RNN class (None for anything else)."""
    if issubclass(cls, tuple(TORCH_TWINS)):  # already a Triton module
        return None
    for plain, triton in TRITON_TWINS.items():
        if issubclass(cls, plain):
            return triton
    return None


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


def patch(model: nn.Module, backend: str = "auto", subclasses: bool = False) -> nn.Module:
    """Replace every nn.LSTM / nn.GRU / nn.LSTMCell / nn.GRUCell in `model` with its Triton twin.

    Returns the model, changed in place; when `model` itself is one of those
    modules, returns its replacement (so always use the return value).
    backend: the `backend` of the new modules ("auto" | "stepwise" | "persistent" | "reference").
    subclasses: also patch modules of subclasses of those classes (module docstring).
    """
    validate_backend(backend)

    def convert(module):
        cls = TRITON_TWINS.get(type(module))
        if cls is None:
            twin = _twin_of_subclass(type(module))
            if twin is None:
                return None
            if not subclasses:
                _warn_subclass(type(module), twin)
                return None
            cls = combined_class(type(module), twin)
        new = _rebuild(module, cls)
        new._init_backend(backend)
        return new

    return _swap(model, convert)


def _warn_subclass(cls, twin):
    if cls in _warned_subclasses:
        return
    _warned_subclasses.add(cls)
    warnings.warn(
        f"lstm_triton.patch left {cls.__module__}.{cls.__qualname__} alone: it subclasses "
        f"{TORCH_TWINS[twin].__name__} (it may override forward). Pass subclasses=True to run "
        f"it on {twin.__name__} (its forward kept, its super().forward on the kernels).",
        UserWarning, stacklevel=4)


def unpatch(model: nn.Module) -> nn.Module:
    """Turn every TritonLSTM / TritonGRU / TritonLSTMCell / TritonGRUCell back into torch's module.

    The inverse of `patch` (same Parameter objects again); it also converts
    Triton modules that were built directly rather than by `patch`.
    """

    def convert(module):
        cls = getattr(type(module), "_lstm_triton_subclass", None) or TORCH_TWINS.get(type(module))
        if cls is None:
            return None
        new = _rebuild(module, cls)
        del new.__dict__["backend"]
        return new

    return _swap(model, convert)
