"""Taking a model with Triton modules out of training: TorchScript, torch.export / jit.trace,
ONNX, artifacts loaded elsewhere, quantization, and patching the subclasses libraries ship.

Every path gives the numbers of the unpatched torch module, or fails with a message that
says what to do. Artifacts that must load without lstm_triton (or without the Triton
interpreter) are loaded in a fresh process.
"""
import io
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from abc import ABC

import pytest
import torch
from rnn_testing import DEVICE, assert_close
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lstm_triton
from lstm_triton import TritonGRU, TritonGRUCell, TritonLSTM, TritonLSTMCell

DTYPE = torch.float32  # what deployments run; ONNX and quantization take float32


def flat(out):
    """The tensors of a module's output, nested tuples flattened."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in flat(item)]


def assert_same_outputs(got, want, what):
    got, want = flat(got), flat(want)
    assert len(got) == len(want), what
    for k, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, DTYPE, f"{what}, output {k}")


MODULES = [
    pytest.param(lambda: TritonLSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True,
                                    proj_size=2), (2, 6, 3), id="lstm-2layer-bi-proj-bf"),
    pytest.param(lambda: TritonGRU(3, 5, num_layers=2, bias=False), (6, 3), id="gru-unbatched"),
    pytest.param(lambda: TritonLSTMCell(3, 5), (3, 3), id="lstm-cell"),
    pytest.param(lambda: TritonGRUCell(3, 5), (3,), id="gru-cell-unbatched"),
]


def make(factory, backend="stepwise"):
    module = factory().to(DEVICE)
    module.backend = backend
    return module


def torch_twin(module):
    return lstm_triton.unpatch(pickle.loads(pickle.dumps(module)))


# ---- TorchScript ------------------------------------------------------------------------

@pytest.mark.parametrize("factory,shape", MODULES)
def test_script_runs_torch_ops_with_the_modules_numbers_and_parameters(factory, shape):
    module = make(factory)
    x = torch.randn(shape, device=DEVICE)
    scripted = torch.jit.script(module)
    assert "lstm_triton::" not in str(scripted.inlined_graph)  # no custom op
    assert_same_outputs(scripted(x), module(x), "scripted against the Triton module")
    assert_same_outputs(scripted(x), torch_twin(module)(x), "scripted against torch's module")
    # the scripted module holds the very parameters: training it trains the model's weights
    flat(scripted(x))[0].sum().backward()
    assert all(p.grad is not None for p in module.parameters())
    assert type(module).__name__.startswith("Triton")  # scripting left the module as it was


def test_script_of_a_model_with_given_states():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = TritonLSTM(3, 4, backend="stepwise")
            self.decoder = TritonGRUCell(4, 4, backend="stepwise")

        def forward(self, x, h0, c0):
            y, (h, c) = self.encoder(x, (h0, c0))
            return self.decoder(y[-1], h[0])

    model = Model().to(DEVICE)
    args = (torch.randn(5, 2, 3, device=DEVICE), torch.randn(1, 2, 4, device=DEVICE),
            torch.randn(1, 2, 4, device=DEVICE))
    assert_same_outputs(torch.jit.script(model)(*args), model(*args), "scripted model")
    assert isinstance(model.encoder, TritonLSTM)


# ---- torch.export / jit.trace: aten by default, the custom op on request -----------------

def graph_ops(graph_module):
    return {str(n.target) for n in graph_module.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("factory,shape", MODULES)
def test_export_lowers_to_aten_by_default(factory, shape):
    module = make(factory)
    x = torch.randn(shape, device=DEVICE)
    program = torch.export.export(module, (x,))
    assert not any("lstm_triton" in op for op in graph_ops(program.graph_module))
    assert_same_outputs(program.module()(x), torch_twin(module)(x), "exported (aten)")


def test_export_keeps_the_custom_op_in_custom_op_mode():
    module = make(MODULES[0].values[0])
    x = torch.randn(2, 6, 3, device=DEVICE)
    with lstm_triton.export_mode("custom_op"):
        program = torch.export.export(module, (x,))
    assert "lstm_triton.rnn_layer.default" in graph_ops(program.graph_module)
    assert_same_outputs(program.module()(x), module(x), "exported (custom op)")
    with pytest.raises(ValueError, match="export mode must be one of"):
        with lstm_triton.export_mode("triton"):
            pass


def recorded_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return sorted({(w.category.__name__, str(w.message)) for w in caught})


@pytest.mark.parametrize("factory,shape", MODULES[:2])
def test_trace_records_aten_and_warns_as_torch_does(factory, shape):
    module = make(factory)
    twin = torch_twin(module)
    x = torch.randn(shape, device=DEVICE)
    # torch's once-per-process warnings (TORCH_WARN_ONCE: "LSTM with projections is not
    # supported with oneDNN") go to whichever trace runs first: raise them before recording,
    # else the comparison depends on which tests ran earlier in this process
    twin(x)
    traced = []
    got = recorded_warnings(lambda: traced.append(torch.jit.trace(module, (x,))))
    want = recorded_warnings(lambda: torch.jit.trace(twin, (x,)))
    assert got == want  # no TracerWarning of our own
    assert "lstm_triton::" not in str(traced[0].inlined_graph)
    assert_same_outputs(traced[0](x), twin(x), "traced")


# ---- artifacts loaded elsewhere ----------------------------------------------------------

class Tagger(nn.Module):
    """A model as deployed: a bidirectional LSTM, a GRU and a cell, then a linear head."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(8, 4, batch_first=True)
        self.cell = nn.GRUCell(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, h = self.gru(y)
        return self.head(self.cell(y[:, -1], h[0]))


CHILD = textwrap.dedent("""
    import sys
    sys.modules["lstm_triton"] = None  # an import of it fails here, as where it is not installed
    {block}
    import torch
    path, kind = sys.argv[1], sys.argv[2]
    x = torch.load(path + ".x")
    if kind == "export":
        module = torch.export.load(path).module()
    else:
        module = torch.jit.load(path)
    torch.save(module(x), path + ".out")
""")


def run_child(path, kind, block_lstm_triton=True, interpreter=False):
    """Load and run an artifact in a fresh Python (see CHILD); returns its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    if interpreter:
        env["TRITON_INTERPRET"] = "1"
    code = CHILD.format(block="")
    if not block_lstm_triton:
        code = code.replace('sys.modules["lstm_triton"] = None', "import lstm_triton")
        env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(lstm_triton.__file__)))
    done = subprocess.run([sys.executable, "-c", code, path, kind], env=env, cwd=os.path.dirname(path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(path + ".out"), done.stderr


@pytest.mark.parametrize("kind", ["export", "trace", "script"])
def test_artifacts_load_and_run_without_lstm_triton(tmp_path, kind):
    model = lstm_triton.patch(Tagger().to(DEVICE), backend="stepwise").eval()
    x = torch.randn(2, 5, 3, device=DEVICE)
    path = str(tmp_path / f"model.{kind}")
    if kind == "export":
        torch.export.save(torch.export.export(model, (x,)), path)
    elif kind == "trace":
        torch.jit.trace(model, (x,)).save(path)
    else:
        torch.jit.script(model).save(path)
    torch.save(x, path + ".x")
    got, _ = run_child(path, "export" if kind == "export" else "jit")
    want = lstm_triton.unpatch(model)(x)
    assert_close(got, want, DTYPE, f"{kind} artifact run without lstm_triton")


@pytest.mark.skipif(DEVICE != "cpu", reason="a CPU without the interpreter is the point")
def test_custom_op_artifact_runs_on_a_cpu_without_the_interpreter(tmp_path):
    model = lstm_triton.patch(Tagger(), backend="stepwise").eval()
    x = torch.randn(2, 5, 3)
    path = str(tmp_path / "model.export")
    with lstm_triton.export_mode("custom_op"):
        program = torch.export.export(model, (x,))
    assert "lstm_triton.rnn_layer.default" in graph_ops(program.graph_module)
    torch.export.save(program, path)
    torch.save(x, path + ".x")
    got, stderr = run_child(path, "export", block_lstm_triton=False, interpreter=False)
    assert "reference math" in stderr  # said once, not an error from inside Triton
    assert_close(got, lstm_triton.unpatch(model)(x), DTYPE, "custom-op artifact, no interpreter")


# ---- ONNX --------------------------------------------------------------------------------

class Heads(nn.Module):
    """Returns the output and the final hidden state, so ONNX exports both."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        y, state = self.rnn(x)
        return y, (state[0] if isinstance(state, tuple) else state)


def export_onnx(model, x, path, dynamo, batch_first):
    time_dim, batch_dim = (1, 0) if batch_first else (0, 1)
    if dynamo:
        shapes = {"x": {batch_dim: torch.export.Dim("batch"), time_dim: torch.export.Dim("time")}}
        torch.onnx.export(model, (x,), path, dynamo=True, input_names=["x"], dynamic_shapes=shapes)
    else:
        axes = {"x": {batch_dim: "batch", time_dim: "time"}}
        torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], dynamic_axes=axes)


