"""One layer-direction as a pair of custom operators (`torch.library`).

The module calls `rnn_layer` once per layer and direction. Registering it as
a custom op with a fake (shape-only) implementation and an autograd formula
lets `torch.compile(fullgraph=True)` see each layer as a single opaque op
instead of tracing into Triton launches. Backward is a custom op too, so the
compiled backward graph holds it as one node.

Arguments shared by both ops:
  cell: "lstm" | "gru";  backend: "stepwise" | "persistent"
  x: (N, I) time-major packed rows;  batch_sizes: (T,) int64 on the CPU, or None
  for a padded batch (then T = N // B);  h0: (B, P);  c0: (B, H) (LSTM) or None
  reverse: run the time loop backwards (second direction of a bidirectional layer)
  keep, rec, zone_c, zone_h: issue 18's per-call tensors (variants.Variant), None when
  the option is off; trailing, with defaults, so a plain layer is called as before.
"""
from typing import Optional

import torch
from torch import Tensor

from . import batching, graphs, reference, stepwise
from .dispatch import triton_can_run, warn_fallback
from .schedule import Schedule
from .variants import NONE, Variant


def _backend_module(backend: str):
    if backend == "stepwise":
        return stepwise
    if backend == "persistent":
        from . import persistent

        return persistent
    raise ValueError(f"unknown backend {backend!r}")


def _rnn_layer_impl(cell, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                    reverse, save, keep=None, rec=None, zone_c=None, zone_h=None):
    """rnn_layer's implementation: what the custom op and the eager path (rnn_layer_fast,
    below) run."""
    sched = Schedule.build(batch_sizes, x.shape[0], h0.shape[0], reverse)
    variant = Variant(keep, rec, zone_c, zone_h)
    h0, c0, w_hh, w_hr = _row_major(h0, c0, w_hh, w_hr)
    if not triton_can_run(x.device):
        return _recorded_elsewhere(cell, backend, x, sched, h0, c0, (w_ih, w_hh, b_ih, b_hh, w_hr),
                                   variant)
    impl = _backend_module(backend)
    if cell == "lstm":
        return impl.lstm_forward(x, sched, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, save, variant)
    y, h_n, gates = impl.gru_forward(x, sched, h0, w_ih, w_hh, b_ih, b_hh, save, variant)
    empty = x.new_empty(0)
    return y, h_n, empty.clone(), gates, empty.clone(), empty.clone()


def _row_major(*tensors):
    """Each tensor (or None) row-major: the kernels index rows by stride(0) and units by 1.
    The module hands the op row-major tensors, but the op's implementation also runs under
    autograd's batched gradients (is_grads_batched, jacobian(vectorize=True)), whose
    fallback hands it views: an expanded zero dh_n came with strides (1, 0), and a copy by
    clone() keeps a transposed layout. A no-op (no copy) for a row-major tensor."""
    return [t if t is None else t.contiguous() for t in tensors]


def _recorded_elsewhere(cell, backend, x, sched, h0, c0, weights, variant=NONE):
    """A call recorded with a Triton backend (an export or trace in the "custom_op" export
    mode, lstm_triton/export.py) and run where Triton cannot run, e.g. loaded on a CPU
    without the interpreter: the layer runs on torch's ops (the reference math) rather than
    failing inside Triton, as backend="auto" would choose. Forward only: it saves nothing,
    so a backward through it raises (the saved slots are empty)."""
    warn_fallback(f"a recorded backend={backend!r} layer runs on {x.device}, where Triton "
                  f"cannot run: it runs on the pure-PyTorch reference math (inference only)",
                  key=("recorded", backend, x.device.type))
    with torch.no_grad():
        y, h_n, c_n = reference.layer(cell, x, sched, h0, c0, weights, variant)
    empty = x.new_empty(0)
    return (y, h_n, c_n if c_n is not None else empty.clone(), empty.clone(), empty.clone(),
            empty.clone())


