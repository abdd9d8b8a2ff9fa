"""A cell call in one step, for TritonLSTMCell / TritonGRUCell in plain eager (issue 17).

A cell call is a one-step layer, and `ops.rnn_layer` runs it exactly so. But that road
is built for T steps: a schedule, a variant, per-step views, buffers, the layer's autograd
Function and its argument list; it cost the host 2-3 times torch's own cell call (torch's
cell is one C++ call). This is the same computation with only what one step needs:

  forward   at small sizes (config.fused_cell_launch) one launch: both GEMMs, the biases
            and the gates in kernels/cell_fused.py; elsewhere the layer's one step:
            bias = b_ih + b_hh (LSTM); gx = x W_ih^T + bias; rec = h0 W_hh^T (+ b_hh: GRU);
            one fused step kernel (kernels/lstm_pointwise.py, gru_pointwise.py)
  backward  one fused step kernel; dx, dh0, dW_ih, dW_hh by GEMM; the bias gradient by
            column sum (stepwise.column_sum)

Off the fused forward, the GEMMs, their operands and the kernels' arguments are those the
stepwise layer uses for its one step, in the same order, so a cell call gives the layer
op's bits (tested: tests/test_cell_step.py); the fused forward sums its GEMMs in another
order (float tolerance). `cells.py` takes this road only where the layer's would have
skipped the custom op anyway: plain eager (ops.plain_eager), no forward-mode AD or functorch
transform (rnn.needs_reference), the stepwise backend, no `reset`. torch.compile, export,
tracing, vmap and resets keep the custom op's road.

A backward with create_graph=True (double backward) takes the gradients through the
reference cell recomputed from the saved inputs, as ops._differentiable_backward does.
"""
import torch
import torch.nn.functional as F

from . import ops, reference
from .kernels.cell_fused import gru_cell_fused, lstm_cell_fused
from .kernels.cell_fused_backward import lstm_cell_fused_backward
from .kernels.config import fused_cell_backward_launch, fused_cell_launch, state_dtype
from .kernels.gru_pointwise import gru_step_bwd, gru_step_fwd
from .kernels.lstm_pointwise import lstm_step_bwd, lstm_step_fwd
from .schedule import Schedule
from .stepwise import column_sum, input_projection


def _fresh(t, dtype):
    """A row-major copy of t in dtype (one copy: .to of another dtype already makes one).
    Row-major whatever t's layout: the kernels index rows by stride(0) and units by 1, and
    a gradient can arrive transposed (the loss read c1.t())."""
    if t.dtype == dtype:
        return t.clone(memory_format=torch.contiguous_format)
    return t.to(dtype, memory_format=torch.contiguous_format)


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, save):
    """(h1, c1, gates, c_save): one launch at small sizes (kernels/cell_fused.py), else
    stepwise.lstm_forward's one step without its buffers."""
    launch = fused_cell_launch(x.shape[0], x.shape[1], h0.shape[1], x.dtype, x.is_cuda)
    if launch is not None:
        state = state_dtype(x.dtype)
        h1 = torch.empty_like(h0)
        c1 = torch.empty_like(h0) if state == x.dtype else torch.empty_like(h0, dtype=state)
        gates = x.new_empty(h0.shape[0], 4 * h0.shape[1]) if save else None
        c_save = torch.empty_like(c1) if save else None
        lstm_cell_fused(x, h0, c0, w_ih, w_hh, b_ih, b_hh, h1, c1, gates, c_save, launch)
        # .to of the same dtype returns c1 but still costs ~1 µs (~3% of a cell call)
        return h1, c1 if state == x.dtype else c1.to(x.dtype), gates, c_save
    bias = None if b_ih is None else b_ih + b_hh
    gx = input_projection(x, w_ih, bias)  # (B, 4H)
    rec = F.linear(h0, w_hh)  # h0 W_hh^T, as torch.mm(h0, w_hh.t()) in the layer
    c = _fresh(c0, state_dtype(x.dtype))  # the kernel updates it in place: c1
    h1 = x.new_empty(h0.shape)
    gates = x.new_empty(gx.shape) if save else None
    c_save = c.new_empty(c.shape) if save else None
    lstm_step_fwd(gx, rec, c, h1, None, gates, c_save)
    return h1, c.to(x.dtype), gates, c_save


def lstm_backward(dh1, dc1, x, h0, c0, w_ih, w_hh, gates, c_save, has_bias, needs):
    """(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh): one launch at the smallest sizes
    (kernels/cell_fused_backward.py), else stepwise.lstm_backward's one step."""
    launch = fused_cell_backward_launch(x.shape[0], x.shape[1], h0.shape[1], x.dtype,
                                        x.is_cuda)
    if launch is not None:
        grads = lstm_cell_fused_backward(dh1.contiguous(), dc1.contiguous(), x, h0, c0, w_ih,
                                         w_hh, gates, c_save, has_bias, launch)
        return tuple(g if need else None for g, need in zip(grads, needs))
    dc = _fresh(dc1, state_dtype(x.dtype))  # replaced in place by dc0
    dgates = gates.new_empty(gates.shape)
    lstm_step_bwd(dh1.contiguous(), None, dc, gates, c_save, None, 0, c0.to(dc.dtype), dgates)
    db = column_sum(dgates) if needs[5] or needs[6] else None
    return (dgates @ w_ih if needs[0] else None, dgates @ w_hh if needs[1] else None,
            dc.to(x.dtype) if needs[2] else None, dgates.t() @ x if needs[3] else None,
            dgates.t() @ h0 if needs[4] else None, db, None if db is None else db.clone())


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, save):
    """(h1, gates): one launch at small sizes, else stepwise.gru_forward's one step."""
    launch = fused_cell_launch(x.shape[0], x.shape[1], h0.shape[1], x.dtype, x.is_cuda)
    if launch is not None:
        h1 = torch.empty_like(h0)
        gates = x.new_empty(h0.shape[0], 4 * h0.shape[1]) if save else None
        gru_cell_fused(x, h0, w_ih, w_hh, b_ih, b_hh, h1, gates, launch)
        return h1, gates
    gx = input_projection(x, w_ih, b_ih)  # (B, 3H); b_hh stays with the recurrent part
    rec = F.linear(h0, w_hh, b_hh)  # the layer's addmm(b_hh, h0, W_hh^T) (or mm)
    h1 = h0.clone()  # the kernel reads h0 from it and writes h1 over it
    gates = x.new_empty(h0.shape[0], 4 * h0.shape[1]) if save else None
    gru_step_fwd(gx, rec, h1, h1, gates)
    return h1, gates


