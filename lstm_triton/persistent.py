"""Persistent backend: one layer-direction, the whole time loop in one Triton launch.

Same functions, arguments, saved tensors and return conventions as stepwise.py,
so forward and backward may each run on either backend:
  - the input projection of all steps is one GEMM before the loop
    (stepwise.input_projection);
  - the recurrence runs in kernels/persistent_lstm.py / persistent_gru.py: each
    program keeps its slice of W_hh (and the cell state) on chip for every step
    and the grid meets once per step (kernels/grid_sync.py);
  - the weight gradients and dx are GEMMs over the per-step gate gradients after
    the loop (stepwise.lstm_weight_grads / gru_weight_grads, shared).

What forward saves is stepwise's: LSTM activated gates (N, 4H) and cell states
(N, H); GRU r, z, n, rec_n (N, 4H). Backward recomputes nothing.

A resident W_hh slice that fails to compile (OutOfResources) is retried with
the slice streamed from L2 in K-chunks. A cooperative launch (persistent_config.
COOPERATIVE) that the CUDA driver refuses is retried as a plain launch, and later
launches stay plain (warned once): the bounded barrier still guards them.

Fallbacks to stepwise (see dispatch.persistent_plan): layers the persistent
kernel does not serve (very large batches, devices without Triton), warned once
per reason; and a launch whose grid barrier failed (the
grid was not co-resident, e.g. a GPU shared with other work), warned each time. Under
persistent_config.DEFERRED_BARRIER_CHECK (off by default) a cooperative launch's flag is
read later, without waiting for the kernel: a failed one's outputs are NaN instead, and the
next launch warns and reads every flag at once from then on.

Issue 18's per-call options that change the step itself (segment resets, recurrent
dropout, zoneout: a variants.Variant) are fused in the persistent kernels too (constexpr
flags of kernels/persistent_lstm.py / persistent_gru.py, stepwise's math from cell_math).
weight_drop and variational_dropout need nothing here (a masked W_hh, a masked input).
"""
import functools
from dataclasses import replace

from triton.runtime.errors import OutOfResources

from . import stepwise, stepwise_variants
from .dispatch import persistent_plan, warn_fallback
from .variants import NONE
from .kernels import grid_sync
from .kernels.persistent_config import not_cooperative, streamed
from .kernels.persistent_gru import gru_persistent_bwd, gru_persistent_fwd
from .kernels.persistent_lstm import lstm_persistent_bwd, lstm_persistent_fwd

BARRIER_FAILED = ("the grid barrier of the persistent launch timed out (its programs were not "
                  "all resident at once: is the GPU shared with other work?)")


def _fallback(what, reason):
    """Say that `what` runs on stepwise: static reasons once, barrier failures every time."""
    warn_fallback(f"backend='persistent' {what} runs on the stepwise backend: {reason}",
                  key=None if reason == BARRIER_FAILED else reason)


def _plan(cell, x, h0, hidden):
    return persistent_plan(cell, x.device, x.dtype, h0.shape[0], hidden, h0.shape[1])


COOPERATIVE_REFUSED = "the CUDA driver refused a cooperative launch"
_cooperative_refused = False  # once refused, every later launch is plain
DEFERRED_FAILED = ("the grid barrier of an earlier persistent launch failed; its flag was read "
                   "later (persistent_config.DEFERRED_BARRIER_CHECK), so its outputs were "
                   "filled with NaN, not rerun. From now on each launch's flag is read at once "
                   "and a failed launch reruns on stepwise")
_deferred_refused = False  # once a deferred check found a failure, every flag is read at once


def _launch(launcher, plan, *args):
    """Run a persistent launcher; a resident W_hh slice that does not compile (out of
    registers / shared memory) is retried streamed, which needs only a K-chunk on chip, and
    a cooperative launch that the driver refuses is retried plain. Earlier launches' deferred
    barrier flags that have reached the host are read first (grid_sync.deferred_failures)."""
    global _cooperative_refused, _deferred_refused
    if grid_sync.deferred_failures():
        _deferred_refused = True
        warn_fallback(DEFERRED_FAILED)
    if _cooperative_refused:
        plan = not_cooperative(plan)
    elif _deferred_refused and plan.deferred_check:
        plan = replace(plan, deferred_check=False)
    try:
        return launcher(*args, plan)
    except OutOfResources:
        if not plan.resident:
            raise
        return _launch(launcher, streamed(plan), *args)
    except RuntimeError as error:  # Triton's launcher raises "Triton Error [CUDA]: ..."
        if not plan.cooperative or "Triton Error [CUDA]" not in str(error):
            raise
        _cooperative_refused = True
        warn_fallback(f"{COOPERATIVE_REFUSED} ({error}); persistent kernels launch plainly "
                      "from now on")
        return launcher(*args, not_cooperative(plan))


# ------------------------------------------------- issue 18's options (variants.py)
def _with_variant(launcher, variant, **more):
    """The launcher, given the variant's tensors when an option is on (plain layers call
    it exactly as before)."""
    if not variant.active:
        return launcher
    return functools.partial(launcher, variant=variant, **more)