ONNX_MODULES = [
    pytest.param(lambda: TritonLSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True),
                 id="lstm-2layer-bi-bf"),
    pytest.param(lambda: TritonGRU(3, 4, num_layers=2, bidirectional=True), id="gru-2layer-bi"),
]


@pytest.mark.parametrize("dynamo", [pytest.param(True, id="dynamo"),
                                    pytest.param(False, id="legacy")])
@pytest.mark.parametrize("factory", ONNX_MODULES)
def test_onnx_runs_in_onnxruntime_with_dynamic_batch_and_length(tmp_path, factory, dynamo,
                                                                 monkeypatch):
    ort = pytest.importorskip("onnxruntime", reason="scripts/setup.sh installs onnxruntime")
    pytest.importorskip("onnxscript", reason="scripts/setup.sh installs onnxscript")
    # The NaN poisoning of torch.empty (conftest) asks numel() of the exporter's symbolic
    # tensors, which a dynamic shape cannot answer; this test reads no uninitialised memory.
    monkeypatch.undo()
    if dynamo:  # an earlier torch.export in the process made torch's exporter fix the length
        torch.export.export(nn.LSTM(3, 2, batch_first=True), (torch.randn(1, 2, 3),))
        torch.export.export(nn.GRU(3, 2), (torch.randn(2, 1, 3),))
    model = Heads(make(factory)).eval()
    bf = model.rnn.batch_first
    x = torch.randn((2, 5, 3) if bf else (5, 2, 3), device=DEVICE)
    path = str(tmp_path / "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' own chatter
        export_onnx(model, x, path, dynamo, bf)
    other = torch.randn((3, 7, 3) if bf else (7, 3, 3))  # another batch and length
    got = ort.InferenceSession(path).run(None, {"x": other.numpy()})
    with torch.no_grad():
        want = torch_twin(model.cpu())(other)
    assert_same_outputs(tuple(torch.from_numpy(g) for g in got), want, "onnxruntime")


@pytest.mark.parametrize("dynamo", [pytest.param(True, id="dynamo"),
                                    pytest.param(False, id="legacy")])
def test_onnx_refuses_what_it_cannot_express(tmp_path, dynamo):
    pytest.importorskip("onnxscript", reason="scripts/setup.sh installs onnxscript")
    x = torch.randn(5, 2, 3, device=DEVICE)
    path = str(tmp_path / "model.onnx")
    proj = Heads(TritonLSTM(3, 4, proj_size=2, backend="stepwise", device=DEVICE)).eval()
    with pytest.raises(Exception, match="proj_size=2 cannot be exported to ONNX"):
        export_onnx(proj, x, path, dynamo, False)
    plain = Heads(TritonGRU(3, 4, backend="stepwise", device=DEVICE)).eval()
    with pytest.raises(Exception, match="export outside lstm_triton.export_mode"):
        with lstm_triton.export_mode("custom_op"):
            export_onnx(plain, x, path, dynamo, False)


# ---- quantization ------------------------------------------------------------------------

class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


@pytest.mark.parametrize("spec", [
    pytest.param({nn.LSTM}, id="set"),
    pytest.param(None, id="default-spec"),
    pytest.param({"rnn": torch.ao.quantization.default_dynamic_qconfig}, id="by-name"),
])
def test_quantize_dynamic_of_a_patched_rnn_fails_loudly(spec):
    model = lstm_triton.patch(Classifier().cpu(), backend="reference")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(TypeError, match=r"lstm_triton.unpatch\(model\) first"):
            torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


def test_quantize_dynamic_quantizes_other_modules_and_unpatched_rnns():
    model = lstm_triton.patch(Classifier().cpu(), backend="reference")
    x = torch.randn(5, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        linear_only = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        assert isinstance(linear_only.rnn, TritonLSTM)  # as asked: only the Linear
        assert type(linear_only.head).__name__ == "Linear"
        both = torch.ao.quantization.quantize_dynamic(lstm_triton.unpatch(model), {nn.LSTM},
                                                      dtype=torch.qint8)
    assert type(both.rnn).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert (both(x) - model(x)).abs().max() < 0.1  # int8 weights: close, not equal


# ---- patch(subclasses=True) --------------------------------------------------------------

class RNN(ABC, nn.RNNBase):
    """Shaped like pytorch-forecasting's: forward takes lengths, packs, calls super()."""

    def forward(self, x, hx=None, lengths=None, enforce_sorted=True):
        if lengths is None:
            return super().forward(x, hx)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=self.batch_first,
                                      enforce_sorted=enforce_sorted)
        out, hx = super().forward(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=self.batch_first)
        return out, hx


class LSTM(RNN, nn.LSTM):
    pass


class GRU(RNN, nn.GRU):
    pass


class Forecaster(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = LSTM(3, 4, batch_first=True, num_layers=2)
        self.decoder = GRU(4, 4, batch_first=True)
        self.head = nn.Linear(4, 1)

    def forward(self, x, lengths):
        y, _ = self.encoder(x, lengths=lengths, enforce_sorted=False)
        y, _ = self.decoder(y, lengths=lengths, enforce_sorted=False)
        return self.head(y)


def test_patch_warns_once_and_leaves_subclasses_alone_by_default():
    model = Forecaster()
    with pytest.warns(UserWarning, match=r"test_deploy.LSTM alone.*subclasses=True") as caught:
        lstm_triton.patch(model)
        lstm_triton.patch(Forecaster())
    assert sum("test_deploy.LSTM alone" in str(w.message) for w in caught) == 1  # once
    assert type(model.encoder) is LSTM and type(model.decoder) is GRU


calls = []


def count_call(module, args, output):
    """A forward hook that pickles (a module-level function)."""
    calls.append(type(module))


def test_patch_subclasses_runs_their_forward_on_the_kernels():
    model = Forecaster().to(DEVICE)
    model.encoder.quantiles = [0.1, 0.9]  # an attribute of theirs
    calls.clear()
    model.decoder.register_forward_hook(count_call)
    original = pickle.loads(pickle.dumps(model))
    params = dict(model.named_parameters())

    assert lstm_triton.patch(model, backend="stepwise", subclasses=True) is model
    assert isinstance(model.encoder, LSTM) and isinstance(model.encoder, TritonLSTM)
    assert isinstance(model.decoder, GRU) and isinstance(model.decoder, TritonGRU)
    assert model.encoder.quantiles == [0.1, 0.9]
    assert all(p is params[n] for n, p in model.named_parameters())

    x = torch.randn(3, 6, 3, device=DEVICE)
    lengths = torch.tensor([4, 6, 2])
    got = model(x, lengths)
    assert calls == [type(model.decoder)]  # the hook came along
    want = original(x, lengths)
    assert_close(got, want, DTYPE, "patched subclass forward")
    got_grads = torch.autograd.grad(got.pow(2).sum(), list(model.parameters()))
    want_grads = torch.autograd.grad(want.pow(2).sum(), list(original.parameters()))
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, DTYPE, "patched subclass gradient")

    restored = pickle.loads(pickle.dumps(model))  # the combined class pickles
    assert type(restored.encoder) is type(model.encoder)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert type(torch.load(buffer, weights_only=False).decoder) is type(model.decoder)

    lstm_triton.unpatch(model)
    assert type(model.encoder) is LSTM and type(model.decoder) is GRU
    assert not hasattr(model.encoder, "backend")
    assert all(p is params[n] for n, p in model.named_parameters())
