"""layer_norm=True (issue 18): the layer-normalised LSTM / GRU against the float64 reference.

The oracle is the same module class in float64 on backend="reference", i.e.
lstm_triton/reference.py's equations (LN via torch.nn.functional.layer_norm), loaded
with the tested module's (rounded) parameters. The LN parameters are moved off their
initial ones and zeros, so a kernel that ignored a scale or a shift would fail.
Compared: output, every final state, the gradient of the input, the states and every
parameter (the LN ones included), over the layouts nn.LSTM accepts.
"""
import warnings

import pytest
import torch
from rnn_testing import assert_close, outputs_and_grads
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

from lstm_triton import FallbackWarning, TritonGRU, TritonLSTM, dispatch, layer_norm

N_IN, H, T, B = 4, 5, 4, 3
CLASSES = {"lstm": TritonLSTM, "gru": TritonGRU}

CASES = [
    # cell, dtype, module options, layout, with initial states
    pytest.param("lstm", torch.float32, {"num_layers": 2, "bidirectional": True},
                 "batch_first", True, id="lstm-fp32-2layers-bi-batch_first-h0"),
    pytest.param("lstm", torch.bfloat16, {"num_layers": 2, "proj_size": 3}, "padded", False,
                 id="lstm-bf16-2layers-proj"),
    pytest.param("lstm", torch.float32, {"bidirectional": True, "proj_size": 2}, "packed",
                 True, id="lstm-fp32-bi-proj-packed-h0"),
    pytest.param("lstm", torch.float32, {"bias": False}, "unbatched", True,
                 id="lstm-fp32-nobias-unbatched-h0"),
    pytest.param("gru", torch.float32, {"num_layers": 2, "bidirectional": True},
                 "batch_first", True, id="gru-fp32-2layers-bi-batch_first-h0"),
    pytest.param("gru", torch.float16, {"bidirectional": True, "bias": False}, "packed", False,
                 id="gru-fp16-bi-nobias-packed"),
    pytest.param("gru", torch.float32, {"num_layers": 2}, "unbatched", False,
                 id="gru-fp32-2layers-unbatched"),
]


def ln_twins(cell, dtype, backend="stepwise", **options):
    """(module under test, float64 reference-backend module with the same parameters)."""
    module = CLASSES[cell](N_IN, H, layer_norm=True, dtype=dtype, backend=backend, **options)
    with torch.no_grad():  # away from the initial ones / zeros
        for name, p in module.named_parameters():
            if name.startswith("ln_"):
                p.add_(0.5 * torch.randn_like(p))
    oracle = CLASSES[cell](N_IN, H, layer_norm=True, dtype=torch.float64, backend="reference",
                           **options)
    oracle.load_state_dict({k: v.to(torch.float64) for k, v in module.state_dict().items()})
    return module, oracle


def make_input(layout, dtype):
    """(input for the module, the leaf tensor gradients are taken of, batch size)."""
    if layout == "packed":
        seqs = [torch.randn(n, N_IN, dtype=dtype) for n in (2, T, 1)]
        packed = pack_sequence(seqs, enforce_sorted=False)
        data = packed.data.detach().requires_grad_()
        return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                              packed.unsorted_indices), data, len(seqs)
    shape = {"padded": (T, B, N_IN), "batch_first": (B, T, N_IN), "unbatched": (T, N_IN)}[layout]
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    return x, x, (None if layout == "unbatched" else B)


def as_float64(value):
    if isinstance(value, PackedSequence):
        data = value.data.detach().to(torch.float64).requires_grad_()
        return PackedSequence(data, value.batch_sizes, value.sorted_indices,
                              value.unsorted_indices), data
    value = value.detach().to(torch.float64).requires_grad_()
    return value, value


def initial_states(cell, module, batch, dtype):
    n_dir = 2 if module.bidirectional else 1
    lead = (module.num_layers * n_dir,) + (() if batch is None else (batch,))
    sizes = [getattr(module, "proj_size", 0) or H] + ([H] if cell == "lstm" else [])
    return [torch.randn(*lead, s, dtype=dtype, requires_grad=True) for s in sizes]