def _masked_h0(h0, sched, variant):
    """h0 * keep * drop of the first step, the GEMM input of rows starting from h0, when
    resets or recurrent dropout mask the GEMM input (else None: the GEMM reads h0)."""
    if (variant.keep is None and variant.rec is None) or not sched.steps:
        return None
    scale = stepwise_variants.scale_rows(variant, sched, sched.order()[0], h0.shape[0])
    return (h0 * scale).to(h0.dtype)


def _gemm_inputs(y, h0, sched, variant):
    """What dW_hh multiplies: the previous states, masked as the GEMM read them."""
    return stepwise_variants.gemm_inputs(y, h0, sched, variant) if variant.active else None


# ---------------------------------------------------------------------------- LSTM
def lstm_forward(x, sched, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, save, variant=NONE):
    """Returns y (N, P), h_n (B, P), c_n (B, H), gates, c_all, m_all (empty when unused)."""
    plan, reason = _plan("lstm", x, h0, c0.shape[1])
    if plan is not None:
        bias = None if b_ih is None else b_ih + b_hh
        gx = stepwise.input_projection(x, w_ih, bias)  # (N, 4H)
        launcher = _with_variant(lstm_persistent_fwd, variant,
                                 h0in=_masked_h0(h0, sched, variant))
        out = _launch(launcher, plan, gx, sched, h0, c0, w_hh, w_hr, save)
        if out is not None:
            y, h_n, c_n, gates, c_all, m_all = out
            empty = x.new_empty(0)
            return (y, h_n, c_n, gates if save else empty.clone(),
                    c_all if save else empty.clone(), m_all if m_all is not None else empty)
        reason = BARRIER_FAILED
    _fallback("LSTM forward", reason)
    return stepwise.lstm_forward(x, sched, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, save, variant)


def lstm_backward(dy, dh_n, dc_n, x, sched, h0, c0, w_ih, w_hh, w_hr, y, gates, c_all, m_all,
                  has_bias, need_dx, variant=NONE):
    """Gradients (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr); None where not applicable."""
    plan, reason = _plan("lstm", x, h0, c0.shape[1])
    if plan is not None:
        launcher = _with_variant(lstm_persistent_bwd, variant)
        out = _launch(launcher, plan, dy, dh_n, dc_n, sched, c0, w_hh, w_hr, gates, c_all)
        if out is not None:
            dgates, dh0, dc0, dr = out  # (N, 4H), (B, P), (B, H), (N, P) | None
            dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr = stepwise.lstm_weight_grads(
                dgates, x, y, h0, sched, w_ih, has_bias, need_dx, dr, m_all,
                prev=_gemm_inputs(y, h0, sched, variant))
            return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr
        reason = BARRIER_FAILED
    _fallback("LSTM backward", reason)
    return stepwise.lstm_backward(dy, dh_n, dc_n, x, sched, h0, c0, w_ih, w_hh, w_hr, y, gates,
                                  c_all, m_all, has_bias, need_dx, variant)


# ----------------------------------------------------------------------------- GRU
def gru_forward(x, sched, h0, w_ih, w_hh, b_ih, b_hh, save, variant=NONE):
    """Returns y (N, H), h_n (B, H), gates (N, 4H: r, z, n, rec_n; empty when unused)."""
    plan, reason = _plan("gru", x, h0, h0.shape[1])
    if plan is not None:
        gx = stepwise.input_projection(x, w_ih, b_ih)  # (N, 3H); b_hh stays in the kernel
        launcher = _with_variant(gru_persistent_fwd, variant,
                                 h0in=_masked_h0(h0, sched, variant))
        out = _launch(launcher, plan, gx, sched, h0, w_hh, b_hh, save)
        if out is not None:
            y, h_n, gates = out
            return y, h_n, gates if save else x.new_empty(0)
        reason = BARRIER_FAILED
    _fallback("GRU forward", reason)
    return stepwise.gru_forward(x, sched, h0, w_ih, w_hh, b_ih, b_hh, save, variant)


def gru_backward(dy, dh_n, x, sched, h0, w_ih, w_hh, y, gates, has_bias, need_dx,
                 variant=NONE):
    """Gradients (dx, dh0, dw_ih, dw_hh, db_ih, db_hh)."""
    plan, reason = _plan("gru", x, h0, h0.shape[1])
    if plan is not None:
        launcher = _with_variant(gru_persistent_bwd, variant)
        out = _launch(launcher, plan, dy, dh_n, sched, h0, w_hh, y, gates)
        if out is not None:
            dgx, drec, dh0 = out  # (N, 3H), (N, 3H), (B, H)
            dx, dw_ih, dw_hh, db_ih, db_hh = stepwise.gru_weight_grads(
                dgx, drec, x, y, h0, sched, w_ih, has_bias, need_dx,
                prev=_gemm_inputs(y, h0, sched, variant))
            return dx, dh0, dw_ih, dw_hh, db_ih, db_hh
        reason = BARRIER_FAILED
    _fallback("GRU backward", reason)
    return stepwise.gru_backward(dy, dh_n, x, sched, h0, w_ih, w_hh, y, gates, has_bias, need_dx,
                                 variant)
