"""A cell call's one-step road (lstm_triton/cell_step.py, issue 17).

In plain eager a TritonLSTMCell / TritonGRUCell call skips the layer's machinery and runs
one step directly: at small sizes in one launch (kernels/cell_fused.py: both GEMMs and the
gates), else the stepwise layer's one step (cuBLAS GEMMs and the step kernel), which must
give the layer op's bits. The fused step must match float64 math in every dtype and write
every element; the road must be taken only where the layer's road would have skipped the
custom op (so compile, dispatch modes, resets and forward-mode AD still see what they
saw); and double backward and gradcheck must hold on it.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lstm_triton import TritonGRUCell, TritonLSTMCell, cell_step, ops
from lstm_triton.kernels import cell_fused, config
from rnn_testing import assert_close

B, I, H = 3, 5, 7


def leaves(cell, bias, dtype=torch.float32):
    gates = (4 if cell == "lstm" else 3) * H

    def leaf(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=True)

    return dict(x=leaf(B, I), h0=leaf(B, H), c0=leaf(B, H) if cell == "lstm" else None,
                w_ih=leaf(gates, I), w_hh=leaf(gates, H), b_ih=leaf(gates) if bias else None,
                b_hh=leaf(gates) if bias else None)


def outputs_and_grads(cell, inputs, by_layer_op):
    t = inputs
    if by_layer_op:
        _, h1, c1, *_ = ops.rnn_layer(cell, "stepwise", t["x"], None, t["h0"], t["c0"], t["w_ih"],
                                      t["w_hh"], t["b_ih"], t["b_hh"], None, False, True)
        outs = [h1, c1] if cell == "lstm" else [h1]
    else:
        outs = list(cell_step.step(cell, t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"],
                                   t["b_ih"], t["b_hh"]))
    gen = torch.Generator().manual_seed(7)
    cotangents = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
    wrt = [v for v in t.values() if v is not None]
    return outs, torch.autograd.grad(outs, wrt, cotangents)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gemm_road_gives_the_layer_ops_bits(cell, bias, monkeypatch):
    monkeypatch.setattr(cell_step, "fused_cell_launch", lambda *size: None)
    monkeypatch.setattr(cell_step, "fused_cell_backward_launch", lambda *size: None)
    torch.manual_seed(0)
    inputs = leaves(cell, bias)
    fast, fast_grads = outputs_and_grads(cell, inputs, by_layer_op=False)
    op, op_grads = outputs_and_grads(cell, inputs, by_layer_op=True)
    for a, b in zip(fast + list(fast_grads), op + list(op_grads)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [TritonLSTMCell, TritonGRUCell])
def test_the_road_is_taken_in_plain_eager_only(cls):
    torch.manual_seed(0)
    cell = cls(I, H, backend="stepwise")
    x = torch.randn(B, I, requires_grad=True)
    first = cell(x)
    first = first[0] if isinstance(first, tuple) else first
    assert type(first.grad_fn).__name__.endswith("CellStepBackward")

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record():
        cell(x)
    assert any("lstm_triton.rnn_layer" in name for name in seen)  # the layer op, not the road

    out = cell(x, reset=torch.tensor([True, False, True]))  # resets: the layer's road
    out = out[0] if isinstance(out, tuple) else out
    assert not type(out.grad_fn).__name__.endswith("CellStepBackward")


@pytest.mark.parametrize("cls", [TritonLSTMCell, TritonGRUCell])
def test_gradcheck_and_double_backward_on_the_road(cls):
    torch.manual_seed(0)
    cell = cls(I, H, backend="stepwise").double()
    x = torch.randn(2, I, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, H, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, H, dtype=torch.float64, requires_grad=True)

    def fn(x, h, c):
        return cell(x, (h, c)) if cls is TritonLSTMCell else cell(x, h)

    assert torch.autograd.gradcheck(fn, (x, h, c))
    assert torch.autograd.gradgradcheck(fn, (x, h, c))


def reference_step(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """torch's own cell in float64: (h1, c1) or (h1,)."""
    args = [t.double() if t is not None else None for t in (x, w_ih, w_hh, b_ih, b_hh)]
    if cell == "lstm":
        return torch._VF.lstm_cell(args[0], (h0.double(), c0.double()), *args[1:])
    return (torch._VF.gru_cell(args[0], h0.double(), *args[1:]),)


DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float64, id="fp64")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fused_step_matches_float64_and_writes_every_element(cell, bias, dtype):
    """The fused kernel on NaN-poisoned outputs, at awkward sizes (B=3, I=5, H=7: masked
    rows, units, gate columns and K), against torch's cell in float64; in training mode its
    saved gates equal the activations recomputed in float64."""
    torch.manual_seed(1)
    t = {k: (v.detach().to(dtype) if v is not None else None)
         for k, v in leaves(cell, bias).items()}
    launch = config.fused_cell_launch(B, I, H, dtype, on_gpu=False)
    state = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    poison = dict(dtype=dtype)
    h1, gates = torch.full((B, H), float("nan"), **poison), torch.full((B, 4 * H), float("nan"),
                                                                       **poison)
    want = reference_step(cell, *t.values())
    if cell == "lstm":
        c1, c_save = (torch.full((B, H), float("nan"), dtype=state) for _ in range(2))
        cell_fused.lstm_cell_fused(*t.values(), h1, c1, gates, c_save, launch)
        got = (h1, c1)
        assert torch.equal(c_save, c1)
    else:
        cell_fused.gru_cell_fused(t["x"], t["h0"], *list(t.values())[3:], h1, gates, launch)
        got = (h1,)
    for g, w in zip(got, want):
        assert_close(g, w.to(g.dtype), dtype, "fused step")
    assert not gates.isnan().any()
    # the saved gates are the activations: recompute them in float64
    x, h0, w_ih, w_hh = (t[k].double() for k in ("x", "h0", "w_ih", "w_hh"))
    b_ih, b_hh = (t[k].double() if bias else 0.0 for k in ("b_ih", "b_hh"))
    gx, gh = x @ w_ih.t() + b_ih, h0 @ w_hh.t() + b_hh
    if cell == "lstm":
        pre = (gx + gh).view(B, 4, H)
        acts = torch.cat([pre[:, 0].sigmoid(), pre[:, 1].sigmoid(), pre[:, 2].tanh(),
                          pre[:, 3].sigmoid()], 1)
    else:
        r = (gx[:, :H] + gh[:, :H]).sigmoid()
        z = (gx[:, H:2 * H] + gh[:, H:2 * H]).sigmoid()
        n = (gx[:, 2 * H:] + r * gh[:, 2 * H:]).tanh()
        acts = torch.cat([r, z, n, gh[:, 2 * H:]], 1)
    assert_close(gates, acts.to(dtype), dtype, "saved gates")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("size", [(B, I, H), (16, 32, 16)], ids=["awkward", "largest"])
def test_fused_lstm_backward_matches_float64_and_writes_every_element(size, bias, dtype):
    """kernels/cell_fused_backward.py: every gradient of an LSTM cell step (input, both
    states, both weights, both biases) from one program, against torch's cell in float64,
    on NaN-poisoned outputs (the conftest poisons every allocation), at awkward sizes and at
    the largest tile config.fused_cell_backward_launch allows; the same bits on a rerun."""
    b, i, h = size
    torch.manual_seed(2)
    ref = torch.nn.LSTMCell(i, h, bias=bias, dtype=torch.float64)
    ours = TritonLSTMCell(i, h, bias=bias, backend="stepwise").to(dtype)
    ours.load_state_dict(ref.state_dict())
    assert config.fused_cell_backward_launch(b, i, h, dtype, on_gpu=False) is not None
    x, h0, c0 = (torch.randn(b, n, dtype=dtype) for n in (i, h, h))
    cot = [torch.randn(b, h, dtype=torch.float64) for _ in range(2)]

    def grads(cell, dt):
        inputs = [t.to(dt).requires_grad_() for t in (x, h0, c0)]
        h1, c1 = cell(inputs[0], tuple(inputs[1:]))
        wrt = inputs + list(cell.parameters())
        return torch.autograd.grad((h1 * cot[0].to(dt)).sum() + (c1 * cot[1].to(dt)).sum(), wrt)

    got, want = grads(ours, dtype), grads(ref, torch.float64)
    for name, g, w in zip(["x", "h0", "c0"] + [n for n, _ in ref.named_parameters()], got, want,
                          strict=True):
        assert g.dtype == dtype
        assert_close(g, w, dtype, f"fused backward: grad of {name}")
    for a, b_ in zip(got, grads(ours, dtype)):
        assert torch.equal(a, b_)