@torch.library.custom_op("lstm_triton::rnn_layer", mutates_args=())
def rnn_layer(
    cell: str, backend: str, x: Tensor, batch_sizes: Optional[Tensor], h0: Tensor,
    c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
    b_hh: Optional[Tensor], w_hr: Optional[Tensor], reverse: bool, save: bool,
    keep: Optional[Tensor] = None, rec: Optional[Tensor] = None,
    zone_c: Optional[Tensor] = None, zone_h: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (y, h_n, c_n, saved_0, saved_1, saved_2); unused slots are empty tensors."""
    return _rnn_layer_impl(cell, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                           reverse, save, keep, rec, zone_c, zone_h)


@rnn_layer.register_fake
def _(cell, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save,
      keep=None, rec=None, zone_c=None, zone_h=None):
    n_rows, hidden = x.shape[0], w_hh.shape[0] // (4 if cell == "lstm" else 3)
    y = x.new_empty(n_rows, h0.shape[1])
    empty = x.new_empty(0)
    if cell == "gru":
        gates = x.new_empty(n_rows, 4 * hidden) if save else empty
        return y, h0.new_empty(h0.shape), empty.clone(), gates, empty.clone(), empty.clone()
    state = stepwise.state_dtype(x.dtype)
    return (
        y, h0.new_empty(h0.shape), c0.new_empty(c0.shape),
        x.new_empty(n_rows, 4 * hidden) if save else empty,
        x.new_empty(n_rows, hidden, dtype=state) if save else empty.clone(),
        x.new_empty(n_rows, hidden) if (save and w_hr is not None) else empty.clone(),
    )


def _rnn_layer_backward_impl(cell, backend, dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh,
                             w_hr, y, saved_0, saved_1, saved_2, reverse, has_bias, need_dx,
                             keep=None, rec=None, zone_c=None, zone_h=None):
    """rnn_layer_backward's implementation (the eager path calls it directly)."""
    impl = _backend_module(backend)
    sched = Schedule.build(batch_sizes, x.shape[0], h0.shape[0], reverse)
    variant = Variant(keep, rec, zone_c, zone_h)
    dy, dh_n, dc_n, h0, c0, w_hh, w_hr = _row_major(dy, dh_n, dc_n, h0, c0, w_hh, w_hr)
    if cell == "lstm":
        grads = impl.lstm_backward(dy, dh_n, dc_n, x, sched, h0, c0, w_ih, w_hh, w_hr, y,
                                   saved_0, saved_1, saved_2, has_bias, need_dx, variant)
    else:
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = impl.gru_backward(
            dy, dh_n, x, sched, h0, w_ih, w_hh, y, saved_0, has_bias, need_dx, variant)
        grads = (dx, dh0, None, dw_ih, dw_hh, db_ih, db_hh, None)
    return tuple(g if g is not None else x.new_empty(0) for g in grads)


@torch.library.custom_op("lstm_triton::rnn_layer_backward", mutates_args=())
def rnn_layer_backward(
    cell: str, backend: str, dy: Tensor, dh_n: Tensor, dc_n: Optional[Tensor], x: Tensor,
    batch_sizes: Optional[Tensor], h0: Tensor, c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
    w_hr: Optional[Tensor], y: Tensor, saved_0: Tensor, saved_1: Tensor, saved_2: Tensor,
    reverse: bool, has_bias: bool, need_dx: bool,
    keep: Optional[Tensor] = None, rec: Optional[Tensor] = None,
    zone_c: Optional[Tensor] = None, zone_h: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr); empty where not applicable.
    A tuple, not a list: torch's legacy vmap (which runs autograd's batched gradients)
    can loop an op over the batch by itself only when it returns plain Tensors."""
    return _rnn_layer_backward_impl(cell, backend, dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih,
                                    w_hh, w_hr, y, saved_0, saved_1, saved_2, reverse, has_bias,
                                    need_dx, keep, rec, zone_c, zone_h)


@rnn_layer_backward.register_fake
def _(cell, backend, dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y,
      saved_0, saved_1, saved_2, reverse, has_bias, need_dx, keep=None, rec=None, zone_c=None,
      zone_h=None):
    empty = x.new_empty(0)
    lstm, proj = cell == "lstm", w_hr is not None
    return (
        x.new_empty(x.shape) if need_dx else empty.clone(),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape) if lstm else empty.clone(),
        w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape),
        w_hh.new_empty(w_hh.shape[0]) if has_bias else empty.clone(),
        w_hh.new_empty(w_hh.shape[0]) if has_bias else empty.clone(),
        w_hr.new_empty(w_hr.shape) if proj else empty.clone(),
    )


def _setup_context(ctx, inputs, output):
    (cell, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save,
     *variant) = inputs
    y, _, _, saved_0, saved_1, saved_2 = output
    ctx.save_for_backward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y,
                          saved_0, saved_1, saved_2, *Variant(*variant))
    ctx.cell, ctx.backend, ctx.reverse, ctx.save = cell, backend, reverse, save
    ctx.has_bias = b_ih is not None


def check_saved(ctx):
    """A backward of a forward that saved nothing (it saw no input requiring grad)."""
    if not ctx.save:
        raise RuntimeError(
            "lstm_triton: this forward ran without saving for backward (it saw no input "
            "requiring grad); run it with torch.enable_grad() and inputs that require grad.")


def _backward(ctx, dy, dh_n, dc_n, *_unused_saved_grads):
    if not triton_can_run(ctx.saved_tensors[0].device):
        raise RuntimeError(
            f"lstm_triton: this layer was recorded with backend={ctx.backend!r} and ran on "
            f"{ctx.saved_tensors[0].device}, where Triton cannot run, for inference only; to "
            f"train there, record it in lstm_triton's default 'aten' export mode.")
    check_saved(ctx)
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _differentiable_backward(ctx, dy, dh_n, dc_n)
    (x, batch_sizes, h0, c0, w_ih, w_hh, _, _, w_hr, y,
     saved_0, saved_1, saved_2, *variant) = ctx.saved_tensors
    dy = torch.zeros_like(y) if dy is None else dy.contiguous()
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n.contiguous()
    if ctx.cell == "lstm":
        dc_n = torch.zeros_like(c0) if dc_n is None else dc_n.contiguous()
    else:
        dc_n = None
    args = (ctx.cell, ctx.backend, dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y,
            saved_0, saved_1, saved_2, ctx.reverse, ctx.has_bias, ctx.needs_input_grad[2],
            *variant)
    # traced (torch.compile's backward graph) or batched gradients (vmap): the op, which
    # has the rules for both; plain eager: its implementation
    if plain_eager(x, y, dy, dh_n, dc_n) and not _batched(dy, dh_n, dc_n):
        grads = _run_impl(_rnn_layer_backward_impl, args, x, batch_sizes)
    else:
        grads = rnn_layer_backward(*args)
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = grads
    lstm, has_bias = ctx.cell == "lstm", ctx.has_bias
    return (
        None, None, dx if ctx.needs_input_grad[2] else None, None, dh0, dc0 if lstm else None,
        dw_ih, dw_hh, db_ih if has_bias else None, db_hh if has_bias else None,
        dw_hr if w_hr is not None else None, None, None,
        *[None] * (len(ctx.needs_input_grad) - 13),  # the variant's masks: no gradient
    )


# rnn_layer's inputs that have gradients, by position
_DIFFERENTIABLE = {2: "x", 4: "h0", 5: "c0", 6: "w_ih", 7: "w_hh", 8: "b_ih", 9: "b_hh",
                   10: "w_hr"}


def _differentiable_backward(ctx, dy, dh_n, dc_n):
    """backward(create_graph=True) (gradient penalties, Hessian-vector products): the
    backward op has no derivative of its own, so the gradients are taken through the
    pure-PyTorch reference layer recomputed from the saved inputs, and carry a graph for
    the next backward. Slower than the kernels; the same math."""
    (x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, *saved) = ctx.saved_tensors
    inputs = dict(x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr)
    sched = Schedule.build(batch_sizes, x.shape[0], h0.shape[0], ctx.reverse)
    outputs = reference.layer(ctx.cell, x, sched, h0, c0, (w_ih, w_hh, b_ih, b_hh, w_hr),
                              Variant(*saved[4:]))
    pairs = [(o, g) for o, g in zip(outputs, (dy, dh_n, dc_n)) if o is not None and g is not None]
    wanted = [k for k, name in _DIFFERENTIABLE.items()
              if ctx.needs_input_grad[k] and inputs[name] is not None]
    grads = torch.autograd.grad([o for o, _ in pairs], [inputs[_DIFFERENTIABLE[k]] for k in wanted],
                                [g for _, g in pairs], create_graph=True, allow_unused=True)
    result = [None] * len(ctx.needs_input_grad)  # one per rnn_layer input
    for k, g in zip(wanted, grads):
        result[k] = g
    return tuple(result)


rnn_layer.register_autograd(_backward, setup_context=_setup_context)


# Batched calls (autograd's batched gradients, torch.func.vmap): one op call per member.
batching.register(rnn_layer, rnn_layer_backward)


# ---------------------------------------------------------------------- the eager path
_PLAIN = (Tensor, torch.nn.Parameter)


def plain_eager(*tensors) -> bool:
    """Whether nothing but plain eager execution will see this call: no torch.compile /
    torch.export (Dynamo or make_fx), no torch.jit.trace, no dispatch mode (FakeTensorMode,
    FlopCounterMode, profilers' modes), no tensor subclass. Only then may a call skip the
    custom op's dispatch (the op's graph node is what all of those need to see)."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch.jit.is_tracing() or torch._C._are_functorch_transforms_active()):
        return False
    return all(type(t) in _PLAIN for t in tensors if t is not None)


