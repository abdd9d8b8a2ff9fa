"""Issue 18: options beyond nn.LSTM / nn.GRU (segment resets, zoneout, weight_drop,
recurrent_dropout, variational_dropout), against the float64 reference and torch.

Random options are tested three ways: training with a fixed seed against the float64
reference backend, which draws the very same masks (variants.py draws them in the driver,
in float32, whatever the backend and dtype); eval formulas; p = 0 equals nn.LSTM / nn.GRU.
"""
import warnings

import pytest
import torch
from rnn_testing import DEVICE, TORCH_MODULES, as_tuple, assert_close
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lstm_triton import TritonGRU, TritonGRUCell, TritonLSTM, TritonLSTMCell
from lstm_triton.dispatch import FallbackWarning
from lstm_triton.variants import layer_variant

MODULES = {"lstm": TritonLSTM, "gru": TritonGRU}
F64 = torch.float64


def make(cell, *args, dtype=torch.float32, backend="stepwise", **kwargs):
    return MODULES[cell](*args, dtype=dtype, device=DEVICE, backend=backend, **kwargs)


def oracle_of(module):
    """The same module in float64 on the reference backend (same weights and options)."""
    oracle = MODULES[module.cell](module.input_size, module.hidden_size, device=DEVICE,
                                  **_config(module), dtype=F64, backend="reference")
    oracle.load_state_dict({k: v.to(F64) for k, v in module.state_dict().items()})
    oracle.train(module.training)
    return oracle


def _config(module):
    names = ["num_layers", "bias", "batch_first", "dropout", "bidirectional", "zoneout",
             "weight_drop", "recurrent_dropout", "variational_dropout"]
    if module.cell == "lstm":
        names.append("proj_size")
    return {n: getattr(module, n) for n in names}


def run(module, x, hx, resets, seed=7):
    """Output, final states and the gradients of x, the states and every parameter, of a
    loss touching all of them with fixed random weights; masks drawn from `seed`."""
    x = x.detach().to(module.weight_ih_l0.dtype).requires_grad_()
    states = [s.detach().to(x.dtype).requires_grad_() for s in as_tuple(hx)] if hx else []
    torch.manual_seed(seed)
    arg = None if not states else (tuple(states) if module.cell == "lstm" else states[0])
    out, finals = module(x, arg, resets=resets)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    loss = sum((t.double() * torch.randn(t.shape, generator=gen, device=DEVICE, dtype=F64)).sum()
               for t in (out, *as_tuple(finals)))
    grads = torch.autograd.grad(loss, [x, *states, *module.parameters()])
    return out, as_tuple(finals), grads


def assert_same_run(got, want, dtype):
    for name, a, b in zip(["output", "finals", "grads"], got, want):
        for k, (u, v) in enumerate(zip(as_tuple(a), as_tuple(b))):
            assert_close(u, v, dtype, f"{name}[{k}]")


def random_resets(T, B, p=0.3):
    return torch.rand(T, B, device=DEVICE) < p


OPTIONS = [
    pytest.param(dict(zoneout=0.3), id="zoneout"),
    pytest.param(dict(zoneout=(0.5, 0.2)), id="zoneout-pair"),
    pytest.param(dict(weight_drop=0.4), id="weight_drop"),
    pytest.param(dict(recurrent_dropout=0.4), id="recurrent_dropout"),
    pytest.param(dict(dropout=0.5, variational_dropout=True), id="variational_dropout"),
    pytest.param(dict(zoneout=0.2, weight_drop=0.3, recurrent_dropout=0.3, dropout=0.4,
                      variational_dropout=True), id="all"),
]


# ----------------------------------------------------------- each option vs the oracle
def check_against_oracle(cell, options, *, proj=0, resets=True, training=True, layers=2,
                         bidirectional=True, h0=True, dtype=torch.float32, backend="stepwise",
                         T=5, B=3):
    kwargs = dict(proj_size=proj) if proj else {}
    I, H = 4, 5
    module = make(cell, I, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype,
                  backend=backend, **options, **kwargs).train(training)
    x = torch.randn(T, B, I, device=DEVICE)
    n = layers * (2 if bidirectional else 1)
    hx = None
    if h0:
        hx = (torch.randn(n, B, proj or H, device=DEVICE),) + (
            (torch.randn(n, B, H, device=DEVICE),) if cell == "lstm" else ())
    r = random_resets(T, B) if resets else None
    got = run(module, x, hx, r)
    assert_same_run(got, run(oracle_of(module), x, hx, r), dtype)


