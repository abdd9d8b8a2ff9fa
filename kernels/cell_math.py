"""The cell equations, written once for every kernel that needs them.

The stepwise kernels (one step per launch) and the persistent kernels (all
steps in one launch) differ in where their operands come from, never in the
math: both call these helpers on (BLOCK_B, BLOCK_H) tiles in the compute dtype.
"""
import triton
import triton.language as tl

from .activations import sigmoid, tanh
from .tiles import load_gate, store_gate


@triton.jit
def lstm_cell_state(pre_i, pre_f, pre_g, pre_o, c_prev):
    """Gate pre-activations and c_{t-1} -> (i, f, g, o, c_t); the layer-normalised cell
    (layer_norm_pointwise.py) applies LN_c to c_t before the output gate."""
    i, f, g, o = sigmoid(pre_i), sigmoid(pre_f), tanh(pre_g), sigmoid(pre_o)
    return i, f, g, o, f * c_prev + i * g


@triton.jit
def lstm_cell_forward(pre_i, pre_f, pre_g, pre_o, c_prev):
    """Gate pre-activations and c_{t-1} -> (i, f, g, o, c_t, m_t = o * tanh(c_t))."""
    i, f, g, o, c = lstm_cell_state(pre_i, pre_f, pre_g, pre_o, c_prev)
    return i, f, g, o, c, o * tanh(c)


@triton.jit
def lstm_output_backward(dm, o, tanh_s):
    """m = o * tanh(s) (s = c_t, or LN_c(c_t)): dm -> (d pre_o, dL/ds)."""
    return dm * tanh_s * o * (1.0 - o), dm * o * (1.0 - tanh_s * tanh_s)


@triton.jit
def lstm_state_backward(dc, i, f, g, c_prev):
    """Full dL/dc_t -> (d pre_i, d pre_f, d pre_g, dL/dc_{t-1})."""
    d_i = dc * g * i * (1.0 - i)
    d_f = dc * c_prev * f * (1.0 - f)
    d_g = dc * i * (1.0 - g * g)
    return d_i, d_f, d_g, dc * f


@triton.jit
def lstm_cell_backward(dm, dc, i, f, g, o, c, c_prev):
    """dm = dL/dm_t, dc = carried dL/dc_t -> pre-activation gradients and dL/dc_{t-1}."""
    d_o, dc_out = lstm_output_backward(dm, o, tanh(c))
    d_i, d_f, d_g, dc_prev = lstm_state_backward(dc + dc_out, i, f, g, c_prev)
    return d_i, d_f, d_g, d_o, dc_prev


@triton.jit
def gru_cell_forward(x_r, x_z, x_n, rec_r, rec_z, rec_n, h_prev):
    """Input and recurrent parts (b_hh inside rec) and h_{t-1} -> (r, z, n, h_t)."""
    r = sigmoid(x_r + rec_r)
    z = sigmoid(x_z + rec_z)
    n = tanh(x_n + r * rec_n)
    return r, z, n, (1.0 - z) * n + z * h_prev


@triton.jit
def gru_cell_backward(dh, r, z, n, rec_n, h_prev):
    """dh = dL/dh_t -> (d_r, d_z, d_n) pre-activation gradients and the direct part of
    dL/dh_{t-1} (dh * z; the caller adds d rec @ W_hh). d rec_n = d_n * r."""
    d_n = dh * (1.0 - z) * (1.0 - n * n)
    d_z = dh * (h_prev - n) * z * (1.0 - z)
    d_r = d_n * rec_n * r * (1.0 - r)
    return d_r, d_z, d_n, dh * z


@triton.jit
def load_gates4(ptr, rows, units, stride, H, mask, COMPUTE: tl.constexpr):
    """Four gate tiles of a (rows, 4H) matrix."""
    return (load_gate(ptr, rows, units, stride, 0, H, mask, COMPUTE),
            load_gate(ptr, rows, units, stride, 1, H, mask, COMPUTE),
            load_gate(ptr, rows, units, stride, 2, H, mask, COMPUTE),
            load_gate(ptr, rows, units, stride, 3, H, mask, COMPUTE))


@triton.jit
def store_gates3(ptr, rows, units, stride, H, a, b, c, mask):
    store_gate(ptr, rows, units, stride, 0, H, a, mask)
    store_gate(ptr, rows, units, stride, 1, H, b, mask)
    store_gate(ptr, rows, units, stride, 2, H, c, mask)


@triton.jit
def store_gates4(ptr, rows, units, stride, H, a, b, c, d, mask):
    store_gates3(ptr, rows, units, stride, H, a, b, c, mask)
    store_gate(ptr, rows, units, stride, 3, H, d, mask)


# ------------------------------------------- issue 18's options (kernels/step_variant.py)
@triton.jit
def zoneout(z, previous, new):
    """z * previous + (1 - z) * new: a training mask of 1 keeps the previous value exactly;
    in eval z is the probability p."""
    return z * previous + (1.0 - z) * new


@triton.jit
def zoneout_backward(z, d):
    """Gradient d of a zoneout output -> (its part to the previous value, to the new one)."""
    return z * d, (1.0 - z) * d


@triton.jit
def row_keep(ptr, rows, n, COMPUTE: tl.constexpr):
    """(BLOCK_B, 1) 1 - reset of each row's entering state (rows >= n: 0)."""
    return tl.load(ptr + rows, mask=rows < n, other=0.0).to(COMPUTE)


@triton.jit
def recurrent_scale(keep_next_ptr, n_next, drop_ptr, stride_drop, rows, units, H, mask,
                    SCALE_KEEP: tl.constexpr, DROP: tl.constexpr, COMPUTE: tl.constexpr):
    """What h_t is multiplied by on its way into the next step's recurrent GEMM: the next
    step's keep (segment resets) times the recurrent-dropout mask. Forward writes h_t times
    it as the next GEMM input; backward multiplies the GEMM's gradient by it."""
    if DROP:
        scale = load_gate(drop_ptr, rows, units, stride_drop, 0, H, mask, COMPUTE)
        if SCALE_KEEP:
            scale = scale * row_keep(keep_next_ptr, rows, n_next, COMPUTE)
    else:
        scale = row_keep(keep_next_ptr, rows, n_next, COMPUTE)
    return scale
