"""How the lab measures one case (bench/measure.py): what the correctness guard compares,
the threshold it uses, the GPU timer's arithmetic, fallbacks, and where rows go.
The GPU-only parts are exercised with stand-ins where their logic can be (the timer's
events); the rest runs on the CPU through the interpreter at tiny shapes."""
import csv
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch

from bench import measure, rows
from bench.sweeps import Case

CASE = Case("lstm", "fp32", batch=2, seq_len=4, input_size=3, hidden_size=5)


def setup_and_baseline():
    return measure.make_setup(CASE, torch.device("cpu")), measure.baseline_impl(
        torch.device("cpu"))


def test_inference_is_built_in_eval_mode_and_training_in_train_mode():
    """cuDNN keys its inference path on module.training, not on grad mode."""
    setup, _ = setup_and_baseline()
    assert not measure.build(setup, "cudnn", "fwd").training
    assert measure.build(setup, "cudnn", "fwdbwd").training


def test_the_guard_catches_a_wrong_weight_gradient_and_a_wrong_final_state():
    setup, baseline = setup_and_baseline()
    module = measure.build(setup, "triton-stepwise", "fwdbwd")
    assert measure.check(module, setup, "fwdbwd", baseline) < 1e-5
    module.weight_hh_l0.register_hook(lambda g: 2 * g)  # only dW_hh is wrong
    assert measure.check(module, setup, "fwdbwd", baseline) > 0.5

    module = measure.build(setup, "triton-stepwise", "fwd")
    original = module.forward

    def wrong_cell_state(x, hx=None):
        out, (h, c) = original(x, hx)
        return out, (h, c + 1)  # output right, final c wrong

    module.forward = wrong_cell_state
    assert measure.check(module, setup, "fwd", baseline) > 0.1


def test_the_threshold_follows_the_baseline_error_within_the_dtype_bound():
    # bf16: cuDNN ~4e-3 -> 3.2e-2, which a kernel dropping b_hh (3-7e-2 in review) exceeds
    assert measure.tolerance("bf16", 4e-3) == 8 * 4e-3
    assert measure.tolerance("bf16", 1e-9) == measure.TOLERANCE["bf16"] / 10  # floor
    assert measure.tolerance("bf16", 1.0) == measure.TOLERANCE["bf16"]  # cap
    assert measure.tolerance("fp32", None) == measure.TOLERANCE["fp32"]  # the baseline itself
    assert measure.tolerance("fp16", float("nan")) == measure.TOLERANCE["fp16"]


