"""What a Triton module becomes when a model is exported or traced.

Under `torch.export`, `torch.onnx.export` (the dynamo exporter and the legacy
TorchScript one) and `torch.jit.trace`, a Triton module runs by default as
torch's own module on the same parameters ("aten" mode): the artifact records
`aten::lstm` / `aten::gru` / `aten::lstm_cell` / `aten::gru_cell`, which

  - load and run with plain torch, without lstm_triton or Triton installed,
    on any device torch's LSTM runs on (the CPU included);
  - ONNX translates to its own LSTM / GRU operators (onnxruntime runs them);
  - trace exactly as nn.LSTM does (no extra TracerWarnings).

"custom_op" mode keeps the layers as the `lstm_triton::rnn_layer` op instead
(what torch.compile always does), so an AOTInductor package built from a CUDA
export keeps the Triton kernels; such an artifact needs lstm_triton where it
is loaded. ONNX has no translation for that op: exporting to ONNX in this mode
raises an error that says to use "aten" mode.

    with lstm_triton.export_mode("custom_op"):
        program = torch.export.export(model, (x,))

torch.compile (not an export) is untouched by either mode: it always keeps the
custom op, and torch.jit.script always compiles torch's ops (scripting.py).
"""
import contextlib

import torch
import torch.nn.functional as F
from torch import _VF

EXPORT_MODES = ("aten", "custom_op")
_mode = "aten"


def exporting() -> bool:
    """Whether the current call is being recorded into an artifact (not torch.compile)."""
    return torch.compiler.is_exporting() or in_onnx_export() or torch.jit.is_tracing()


def in_onnx_export() -> bool:
    """torch.onnx.is_in_onnx_export(), also where the dynamo ONNX exporter traces with
    Dynamo (its strict torch.export attempt, made when the first one raised): Dynamo
    folds that function to False, but reads the exporter's flag as it is. The two flags are
    read from their modules, found once (`_onnx_flags`): torch's function imports both on
    every call, ~1.3 µs of every module and cell call (issue 17: ~4% of a cell call)."""
    exporter_globals, flags = _onnx_flags()
    # under Dynamo, or on a torch that keeps the flag elsewhere, ask torch's function (Dynamo
    # folds it; it refuses to trace GLOBALS' property, a graph break under fullgraph)
    if exporter_globals is None or torch.compiler.is_compiling():
        if torch.onnx.is_in_onnx_export():
            return True
    elif exporter_globals.in_onnx_export:
        return True
    return flags is not None and bool(getattr(flags, "_is_onnx_exporting", False))


_FLAGS = []  # [(the TorchScript exporter's GLOBALS, the exporter's _flags)], once found


def _onnx_flags():
    """(torch.onnx's TorchScript-exporter GLOBALS, torch.onnx._internal.exporter._flags), each
    None where this torch has no such module; imported on the first call (~20 ms), not at
    import."""
    if not _FLAGS:
        try:
            from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
        except ImportError:
            GLOBALS = None
        try:
            from torch.onnx._internal.exporter import _flags
        except ImportError:
            _flags = None
        _FLAGS.append((GLOBALS, _flags))
    return _FLAGS[0]


@contextlib.contextmanager
def export_mode(mode: str):
    """Within the block, exports and traces of Triton modules use `mode` (module docstring)."""
    global _mode
    if mode not in EXPORT_MODES:
        raise ValueError(f"export mode must be one of {EXPORT_MODES}, got {mode!r}")
    previous, _mode = _mode, mode
    try:
        yield
    finally:
        _mode = previous


