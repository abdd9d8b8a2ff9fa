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

EXPORT_MODES = ("aten", "custom_op")
_mode = "aten"


def exporting() -> bool:
    """Whether the current call is being recorded into an artifact (not torch.compile)."""
    return (torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
            or torch.jit.is_tracing())


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


def export_backend(module):
    """The backend a call of `module` runs on while it is being exported or traced: "torch"
    (its torch twin's forward, recorded as aten ops) in "aten" mode, or None when nothing
    is being exported or the export keeps the custom op (the usual choice then applies).

    The one place that decides it: a module whose options torch's forward cannot run
    would export through the "reference" backend (plain torch ops) from here.
    """
    if not exporting():
        return None
    if _mode == "custom_op":
        if torch.onnx.is_in_onnx_export():
            raise RuntimeError(
                f"lstm_triton: {type(module).__name__} cannot export to ONNX in the "
                f"'custom_op' export mode (ONNX has no operator for lstm_triton::rnn_layer); "
                f"export outside lstm_triton.export_mode('custom_op'), i.e. in the default "
                f"'aten' mode, which ONNX translates to its LSTM/GRU operators.")
        return None
    return "torch"