def test_nan_anywhere_is_an_infinite_error_never_a_pass():
    """A kernel that writes NaN (an unwritten element, an overflow) must fail the guard:
    NaN compares false with every threshold, so rel_err reports it as infinite."""
    nan = float("nan")
    assert measure.rel_err(torch.tensor([1.0, nan]), torch.tensor([1.0, 2.0])) == float("inf")
    assert measure.rel_err(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == 0.0

    setup, baseline = setup_and_baseline()
    module = measure.build(setup, "triton-stepwise", "fwd")
    original = module.forward

    def nan_in_one_output(x, hx=None):
        out, (h, c) = original(x, hx)
        out = out.clone()
        out[-1, 0, 0] = nan
        return out, (h, c)

    module.forward = nan_in_one_output
    err = measure.check(module, setup, "fwd", baseline)
    assert not err <= measure.tolerance("fp32", 0.0)


class FakeEvent:
    """A CUDA event at a known time (seconds); elapsed_time answers in float32 ms, as
    cudaEventElapsedTime does."""
    clock = 0.0

    def __init__(self, enable_timing=True):
        self.t = None

    def record(self):
        self.t = FakeEvent.clock

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return float(torch.tensor((end.t - self.t) * 1e3, dtype=torch.float32))


def test_gpu_timer_keeps_microsecond_differences_late_in_a_long_session(monkeypatch):
    """Read against one session-start event, a float32 of milliseconds has ~31 us steps
    after 262 s; the timer must still see a 50 us call exactly there."""
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    timer = measure.CudaEventTimer()
    FakeEvent.clock = 1.0
    timer()
    for start in (1.0, 60.0, 300.0, 600.0):
        FakeEvent.clock = start
        t0 = timer()
        FakeEvent.clock = start + 50e-6
        t1 = timer()
        assert abs((t1 - t0) - 50e-6) < 1e-8, start


def test_fallback_warnings_are_recorded_every_case():
    from lstm_triton import FallbackWarning
    from lstm_triton.dispatch import warn_fallback

    for _ in range(2):  # once-per-process warnings fire again for each case
        messages = []
        with measure.recording_fallbacks(messages):
            warn_fallback("a test reason", key="a test reason")
            warnings.warn("not a fallback", UserWarning)
        assert len(messages) == 1 and "a test reason" in messages[0]
        assert all(isinstance(m, str) for m in messages)
    assert issubclass(FallbackWarning, RuntimeWarning)


def test_baseline_backend_says_when_cudnn_did_not_run():
    setup, _ = setup_and_baseline()
    module = measure.build(setup, "torch-cpu", "fwd")
    assert measure.baseline_backend(module, setup, "fwd") == "aten-native"  # the CPU: no cuDNN


def test_each_tagged_run_has_its_own_csv():
    plain = rows.raw_path("2026-01-02", "NVIDIA H100 80GB HBM3", False)
    tagged = rows.raw_path("2026-01-02", "NVIDIA H100 80GB HBM3", False, tag="bar")
    assert plain.name == "2026-01-02-nvidia-h100-80gb-hbm3.csv"
    assert tagged.name == "2026-01-02-nvidia-h100-80gb-hbm3-bar.csv"
    assert rows.raw_path("2026-01-02", "cpu", True, tag="x").parent.name == "raw"


# A pytest plugin for the lab run below: every Triton module's output is 1.5x too large
# (the baseline, torch's module, stays right).
SABOTAGE_PLUGIN = '''
from lstm_triton import rnn

_real = rnn._TritonRNNDriver.forward


def _wrong(self, input, hx=None, **options):  # options: resets=, the forward's keyword
    out, finals = _real(self, input, hx, **options)
    return out * 1.5, finals


rnn._TritonRNNDriver.forward = _wrong
'''


def run_lab_case(tmp_path, sabotage):
    """One smoke case of the lab (bench/test_bench.py) in a subprocess on the CPU; returns
    (pytest's exit code, the rows of its raw CSV)."""
    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "lab_sabotage.py").write_text(SABOTAGE_PLUGIN)
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(repo)]))
    reports = tmp_path / ("sabotaged" if sabotage else "plain")
    cmd = [sys.executable, "-m", "pytest", "bench/test_bench.py", "-q", "-p", "no:cacheprovider",
           "--device", "cpu", "--impl", "triton-stepwise", "--lab-reports", str(reports),
           "--no-lab-report", "-k", "smoke-lstm-fp32-B2-T4-I16-H16-L1-fwd-triton-stepwise"]
    if sabotage:
        cmd[4:4] = ["-p", "lab_sabotage"]
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    csvs = list(reports.rglob("*.csv"))
    assert len(csvs) == 1, done.stdout + done.stderr
    with open(csvs[0]) as f:
        return done.returncode, list(csv.DictReader(f))


def test_a_wrong_implementation_is_recorded_wrong_and_never_timed(tmp_path):
    """The lab's guard end to end (bench/test_bench.py): the same case passes and is timed
    when right, and is a failed test with a `wrong` row and no time when its output is off."""
    code, (row,) = run_lab_case(tmp_path, sabotage=False)
    assert code == 0 and row["status"] == "ok" and row["correct"] == "True"
    assert float(row["max_rel_err"]) <= float(row["tolerance"])

    code, (row,) = run_lab_case(tmp_path, sabotage=True)
    assert code == 1, "a wrong implementation must fail the lab run"
    assert row["status"] == "wrong" and row["correct"] == "False"
    assert float(row["max_rel_err"]) > float(row["tolerance"])
    assert row["median_ms"] == "" and row.get("tokens_per_s", "") == ""  # never timed


def test_the_sweep_estimate_counts_each_measured_compile_once():
    """bench/sweeps.py's compile term: every persistent variant (cell, pass, dtype, padded
    batch, hidden) at its measured compile time, once however many cases share it; a variant
    missing from the table at the table's slowest; nothing for batches above the cap (they
    run stepwise)."""
    from bench import sweeps

    table = {("lstm", "fwd", "bf16", 16, 768): 3.0, ("lstm", "bwd", "bf16", 16, 768): 5.0}
    sweeps.SWEEPS["test-compile"] = sweeps.Sweep("test-compile", "?", "batch", (
        Case("lstm", "bf16", 16, 1024, 768, 768), Case("lstm", "bf16", 16, 256, 768, 768),
        Case("lstm", "bf16", 1, 256, 768, 768), Case("lstm", "bf16", 64, 256, 768, 768),
        Case("gru", "bf16", 16, 256, 768, 768)))
    try:
        seconds = sweeps.compile_seconds(["test-compile"], ("triton-persistent",), table)
    finally:
        del sweeps.SWEEPS["test-compile"]
    assert seconds == 3.0 + 5.0 + 2 * 5.0  # the LSTM's two kernels, the GRU's at the worst
    assert sweeps.measured_compile_seconds()  # the committed reports/compiled table is read