def export_backend(module, resets=None):
    """The backend a call of `module` runs on while it is being exported or traced: "torch"
    (its torch twin's forward, recorded as aten ops) in "aten" mode, or None when nothing
    is being exported or the export keeps the custom op (the usual choice then applies).

    The one place that decides it: a module whose options torch's forward cannot run
    (`torch_twin_runs()` False: layer_norm, zoneout, resets...) exports through the
    "reference" backend (plain torch ops, the time loop unrolled for the traced length),
    and refuses ONNX.
    """
    if not exporting():
        return None
    if _mode == "custom_op":
        if in_onnx_export():
            raise RuntimeError(
                f"lstm_triton: {type(module).__name__} cannot export to ONNX in the "
                f"'custom_op' export mode (ONNX has no operator for lstm_triton::rnn_layer); "
                f"export outside lstm_triton.export_mode('custom_op'), i.e. in the default "
                f"'aten' mode, which ONNX translates to its LSTM/GRU operators.")
        return None
    twin_runs = getattr(module, "torch_twin_runs", None)
    if twin_runs is not None and not twin_runs(resets):  # layer_norm, zoneout, resets...
        if in_onnx_export():
            raise RuntimeError(
                f"lstm_triton: {type(module).__name__} uses an option ONNX's LSTM/GRU "
                f"operators cannot express (layer_norm, zoneout, resets, or in training "
                f"weight_drop / recurrent_dropout / variational_dropout); export it with "
                f"torch.export, which records the layers as plain torch ops.")
        return "reference"  # plain torch ops: loadable by torch alone
    if in_onnx_export() and getattr(module, "proj_size", 0) > 0:
        raise RuntimeError(
            f"lstm_triton: ONNX's LSTM operator has no projection, so an LSTM with "
            f"proj_size={module.proj_size} cannot be exported to ONNX (nn.LSTM's ONNX exports fail "
            f"or are wrong there too); "
            f"build it with proj_size=0 (a Linear after it is the exportable equivalent), or "
            f"export with torch.export instead.")
    return "torch"


def forget_rnn_dispatch():
    """Drop torch's memo of which kernel serves aten::lstm / aten::gru. An earlier
    torch.export in the process fills it with their decomposition, which the dynamo ONNX
    exporter's keeping of them whole does not override: the layers were then unrolled
    with the example's sequence length fixed (torch 2.13, nn.LSTM alike). Refilled on
    the next call; private to torch, hence looked up with care."""
    for op in (torch.ops.aten.lstm.input, torch.ops.aten.gru.input):
        cache = getattr(op, "_dispatch_cache", None)
        if isinstance(cache, dict):
            cache.clear()


def onnx_layers(module, input, hx):
    """`module`'s forward for the dynamo ONNX exporter: or None where torch's forward serves.

    torch.onnx.export(dynamo=True) specializes the sequence length of a time-major
    aten::lstm / aten::gru, and its translation of a multi-layer or bidirectional one
    bakes the example's length into a Reshape (torch 2.13: nn.LSTM/nn.GRU export that
    way too, and the ONNX model then fails on any other length). One single-layer,
    single-direction batch-first aten call per layer-direction (the reverse direction
    on the time-flipped input) translates to one ONNX LSTM/GRU node each, with the
    batch and the sequence length both dynamic. Padded input only.
    """
    if not (in_onnx_export() and torch.compiler.is_exporting()):
        return None
    if not isinstance(input, torch.Tensor):
        return None  # a PackedSequence: torch's own forward
    if not torch.compiler.is_dynamo_compiling():
        forget_rnn_dispatch()
    lstm = module.cell == "lstm"
    batched = input.dim() == 3
    x = input if batched else input.unsqueeze(0 if module.batch_first else 1)
    if not module.batch_first:
        x = x.transpose(0, 1)  # (B, T, I)
    n_dir = 2 if module.bidirectional else 1
    shape = (module.num_layers * n_dir, x.shape[0], module.hidden_size)
    if hx is None:
        states = [x.new_zeros(shape)] * (2 if lstm else 1)
    else:
        states = list(hx) if lstm else [hx]
        states = [s if batched else s.unsqueeze(1) for s in states]
    finals = [[] for _ in states]
    for layer in range(module.num_layers):
        outs = []
        for direction in range(n_dir):
            k = layer * n_dir + direction
            weights = [w for w in module._layer_weights(layer, direction)[:4] if w is not None]
            xs = x.flip(1) if direction else x
            h0 = [s[k:k + 1] for s in states]
            if lstm:
                y, h, c = _VF.lstm(xs, h0, weights, module.bias, 1, 0.0, False, False, True)
                news = (h, c)
            else:
                y, h = _VF.gru(xs, h0[0], weights, module.bias, 1, 0.0, False, False, True)
                news = (h,)
            outs.append(y.flip(1) if direction else y)
            for final, new in zip(finals, news):
                final.append(new)
        x = torch.cat(outs, 2) if n_dir == 2 else outs[0]
        if module.dropout > 0 and module.training and layer < module.num_layers - 1:
            x = F.dropout(x, module.dropout, training=True)
    finals = [torch.cat(f, 0) for f in finals]
    if not module.batch_first:
        x = x.transpose(0, 1)
    if not batched:
        x = x.squeeze(0 if module.batch_first else 1)
        finals = [f.squeeze(1) for f in finals]
    return x, (tuple(finals) if lstm else finals[0])
