"""PackedSequence input: TritonLSTM / TritonGRU against nn.LSTM / nn.GRU in float64.

Sequences of very different lengths are packed (enforce_sorted both ways), run
with and without initial states, bidirectional and stacked; the output
PackedSequence, the final state of every sequence at its own length, and the
gradient of every input (packed data, h0, c0, each parameter) must match torch.
"""
import pytest
import torch
from rnn_testing import KERNEL_BACKENDS, assert_close, outputs_and_grads, twin_modules
from torch.nn.utils.rnn import PackedSequence, pack_sequence, pad_packed_sequence

DTYPE = torch.float64
N_IN, H = 3, 5

CASES = [
    # cell, lengths, enforce_sorted, module options
    pytest.param("lstm", [7, 4, 1], True, {}, id="lstm-sorted"),
    pytest.param("lstm", [1, 7, 4], False, {}, id="lstm-unsorted"),
    pytest.param("lstm", [4, 1, 7], False, {"bidirectional": True, "num_layers": 2},
                 id="lstm-unsorted-bi-2layers"),
    pytest.param("lstm", [7, 1, 4], False, {"proj_size": 2, "bidirectional": True},
                 id="lstm-unsorted-bi-proj"),
    pytest.param("lstm", [2, 6], False, {"proj_size": 3, "num_layers": 2, "bias": False},
                 id="lstm-unsorted-proj-2layers-nobias"),
    pytest.param("gru", [7, 4, 1], True, {}, id="gru-sorted"),
    pytest.param("gru", [4, 1, 7], False, {"bidirectional": True, "num_layers": 2},
                 id="gru-unsorted-bi-2layers"),
    pytest.param("gru", [1, 7], False, {"bidirectional": True, "bias": False},
                 id="gru-unsorted-bi"),
]


def packed_input(lengths, enforce_sorted):
    seqs = [torch.randn(n, N_IN, dtype=DTYPE) for n in lengths]
    packed = pack_sequence(seqs, enforce_sorted=enforce_sorted)
    data = packed.data.detach().requires_grad_()
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                          packed.unsorted_indices)


def initial_states(cell, module, batch):
    n_dir = 2 if module.bidirectional else 1
    out_size = getattr(module, "proj_size", 0) or H
    h0 = torch.randn(module.num_layers * n_dir, batch, out_size, dtype=DTYPE, requires_grad=True)
    if cell == "gru":
        return h0, [h0]
    c0 = torch.randn(module.num_layers * n_dir, batch, H, dtype=DTYPE, requires_grad=True)
    return (h0, c0), [h0, c0]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("with_state", [pytest.param(False, id="no-h0"),
                                        pytest.param(True, id="h0")])
@pytest.mark.parametrize("cell, lengths, enforce_sorted, options", CASES)
def test_packed_matches_torch(cell, lengths, enforce_sorted, options, with_state, backend):
    module, oracle = twin_modules(cell, N_IN, H, dtype=DTYPE, backend=backend, **options)
    packed = packed_input(lengths, enforce_sorted)
    hx, state_inputs = initial_states(cell, module, len(lengths)) if with_state else (None, [])
    n_dir, out_size = (2 if module.bidirectional else 1), getattr(module, "proj_size", 0) or H
    final_shapes = [(module.num_layers * n_dir, len(lengths), out_size)]
    if cell == "lstm":
        final_shapes.append((module.num_layers * n_dir, len(lengths), H))
    weights_out = [torch.randn(packed.data.shape[0], n_dir * out_size, dtype=DTYPE)]
    weights_out += [torch.randn(shape, dtype=DTYPE) for shape in final_shapes]

    inputs = [packed.data] + state_inputs
    out, finals, grads = outputs_and_grads(module, packed, hx, weights_out, inputs)
    ref_out, ref_finals, ref_grads = outputs_and_grads(oracle, packed, hx, weights_out, inputs)

    assert isinstance(out, PackedSequence)
    assert torch.equal(out.batch_sizes, ref_out.batch_sizes)
    for got, want in ((out.sorted_indices, ref_out.sorted_indices),
                      (out.unsorted_indices, ref_out.unsorted_indices)):
        assert (got is None and want is None) or torch.equal(got, want)
    assert_close(out.data, ref_out.data, DTYPE, "output data")
    padded, out_lengths = pad_packed_sequence(out, batch_first=True)
    assert out_lengths.tolist() == lengths  # unsorted_indices put sequences back in input order
    assert_close(padded, pad_packed_sequence(ref_out, batch_first=True)[0], DTYPE, "padded output")
    for k, (got, want) in enumerate(zip(finals, ref_finals)):
        assert_close(got, want, DTYPE, f"final state {k}")
    names = ["input data"] + [f"initial state {k}" for k in range(len(state_inputs))]
    names += [name for name, _ in module.named_parameters()]
    assert len(grads) == len(ref_grads) == len(names)
    for name, got, want in zip(names, grads, ref_grads):
        assert got is not None and want is not None, name
        assert_close(got, want, DTYPE, f"grad of {name}")


