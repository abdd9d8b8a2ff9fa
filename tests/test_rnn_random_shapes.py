"""Property test: for any small shape and option mix, forward and input gradient match
torch in float64 (hypothesis draws the configuration; a few examples, the interpreter is slow)."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnn_testing import KERNEL_BACKENDS, as_tuple, assert_close, twin_modules


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cell=st.sampled_from(["lstm", "gru"]),
    backend=st.sampled_from(KERNEL_BACKENDS),
    input_size=st.integers(1, 6), hidden=st.integers(1, 9), seq_len=st.integers(1, 5),
    batch=st.integers(1, 4), num_layers=st.integers(1, 2), bidirectional=st.booleans(),
    bias=st.booleans(), batch_first=st.booleans(), proj=st.integers(0, 3),
)
def test_any_small_configuration_matches_torch(cell, backend, input_size, hidden, seq_len, batch,
                                               num_layers, bidirectional, bias, batch_first,
                                               proj):
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias,
                  batch_first=batch_first)
    if cell == "lstm" and 0 < proj < hidden:
        kwargs["proj_size"] = proj
    module, oracle = twin_modules(cell, input_size, hidden, dtype=torch.float64, backend=backend,
                                  **kwargs)
    shape = (batch, seq_len, input_size) if batch_first else (seq_len, batch, input_size)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out, finals = module(x)
    expected, expected_finals = oracle(x)
    assert_close(out, expected, torch.float64, "output")
    for f, e in zip(as_tuple(finals), as_tuple(expected_finals)):
        assert_close(f, e, torch.float64, "final state")
    (grad,) = torch.autograd.grad(out.sum(), x)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    assert_close(grad, expected_grad, torch.float64, "input gradient")
