"""A small layer's time loop at one launch a step, forward and backward (issue 17).

The stepwise backend's step is two GPU calls (cuBLAS for h_{t-1} W_hh^T, then the
pointwise step kernel) and two trips through the host. Where the whole batch fits one
program's rows and the weights are small (config.fused_cell_launch: the sizes of a cell
call), both fit one kernel, as a cell step does:

  forward   cell_fused's cell kernels with PROJECTED: the step reads its rows of the input
            projection gx (one GEMM for all steps; the LSTM's both biases in it, the GRU's
            b_ih), h_{t-1} from the previous step's rows of y, and writes its rows of y and
            of what backward saves (the step road's layout, so either backward can follow);
  backward  one kernel per cell: each program first finishes the recurrent GEMM of the step
            undone before for its own units (`carried_gradient`: that step's recurrent
            pre-activation gradients, which the launch before wrote, through W_hh[:, units],
            the whole n_gates*H reduction here), then undoes its units of step t with the
            step kernels' cell math (cell_math.py). The GRU's direct part dh_t z_t, which
            bypasses the GEMM, stays with the program that made it, in a (B, H) buffer.

Each launch reads only rows the launches before wrote, and writes rows no other program of
it reads, so stream order is the only synchronisation. All steps launch one compiled kernel
with the same arguments but a few row offsets (launch.PreparedKernel.stepper): the host's
work per step is one call of Triton's launcher.

Runs forward-direction layers, padded or packed (step t's rows are the first rows of step
t-1's), and reverse-direction padded ones; a packed reverse layer, whose shorter sequences
join late from h0, takes the step road (stepwise.py), as do projections and issue 18's
per-call options. Every tensor is row-major (the layer op makes them so): row strides are
the widths.
"""
import triton
import triton.language as tl

from .cell_fused import gate_matmul, gru_cell_fused_kernel, lstm_cell_fused_kernel
from .cell_math import (gru_cell_backward, load_gates4, lstm_cell_backward, store_gates3,
                        store_gates4)
from .launch import prepared
from .tiles import load_gate, load_previous, store_gate

# what varies from one backward step to the next (backward_steps' tuples)
BACKWARD_VARYING = ["n_rows", "row0", "next0", "n_next", "prev0", "n_prev"]


@triton.jit
def step_tile(n_rows, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """All the step's rows (int64 [BLOCK_B, 1]), this program's units ([1, BLOCK_H]), mask."""
    rows = tl.arange(0, BLOCK_B).to(tl.int64)[:, None]
    units = (tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H))[None, :]
    return rows, units, (rows < n_rows) & (units < H)