def test_packed_final_states_are_each_sequence_at_its_own_length():
    """h_n[:, j] equals the output of sequence j at its last step (lengths differ a lot)."""
    module, _ = twin_modules("gru", N_IN, H, dtype=DTYPE)
    lengths = [2, 7, 1]
    packed = packed_input(lengths, enforce_sorted=False)
    out, h_n = module(packed)
    padded, _ = pad_packed_sequence(out, batch_first=True)
    for j, n in enumerate(lengths):
        assert_close(h_n[0, j], padded[j, n - 1], DTYPE, f"sequence {j}")


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_packed_wrong_feature_size_raises_like_torch(cell):
    module, oracle = twin_modules(cell, N_IN, H, dtype=DTYPE)
    packed = pack_sequence([torch.randn(n, N_IN + 2, dtype=DTYPE) for n in (3, 1)])
    with pytest.raises(RuntimeError):
        oracle(packed)
    with pytest.raises(RuntimeError, match=rf"input_size.*Expected {N_IN}, got {N_IN + 2}"):
        module(packed)


@pytest.mark.parametrize("cell, which", [("lstm", "h0"), ("lstm", "c0"), ("gru", "h0")])
def test_packed_state_batch_mismatch_raises_like_torch(cell, which):
    module, oracle = twin_modules(cell, N_IN, H, dtype=DTYPE)
    packed = pack_sequence([torch.randn(n, N_IN, dtype=DTYPE) for n in (4, 2, 1)],
                           enforce_sorted=False)
    good, bad = torch.randn(1, 3, H, dtype=DTYPE), torch.randn(1, 2, H, dtype=DTYPE)
    if cell == "gru":
        hx = bad
    else:
        hx = (bad, good) if which == "h0" else (good, bad)
    with pytest.raises(RuntimeError):
        oracle(packed, hx)
    with pytest.raises(RuntimeError, match=r"Expected hidden.*\(1, 3, 5\), got \[1, 2, 5\]"):
        module(packed, hx)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_each_row_continues_the_same_row_of_the_step_before_or_starts_from_h0(reverse):
    """Schedule.previous_index (which row of cat([y, h0]) feeds each row's dW_hh term),
    against its definition step by step, on packed batches of very different lengths."""
    from lstm_triton.schedule import Schedule

    for lengths in [(9, 4, 4, 1), (1,), (5, 5), (7, 3, 2, 2, 1, 1)]:
        packed = pack_sequence([torch.zeros(n, 1) for n in lengths])
        sched = Schedule.build(packed.batch_sizes, packed.data.shape[0], len(lengths), reverse)
        n_rows = packed.data.shape[0]
        want = []
        for t in range(sched.steps):
            rows, n_prev = sched.previous(t)
            for j in range(sched.batch_sizes[t]):
                want.append(rows.start + j if j < n_prev else n_rows + j)
        assert sched.previous_index("cpu").tolist() == want
