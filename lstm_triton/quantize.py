"""Eager-mode quantization (`torch.ao.quantization.quantize_dynamic`, `prepare` /
`convert`) and the Triton modules: a loud error instead of a silent float module.

torch's quantization finds the modules to quantize by their exact type, in two
tables: the qconfig spec (`{nn.LSTM, nn.Linear}`, or its default one) that
`propagate_qconfig_` looks `type(module)` up in, and the module mapping
(`nn.LSTM -> torch.ao.nn.quantized.dynamic.LSTM`) that `convert` swaps by. A
TritonLSTM is in neither, and neither calls anything on the module (no
`from_float`, no hook) unless its type is there, so asked to quantize nn.LSTM,
quantize_dynamic returned the TritonLSTM untouched, in float, without a word.
Quantizing it would take adding the Triton classes to torch's global tables
(or the user passing both tables). So the one thing torch does to every module
it walks, setting `module.qconfig`, is intercepted here: when that qconfig says
to quantize the module (not None), or when the qconfig spec being propagated
names torch's class of the module (nn.LSTM for a TritonLSTM: then torch sets
None because the type does not match, so the spec is read from the caller),
it raises and says to `lstm_triton.unpatch` the model first. Quantizing other
modules (e.g. `{nn.Linear}` only) leaves the Triton ones running, as asked.
"""
import sys

from torch import nn

TORCH_CLASSES = (nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNBase, nn.RNNCellBase)
_FRAMES_TO_SEARCH = 4  # the setter <- nn.Module.__setattr__ <- torch's _propagate_qconfig_helper


def _spec_names(module) -> bool:
    """Whether a qconfig spec being propagated by a caller lists torch's class of `module`."""
    frame = sys._getframe(2)
    for _ in range(_FRAMES_TO_SEARCH):
        if frame is None:
            return False
        spec = frame.f_locals.get("qconfig_dict")
        if isinstance(spec, dict):
            return any(isinstance(key, type) and key in TORCH_CLASSES and isinstance(module, key)
                       and value is not None for key, value in spec.items())
        frame = frame.f_back
    return False


class QuantizationGuard:
    """Mixin of every Triton module: `qconfig` as a property whose setter refuses to let
    torch's eager quantization skip the module silently (module docstring)."""

    # TorchScript compiles a module's properties unless listed here; this list replaces
    # nn.RNNBase's (which holds all_weights), earlier in the bases.
    __jit_unused_properties__ = ["qconfig", "all_weights"]

    @property
    def qconfig(self):
        try:
            return self.__dict__["_lstm_triton_qconfig"]
        except KeyError:
            raise AttributeError("qconfig") from None

    @qconfig.setter
    def qconfig(self, value):
        if value is not None or _spec_names(self):
            name = type(self).__name__
            raise TypeError(
                f"lstm_triton: torch's quantization was asked to quantize {name}, which it "
                f"cannot: it quantizes torch's own classes only, and {name} would stay in float. "
                f"Call model = lstm_triton.unpatch(model) first (it returns torch's modules on "
                f"the same parameters), then quantize.")
        self.__dict__["_lstm_triton_qconfig"] = value

    @qconfig.deleter
    def qconfig(self):  # convert() removes the qconfigs it set
        self.__dict__.pop("_lstm_triton_qconfig", None)