ALL = dict(zoneout=0.2, weight_drop=0.3, recurrent_dropout=0.3, dropout=0.4,
           variational_dropout=True)
ONE_LAYER = dict(zoneout=0.2, weight_drop=0.3, recurrent_dropout=0.3)  # no inter-layer dropout


@pytest.mark.parametrize("cell, proj", [("lstm", 0), ("lstm", 3), ("gru", 0)],
                         ids=["lstm", "lstm-proj", "gru"])
def test_every_option_at_once_with_resets_matches_the_reference(cell, proj):
    """Training, 2 layers, bidirectional, h0 given, fp32: forward and every gradient, with
    the float64 reference drawing the same masks from the same seed."""
    check_against_oracle(cell, ALL, proj=proj)


@pytest.mark.parametrize("cell, options", [
    pytest.param("lstm", dict(zoneout=(0.5, 0.2)), id="lstm-zoneout-pair"),
    pytest.param("gru", dict(zoneout=0.3), id="gru-zoneout"),
    pytest.param("lstm", dict(weight_drop=0.4), id="lstm-weight_drop"),
    pytest.param("gru", dict(recurrent_dropout=0.4), id="gru-recurrent_dropout"),
    pytest.param("lstm", dict(recurrent_dropout=0.4), id="lstm-recurrent_dropout"),
    pytest.param("gru", dict(dropout=0.5, variational_dropout=True), id="gru-variational"),
])
def test_each_option_alone_matches_the_reference(cell, options):
    """Training, no resets, 2 layers one direction, no h0 (zeros)."""
    check_against_oracle(cell, options, resets=False, bidirectional=False, h0=False, T=4)


@pytest.mark.parametrize("cell, proj", [("lstm", 3), ("gru", 0)], ids=["lstm-proj", "gru"])
def test_eval_zoneout_and_resets_match_the_reference(cell, proj):
    """Eval: zoneout blends with p; the dropout options are off."""
    check_against_oracle(cell, ONE_LAYER, proj=proj, training=False, layers=1)


@pytest.mark.parametrize("dtype", [pytest.param(torch.float16, id="fp16"),
                                   pytest.param(torch.bfloat16, id="bf16")])
def test_half_dtypes_match_the_reference(dtype):
    check_against_oracle("lstm", ONE_LAYER, dtype=dtype, layers=1, T=4)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["stepwise", "persistent"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("resets", [False, True], ids=["", "resets"])
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("cell, proj", [("lstm", 0), ("lstm", 3), ("gru", 0)],
                         ids=["lstm", "lstm-proj", "gru"])
def test_option_matrix_matches_the_reference(cell, proj, options, resets, training, backend):
    if cell == "gru" and isinstance(options.get("zoneout"), tuple):
        pytest.skip("the GRU's zoneout is a float (its only state is h)")
    check_against_oracle(cell, options, proj=proj, resets=resets, training=training,
                         backend=backend)


# ------------------------------------------------------------- defaults are torch's
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_p0_options_are_nn_lstm_exactly(cell):
    """Every option at 0 / False: bit for bit the default module (the same kernels), which
    matches torch's module; no new parameters or buffers."""
    kwargs = dict(num_layers=2, bidirectional=True, dropout=0.3)
    plain = make(cell, 3, 4, **kwargs)
    zeros = make(cell, 3, 4, zoneout=0.0, weight_drop=0.0, recurrent_dropout=0.0,
                 variational_dropout=False, **kwargs)
    zeros.load_state_dict(plain.state_dict())
    assert list(zeros.state_dict()) == list(TORCH_MODULES[cell](3, 4, **kwargs).state_dict())
    assert repr(zeros) == repr(plain)
    x = torch.randn(4, 2, 3, device=DEVICE)
    torch.manual_seed(3)
    a = plain(x)
    torch.manual_seed(3)
    b = zeros(x)
    for u, v in zip(torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)):
        assert torch.equal(u, v)
    torch_module = TORCH_MODULES[cell](3, 4, **kwargs, dtype=F64, device=DEVICE)
    torch_module.load_state_dict({k: v.double() for k, v in plain.state_dict().items()})
    zeros.eval(), torch_module.eval()
    for u, v in zip(torch.utils._pytree.tree_leaves(zeros(x)),
                    torch.utils._pytree.tree_leaves(torch_module(x.double()))):
        assert_close(u, v, torch.float32, "vs torch")