def backward_follows(tensors) -> bool:
    """Whether a backward can follow this call (so its forward saves for it): grad mode
    on and some input requiring grad (None entries skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _batched(*tensors) -> bool:
    """Whether autograd's legacy vmap batches these gradients (is_grads_batched=True,
    jacobian(vectorize=True), gradcheck's batched-gradient check): their type is still
    Tensor, only a Batched dispatch key tells. functorch asks it directly (half the cost
    of reading the key set's name, which older torch needs: its legacy key has no Python
    enum member; functorch's FuncTorchBatched matches that too)."""
    return any(t is not None and _is_batched(t) for t in tensors)


_functorch = torch._C._functorch
if hasattr(_functorch, "is_legacy_batchedtensor"):
    def _is_batched(t) -> bool:
        return _functorch.is_legacy_batchedtensor(t) or _functorch.is_batchedtensor(t)
else:
    def _is_batched(t) -> bool:
        return "Batched" in str(torch._C._dispatch_keys(t))


class _EagerLayer(torch.autograd.Function):
    """rnn_layer with its autograd formula, minus the custom op's dispatch: the same
    implementation, saved tensors and backward (_setup_context, _backward), called as a
    plain autograd Function. The op's dispatch (schema parsing, the autograd wrapper, a
    Dynamo-disabled frame) cost more host time than a whole cell step (issue 17)."""

    @staticmethod
    def forward(ctx, *inputs):  # not the setup_context style: its argument binding costs
        # ~20 µs a call (inspect.signature)
        output = _run_impl(_rnn_layer_impl, inputs, inputs[2], inputs[3])
        _setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(*output[3:])  # the saved slots carry no gradient
        ctx.set_materialize_grads(False)  # _backward reads a missing gradient as zeros
        return output

    @staticmethod
    def backward(ctx, *grads):
        return _backward(ctx, *grads)


def rnn_layer_fast(cell, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                   reverse, save, *variant):
    """rnn_layer's result, by the shortest road that gives the same bits: the custom op
    where anything traces or intercepts the call (plain_eager), else its implementation,
    under an autograd Function only when a backward will follow (`save`)."""
    if not plain_eager(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, *variant):
        return rnn_layer(cell, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                         reverse, save, *variant)
    return eager_layer((cell, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                        reverse, save, *variant), save)


def eager_layer(args, save):
    """rnn_layer(*args) in plain eager, which the caller has checked (plain_eager): its
    implementation, under the autograd Function only when a backward will follow."""
    if save:
        return _EagerLayer.apply(*args)
    return _run_impl(_rnn_layer_impl, args, args[2], args[3])


def _run_impl(fn, args, x, batch_sizes):
    """fn(*args) (an implementation above; args[1] is the backend): a stepwise call on CUDA
    is replayed from a CUDA graph after its first use (graphs.py), the rest runs as is."""
    if args[1] != "stepwise":
        return fn(*args)
    return graphs.run(fn, args, x.device, batch_sizes)