@pytest.mark.parametrize("cell, dtype, options, layout, with_state", CASES)
def test_layer_norm_matches_reference(cell, dtype, options, layout, with_state):
    module, oracle = ln_twins(cell, dtype, batch_first=layout == "batch_first", **options)
    x, x_leaf, batch = make_input(layout, dtype)
    states = initial_states(cell, module, batch, dtype) if with_state else []
    hx = (tuple(states) if cell == "lstm" else states[0]) if states else None

    x64, x64_leaf = as_float64(x)
    states64 = [s.detach().to(torch.float64).requires_grad_() for s in states]
    hx64 = (tuple(states64) if cell == "lstm" else states64[0]) if states64 else None

    with torch.no_grad():  # the shapes of what the loss weighs
        out, finals = oracle(x64, hx64)
    finals = finals if isinstance(finals, tuple) else (finals,)
    data = out.data if isinstance(out, PackedSequence) else out
    weights_out = [torch.randn_like(data)] + [torch.randn_like(f) for f in finals]

    got = outputs_and_grads(module, x, hx, weights_out, [x_leaf] + states)
    want = outputs_and_grads(oracle, x64, hx64, weights_out, [x64_leaf] + states64)
    names = ["input"] + [f"state {k}" for k in range(len(states))] + [
        n for n, _ in module.named_parameters()]
    (out, finals, grads), (ref_out, ref_finals, ref_grads) = got, want
    assert_close(out.data if layout == "packed" else out,
                 ref_out.data if layout == "packed" else ref_out, dtype, "output")
    for k, (f, f_ref) in enumerate(zip(finals, ref_finals)):
        assert_close(f, f_ref, dtype, f"final state {k}")
    assert len(grads) == len(ref_grads) == len(names)
    for name, g, g_ref in zip(names, grads, ref_grads):
        assert g is not None and g_ref is not None, name
        assert_close(g, g_ref, dtype, f"gradient of {name}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_default_is_torch_and_layer_norm_only_adds_parameters(cell):
    """layer_norm=False is nn.LSTM / nn.GRU (same state_dict, same numbers under a seed);
    True appends the LN parameters, named like torch's, after torch's own, so the shared
    ones still draw the same numbers; LN scales start at 1 and LN_c's shift at 0."""
    options = dict(num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    torch_module = getattr(nn, cell.upper())(N_IN, H, **options)
    for layer_norm_on in (False, True):
        torch.manual_seed(3)
        module = CLASSES[cell](N_IN, H, layer_norm=layer_norm_on, **options)
        ours, theirs = module.state_dict(), torch_module.state_dict()
        assert list(ours)[:len(theirs)] == list(theirs)
        for name, value in theirs.items():
            assert torch.equal(ours[name], value), name
        extra = list(ours)[len(theirs):]
        if not layer_norm_on:
            assert extra == []
            continue
        per_dir = ["ln_ih_weight", "ln_hh_weight"] + (
            ["ln_c_weight", "ln_c_bias"] if cell == "lstm" else [])
        assert extra == [f"{n}_l{k}{sfx}" for k in range(2) for sfx in ("", "_reverse")
                         for n in per_dir]
        gates = 4 if cell == "lstm" else 3
        for name in extra:
            size = gates * H if "_ih_" in name or "_hh_" in name else H
            assert ours[name].shape == (size,), name
            assert torch.equal(ours[name], torch.full((size,), 0.0 if "bias" in name else 1.0))
        module.reset_parameters()  # torch's reset, then LN's own init again
        assert torch.equal(module.ln_c_bias_l1_reverse if cell == "lstm"
                           else module.ln_hh_weight_l1_reverse,
                           torch.zeros(H) if cell == "lstm" else torch.ones(3 * H))
        assert "layer_norm=True" in repr(module)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_state_dict_round_trip(cell):
    options = {"proj_size": 2} if cell == "lstm" else {}
    module, _ = ln_twins(cell, torch.float32, backend="reference", **options)
    loaded = CLASSES[cell](N_IN, H, layer_norm=True, backend="reference", **options)
    loaded.load_state_dict(module.state_dict())
    for (name, p), (name_l, p_l) in zip(module.named_parameters(), loaded.named_parameters()):
        assert name == name_l and torch.equal(p, p_l), name
    x = torch.randn(T, B, N_IN)
    torch.testing.assert_close(loaded(x)[0], module(x)[0], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="Missing key"):  # an nn.LSTM state_dict lacks LN
        loaded.load_state_dict(getattr(nn, cell.upper())(N_IN, H, **options).state_dict())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradcheck_float64(cell):
    """Analytic gradients of the fused kernels against finite differences: input, h0 and
    the LN parameters (the other weights' gradients are the plain GEMMs of stepwise)."""
    module, _ = ln_twins(cell, torch.float64)
    small_x = torch.randn(2, 2, N_IN, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 2, H, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in module.named_parameters() if n.startswith("ln_")]
    ln_params = [getattr(module, n).detach().clone().requires_grad_() for n in names]

    def run(x, h, *ln):
        params = dict(zip(names, ln))
        hx = (h, torch.zeros_like(h)) if cell == "lstm" else h
        out, finals = torch.func.functional_call(module, params, (x, hx))
        finals = finals if isinstance(finals, tuple) else (finals,)
        return (out, *finals)

    # fast mode (random projections of the Jacobian): the slow mode's one forward per input
    # element took minutes through the interpreter
    assert torch.autograd.gradcheck(run, (small_x, h0, *ln_params), fast_mode=True)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_persistent_falls_back_to_stepwise_with_a_warning(cell, monkeypatch):
    monkeypatch.setattr(dispatch, "_warned", set())  # the warning is once per process
    module = CLASSES[cell](N_IN, H, layer_norm=True, backend="persistent")
    x = torch.randn(T, B, N_IN)
    with pytest.warns(FallbackWarning, match="layer_norm=True"):
        out, _ = module(x)
    module.backend = "stepwise"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        want, _ = module(x)
    assert torch.equal(out, want)
    assert layer_norm.PERSISTENT_FALLBACK.startswith("backend='persistent'")


def test_torch_backend_is_refused():
    with pytest.raises(ValueError, match="no layer-normalised cell"):
        TritonLSTM(N_IN, H, layer_norm=True, backend="torch")
    module = TritonGRU(N_IN, H, layer_norm=True)
    module.backend = "torch"
    with pytest.raises(ValueError, match="backend='auto', 'stepwise'"):
        module(torch.randn(T, B, N_IN))


def test_layer_norm_layer_is_one_custom_op_under_compile():
    """torch.compile(fullgraph=True) sees each LN layer as one op (no graph break) and gives
    eager's numbers; opcheck checks the op's schema, fake and autograd registrations."""
    module = TritonLSTM(N_IN, H, layer_norm=True, dtype=torch.float64, backend="stepwise")
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    x = torch.randn(T, B, N_IN, dtype=torch.float64)
    out, (h_n, c_n) = compiled(x)
    want, (h_want, c_want) = module(x)
    for got, ref in ((out, want), (h_n, h_want), (c_n, c_want)):
        assert_close(got, ref, torch.float64, "compiled")
    grads = torch.autograd.grad(out.sum(), list(module.parameters()))
    ref_grads = torch.autograd.grad(want.sum(), list(module.parameters()))
    for g, g_ref in zip(grads, ref_grads):
        assert_close(g, g_ref, torch.float64, "compiled gradient")

    def p(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    x_rows = p(T * 2, 2)
    torch.library.opcheck(layer_norm.rnn_layer_norm, (
        "gru", x_rows, None, p(2, 3), None, p(9, 2), p(9, 3), p(9), p(9), None, p(9), p(9),
        None, None, True, True))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_double_backward_matches_reference(cell):
    """backward(create_graph=True) (a gradient penalty) goes through the reference layer."""
    module, oracle = ln_twins(cell, torch.float64)
    x = torch.randn(3, 2, N_IN, dtype=torch.float64, requires_grad=True)
    penalties = []
    for m in (module, oracle):
        (dx,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
        penalties.append(torch.autograd.grad(dx.pow(2).sum(), list(m.parameters())))
    for g, g_ref in zip(*penalties):
        assert_close(g, g_ref, torch.float64, "second-order gradient")


def test_jvp_runs_the_reference_equations(monkeypatch):
    """Forward-mode AD has no formula in the custom op: like the plain layers, LN layers run
    the reference there (warned), and the tangent is the reference backend's."""
    monkeypatch.setattr(dispatch, "_warned", set())
    module, oracle = ln_twins("lstm", torch.float64)
    x, v = (torch.randn(3, 2, N_IN, dtype=torch.float64) for _ in range(2))
    with pytest.warns(FallbackWarning, match="forward-mode"):
        _, tangent = torch.func.jvp(lambda t: module(t)[0], (x,), (v,))
    _, want = torch.func.jvp(lambda t: oracle(t)[0], (x,), (v,))
    assert want.abs().max() > 1e-3
    assert_close(tangent, want, torch.float64, "jvp tangent")


def test_cpu_autocast_casts_the_layer_norm_parameters_too():
    """Under CPU autocast torch casts a padded LSTM to bf16: the LN parameters run in bf16
    like the other weights (the numbers of the module converted to bf16), and the fp32
    parameters get gradients."""
    module = TritonLSTM(N_IN, H, layer_norm=True, backend="stepwise")
    x = torch.randn(T, B, N_IN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = module(x)
    assert out.dtype == torch.bfloat16
    converted = TritonLSTM(N_IN, H, layer_norm=True, backend="stepwise", dtype=torch.bfloat16)
    converted.load_state_dict(module.state_dict())
    assert torch.equal(out, converted(x.to(torch.bfloat16))[0])
    out.float().sum().backward()
    grad = module.ln_hh_weight_l0.grad
    assert grad is not None and grad.dtype == torch.float32 and grad.abs().max() > 0

COMPILE_FOR_SM90 = r'''
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lstm_triton.kernels import layer_norm_pointwise as lnp
STATE = ("c_ptr", "dc_ptr", "c_save_ptr", "c_prev_ptr", "c0_ptr", "rstd_ptr", "rstd_r_ptr",
         "rstd_c_ptr")
for kernel in (lnp.ln_rows_fwd_kernel, lnp.ln_rows_bwd_kernel, lnp.lstm_ln_step_fwd_kernel,
               lnp.lstm_ln_step_bwd_kernel, lnp.gru_ln_step_fwd_kernel,
               lnp.gru_ln_step_bwd_kernel):
    for dt in ("fp16", "bf16", "fp32", "fp64"):
        compute = tl.float64 if dt == "fp64" else tl.float32
        state = "*fp64" if dt == "fp64" else "*fp32"
        flags = ("WRITE_H_STATE", "SAVE", "ADD_DH_REC", "HAS_BIAS")
        cx = {k: True for k in flags if k in kernel.arg_names}
        cx.update(COMPUTE=compute, BLOCK_B=4)
        cx.update({k: 256 for k in ("BLOCK_H", "BLOCK_C") if k in kernel.arg_names})
        sig = {n: "constexpr" if n in cx else ((state if n in STATE else "*" + dt)
                                               if n.endswith("_ptr") else "i32")
               for n in kernel.arg_names}
        triton.compile(ASTSource(kernel, sig, constexprs=cx), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 4})
print("compiled")
'''


@pytest.mark.sm90
@pytest.mark.slow
def test_layer_norm_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter never compiles: build every layer-norm kernel for an H100 (sm_90) in
    every dtype, in a process without TRITON_INTERPRET (it caught a module-level EPS that the
    interpreter accepted and the compiler refuses)."""
    from test_persistent import run_compiled_for_sm90

    run_compiled_for_sm90(COMPILE_FOR_SM90, expect="compiled")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_exports_and_traces_record_the_layer_norm_equations(cell):
    """torch's own LSTM/GRU has no layer-normalised cell, so an export must not lower to
    it (that would drop every LN silently): traced and exported modules run the reference
    equations as plain torch ops, with the module's numbers."""
    module, _ = ln_twins(cell, torch.float32, num_layers=2)
    x = torch.randn(T, B, N_IN)
    want = module(x)[0]
    traced = torch.jit.trace(module, (x,), check_trace=False)
    assert_close(traced(x)[0], want, torch.float32, "jit.trace")
    exported = torch.export.export(module, (x,))
    assert "lstm_triton" not in str(exported.graph)  # plain ops: loads without lstm_triton
    assert_close(exported.module()(x)[0], want, torch.float32, "torch.export")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_script_and_onnx_refuse_layer_norm_loudly(cell, monkeypatch):
    """TorchScript runs torch's kernels and ONNX has LSTM/GRU operators without LN: each
    refuses a layer-normalised module with a message naming the way that works."""
    from lstm_triton import export

    module, _ = ln_twins(cell, torch.float32)
    with pytest.raises(RuntimeError, match="cannot be scripted with layer_norm=True"):
        torch.jit.script(module)
    monkeypatch.setattr(export, "in_onnx_export", lambda: True)  # what an ONNX export sees
    with pytest.raises(RuntimeError, match="export it with torch.export"):
        module(torch.randn(T, B, N_IN))