def test_options_show_in_repr_and_add_nothing_to_state_dict():
    m = make("lstm", 3, 4, zoneout=(0.1, 0.2), weight_drop=0.5)
    assert "zoneout=(0.1, 0.2)" in repr(m) and "weight_drop=0.5" in repr(m)
    assert "recurrent_dropout" not in repr(m)
    assert list(m.state_dict()) == list(nn.LSTM(3, 4).state_dict())


# -------------------------------------------------------------- the eval formula
def test_eval_zoneout_is_the_p_blend_of_lstm_cell_steps():
    """Independent of reference.py: a loop over nn.LSTMCell, h_t = p_h h_{t-1} + (1 - p_h)
    h_new and likewise c with p_c."""
    p_c, p_h = 0.3, 0.6
    module = make("lstm", 3, 5, zoneout=(p_c, p_h), dtype=F64).eval()
    cell = nn.LSTMCell(3, 5, dtype=F64, device=DEVICE)
    cell.load_state_dict({k[:-3]: v for k, v in module.state_dict().items()})
    x = torch.randn(4, 2, 3, dtype=F64, device=DEVICE)
    h, c = torch.randn(1, 2, 5, dtype=F64, device=DEVICE), torch.randn(1, 2, 5, dtype=F64,
                                                                       device=DEVICE)
    out, (h_n, c_n) = module(x, (h, c))
    h, c, outs = h[0], c[0], []
    for t in range(4):
        h_new, c_new = cell(x[t], (h, c))
        h, c = p_h * h + (1 - p_h) * h_new, p_c * c + (1 - p_c) * c_new
        outs.append(h)
    assert_close(out, torch.stack(outs), F64, "output")
    assert_close(h_n[0], h, F64, "h_n")
    assert_close(c_n[0], c, F64, "c_n")


# ------------------------------------------------------------ masks: kept fractions
@pytest.mark.parametrize("p", [0.2, 0.7])
def test_masks_keep_the_asked_fractions(p):
    module = make("lstm", 3, 40, weight_drop=p, recurrent_dropout=p, zoneout=p).train()
    like = torch.zeros(1, device=DEVICE)
    keep = torch.ones(600 * 40, device=DEVICE)
    w_hh, variant = layer_variant(module, keep, module.weight_hh_l0, 600 * 40, 40, 40, 40, like)
    dropped = (w_hh == 0).float().mean().item()
    assert abs(dropped - p) < 0.03
    kept = w_hh != 0
    assert_close(w_hh[kept], module.weight_hh_l0[kept] / (1 - p), torch.float32, "scaled")
    assert abs((variant.rec == 0).float().mean().item() - p) < 0.05
    rec = variant.rec
    assert ((rec == 0) | torch.isclose(rec, torch.tensor(1 / (1 - p), device=DEVICE))).all()
    for z in (variant.zone_c, variant.zone_h):  # 1 keeps the previous state
        assert abs(z.mean().item() - p) < 0.01 and set(z.unique().tolist()) == {0.0, 1.0}


def test_training_zoneout_keeps_the_previous_h_about_p_of_the_time():
    """The kernel's output: h_t == h_{t-1} exactly where the mask kept it."""
    p = 0.4
    module = make("gru", 3, 16, zoneout=p).train()
    out, _ = module(torch.randn(20, 4, 3, device=DEVICE))
    kept = (out[1:] == out[:-1]).float().mean().item()
    assert abs(kept - p) < 0.05


