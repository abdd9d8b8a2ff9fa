"""A small LSTM layer's time loop at one launch a step, forward and backward (issue 17).

The stepwise backend's step is two GPU calls (cuBLAS for h_{t-1} W_hh^T, then the
pointwise step kernel) and two trips through the host. Where the whole batch fits one
program's rows and the weights are small (config.fused_cell_launch: the sizes of a cell
call), both fit one kernel, as a cell step does:

  forward   cell_fused.lstm_cell_fused_kernel with PROJECTED: the step reads its rows of
            the input projection gx (one GEMM for all steps, both biases in it), h_{t-1}
            from the previous step's rows of y, and writes its rows of y and of what
            backward saves (the step road's layout, so either backward can follow);
  backward  lstm_step_fused_bwd_kernel: each program first finishes the recurrent GEMM
            of the step undone before for its own units (dL/dh_t = dgates_{t+1} W_hh[:,
            units]: the whole 4H reduction, from rows that launch wrote), then undoes
            its units of step t as the step kernel does (cell_math.lstm_cell_backward).

Each launch reads only rows the launch before wrote, and writes rows no other program of
it reads, so launches in stream order are the only synchronisation. All steps launch one
compiled kernel with the same arguments but two row offsets (launch.stepper): the host's
work per step is one call of Triton's launcher.

Runs forward-direction layers, padded or packed (step t's rows are the first rows of step
t-1's), and reverse-direction padded ones; a packed reverse layer, whose shorter sequences
join late from h0, takes the step road (stepwise.py).
"""
import triton
import triton.language as tl

from .cell_fused import gate_matmul, lstm_cell_fused_kernel
from .cell_math import load_gates4, lstm_cell_backward, store_gates4
from .launch import prepared
from .tiles import load_gate, load_previous, store_gate


@triton.jit(do_not_specialize=["row0", "next0", "n_next", "prev0", "n_prev", "n_rows"])
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
    rows = tl.arange(0, BLOCK_B).to(tl.int64)[:, None]
    units = (tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H))[None, :]
    mask = (rows < n_rows) & (units < H)
    # dL/dh_t carried through the recurrence: rows the step undone before ran (n_next of
    # them; none at the first step undone) through its gate gradients, the others from h_n
    dh = gate_matmul(tl.zeros((BLOCK_B, BLOCK_H), COMPUTE), dgates_ptr + next0 * stride_dg,
                     stride_dg, rows, n_next, 4 * H, w_hh_ptr, stride_whh, 1, units, units < H,
                     BLOCK_K, DOT)
    dh_n = load_gate(dh_n_ptr, rows, units, stride_dhn, 0, H, mask & (rows >= n_next), COMPUTE)
    dm = load_gate(dy_ptr + row0 * stride_dy, rows, units, stride_dy, 0, H, mask, COMPUTE)
    dm += tl.where(rows < n_next, dh, dh_n)
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


def runs(sched, variant_active, projected):
    """Whether a layer-direction's loop can run here (the rest of the test is the size:
    config.fused_cell_launch)."""
    return not (variant_active or projected) and (sched.padded or not sched.reverse)


def lstm_forward_steps(gx, sched, h0, c, w_hh, y, h_n, gates, c_save, launch):
    """The forward loop into y (N, H), h_n (B, H) and c (B, H, the state, in place), and
    gates / c_save when not None (training). gx: (N, 4H) input projection, biases in it."""
    grid, block_b, block_h, block_k, dot, compute = launch
    save = gates is not None
    H = c.shape[1]
    kernel = prepared(lstm_cell_fused_kernel)
    args = [gx, h0, c, None, w_hh, None, None, y, c, gates, c_save, h_n,
            h0.shape[0], 0, H, 0, 0,
            gx.stride(0), h0.stride(0), c.stride(0), 0, w_hh.stride(0), y.stride(0),
            c.stride(0), gates.stride(0) if save else 0, c_save.stride(0) if save else 0,
            h_n.stride(0)]
    flags = dict(HAS_BIAS=False, SAVE=save, PROJECTED=True, STATE=True, DOT=dot,
                 COMPUTE=compute, BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k)
    B_AT, ROW0, PREV0 = 12, 15, 16  # positions of what changes from step to step
    order = sched.order()
    first = order[0]
    args[B_AT], args[ROW0] = sched.batch_sizes[first], sched.offsets[first]
    kernel.launch(grid, *args, **flags)  # step one reads h0
    if len(order) == 1:
        return
    args[1], args[18] = y, y.stride(0)  # later steps read h_{t-1} from y
    step = kernel.stepper(grid, args, flags, (B_AT, ROW0, PREV0), len(gx))
    prev = first
    for t in order[1:]:
        step(sched.batch_sizes[t], sched.offsets[t], sched.offsets[prev])
        prev = t


def lstm_backward_steps(dy, dh_n, dc, sched, c0, w_hh, gates, c_save, dgates, launch):
    """The backward loop into dgates (N, 4H) and dc (B, H, in place: dc_n in, dc_0 out);
    returns the last step's (rows, n) for dL/dh_0 = dgates[rows] W_hh (the caller's GEMM,
    one for the call)."""
    grid, block_b, block_h, block_k, dot, compute = launch
    kernel = prepared(lstm_step_fused_bwd_kernel)
    args = [dy, dh_n, dgates, w_hh, gates, c_save, c0, dc,
            0, dc.shape[1], 0, 0, 0, 0, 0,
            dy.stride(0), dh_n.stride(0), dgates.stride(0), w_hh.stride(0), gates.stride(0),
            c_save.stride(0), c0.stride(0), dc.stride(0)]
    flags = dict(DOT=dot, COMPUTE=compute, BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k)
    step = kernel.stepper(grid, args, flags, (8, 10, 11, 12, 13, 14), len(dy))
    undone = None  # the step undone before: its rows carry dL/dh into this one
    for t in reversed(sched.order()):
        p, n_prev = sched.previous_step(t)
        step(sched.batch_sizes[t], sched.offsets[t],
             0 if undone is None else sched.offsets[undone],
             0 if undone is None else sched.batch_sizes[undone],
             0 if p is None else sched.offsets[p], n_prev)
        undone = t
    return sched.rows(undone), sched.batch_sizes[undone]
