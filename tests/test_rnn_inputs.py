"""Bad input raises what nn.LSTM / nn.GRU raise; NaN, empty batches and strided
inputs behave as in torch."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

from lstm_triton import TritonGRU, TritonLSTM
from rnn_testing import KERNEL_BACKENDS, as_tuple, assert_close

L, B, H = 2, 3, 5


def packed(dtype):
    return pack_sequence([torch.randn(n, 4, dtype=dtype) for n in (3, 2, 2)])


def lstm_state(*shape, dtype=torch.float32):
    return (torch.randn(*shape, dtype=dtype), torch.randn(*shape, dtype=dtype))


# (name, cell, input, hx): each must fail in torch and in ours with the same exception type.
BAD = [
    ("wrong-feature-size", "lstm", lambda: torch.randn(4, B, 6), None),
    ("1-D-input", "lstm", lambda: torch.randn(4), None),
    ("4-D-input", "lstm", lambda: torch.randn(4, B, 4, 1), None),
    ("h0-wrong-batch", "lstm", lambda: torch.randn(4, B, 4),
     lambda: (torch.randn(L, B + 1, H), torch.randn(L, B, H))),
    ("h0-wrong-layers", "lstm", lambda: torch.randn(4, B, 4),
     lambda: (torch.randn(L + 1, B, H), torch.randn(L + 1, B, H))),
    ("c0-wrong-size", "lstm", lambda: torch.randn(4, B, 4),
     lambda: (torch.randn(L, B, H), torch.randn(L, B, H + 1))),
    ("2-D-state-for-batched-input", "lstm", lambda: torch.randn(4, B, 4),
     lambda: (torch.randn(B, H), torch.randn(B, H))),
    ("3-D-state-for-unbatched-input", "lstm", lambda: torch.randn(4, 4),
     lambda: lstm_state(L, 1, H)),
    ("input-dtype-mismatch", "lstm", lambda: torch.randn(4, B, 4, dtype=torch.float64), None),
    ("integer-input", "lstm", lambda: torch.randint(0, 3, (4, B, 4)), None),
    ("empty-sequence", "lstm", lambda: torch.randn(0, B, 4), None),
    ("empty-unbatched-sequence", "lstm", lambda: torch.randn(0, 4), None),
    ("gru-wrong-feature-size", "gru", lambda: torch.randn(4, B, 3), None),
    ("gru-h0-wrong-batch", "gru", lambda: torch.randn(4, B, 4), lambda: torch.randn(L, 2, H)),
    ("gru-3-D-input-2-D-state", "gru", lambda: torch.randn(4, B, 4), lambda: torch.randn(L, H)),
    ("gru-integer-input", "gru", lambda: torch.randint(0, 3, (4, B, 4)), None),
    ("gru-empty-sequence", "gru", lambda: torch.randn(0, B, 4), None),
    # torch indexes hx[1] before any check: IndexError with one state, RuntimeError with three
    ("hx-with-one-state", "lstm", lambda: torch.randn(4, B, 4), lambda: (torch.randn(L, B, H),)),
    ("hx-with-three-states", "lstm", lambda: torch.randn(4, B, 4),
     lambda: (torch.randn(L, B, H),) * 3),
    ("packed-2-D-states", "lstm", lambda: packed(torch.float32), lambda: lstm_state(L, H)),
    ("packed-input-dtype-mismatch", "lstm", lambda: packed(torch.float64), None),
    ("gru-packed-input-dtype-mismatch", "gru", lambda: packed(torch.float64), None),
    ("state-on-another-device", "lstm", lambda: torch.randn(4, B, 4),
     lambda: (torch.zeros(L, B, H, device="meta"), torch.zeros(L, B, H))),
    ("input-on-another-device", "gru", lambda: torch.randn(4, B, 4, device="meta"), None),
]


@pytest.mark.parametrize("name, cell, make_x, make_hx", [pytest.param(*c, id=c[0]) for c in BAD])
def test_bad_input_raises_what_torch_raises(name, cell, make_x, make_hx):
    torch_cls, our_cls = (nn.LSTM, TritonLSTM) if cell == "lstm" else (nn.GRU, TritonGRU)
    theirs, ours = torch_cls(4, H, num_layers=L), our_cls(4, H, num_layers=L, backend="stepwise")
    x, hx = make_x(), make_hx() if make_hx else None
    with pytest.raises(Exception) as torch_error:
        theirs(x, hx)
    with pytest.raises(torch_error.type) as our_error:
        ours(x, hx)
    assert len(str(our_error.value)) > 20, "the message must say what to change"


def test_state_dtype_mismatch_is_a_runtime_error_naming_the_fix():
    m = TritonLSTM(4, H, backend="stepwise")
    hx = lstm_state(1, B, H, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"\.to\(torch\.float32\)"):
        m(torch.randn(4, B, 4), hx)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_empty_batch_returns_empty_outputs_like_torch(cell, backend):
    """Batch 0: empty outputs that, as in torch, belong to the autograd graph (a backward
    gives zero gradients), and final states that are new tensors, not the given hx."""
    torch_cls, our_cls = (nn.LSTM, TritonLSTM) if cell == "lstm" else (nn.GRU, TritonGRU)
    theirs = torch_cls(3, H, num_layers=L, bidirectional=True)
    ours = our_cls(3, H, num_layers=L, bidirectional=True, backend=backend)
    hx = lstm_state(2 * L, 0, H) if cell == "lstm" else torch.randn(2 * L, 0, H)
    for module in (theirs, ours):
        x = torch.randn(4, 0, 3, requires_grad=True)
        out, finals = module(x, hx)
        assert out.shape == (4, 0, 2 * H) and out.requires_grad
        assert all(f.shape == (2 * L, 0, H) and f is not h
                   for f, h in zip(as_tuple(finals), as_tuple(hx)))
        (out.sum() + sum(f.sum() for f in as_tuple(finals))).backward()
        assert x.grad.shape == x.shape
        assert all(p.grad is not None and not p.grad.any() for p in module.parameters())


@pytest.mark.parametrize("backend", ["auto", "stepwise", "persistent"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_meta_modules_answer_shapes_like_torch(cell, backend):
    """Modules on the meta device (sizing a model before materialising it) give torch's
    output shapes whatever the backend: there is nothing to compute."""
    torch_cls, our_cls = (nn.LSTM, TritonLSTM) if cell == "lstm" else (nn.GRU, TritonGRU)
    x = torch.empty(4, 2, 3, device="meta")
    want_out, want_finals = torch_cls(3, H, num_layers=L, device="meta")(x)
    out, finals = our_cls(3, H, num_layers=L, device="meta", backend=backend)(x)
    assert out.device.type == "meta" and out.shape == want_out.shape
    assert [f.shape for f in as_tuple(finals)] == [f.shape for f in as_tuple(want_finals)]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_nan_propagates_per_row_as_in_torch(cell, backend):
    """A NaN in one sequence poisons that sequence from its timestep on, nothing else."""
    torch_cls, our_cls = (nn.LSTM, TritonLSTM) if cell == "lstm" else (nn.GRU, TritonGRU)
    ours = our_cls(3, H, backend=backend, dtype=torch.float64)
    theirs = torch_cls(3, H, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, B, 3, dtype=torch.float64)
    x[2, 1, 0] = float("nan")
    out, finals = ours(x)
    expected, expected_finals = theirs(x)
    assert torch.equal(out.isnan(), expected.isnan())
    assert out[:, 0].isfinite().all() and out[:2, 1].isfinite().all() and out[2:, 1].isnan().all()
    assert_close(out, expected, torch.float64, "output")
    for f, e in zip(as_tuple(finals), as_tuple(expected_finals)):
        assert torch.equal(f.isnan(), e.isnan())


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_non_contiguous_inputs_and_states(cell, backend):
    torch_cls, our_cls = (nn.LSTM, TritonLSTM) if cell == "lstm" else (nn.GRU, TritonGRU)
    ours = our_cls(3, H, num_layers=L, backend=backend, dtype=torch.float64)
    theirs = torch_cls(3, H, num_layers=L, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6, 5, dtype=torch.float64).transpose(0, 2)[::1, ::2]  # (5, 3, 3) strided
    assert not x.is_contiguous()
    h0 = torch.randn(B, L, 2 * H, dtype=torch.float64).transpose(0, 1)[..., ::2]
    hx = (h0, torch.randn(L, B, H, dtype=torch.float64).transpose(1, 2).transpose(1, 2)) \
        if cell == "lstm" else h0
    out, finals = ours(x, hx)
    expected, expected_finals = theirs(x, hx)
    assert_close(out, expected, torch.float64, "output")
    for f, e in zip(as_tuple(finals), as_tuple(expected_finals)):
        assert_close(f, e, torch.float64, "final state")