def test_a_seed_reproduces_a_call_bit_for_bit():
    module = make("lstm", 3, 4, num_layers=2, zoneout=0.3, weight_drop=0.3,
                  recurrent_dropout=0.3, dropout=0.3, variational_dropout=True).train()
    x = torch.randn(4, 2, 3, device=DEVICE)
    torch.manual_seed(5)
    a, _ = module(x)
    b, _ = module(x)
    torch.manual_seed(5)
    c, _ = module(x)
    assert torch.equal(a, c) and not torch.equal(a, b)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_variational_dropout_shares_one_mask_over_time(monkeypatch, packed):
    """What the second layer reads: zero at the same (sequence, feature) at every step."""
    from lstm_triton import variants

    module = make("lstm", 3, 6, num_layers=2, dropout=0.5, variational_dropout=True).train()
    original, seen = variants.inter_layer_dropout, []

    def capture(mod, layer_input, batch_sizes, batch):
        seen.append(original(mod, layer_input, batch_sizes, batch))
        return seen[-1]

    monkeypatch.setattr(variants, "inter_layer_dropout", capture)
    x = torch.randn(5, 2, 3, device=DEVICE)
    module(pack_padded_sequence(x, [5, 3]) if packed else x)
    zero = seen[0] == 0
    rows = [zero[:10].view(5, 2, 6)[:, b] for b in range(2)] if not packed else [
        zero[[0, 2, 4, 6, 7]], zero[[1, 3, 5]]]  # packed rows of sequences 0 and 1
    assert zero.any() and not zero.all()
    for r in rows:
        assert torch.equal(r, r[:1].expand_as(r))


# ------------------------------------------------------------------------ resets
def _segments(resets_col):
    starts = [0] + [t for t in range(1, len(resets_col)) if resets_col[t]]
    return list(zip(starts, starts[1:] + [len(resets_col)]))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rows_with_several_segments_equal_each_segment_run_alone(cell):
    """2 layers, bidirectional, zero initial state: segment by segment, outputs equal."""
    T, B = 7, 3
    module = make(cell, 3, 4, num_layers=2, bidirectional=True, dtype=F64)
    x = torch.randn(T, B, 3, dtype=F64, device=DEVICE)
    resets = torch.zeros(T, B, dtype=torch.bool, device=DEVICE)
    resets[2, 0] = resets[5, 0] = resets[1, 1] = resets[6, 1] = True  # row 2: one segment
    out, _ = module(x, resets=resets)
    module.backend = "reference"  # the segments alone, on plain torch ops (and fast)
    for b in range(B):
        for start, end in _segments(resets[:, b].tolist()):
            alone, _ = module(x[start:end, b:b + 1])
            assert_close(out[start:end, b:b + 1], alone, F64, f"row {b} [{start}, {end})")


def test_a_reset_at_step_0_overrides_h0_and_the_reverse_direction_ends_from_h0():
    module = make("lstm", 3, 4, bidirectional=True, dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64, device=DEVICE)
    hx = tuple(torch.randn(2, 2, 4, dtype=F64, device=DEVICE) for _ in range(2))
    resets = torch.zeros(5, 2, dtype=torch.bool, device=DEVICE)
    resets[0] = True
    out, _ = module(x, hx, resets=resets)
    zero_fwd = (hx[0].clone(), hx[1].clone())
    zero_fwd[0][0].zero_(), zero_fwd[1][0].zero_()  # forward direction from zeros
    want, _ = module(x, zero_fwd)
    assert_close(out, want, F64, "output")


@pytest.mark.parametrize("cell, proj", [("lstm", 0), ("lstm", 2), ("gru", 0)],
                         ids=["lstm", "lstm-proj", "gru"])