def test_lstm_backward_takes_one_launch_where_one_tile_holds_the_step(monkeypatch):
    """One program where the step fits one tile; beyond config.fused_cell_backward_launch's
    limits the step kernel and the GEMMs."""
    fused = []
    original = cell_step.lstm_cell_fused_backward
    monkeypatch.setattr(cell_step, "lstm_cell_fused_backward",
                        lambda *a: (fused.append(a[2].shape[0]), original(*a))[1])
    for hidden in (config.FUSED_CELL_BACKWARD_MAX_HIDDEN,
                   config.FUSED_CELL_BACKWARD_MAX_HIDDEN + 1):
        cell = TritonLSTMCell(I, hidden, backend="stepwise")
        h1, c1 = cell(torch.randn(2, I))
        (h1.sum() + c1.sum()).backward()
    assert fused == [2]


@pytest.mark.parametrize("cls", [TritonLSTMCell, TritonGRUCell])
def test_small_steps_take_one_launch_and_large_ones_the_gemms(cls, monkeypatch):
    launched = []
    for name in ("lstm_cell_fused", "gru_cell_fused"):
        original = getattr(cell_step, name)
        monkeypatch.setattr(cell_step, name, lambda *a, _o=original: (launched.append(1), _o(*a)))
    cell = cls(I, H, backend="stepwise")
    cell(torch.randn(2, I))
    assert launched == [1]
    cell(torch.randn(config.FUSED_CELL_MAX_BATCH + 1, I))  # too many rows for one tile
    assert launched == [1]


@pytest.mark.parametrize("cls", [TritonLSTMCell, TritonGRUCell])
def test_gradients_arriving_transposed_are_read_as_such(cls):
    """A loss that reads the new states transposed sends their gradients back transposed
    (column-major); the step kernels index rows by stride(0), so the road must make them
    row-major first. Against torch's cell, every gradient."""
    torch.manual_seed(0)
    ours = cls(I, H, backend="stepwise")
    ref = (torch.nn.LSTMCell if cls is TritonLSTMCell else torch.nn.GRUCell)(I, H)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(B, I)
    weight = torch.randn(H, B)

    def grads(cell):
        inp = x.clone().requires_grad_()
        out = cell(inp)
        states = out if isinstance(out, tuple) else (out,)
        sum((s.t() * weight * (k + 1)).sum() for k, s in enumerate(states)).backward()
        return [inp.grad] + [p.grad for p in cell.parameters()]

    for got, want in zip(grads(ours), grads(ref)):
        assert_close(got, want, torch.float32, "transposed gradient")


@pytest.mark.parametrize("road", ["fast-lane", "general"])
@pytest.mark.parametrize("cls", [TritonLSTMCell, TritonGRUCell])
def test_weights_of_any_layout_are_read_as_such(cls, road):
    """A cell whose weights are not row-major (a Parameter assigned as a transposed view)
    gives torch's numbers: the kernels index W's rows by its width, so both roads hand them
    row-major copies. The general road is the one a 1-D input takes."""
    torch.manual_seed(0)
    ours = cls(I, H, backend="stepwise")
    ref = (torch.nn.LSTMCell if cls is TritonLSTMCell else torch.nn.GRUCell)(I, H)
    ref.load_state_dict(ours.state_dict())
    for name in ("weight_ih", "weight_hh"):
        w = getattr(ours, name).detach()
        setattr(ours, name, torch.nn.Parameter(w.t().contiguous().t()))
        assert not getattr(ours, name).is_contiguous()
    x = torch.randn(B, I) if road == "fast-lane" else torch.randn(I)

    def run(cell):
        out = cell(x)
        states = out if isinstance(out, tuple) else (out,)
        sum((s * (k + 1)).sum() for k, s in enumerate(states)).backward()
        return list(states) + [p.grad for p in cell.parameters()]

    for got, want in zip(run(ours), run(ref), strict=True):
        assert_close(got, want, torch.float32, f"{road}: weights of another layout")