def gru_backward(dh1, x, h0, w_ih, w_hh, gates, needs):
    """(dx, dh0, dw_ih, dw_hh, db_ih, db_hh): stepwise.gru_backward's one step (the layer's
    output gradient is zero there and its carried one dh1: the kernel adds the two)."""
    dh0 = dh1.clone(memory_format=torch.contiguous_format)  # becomes dh1 * z, + drec W_hh
    dgx = x.new_empty(x.shape[0], w_ih.shape[0])
    drec = torch.empty_like(dgx)
    gru_step_bwd(torch.zeros_like(dh0), dh0, gates, None, 0, h0, dgx, drec)
    return (dgx @ w_ih if needs[0] else None, dh0.addmm_(drec, w_hh) if needs[1] else None,
            dgx.t() @ x if needs[2] else None, drec.t() @ h0 if needs[3] else None,
            column_sum(dgx) if needs[4] else None, column_sum(drec) if needs[5] else None)


def _double_backward(cell, saved, grads):
    """backward(create_graph=True): the reference cell's gradients, with their graph."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = saved
    sched = Schedule.build(None, x.shape[0], x.shape[0], False)
    _, h1, c1 = reference.layer(cell, x, sched, h0, c0, (w_ih, w_hh, b_ih, b_hh, None))
    wanted = [t is not None and t.requires_grad for t in saved]
    pairs = [(o, g) for o, g in zip((h1, c1), grads) if o is not None and g is not None]
    found = iter(torch.autograd.grad([o for o, _ in pairs], [t for t, w in zip(saved, wanted)
                                                             if w],
                                     [g for _, g in pairs], create_graph=True, allow_unused=True))
    return tuple(next(found) if w else None for w in wanted)


def _through_layer_op(cell, grads, x, h0, c0, w_ih, w_hh, has_bias, gates, c_save, needs):
    """Batched gradients (autograd's legacy vmap: is_grads_batched, jacobian(vectorize=True)):
    the layer's backward op on this one step, since the op has the batching rule (one call per
    member, lstm_triton/batching.py). The layer's output gradient is zero; the cell's
    gradients are its final states'. y, read only for earlier steps' states, is h0's shape."""
    dh1 = grads[0]
    empty = x.new_empty(0)
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, _ = ops.rnn_layer_backward(
        cell, "stepwise", torch.zeros_like(dh1), dh1, grads[1] if cell == "lstm" else None, x,
        None, h0, c0, w_ih, w_hh, None, h0, gates, c_save if c_save is not None else empty,
        empty, False, has_bias, needs[0])
    found = (dx, dh0, dc0) if cell == "lstm" else (dx, dh0)
    found += (dw_ih, dw_hh, db_ih if has_bias else None, db_hh if has_bias else None)
    return tuple(g if need else None for g, need in zip(found, needs))


class LSTMCellStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        h1, c1, gates, c_save = lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, True)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, gates, c_save)
        return h1, c1

    @staticmethod
    def backward(ctx, dh1, dc1):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, gates, c_save = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _double_backward("lstm", (x, h0, c0, w_ih, w_hh, b_ih, b_hh), (dh1, dc1))
        if ops._batched(dh1, dc1):
            return _through_layer_op("lstm", (dh1, dc1), x, h0, c0, w_ih, w_hh, b_ih is not None,
                                     gates, c_save, ctx.needs_input_grad)
        return lstm_backward(dh1, dc1, x, h0, c0, w_ih, w_hh, gates, c_save, b_ih is not None,
                             ctx.needs_input_grad)


class GRUCellStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh):
        h1, gates = gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, True)
        ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, gates)
        return h1

    @staticmethod
    def backward(ctx, dh1):
        x, h0, w_ih, w_hh, b_ih, b_hh, gates = ctx.saved_tensors
        if torch.is_grad_enabled():
            grads = _double_backward("gru", (x, h0, None, w_ih, w_hh, b_ih, b_hh), (dh1,))
            return grads[:2] + grads[3:]
        if ops._batched(dh1):
            return _through_layer_op("gru", (dh1,), x, h0, None, w_ih, w_hh, b_ih is not None,
                                     gates, None, ctx.needs_input_grad)
        return gru_backward(dh1, x, h0, w_ih, w_hh, gates, ctx.needs_input_grad)


def step(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """The new states (h1, c1) or (h1,) of one cell call; every tensor contiguous, of one
    dtype and device, on a device Triton runs on."""
    save = ops.backward_follows((x, h0, c0, w_ih, w_hh, b_ih, b_hh))
    if cell == "lstm":
        if save:
            return LSTMCellStep.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        return lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, False)[:2]
    if save:
        return (GRUCellStep.apply(x, h0, w_ih, w_hh, b_ih, b_hh),)
    return gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, False)[:1]
