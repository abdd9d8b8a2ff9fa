"""The lab: implementation x case x pass, each checked, then timed.

One test per (case, pass, impl) from the selected sweeps (bench/conftest.py
parametrises `lab_param`). Each test
  1. builds the implementation with the case's shared weights,
  2. checks one call against the float64 oracle (bench/measure.py): an
     implementation that raises NotImplementedError is skipped with the reason,
     a wrong one is recorded `wrong` and fails without being timed,
  3. times the call with pytest-benchmark (`benchmark.pedantic`): on CUDA the
     timer reads CUDA events (GPU time, synchronised), inputs rotate among
     pre-generated tensors, warm-up rounds first, median of many rounds,
  4. measures peak memory (CUDA) and records a row for reports/.
A Triton implementation's threshold is tied to the baseline's own error on the case
(measure.tolerance); a call that fell back (FallbackWarning) is recorded `fallback`, and
an exception while timing `error`: neither is ever a number in the tables.
"""
import pytest
import torch

from bench import measure
from bench.sweeps import flops
from lstm_triton.dispatch import Workload, choose_backend, triton_can_run


def test_lab(lab, lab_param, benchmark):
    case, sweep_names, pass_, impl = lab_param
    device, baseline = lab.device, measure.baseline_impl(lab.device)
    row = lab.new_row(case, sweep_names, pass_, impl)
    backend = measure.backend_of(impl)

    def finish(status, **fields):
        row.update(status=status, **fields)
        lab.add(row)

    if backend is not None and not triton_can_run(device):
        finish("skipped", note="Triton cannot run on this device without TRITON_INTERPRET=1")
        pytest.skip(row["note"])
    if backend == "auto":
        # what auto picks for this call (dispatch.py; cuDNN until a sweep is calibrated)
        workload = Workload(case.cell, measure.DTYPES[case.dtype], case.batch, case.hidden_size,
                            case.seq_len, training=pass_ == "fwdbwd")
        row["backend"] = "auto->" + choose_backend("auto", device, workload)

    setup = lab.setup(case)
    fallbacks = []
    try:
        with measure.recording_fallbacks(fallbacks):
            module = measure.build(setup, impl, pass_)
            # the baseline's check is shared with the Triton rows' thresholds (cached)
            base_err = measure.baseline_err(setup, pass_, baseline)
            err = base_err if backend is None else measure.check(module, setup, pass_, baseline)
            if backend is None:  # which algorithm torch ran: its kernels, from the profiler
                ran, row["kernels"] = measure.baseline_run(module, setup, pass_)
                if device.type == "cuda":
                    row["backend"] = ran
    except NotImplementedError as e:
        finish("skipped", note=f"NotImplementedError: {e}")
        pytest.skip(row["note"])
    except Exception as e:
        finish("error", note=measure.short_error(e))
        raise
    tolerance = measure.tolerance(case.dtype, None if backend is None else base_err)
    correct = err <= tolerance
    row.update(max_rel_err=err, baseline_rel_err=base_err, tolerance=tolerance,
               correct=correct)
    if not correct:
        finish("wrong", note="max_rel_err above tolerance: not timed")
        pytest.fail(f"{impl} is wrong on {case.id} {pass_}: max_rel_err {err:.3g} "
                    f"> {tolerance:g} against the float64 oracle; not timed")

    fn = measure.step_fn(module, pass_)
    rotation = measure.Rotation(module, setup, pass_)
    try:
        with measure.recording_fallbacks(fallbacks):
            schedule = measure.rounds_for(
                device, lambda: measure.estimate_call_s(fn, rotation, device))
            benchmark.pedantic(fn, setup=rotation, **schedule)
            peak = measure.peak_mem_mb(fn, rotation, device)
    except Exception as e:  # e.g. out of memory at a large batch: a row, not a silent gap
        finish("error", note=measure.short_error(e))
        raise

    stats = benchmark.stats.stats if benchmark.stats is not None else None
    if stats is None:  # --benchmark-disable: checked, not timed
        finish("ok", note="benchmark disabled: not timed", peak_mem_mb=peak)
        return
    row.update(measure.derived(case, pass_, stats.median), q1_ms=stats.q1 * 1e3,
               q3_ms=stats.q3 * 1e3, rounds=schedule["rounds"], peak_mem_mb=peak)
    benchmark.extra_info.update(
        {k: row[k] for k in ("impl", "backend", "median_ms", "tokens_per_s", "tflops",
                             "peak_mem_mb", "max_rel_err", "timer", "smoke")},
        gflop=flops(case, pass_) / 1e9)
    if fallbacks:  # timed, but not what the impl names: no speedup, no calibration
        finish("fallback", note="; ".join(sorted(set(fallbacks)))[:240])
    else:
        finish("ok")
    if device.type == "cuda":
        torch.cuda.empty_cache()