def test_rl_rollout_loop_equals_one_call_with_resets(cell, proj):
    """The loop RL libraries run (one call per step, state * (1 - done)) equals one call
    with resets: outputs, final states, and the gradients of the input, h0 and weights."""
    T, B = 5, 3
    kwargs = dict(proj_size=proj) if proj else {}
    module = make(cell, 3, 4, num_layers=2, dtype=F64, **kwargs)
    x = torch.randn(T, B, 3, dtype=F64, device=DEVICE, requires_grad=True)
    h0 = [torch.randn(2, B, proj or 4, dtype=F64, device=DEVICE, requires_grad=True)]
    if cell == "lstm":
        h0.append(torch.randn(2, B, 4, dtype=F64, device=DEVICE, requires_grad=True))
    done = torch.rand(T, B, device=DEVICE) < 0.4  # episode starts at step t
    done[0, 0] = True

    def pack(states):
        return tuple(states) if cell == "lstm" else states[0]

    out, finals = module(x, pack(h0), resets=done)
    loop, state = [], list(h0)
    for t in range(T):
        keep = (~done[t]).to(F64)[None, :, None]
        y, new = module(x[t:t + 1], pack([s * keep for s in state]))
        loop.append(y)
        state = list(as_tuple(new))
    loop = torch.cat(loop)
    assert_close(out, loop, F64, "output")
    for a, b in zip(as_tuple(finals), state):
        assert_close(a, b, F64, "final state")
    w = torch.randn_like(out)
    params = [x, *h0, *module.parameters()]
    g1 = torch.autograd.grad((out * w).sum() + sum(f.sum() for f in as_tuple(finals)), params)
    g2 = torch.autograd.grad((loop * w).sum() + sum(f.sum() for f in state), params)
    for a, b in zip(g1, g2):
        assert_close(a, b, F64, "gradient")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_reset_zeroes_the_state_of_those_rows(cell):
    cls = TritonLSTMCell if cell == "lstm" else TritonGRUCell
    module = cls(3, 4, dtype=F64, device=DEVICE, backend="stepwise")
    torch_cell = (nn.LSTMCell if cell == "lstm" else nn.GRUCell)(3, 4, dtype=F64, device=DEVICE)
    torch_cell.load_state_dict(module.state_dict())
    x = torch.randn(3, 3, dtype=F64, device=DEVICE)
    states = [torch.randn(3, 4, dtype=F64, device=DEVICE) for _ in range(2 if cell == "lstm"
                                                                          else 1)]
    reset = torch.tensor([True, False, True], device=DEVICE)
    arg = tuple(states) if cell == "lstm" else states[0]
    got = module(x, arg, reset=reset)
    zeroed = [s * (~reset)[:, None] for s in states]
    want = torch_cell(x, tuple(zeroed) if cell == "lstm" else zeroed[0])
    for a, b in zip(as_tuple(got), as_tuple(want)):
        assert_close(a, b, F64, "state")
    got_unbatched = module(x[1], tuple(s[1] for s in states) if cell == "lstm" else states[0][1],
                           reset=torch.tensor(True, device=DEVICE))
    want = torch_cell(x[1:2])  # from zeros
    for a, b in zip(as_tuple(got_unbatched), as_tuple(want)):
        assert_close(a, b[0], F64, "unbatched state")


# --------------------------------------------------------------------- gradcheck
SLOW = pytest.mark.slow


@pytest.mark.parametrize("cell, options, bidirectional", [
    pytest.param("lstm", dict(zoneout=(0.3, 0.5), recurrent_dropout=0.5, weight_drop=0.5),
                 False, id="lstm-all"),
    pytest.param("gru", dict(zoneout=0.4, recurrent_dropout=0.5, weight_drop=0.5), False,
                 id="gru-all"),
    pytest.param("lstm", dict(zoneout=(0.3, 0.5)), True, id="lstm-zoneout", marks=SLOW),
    pytest.param("gru", dict(zoneout=0.4), True, id="gru-zoneout", marks=SLOW),
    pytest.param("lstm", dict(recurrent_dropout=0.5), True, id="lstm-recurrent_dropout",
                 marks=SLOW),
    pytest.param("gru", dict(recurrent_dropout=0.5), True, id="gru-recurrent_dropout",
                 marks=SLOW),
    pytest.param("lstm", dict(weight_drop=0.5), True, id="lstm-weight_drop", marks=SLOW),
    pytest.param("lstm", dict(), True, id="lstm-resets", marks=SLOW),
    pytest.param("gru", dict(), True, id="gru-resets", marks=SLOW),
])
def test_gradcheck(cell, options, bidirectional):
    """float64, tiny, training masks from a fixed seed at every evaluation; x, h0 and W_hh
    (through torch.func.functional_call) as inputs."""
    module = make(cell, 2, 3, dtype=F64, bidirectional=bidirectional, **options).train()
    x = torch.randn(3, 2, 2, dtype=F64, device=DEVICE, requires_grad=True)
    h0 = torch.randn(2 if bidirectional else 1, 2, 3, dtype=F64, device=DEVICE,
                     requires_grad=True)
    w_hh = module.weight_hh_l0.detach().clone().requires_grad_()
    resets = torch.tensor([[False, True], [True, False], [False, True]], device=DEVICE)
    params = dict(module.named_parameters())

    def f(x, h0, w_hh):
        torch.manual_seed(0)
        hx = (h0, h0.flip(-1)) if cell == "lstm" else h0
        out, finals = torch.func.functional_call(module, {**params, "weight_hh_l0": w_hh},
                                                 (x, hx), {"resets": resets})
        return out, *as_tuple(finals)

    assert torch.autograd.gradcheck(f, (x, h0, w_hh), fast_mode=True)