@triton.jit
def carried_gradient(dgemm_ptr, stride_dgemm, n_next, K, w_hh_ptr, stride_whh, dh_n_ptr,
                     stride_dhn, direct_ptr, stride_direct, rows, units, mask, H,
                     DIRECT: tl.constexpr, DOT: tl.constexpr, COMPUTE: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """dL/dh_t carried into step t, for this program's units. Rows the step undone before
    ran (n_next of them; none at the first step undone): its recurrent pre-activation
    gradients (rows from dgemm_ptr, K wide) through W_hh[:, units] (K x H, row-major), the
    whole K reduction done here, plus (DIRECT) the part that bypassed the GEMM, which this
    program wrote for its own units then. Rows past n_next end at step t: dh_n's."""
    dh = gate_matmul(tl.zeros((BLOCK_B, BLOCK_H), COMPUTE), dgemm_ptr, stride_dgemm, rows,
                     n_next, K, w_hh_ptr, stride_whh, 1, units, units < H, BLOCK_K, DOT)
    carried = mask & (rows < n_next)
    if DIRECT:
        dh += load_gate(direct_ptr, rows, units, stride_direct, 0, H, carried, COMPUTE)
    dh_n = load_gate(dh_n_ptr, rows, units, stride_dhn, 0, H, mask & (rows >= n_next), COMPUTE)
    return tl.where(rows < n_next, dh, dh_n)


@triton.jit(do_not_specialize=BACKWARD_VARYING)
def lstm_step_fused_bwd_kernel(
    dy_ptr,  # (N, H) gradient of the outputs, rows from row0
    dh_n_ptr,  # (B, H) gradient of h_n: the carried gradient of rows past n_next
    dgates_ptr,  # (N, 4H) pre-activation gate gradients: rows from row0 out, from next0 in
    w_hh_ptr,  # (4H, H)
    gates_ptr, c_save_ptr,  # (N, 4H), (N, H) what forward saved, rows from row0
    c0_ptr,  # (B, H) c_0 in the state dtype, for rows past n_prev
    dc_ptr,  # (B, H) carried cell gradient in the state dtype, replaced by dc_{t-1}
    n_rows, H, row0, next0, n_next, prev0, n_prev,
    stride_dy, stride_dhn, stride_dg, stride_whh, stride_gates, stride_cs, stride_c0, stride_dc,
    DOT: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row0, next0, prev0 = row0.to(tl.int64), next0.to(tl.int64), prev0.to(tl.int64)
    rows, units, mask = step_tile(n_rows, H, BLOCK_B, BLOCK_H)
    dm = load_gate(dy_ptr + row0 * stride_dy, rows, units, stride_dy, 0, H, mask, COMPUTE)
    dm += carried_gradient(dgates_ptr + next0 * stride_dg, stride_dg, n_next, 4 * H, w_hh_ptr,
                           stride_whh, dh_n_ptr, stride_dhn, None, 0, rows, units, mask, H,
                           False, DOT, COMPUTE, BLOCK_B, BLOCK_H, BLOCK_K)
    i, f, g, o = load_gates4(gates_ptr + row0 * stride_gates, rows, units, stride_gates, H, mask,
                             COMPUTE)
    c = load_gate(c_save_ptr + row0 * stride_cs, rows, units, stride_cs, 0, H, mask, COMPUTE)
    c_prev = load_previous(c_save_ptr + prev0 * stride_cs, c0_ptr, rows, units, stride_cs,
                           stride_c0, n_prev, H, mask, COMPUTE)
    dc = load_gate(dc_ptr, rows, units, stride_dc, 0, H, mask, COMPUTE)
    d_i, d_f, d_g, d_o, dc_prev = lstm_cell_backward(dm, dc, i, f, g, o, c, c_prev)
    store_gates4(dgates_ptr + row0 * stride_dg, rows, units, stride_dg, H, d_i, d_f, d_g, d_o,
                 mask)
    store_gate(dc_ptr, rows, units, stride_dc, 0, H, dc_prev, mask)


@triton.jit(do_not_specialize=BACKWARD_VARYING)
def gru_step_fused_bwd_kernel(
    dy_ptr,  # (N, H) gradient of the outputs, rows from row0
    dh_n_ptr,  # (B, H) gradient of h_n: the carried gradient of rows past n_next
    dgx_ptr, drec_ptr,  # (N, 3H) input / recurrent pre-activation gradients, rows from row0
    # out; drec's rows from next0 in (the step undone before)
    w_hh_ptr,  # (3H, H)
    gates_ptr,  # (N, 4H) r, z, n, rec_n saved by forward, rows from row0
    y_ptr, h0_ptr,  # h_{t-1}: rows < n_prev of y from prev0, the others h0's
    direct_ptr,  # (B, H) dh_t z_t, the part of dL/dh_{t-1} that bypasses the GEMM, in/out
    n_rows, H, row0, next0, n_next, prev0, n_prev,
    stride_dy, stride_dhn, stride_dgx, stride_drec, stride_whh, stride_gates, stride_y,
    stride_h0, stride_direct,
    DOT: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row0, next0, prev0 = row0.to(tl.int64), next0.to(tl.int64), prev0.to(tl.int64)
    rows, units, mask = step_tile(n_rows, H, BLOCK_B, BLOCK_H)
    dh = load_gate(dy_ptr + row0 * stride_dy, rows, units, stride_dy, 0, H, mask, COMPUTE)
    dh += carried_gradient(drec_ptr + next0 * stride_drec, stride_drec, n_next, 3 * H, w_hh_ptr,
                           stride_whh, dh_n_ptr, stride_dhn, direct_ptr, stride_direct, rows,
                           units, mask, H, True, DOT, COMPUTE, BLOCK_B, BLOCK_H, BLOCK_K)
    r, z, n, rec_n = load_gates4(gates_ptr + row0 * stride_gates, rows, units, stride_gates, H,
                                 mask, COMPUTE)
    h_prev = load_previous(y_ptr + prev0 * stride_y, h0_ptr, rows, units, stride_y, stride_h0,
                           n_prev, H, mask, COMPUTE)
    d_r, d_z, d_n, dh_direct = gru_cell_backward(dh, r, z, n, rec_n, h_prev)
    store_gates3(dgx_ptr + row0 * stride_dgx, rows, units, stride_dgx, H, d_r, d_z, d_n, mask)
    store_gates3(drec_ptr + row0 * stride_drec, rows, units, stride_drec, H, d_r, d_z, d_n * r,
                 mask)
    store_gate(direct_ptr, rows, units, stride_direct, 0, H, dh_direct, mask)


def runs(sched, projected):
    """Whether a layer-direction's loop without per-call options (stepwise_variants.py runs
    those) can run here; the rest of the test is the size (config.fused_cell_launch)."""
    return sched.steps > 0 and not projected and (sched.padded or not sched.reverse)


def _forward_steps(kernel, grid, args, flags, sched, y):
    """Launch the forward loop: step one reads h0 (args as given), later steps h_{t-1} from
    y (in h0_ptr's place, with its stride), one compiled kernel for all of them."""
    B_AT = kernel.arg_names.index("B")  # then I, H, row0, prev0
    order = sched.order()
    args[B_AT], args[B_AT + 3] = sched.batch_sizes[order[0]], sched.offsets[order[0]]
    prepared(kernel).launch(grid, *args, **flags)
    if len(order) == 1:
        return
    names = kernel.arg_names
    args[names.index("h0_ptr")], args[names.index("stride_h0")] = y, y.stride(0)
    step = prepared(kernel).stepper(grid, args, flags, (B_AT, B_AT + 3, B_AT + 4), y.shape[0])
    for prev, t in zip(order, order[1:]):
        step(sched.batch_sizes[t], sched.offsets[t], sched.offsets[prev])


def _backward_steps(kernel, grid, args, flags, sched, n_rows):
    """Launch the backward loop (steps in reverse processing order, each with the step
    undone before it); returns the last step's rows, whose recurrent gradients the caller
    turns into dL/dh_0 (one GEMM)."""
    varying = tuple(kernel.arg_names.index(name) for name in BACKWARD_VARYING)
    step = prepared(kernel).stepper(grid, args, flags, varying, n_rows)
    undone = None  # the step undone before: its rows carry dL/dh into this one
    for t in reversed(sched.order()):
        p, n_prev = sched.previous_step(t)
        step(sched.batch_sizes[t], sched.offsets[t],
             0 if undone is None else sched.offsets[undone],
             0 if undone is None else sched.batch_sizes[undone],
             0 if p is None else sched.offsets[p], n_prev)
        undone = t
    return sched.rows(undone)


def _flags(launch):
    grid, block_b, block_h, block_k, dot, compute = launch
    return grid, dict(DOT=dot, COMPUTE=compute, BLOCK_B=block_b, BLOCK_H=block_h,
                      BLOCK_K=block_k)


def lstm_forward_steps(gx, sched, h0, c, w_hh, y, h_n, gates, c_save, launch):
    """The forward loop into y (N, H), h_n (B, H) and c (B, H, the state, in place), and
    gates / c_save when not None (training). gx: (N, 4H) input projection, biases in it.
    Every tensor row-major (the layer op makes them so)."""
    grid, flags = _flags(launch)
    save, H = gates is not None, c.shape[1]
    args = [gx, h0, c, None, w_hh, None, None, y, c, gates, c_save, h_n,
            0, 0, H, 0, 0, 4 * H, H, H, 0, H, H, H, 4 * H if save else 0, H if save else 0, H]
    _forward_steps(lstm_cell_fused_kernel, grid, args,
                   dict(flags, HAS_BIAS=False, SAVE=save, PROJECTED=True, STATE=True), sched,
                   y)


def gru_forward_steps(gx, sched, h0, w_hh, b_hh, y, h_n, gates, launch):
    """The GRU's forward loop into y (N, H), h_n (B, H) and gates (N, 4H: r, z, n, rec_n)
    when not None. gx: (N, 3H) input projection with b_ih; b_hh is added here, inside the
    reset gate's product as torch does."""
    grid, flags = _flags(launch)
    save, H = gates is not None, h0.shape[1]
    args = [gx, h0, None, w_hh, None, b_hh, y, gates, h_n,
            0, 0, H, 0, 0, 3 * H, H, 0, H, H, 4 * H if save else 0, H]
    _forward_steps(gru_cell_fused_kernel, grid, args,
                   dict(flags, HAS_BIAS=b_hh is not None, SAVE=save, PROJECTED=True,
                        STATE=True), sched, y)


def lstm_backward_steps(dy, dh_n, dc, sched, c0, w_hh, gates, c_save, dgates, launch):
    """The backward loop into dgates (N, 4H) and dc (B, H, in place: dc_n in, dc_0 out);
    returns the last step's rows, for dL/dh_0 = dgates[rows] W_hh (the caller's GEMM)."""
    grid, flags = _flags(launch)
    H = dc.shape[1]
    args = [dy, dh_n, dgates, w_hh, gates, c_save, c0, dc, 0, H, 0, 0, 0, 0, 0,
            H, H, 4 * H, H, 4 * H, H, H, H]
    return _backward_steps(lstm_step_fused_bwd_kernel, grid, args, flags, sched, dy.shape[0])


def gru_backward_steps(dy, dh_n, sched, h0, w_hh, y, gates, dgx, drec, direct, launch):
    """The GRU's backward loop into dgx, drec (N, 3H) and direct (B, H: dh z of the last step
    undone); returns that step's rows, for dL/dh_0 = direct + drec[rows] W_hh."""
    grid, flags = _flags(launch)
    H = h0.shape[1]
    args = [dy, dh_n, dgx, drec, w_hh, gates, y, h0, direct, 0, H, 0, 0, 0, 0, 0,
            H, H, 3 * H, 3 * H, H, 4 * H, H, H, H]
    return _backward_steps(gru_step_fused_bwd_kernel, grid, args, flags, sched, dy.shape[0])
