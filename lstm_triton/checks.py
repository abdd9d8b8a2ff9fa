"""Argument checks: the exception types nn.LSTM / nn.GRU raise, with messages that
say what to change. Everything is checked before any kernel runs."""


def check_input(name, x, input_size, weight_dtype, packed, dtype_error=ValueError):
    """dtype_error: what a wrong input dtype raises. torch's packed LSTM has no dtype check
    of its own and fails in its first matmul (RuntimeError); everything else is ValueError."""
    if not packed and x.dim() not in (2, 3):
        raise ValueError(
            f"{name}: Expected input to be 2D (unbatched: seq_len, input_size) or 3D "
            f"(batched), got {x.dim()}D instead; reshape the input.")
    if not (x.is_floating_point() or x.is_complex()):
        raise dtype_error(
            f"{name}: input dtype {x.dtype} is not floating point; convert it with "
            f"input.to({weight_dtype}).")
    if x.dtype != weight_dtype:
        raise dtype_error(
            f"RNN input dtype ({x.dtype}) does not match weight dtype ({weight_dtype}). "
            f"Convert input: input.to({weight_dtype}), or convert model: model.to({x.dtype})")
    if x.shape[-1] != input_size:
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. Expected {input_size}, got "
            f"{x.shape[-1]}; pass inputs with {input_size} features or build the module with "
            f"input_size={x.shape[-1]}.")


def check_length(seq_len):
    if seq_len == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN; "
                           "pass at least one timestep.")


def check_state_dims(name, states, batched, packed=False):
    """hx / (hx, cx) must have one dimension more than unbatched when input is batched.
    With a PackedSequence torch indexes the states' third dimension first: IndexError."""
    want = 3 if batched else 2
    dims = tuple(s.dim() for s in states)
    if any(d != want for d in dims):
        kind = "batched 3-D" if batched else "unbatched 2-D"
        got = ", ".join(f"{d}-D" for d in dims)
        raise (IndexError if packed else RuntimeError)(
            f"For {kind} input, {name} should also be {want}-D but got ({got}) tensors; "
            f"give states of shape (num_layers * num_directions,{' batch,' if batched else ''} "
            f"hidden).")


def check_state(label, state, expected, dtype):
    if tuple(state.shape) != tuple(expected):
        raise RuntimeError(
            f"Expected {label} size {tuple(expected)}, got {list(state.shape)}: the state is "
            f"(num_layers * num_directions, batch, hidden).")
    if state.dtype != dtype:
        raise RuntimeError(
            f"{label} dtype {state.dtype} does not match input dtype {dtype}; "
            f"convert it with .to({dtype}).")


def check_device(x, weight, *states):
    if x.device != weight.device:
        raise RuntimeError(
            f"Input and parameter tensors are not at the same device, found input tensor at "
            f"{x.device} and parameter tensor at {weight.device}; move them with "
            f".to({weight.device}).")
    for s in states:
        if s.device != x.device:
            raise RuntimeError(
                f"Input and hidden tensors are not at the same device, found input tensor at "
                f"{x.device} and hidden tensor at {s.device}; move the states with "
                f".to({x.device}).")