# --------------------------------------------------------------------- persistent
@pytest.mark.parametrize("cell, proj", [("lstm", 0), ("lstm", 3), ("gru", 0)],
                         ids=["lstm", "lstm-proj", "gru"])
def test_persistent_fuses_every_option_and_matches_the_reference(cell, proj):
    """Resets, zoneout and recurrent dropout inside the persistent loops (no fallback):
    training, 2 layers, bidirectional, h0 given, forward and every gradient."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        check_against_oracle(cell, ALL, proj=proj, backend="persistent")


def test_persistent_eval_zoneout_with_resets_matches_the_reference():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        check_against_oracle("lstm", ONE_LAYER, training=False, layers=1,
                             backend="persistent")


def test_persistent_runs_weight_drop_and_variational_dropout_itself():
    module = make("gru", 3, 4, num_layers=2, backend="persistent", weight_drop=0.3, dropout=0.3,
                  variational_dropout=True).train()
    x = torch.randn(4, 2, 3, device=DEVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        got = run(module, x, None, None)
    assert_same_run(got, run(oracle_of(module), x, None, None), torch.float32)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs", [
    dict(zoneout=1.0), dict(zoneout=-0.1), dict(zoneout=(0.1, 1.5)), dict(zoneout=(0.1,)),
    dict(weight_drop=1.0), dict(recurrent_dropout=-1), dict(recurrent_dropout="0.1"),
    dict(variational_dropout=1),
], ids=str)
def test_bad_options_raise_value_error(kwargs):
    with pytest.raises(ValueError, match="should be"):
        make("lstm", 3, 4, **kwargs)


def test_gru_zoneout_is_a_float():
    with pytest.raises(ValueError, match="range"):
        make("gru", 3, 4, zoneout=(0.1, 0.2))


@pytest.mark.parametrize("resets, error, match", [
    pytest.param(lambda: torch.zeros(4, 2), RuntimeError, r"resets.bool\(\)", id="dtype"),
    pytest.param(lambda: torch.zeros(2, 4, dtype=torch.bool), RuntimeError,
                 r"\(seq_len, batch\) = \(4, 2\)", id="shape"),
    pytest.param(lambda: [[False] * 2] * 4, TypeError, "bool Tensor", id="list"),
])
def test_bad_resets(resets, error, match):
    module = make("lstm", 3, 5)
    with pytest.raises(error, match=match):
        module(torch.randn(4, 2, 3, device=DEVICE), resets=resets().to(DEVICE)
               if isinstance(resets(), torch.Tensor) else resets())


def test_batch_first_and_unbatched_resets_shapes():
    module = make("gru", 3, 5, batch_first=True, dtype=F64)
    x = torch.randn(2, 4, 3, dtype=F64, device=DEVICE)
    resets = torch.zeros(2, 4, dtype=torch.bool, device=DEVICE)
    resets[0, 2] = True
    out, _ = module(x, resets=resets)
    assert_close(out[0, 2:], module(x[0:1, 2:])[0][0], F64, "batch_first segment")
    with pytest.raises(RuntimeError, match=r"\(batch, seq_len\)"):
        module(x, resets=resets.t())
    unbatched, _ = module(x[0], resets=resets[0])
    assert_close(unbatched, out[0], F64, "unbatched")


def test_resets_with_a_packed_sequence_are_refused():
    module = make("lstm", 3, 5)
    packed = pack_padded_sequence(torch.randn(4, 2, 3, device=DEVICE), [4, 2])
    with pytest.raises(ValueError, match="PackedSequence"):
        module(packed, resets=torch.zeros(4, 2, dtype=torch.bool, device=DEVICE))


def test_backend_torch_refuses_the_options():
    module = make("lstm", 3, 5, backend="torch", zoneout=0.1)
    with pytest.raises(ValueError, match="backend='torch'"):
        module(torch.randn(4, 2, 3, device=DEVICE))


# ------------------------------------------------------ the custom op, compile, autograd
@pytest.mark.parametrize("cell, proj", [("lstm", 2), ("gru", 0)], ids=["lstm-proj", "gru"])
def test_opcheck_rnn_layer_with_a_variant(cell, proj):
    """The op's schema, fake and autograd registration with the trailing variant tensors
    (keep, recurrent-dropout mask, zoneout masks; an eval mask is an expanded tensor)."""
    from lstm_triton.ops import rnn_layer, rnn_layer_backward

    B, I, H, T = 2, 3, 4, 3
    G, P = (4 if cell == "lstm" else 3), (proj or H)

    def leaf(*shape):
        return torch.randn(*shape, dtype=F64, device=DEVICE, requires_grad=True)

    keep = (torch.rand(T * B, device=DEVICE) > 0.3).to(F64)
    rec = torch.full((B, P), 2.0, dtype=F64, device=DEVICE)
    zone_c = torch.full((1, H), 0.3, dtype=F64, device=DEVICE).expand(T * B, H)
    zone_h = (torch.rand(T * B, P, device=DEVICE) < 0.3).to(F64)
    args = (cell, "stepwise", leaf(T * B, I), None, leaf(B, P),
            leaf(B, H) if cell == "lstm" else None, leaf(G * H, I), leaf(G * H, P), leaf(G * H),
            leaf(G * H), leaf(P, H) if proj else None, False, True, keep, rec,
            zone_c if cell == "lstm" else None, zone_h)
    torch.library.opcheck(rnn_layer, args)
    with torch.no_grad():
        y, h_n, c_n, s0, s1, s2 = rnn_layer(*args)
    x, h0, c0, w_ih, w_hh, w_hr = [t.detach() if t is not None else None
                                   for t in (args[2], args[4], args[5], args[6], args[7], args[10])]
    torch.library.opcheck(rnn_layer_backward, (
        cell, "stepwise", torch.randn_like(y), torch.randn_like(h_n),
        torch.randn_like(c_n) if cell == "lstm" else None, x, None, h0, c0, w_ih, w_hh, w_hr,
        y, s0, s1, s2, False, True, True, *args[13:]))


def test_compiled_module_with_options_matches_eager():
    torch._dynamo.reset()
    module = make("lstm", 3, 4, num_layers=2, zoneout=0.2, recurrent_dropout=0.3,
                  weight_drop=0.3, dropout=0.3, variational_dropout=True, dtype=F64).train()
    x = torch.randn(4, 2, 3, dtype=F64, device=DEVICE)
    resets = random_resets(4, 2)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    torch.manual_seed(2)
    want, _ = module(x, resets=resets)
    torch.manual_seed(2)
    got, _ = compiled(x, resets=resets)
    assert_close(got, want, F64, "compiled output")


def test_double_backward_with_options_matches_the_reference():
    """create_graph=True runs the reference math, fed the same variant tensors."""
    module = make("gru", 2, 3, zoneout=0.3, recurrent_dropout=0.3, dtype=F64).train()
    x = torch.randn(3, 2, 2, dtype=F64, device=DEVICE, requires_grad=True)
    resets = random_resets(3, 2)

    def penalty(m):
        torch.manual_seed(4)
        out, _ = m(x, resets=resets)
        (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), list(m.parameters()))

    got = penalty(module)
    module.backend = "reference"
    for a, b in zip(got, penalty(module)):
        assert_close(a, b, F64, "second-order gradient")


@pytest.mark.parametrize("reset, error, match", [
    pytest.param(lambda: torch.tensor([1, 0]), RuntimeError, r"reset.bool\(\)", id="dtype"),
    pytest.param(lambda: torch.tensor([True]), RuntimeError, r"\(batch,\)", id="shape"),
    pytest.param(lambda: True, TypeError, "bool Tensor", id="python-bool"),
])
def test_bad_cell_reset(reset, error, match):
    module = TritonGRUCell(3, 4, device=DEVICE, backend="stepwise")
    value = reset()
    with pytest.raises(error, match=match):
        module(torch.randn(2, 3, device=DEVICE), reset=value.to(DEVICE)
               if isinstance(value, torch.Tensor) else value)


@pytest.mark.slow  # ~20 s under the interpreter; the same equivalence runs fast above
def test_rl_rollouts_example_agrees_with_the_per_step_loop(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "rl_rollouts.py"
    spec = importlib.util.spec_from_file_location("rl_rollouts", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    diff = example.main(["--steps", "4", "--envs", "3", "--hidden", "5", "--done", "0.4"])
    assert diff < 1e-5
    assert "one call with resets" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["stepwise", "persistent"])
@pytest.mark.parametrize("cell, proj", [("lstm", 2), ("gru", 0)], ids=["lstm-proj", "gru"])
def test_packed_sequences_with_every_option_match_the_reference(cell, proj, backend):
    """Unsorted lengths (the reverse direction's short sequences join late), 2 layers,
    bidirectional, training: outputs, final states and every gradient."""
    kwargs = dict(proj_size=proj) if proj else {}
    module = make(cell, 3, 4, num_layers=2, bidirectional=True, backend=backend, **ALL,
                  **kwargs).train()
    oracle = oracle_of(module)
    x = torch.randn(5, 3, 3, device=DEVICE)
    lengths = [3, 5, 2]

    def go(m):
        xs = x.to(m.weight_ih_l0.dtype).requires_grad_()
        torch.manual_seed(11)
        out, finals = m(pack_padded_sequence(xs, lengths, enforce_sorted=False))
        loss = (out.data.double().sin()).sum() + sum(f.double().pow(2).sum()
                                                      for f in as_tuple(finals))
        return out.data, as_tuple(finals), torch.autograd.grad(loss, [xs, *m.parameters()])

    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        got = go(module)
    assert_same_run(got, go(oracle), torch.float32)


@pytest.mark.sm90
@pytest.mark.slow
def test_kernels_with_every_option_compile_for_sm90_without_a_gpu():
    """tests/test_persistent.py's sm_90 build of every kernel and dtype, with every option's
    flag on (the interpreter never compiles: catches scoping and type errors of the flags'
    branches before a GPU is at hand)."""
    from test_persistent import COMPILE_FOR_SM90, run_compiled_for_sm90

    script = COMPILE_FOR_SM90.replace("VARIANT = False", "VARIANT = True")
    assert script != COMPILE_FOR_SM90
    run_compiled_for_sm90(script, expect="compiled")


@pytest.mark.slow  # ~30 s under the interpreter
def test_awd_lm_example_trains_below_a_uniform_guess():
    import importlib.util
    import inspect
    import math
    import textwrap
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "awd_lm.py"
    spec = importlib.util.spec_from_file_location("awd_lm", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    losses, valid = example.main(["--steps", "10", "--quiet"])
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    vocab = len(set(inspect.getsource(textwrap)))
    assert valid < math.log(vocab)  # better than a uniform guess


# ------------------------------------------------------- where the options meet issue 19's
# export paths and the layer-norm cells

@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layer_norm_with_masks_runs_the_reference_with_a_warning(cell, monkeypatch):
    """The layer-norm kernels take no resets / zoneout masks yet: such a call warns and
    runs the reference equations, with the same masks (same seed) as a reference module."""
    monkeypatch.setattr("lstm_triton.dispatch._warned", set())  # the warning is once per process
    module = make(cell, 3, 5, layer_norm=True, zoneout=0.3, num_layers=2)
    oracle = MODULES[cell](3, 5, layer_norm=True, zoneout=0.3, num_layers=2, device=DEVICE,
                           dtype=F64, backend="reference")
    oracle.load_state_dict({k: v.to(F64) for k, v in module.state_dict().items()})
    x, resets = torch.randn(4, 2, 3), random_resets(4, 2)
    with pytest.warns(FallbackWarning, match="layer_norm=True together with resets"):
        got = run(module, x, None, resets)
    assert_same_run(got, run(oracle, x.double(), None, resets), torch.float32)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_exports_record_the_options_and_script_and_onnx_refuse_them(cell, monkeypatch):
    """torch's own LSTM/GRU has no zoneout or resets: an export records the reference math
    as plain torch ops (no lstm_triton op; the module's numbers), and TorchScript and ONNX,
    which would lower to torch's cells, refuse loudly."""
    from lstm_triton import export

    module = make(cell, 3, 5, zoneout=0.25).eval()  # eval: the zoneout blend, no draw
    x, resets = torch.randn(4, 2, 3), random_resets(4, 2)
    want = module(x, resets=resets)[0]
    exported = torch.export.export(module, (x,), {"resets": resets})
    assert "lstm_triton" not in str(exported.graph)
    assert_close(exported.module()(x, resets=resets)[0], want, torch.float32, "torch.export")
    with pytest.raises(RuntimeError, match="cannot be scripted"):
        torch.jit.script(module)
    monkeypatch.setattr(export, "in_onnx_export", lambda: True)  # what an ONNX export sees
    with pytest.raises(RuntimeError, match="export it with torch.export"):
        module(x)
