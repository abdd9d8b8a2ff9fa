"""What is specific to the persistent backend (the specification tests in test_rnn_*.py and
test_packed.py already run every configuration on it through KERNEL_BACKENDS):

  - the grid barrier helper: meets on one program, and an arrival count that can never be
    reached reports failure after its spin bound instead of hanging;
  - a failed barrier falls back to stepwise with a warning, and the results stay right;
  - dispatch: what cannot be persistent (proj_size, huge batches, no Triton) goes to
    stepwise explicitly; GPU plans never launch more programs than SMs;
  - W_hh streamed from memory in K-chunks (the not-resident path) with packed batches;
  - bfloat16 (matmuls upcast under the interpreter);
  - results identical bit for bit run to run.
"""
import dataclasses
import os
import subprocess
import sys
import warnings

import pytest
import torch
import triton
import triton.language as tl
from lstm_triton.kernels import grid_sync, persistent_config
from lstm_triton.kernels.grid_sync import grid_barrier, grid_not_failed, new_sync_state
from lstm_triton.kernels.step_tags import exchange_arrive, exchange_start, exchange_wait
from rnn_testing import (DEVICE, DTYPES, assert_close, assert_runs_close, interpreter_only,
                         outputs_and_grads, twin_modules)
from torch.nn.utils.rnn import PackedSequence, pack_sequence

from lstm_triton import FallbackWarning, dispatch, persistent


def run_compiled_for_sm90(script: str, expect: str):
    """Run `script` in a process without TRITON_INTERPRET (compiling for sm_90 needs the
    real compiler, not the interpreter), from the repository root so `bench` imports; it
    must exit 0 and print `expect`."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, "-c", script], env=env, check=False,
                          capture_output=True, text=True, timeout=900,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0 and expect in done.stdout, done.stderr[-3000:]

I, H = 3, 5


# ---------------------------------------------------------------------------- grid barrier
@triton.jit
def _barrier_probe_kernel(sync_ptr, met_ptr, steps, n_expected, base, spin_limit):
    """Meets `steps` times, expecting n_expected programs after `base` earlier arrivals;
    met_ptr[s] = 1 if meeting s met."""
    ok = grid_not_failed(sync_ptr)
    s = 0
    while (s < steps) & ok:
        ok = grid_barrier(sync_ptr, base + (s + 1) * n_expected, spin_limit)
        tl.store(met_ptr + s, ok.to(tl.int32))
        s += 1


def run_probe(steps, n_expected, spin_limit, sync=None, base=0):
    sync = new_sync_state(DEVICE) if sync is None else sync
    met = torch.full((steps,), -1, dtype=torch.int32)
    _barrier_probe_kernel[(1,)](sync, met, steps, n_expected, base, spin_limit)
    return sync, met


def test_grid_barrier_meets_every_step_on_one_program():
    sync, met = run_probe(steps=4, n_expected=1, spin_limit=8)
    assert met.tolist() == [1, 1, 1, 1]
    assert grid_sync.arrivals(sync) == 4 and not grid_sync.barrier_failed(sync)


def test_grid_barrier_counts_past_int32():
    """The arrival count is 64-bit: a launch that has already counted 2**33 arrivals (a very
    long sequence on a large grid) still meets, and the flag bit is untouched."""
    base = 1 << 33
    sync = torch.tensor([base], dtype=torch.int64)
    sync, met = run_probe(steps=3, n_expected=1, spin_limit=8, sync=sync, base=base)
    assert met.tolist() == [1, 1, 1]
    assert grid_sync.arrivals(sync) == base + 3 and not grid_sync.barrier_failed(sync)


def test_grid_barrier_that_cannot_meet_reports_failure_instead_of_hanging():
    """Two arrivals expected, one program launched: the spin bound runs out, the flag is
    set, and the program stops at its first meeting."""
    sync, met = run_probe(steps=3, n_expected=2, spin_limit=5)
    assert met.tolist() == [0, -1, -1]
    assert grid_sync.barrier_failed(sync) and grid_sync.arrivals(sync) == 1


def test_grid_barrier_sees_failure_reported_by_another_program():
    """A flag already set (another program gave up) stops the wait at once."""
    sync, met = run_probe(steps=1, n_expected=1, spin_limit=1 << 30,
                          sync=grid_sync.failed_sync_state(DEVICE))
    assert met.tolist() == [-1]  # the loop never started


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_failed_barrier_falls_back_to_stepwise_with_a_warning(cell, monkeypatch):
    """Every launch reports a failed barrier (flag preset): forward and backward rerun on
    stepwise, say so, and still match torch."""
    kernels = __import__(f"lstm_triton.kernels.persistent_{cell}", fromlist=["x"])
    monkeypatch.setattr(kernels, "new_sync_state", grid_sync.failed_sync_state)
    module, oracle = twin_modules(cell, I, H, dtype=torch.float64, backend="persistent")
    x = torch.randn(4, 2, I, dtype=torch.float64, requires_grad=True)
    weights_out = [torch.randn(4, 2, H, dtype=torch.float64)] + \
                  [torch.randn(1, 2, H, dtype=torch.float64)] * (2 if cell == "lstm" else 1)
    with pytest.warns(FallbackWarning, match="grid barrier"):
        out, finals, grads = outputs_and_grads(module, x, None, weights_out, [x])
    ref_out, ref_finals, ref_grads = outputs_and_grads(oracle, x, None, weights_out, [x])
    assert_close(out, ref_out, torch.float64, "output")
    for got, want in zip(list(finals) + list(grads), list(ref_finals) + list(ref_grads)):
        assert_close(got, want, torch.float64, "final state / gradient")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_every_failed_barrier_is_reported_not_only_the_first(cell, monkeypatch):
    """A barrier that fails at run time (a GPU busy with other work) is news each time: every
    call that fell back says so, unlike static reasons, which are warned once per process."""
    kernels = __import__(f"lstm_triton.kernels.persistent_{cell}", fromlist=["x"])
    monkeypatch.setattr(kernels, "new_sync_state", grid_sync.failed_sync_state)
    module, oracle = twin_modules(cell, I, H, backend="persistent")
    x = torch.randn(3, 2, I)
    for _ in range(3):
        with torch.no_grad(), pytest.warns(FallbackWarning, match="grid barrier"):
            out, _ = module(x)
        assert_close(out, oracle(x.double())[0], torch.float32, "output")


# ------------------------------------------------------- step-tagged exchange (issue 16)
@triton.jit
def _tags_probe_kernel(sync_ptr, met_ptr, steps, spin_limit, TAGS: tl.constexpr):
    """Meets `steps` times through the step-tagged exchange as the kernels do (start, then
    wait / arrive each step); met_ptr[program, s] = 1 if meeting s + 1 met."""
    n_prog, ok = exchange_start(sync_ptr, TAGS)
    s = 0
    while (s < steps) & ok:
        ok = exchange_wait(sync_ptr, s + 1, n_prog, spin_limit, TAGS)
        exchange_arrive(sync_ptr, s + 2, TAGS)
        tl.store(met_ptr + tl.program_id(0) * steps + s, ok.to(tl.int32))
        s += 1


def run_tags_probe(programs, steps, spin_limit, tags=None, sync=None):
    """Under the interpreter the programs run one after another: program 0 runs its whole loop
    before program 1 starts, so with two programs program 1's tag never arrives for it."""
    tags = tags or triton.next_power_of_2(programs)
    sync = new_sync_state(DEVICE, tags) if sync is None else sync
    met = torch.full((programs, steps), -1, dtype=torch.int32)
    _tags_probe_kernel[(programs,)](sync, met, steps, spin_limit, TAGS=tags)
    return sync, met


@interpreter_only
@pytest.mark.parametrize("lanes", [pytest.param(1, id="one-lane"),
                                   pytest.param(4, id="lanes-past-the-grid-masked")])
def test_step_tags_meet_every_step_on_one_program(lanes):
    """One program: each meeting waits on its own tag, which it raised at the meeting before;
    the tag ends at its count of arrivals (start + one per step), no failure flag; tag lanes
    past the grid are never waited on (nor written)."""
    sync, met = run_tags_probe(1, steps=5, spin_limit=4, tags=lanes)
    assert met.tolist() == [[1] * 5]
    assert sync.tolist() == [0, 6] + [0] * (lanes - 1)
    assert not grid_sync.barrier_failed(sync)


@interpreter_only
def test_step_tag_that_never_arrives_sets_the_flag_instead_of_hanging():
    """Two programs, run one after the other: program 0's first meeting needs program 1's tag,
    which cannot arrive while program 0 waits. After its spin bound it gives up, sets the
    launch's flag (word 0, for the launcher) and its own tag's (for the grid); program 1 then
    sees the flag at its start and never enters the loop."""
    sync, met = run_tags_probe(2, steps=3, spin_limit=6)
    assert met.tolist() == [[0, -1, -1], [-1, -1, -1]]
    assert grid_sync.barrier_failed(sync)
    flag = grid_sync.FAILED.value
    # program 0 published its start (1) and, after giving up, still arrived (2): a raise by
    # max, which leaves the flagged tag as it is; program 1 published its start
    assert sync.tolist()[1:] == [flag | 1, 1]


@interpreter_only
def test_step_tag_failure_reported_by_another_program_stops_the_wait_at_once():
    """A program waiting on a tag whose failure flag is set gives up at its first poll (the
    spin bound here would take hours under the interpreter), and raises the launch's flag."""
    sync = new_sync_state(DEVICE, 2)
    sync[2] = grid_sync.FAILED.value | 3  # program 1 gave up earlier
    sync, met = run_tags_probe(2, steps=2, spin_limit=1 << 40, sync=sync)
    assert met.tolist()[0] == [0, -1] and grid_sync.barrier_failed(sync)


@interpreter_only
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("tags", [pytest.param(False, id="counter"),
                                  pytest.param(True, id="step-tags")])
def test_a_meeting_that_cannot_complete_falls_back_to_stepwise(cell, tags, monkeypatch):
    """A two-program grid under the interpreter (programs run in turn, so program 0 waits for
    a program that has not started): forward and backward both end in bounded time with the
    flag set, warn, rerun on stepwise and still match torch, every gradient. With the step
    tags this is the tag that never arrives; with the counter, the count that never does."""
    default_plan = persistent_config.plan

    def two_programs(*args):
        p, reason = default_plan(*args)
        p = dataclasses.replace(p, grid=2, block_h=16, block_o=16, spin_limit=40,
                                step_tags=tags)
        return p, reason
    monkeypatch.setattr(persistent_config, "plan", two_programs)
    module, oracle = twin_modules(cell, I, 20, dtype=torch.float64, backend="persistent")
    x = torch.randn(3, 2, I, dtype=torch.float64, requires_grad=True)
    weights_out = [torch.randn(3, 2, 20, dtype=torch.float64)] + \
                  [torch.randn(1, 2, 20, dtype=torch.float64)] * (2 if cell == "lstm" else 1)
    with pytest.warns(FallbackWarning, match="grid barrier") as caught:
        out, finals, grads = outputs_and_grads(module, x, None, weights_out, [x])
    assert {"forward", "backward"} <= {w for r in caught for w in ("forward", "backward")
                                       if w in str(r.message)}
    ref_out, ref_finals, ref_grads = outputs_and_grads(oracle, x, None, weights_out, [x])
    assert_close(out, ref_out, torch.float64, "output")
    for got, want in zip(list(finals) + list(grads), list(ref_finals) + list(ref_grads)):
        assert_close(got, want, torch.float64, "final state / gradient")


def test_tag_poll_by_load_is_gpu_only_and_named():
    """LSTM_TRITON_TAG_POLL=load asks for inline-PTX acquire loads, which the interpreter
    cannot run: under it the poll stays an atomic (the CPU tests' path); a wrong name fails
    at import with the names to use."""
    probe = "from lstm_triton.kernels import step_tags; print(step_tags.POLL_BY_LOAD.value)"
    env = dict(os.environ, LSTM_TRITON_TAG_POLL="load", TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stderr
    env["LSTM_TRITON_TAG_POLL"] = "ld"
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "LSTM_TRITON_TAG_POLL='ld': use atom or load" in run.stderr


def test_step_tags_are_an_option_with_fresh_state_per_launch():
    """Off by default; on, one tag word per program (a power of two of lanes), in a state that
    each launch allocates zeroed beside the barrier word (never shared by two launches)."""
    cpu = torch.device(DEVICE)
    p = persistent_config.plan(4, cpu, torch.float32, 3, 20)[0]
    assert not p.step_tags and persistent_config.tag_lanes(p) == 0
    on = persistent_config.with_step_tags(p)
    assert persistent_config.tag_lanes(on) == 1
    assert persistent_config.tag_lanes(dataclasses.replace(on, grid=48)) == 64
    a, b = new_sync_state(DEVICE, 64), new_sync_state(DEVICE, 64)
    assert a.shape == (65,) and a.data_ptr() != b.data_ptr() and not a.any()
    failed = grid_sync.failed_sync_state(DEVICE, 64)
    assert grid_sync.barrier_failed(failed) and not failed[1:].any()


# -------------------------------------------------------------------------------- dispatch
@pytest.mark.parametrize("resident, tags", [pytest.param(True, False, id="resident"),
                                             pytest.param(False, False, id="streamed"),
                                             pytest.param(True, True, id="resident-step-tags")])
def test_projection_runs_persistent_with_two_meetings_per_step(resident, tags, monkeypatch):
    """proj_size: h = m W_hr^T needs all of m, so forward and backward meet twice a step;
    packed, bidirectional, every gradient, and no fallback to stepwise. step-tags: both
    meetings through the step-tagged exchange (issue 16)."""
    original = persistent_config.plan
    option = (persistent_config.with_step_tags if tags else lambda p: p)
    option_and_mode = (lambda p: option(p)) if resident else \
        (lambda p: option(persistent_config.streamed(p)))
    monkeypatch.setattr(persistent_config, "plan",
                        lambda *a: (option_and_mode(original(*a)[0]), None))
    plan, _ = dispatch.persistent_plan("lstm", torch.device(DEVICE), torch.float64, 3, 6, 3)
    assert plan is not None and plan.block_o >= 3 and plan.step_tags == tags
    module, oracle = twin_modules("lstm", I, 6, proj_size=3, bidirectional=True,
                                  dtype=torch.float64, backend="persistent")
    packed = pack_sequence([torch.randn(n, I, dtype=torch.float64) for n in (2, 5, 1)],
                           enforce_sorted=False)
    data = packed.data.detach().requires_grad_()
    packed = PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                            packed.unsorted_indices)
    h0 = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    weights_out = [torch.randn(data.shape[0], 6, dtype=torch.float64), torch.randn_like(h0),
                   torch.randn_like(c0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)  # this must run persistent
        got = outputs_and_grads(module, packed, (h0, c0), weights_out, [data, h0, c0])
    want = outputs_and_grads(oracle, packed, (h0, c0), weights_out, [data, h0, c0])
    assert_close(got[0].data, want[0].data, torch.float64, "output")
    for k, (g, w) in enumerate(zip(list(got[1]) + list(got[2]), list(want[1]) + list(want[2]))):
        assert_close(g, w, torch.float64, f"final state / gradient {k}")


def test_cpu_without_interpreter_has_no_plan(monkeypatch):
    monkeypatch.setattr(persistent_config, "interpreting", lambda: False)
    plan, reason = persistent_config.plan(4, torch.device("cpu"), torch.float32, 2, 8)
    assert plan is None and "TRITON_INTERPRET" in reason


@interpreter_only
def test_interpreter_plan_is_one_program_covering_every_unit():
    plan, _ = dispatch.persistent_plan("gru", torch.device("cpu"), torch.float32, 3, 40, 40)
    assert (plan.grid, plan.block_h, plan.block_b, plan.resident) == (1, 64, 16, True)
    plan, _ = dispatch.persistent_plan("gru", torch.device("cpu"), torch.float64, 3, 40, 40)
    assert not plan.resident  # as on a GPU: float64 has no tensor-core dot


@pytest.mark.parametrize("n_sm", [pytest.param(8, id="8SMs"), pytest.param(132, id="132SMs")])
@pytest.mark.parametrize("hidden", [1, 17, 256, 768, 1024, 4096])
def test_gpu_plan_never_launches_more_programs_than_sms(n_sm, hidden, monkeypatch):
    """Device properties are read, not assumed: a fake device with n_sm SMs, a 256 KiB
    register file and 227 KiB of shared memory per program."""
    monkeypatch.setattr(persistent_config, "_gpu_budget",
                        lambda device: (n_sm, 256 * 1024, 227 * 1024))
    plan, reason = persistent_config.plan(4, torch.device("cuda"), torch.bfloat16, 16, hidden)
    if plan is None:  # 4096 units on 8 SMs: 512 units per program, too much state
        assert (n_sm, hidden) == (8, 4096) and "register file" in reason
        return
    assert plan.grid <= n_sm and plan.grid * plan.block_h >= hidden
    assert plan.block_h >= 16 and plan.block_b >= 16 and plan.dot == persistent_config.DOT_NATIVE


def test_float32_resident_weights_only_on_triton_versions_that_compile_them():
    assert persistent_config.fp32_resident_compiles("3.6.0")
    assert not persistent_config.fp32_resident_compiles("3.9.0")
    assert not persistent_config.fp32_resident_compiles("3.7.1")  # never checked: streams


def test_gpu_plan_streams_weights_that_do_not_fit_and_refuses_huge_batches(monkeypatch):
    monkeypatch.setattr(persistent_config, "_gpu_budget",
                        lambda device: (132, 256 * 1024, 227 * 1024))
    cuda = torch.device("cuda")
    assert persistent_config.plan(4, cuda, torch.float16, 8, 256)[0].resident
    # K in power-of-two pieces (768 = 3 x 256): H=768 and H=1024 hold W_hh on chip ...
    assert persistent_config.plan(4, cuda, torch.float16, 8, 768)[0].resident
    assert persistent_config.plan(3, cuda, torch.float16, 16, 1024)[0].resident
    # ... up to half the register file's bytes of W (ptxas spills beyond): 1536 streams
    assert not persistent_config.plan(4, cuda, torch.float16, 8, 1536)[0].resident
    assert not persistent_config.plan(4, cuda, torch.float16, 8, 4096)[0].resident
    assert not persistent_config.plan(4, cuda, torch.float64, 8, 64)[0].resident  # no fp64 dot
    # float32: resident only where this Triton compiles it (3.9's LLVM aborts, 3.6 does not)
    monkeypatch.setattr(persistent_config, "fp32_resident_compiles", lambda: False)
    assert not persistent_config.plan(4, cuda, torch.float32, 8, 64)[0].resident
    monkeypatch.setattr(persistent_config, "fp32_resident_compiles", lambda: True)
    assert persistent_config.plan(4, cuda, torch.float32, 8, 256)[0].resident
    assert persistent_config.plan(4, cuda, torch.float32, 8, 512)[0].resident  # 128 KiB
    assert not persistent_config.plan(4, cuda, torch.float32, 8, 768)[0].resident  # 192 KiB
    plan, reason = persistent_config.plan(4, cuda, torch.float32, 100_000, 256)
    assert plan is None and "MAX_BATCH" in reason


def test_gpu_plan_refuses_state_beyond_half_the_register_file_at_the_boundary(monkeypatch):
    """The limit itself, not only a batch far past it: H=256 on 132 SMs gives 16 units a
    program, so an LSTM program holds (4 gates + c + h) x 16 units + 16 columns of h, float32,
    per padded batch row: 448 bytes. A batch padded to 256 rows (112 KiB) fits half of a
    256 KiB register file; one more row pads to 512 (224 KiB) and goes to stepwise. (The
    batch cap, MAX_BATCH, is lifted here: this rule stays as the guard if a GPU run raises
    it.)"""
    monkeypatch.setattr(persistent_config, "_gpu_budget",
                        lambda device: (132, 256 * 1024, 227 * 1024))
    monkeypatch.setattr(persistent_config, "MAX_BATCH", 1 << 20)
    cuda = torch.device("cuda")
    plan, reason = persistent_config.plan(4, cuda, torch.float16, 256, 256)
    assert plan is not None and plan.block_b == 256 and plan.block_h == 16, reason
    plan, reason = persistent_config.plan(4, cuda, torch.float16, 257, 256)
    assert plan is None and "229376 bytes" in reason and "register file" in reason


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_plan_caps_the_batch_where_the_compiled_backward_starts_to_spill(dtype,
                                                                             monkeypatch):
    """Up to MAX_BATCH (16) rows a layer is planned persistent; one row more is refused with a
    reason naming the cap, whatever the hidden size (compiled for sm_90, the B=32 LSTM
    backward spills up to 660 B a thread, B=64 up to 2.5 KiB)."""
    monkeypatch.setattr(persistent_config, "_gpu_budget",
                        lambda device: (132, 256 * 1024, 227 * 1024))
    cuda = torch.device("cuda")
    assert persistent_config.MAX_BATCH == 16
    for hidden in (256, 768, 1024):
        for n_gates in (4, 3):
            plan, reason = persistent_config.plan(n_gates, cuda, dtype, 16, hidden)
            assert plan is not None and plan.block_b == 16, reason
            plan, reason = persistent_config.plan(n_gates, cuda, dtype, 17, hidden)
            assert plan is None and "cap of 16" in reason and "MAX_BATCH" in reason


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_batch_above_the_cap_runs_on_stepwise_with_a_warning_and_stays_right(cell):
    """The cap is a fallback, not an error: backend="persistent" at batch 17 warns once
    (FallbackWarning, naming the cap) and returns stepwise's results, forward and every
    gradient against float64 torch."""
    dispatch._warned.clear()
    module, oracle = twin_modules(cell, I, H, backend="persistent")
    x = torch.randn(2, persistent_config.MAX_BATCH + 1, I, requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    weights = [torch.randn(2, x.shape[1], H, dtype=torch.float64)] + [
        torch.randn(1, x.shape[1], H, dtype=torch.float64)] * (2 if cell == "lstm" else 1)
    with pytest.warns(FallbackWarning, match="cap of 16"):
        out, finals, grads = outputs_and_grads(module, x, None, weights, [x])
    assert_runs_close((out, finals, grads),
                      outputs_and_grads(oracle, x64, None, weights, [x64]), torch.float32)


# ---------------------------------------------------------------- streamed weights, packed
@pytest.fixture
def streamed_plans(monkeypatch):
    """Force the not-resident path: W_hh re-read every step in 16-wide K-chunks."""
    resident_plan = persistent_config.plan

    def plan(*args):
        p, reason = resident_plan(*args)
        return (persistent_config.streamed(p) if p is not None else None), reason
    monkeypatch.setattr(persistent_config, "plan", plan)


def check_packed_bidirectional(cell, hidden, dtype=torch.float64):
    """Packed, bidirectional (reverse-direction rows join late), every gradient, against the
    float64 oracle on the same inputs."""
    lengths = [2, 5, 1]
    module, oracle = twin_modules(cell, I, hidden, bidirectional=True, dtype=dtype,
                                  backend="persistent")
    packed64 = pack_sequence([torch.randn(n, I, dtype=torch.float64) for n in lengths],
                             enforce_sorted=False)
    states64 = [torch.randn(2, 3, hidden, dtype=torch.float64) for _ in range(1 + (cell == "lstm"))]
    weights_out = [torch.randn(packed64.data.shape[0], 2 * hidden, dtype=torch.float64)]
    weights_out += [torch.randn_like(h) for h in states64]

    def run(rnn, as_dtype):
        data = packed64.data.to(as_dtype).requires_grad_()
        packed = PackedSequence(data, packed64.batch_sizes, packed64.sorted_indices,
                                packed64.unsorted_indices)
        states = [h.to(as_dtype).requires_grad_() for h in states64]
        hx = states[0] if cell == "gru" else tuple(states)
        return outputs_and_grads(rnn, packed, hx, weights_out, [data] + states)

    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)  # this must run persistent
        got = run(module, dtype)
    want = run(oracle, torch.float64)
    assert_close(got[0].data, want[0].data, dtype, "output")
    for k, (g, w) in enumerate(zip(list(got[1]) + list(got[2]), list(want[1]) + list(want[2]))):
        assert_close(g, w, dtype, f"final state / gradient {k}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_streamed_weights_packed_bidirectional_match_torch(cell, streamed_plans):
    """H=20: two K-chunks forward, four or five backward."""
    check_packed_bidirectional(cell, 20)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_resident_weights_in_several_k_pieces_match_torch(cell):
    """H=160: W_hh held as three 64-row pieces forward (the last one padded); LSTM backward
    (K = 640) as five 128-row pieces, GRU backward (K = 480) as one padded piece."""
    assert persistent_config.k_pieces(160, 16) == (64, 3)
    assert persistent_config.k_pieces(4 * 160, 16) == (128, 5)
    assert persistent_config.k_pieces(3 * 160, 16) == (512, 1)
    assert persistent_config.plan(4, torch.device(DEVICE), torch.float32, 3, 160)[0].resident
    check_packed_bidirectional(cell, 160, torch.float32)


def test_k_pieces_cover_k_in_powers_of_two_with_little_padding():
    for k in (1, 5, 16, 20, 48, 100, 256, 768, 1000, 1024, 2304, 3072, 4096, 6000):
        for block_b in (16, 64, 256):
            kp, n_pieces = persistent_config.k_pieces(k, block_b)
            assert kp >= persistent_config.MIN_DOT and kp & (kp - 1) == 0, (k, kp)
            assert kp * n_pieces >= k > kp * (n_pieces - 1), (k, kp, n_pieces)
            assert n_pieces <= persistent_config.MAX_PIECES, (k, block_b, kp, n_pieces)
            # each dot stages at most A_PIECE elements of A, unless that takes too many pieces
            if n_pieces < persistent_config.MAX_PIECES // 2:
                assert block_b * kp <= max(persistent_config.A_PIECE, 16 * block_b)
            if k >= 128:
                assert kp * n_pieces <= k + k // 8, (k, block_b, kp, n_pieces)
    assert persistent_config.k_pieces(768, 16) == (256, 3)  # not one 1024-row piece
    assert persistent_config.k_pieces(4 * 768, 16) == (512, 6)
    assert persistent_config.k_pieces(1024, 16) == (512, 2)
    assert persistent_config.k_pieces(3 * 768, 16) == (256, 9)  # 2304 exactly, not 2560


# ------------------------------------------------------------------ dtypes, determinism
@interpreter_only
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bfloat16_matmuls_are_upcast_under_the_interpreter(cell):
    assert persistent_config.dot_mode(torch.bfloat16, torch.device("cpu")) == \
        persistent_config.DOT_IEEE_F32
    module, oracle = twin_modules(cell, I, 7, dtype=torch.bfloat16, backend="persistent")
    x = torch.randn(5, 3, I, dtype=torch.bfloat16)
    out, _ = module(x)
    assert_close(out, oracle(x.double())[0], torch.bfloat16, "output")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_same_bits_run_to_run(cell, dtype):
    module, _ = twin_modules(cell, I, 6, dtype=dtype, bidirectional=True, backend="persistent")
    x = torch.randn(4, 3, I, dtype=dtype, requires_grad=True)
    n_states = 2 if cell == "lstm" else 1
    weights_out = [torch.randn(4, 3, 12)] + [torch.randn(2, 3, 6) for _ in range(n_states)]
    first = outputs_and_grads(module, x, None, weights_out, [x])
    second = outputs_and_grads(module, x, None, weights_out, [x])
    flat = lambda r: [r[0], *r[1], *r[2]]
    for a, b in zip(flat(first), flat(second)):
        assert torch.equal(a, b)


def test_resident_weights_out_of_resources_retry_streamed(monkeypatch):
    """A resident W_hh slice that does not compile is retried streamed, not given up."""
    from triton.runtime.errors import OutOfResources

    plans = []
    real = persistent.lstm_persistent_fwd

    def launcher(*args):
        plans.append(args[-1])
        if args[-1].resident:
            raise OutOfResources(300_000, 232_448, "shared memory")
        return real(*args)

    monkeypatch.setattr(persistent, "lstm_persistent_fwd", launcher)
    module, oracle = twin_modules("lstm", I, H, backend="persistent")
    x = torch.randn(3, 2, I)
    with torch.no_grad():
        out, _ = module(x)
    assert [p.resident for p in plans] == [True, False]
    assert_close(out, oracle(x.double())[0], torch.float32, "output")


def test_cooperative_launch_refused_by_the_driver_is_retried_plain(monkeypatch):
    """GPU plans launch cooperatively; a driver that refuses (Triton raises RuntimeError
    "Triton Error [CUDA]: ...") gets the same launch plainly, with one warning, and later
    launches go plain at once. Other errors are not swallowed."""
    plans = []
    real = persistent.lstm_persistent_fwd

    def launcher(*args):
        plans.append(args[-1])
        if args[-1].cooperative:
            raise RuntimeError("Triton Error [CUDA]: too many blocks in cooperative launch")
        return real(*args)

    cooperative = persistent_config.plan
    monkeypatch.setattr(persistent_config, "plan", lambda *a: (
        dataclasses.replace(cooperative(*a)[0], cooperative=True), None))
    monkeypatch.setattr(persistent, "lstm_persistent_fwd", launcher)
    monkeypatch.setattr(persistent, "_cooperative_refused", False)
    module, oracle = twin_modules("lstm", I, H, backend="persistent")
    x = torch.randn(3, 2, I)
    with torch.no_grad(), pytest.warns(FallbackWarning, match="refused a cooperative launch"):
        out, _ = module(x)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        again, _ = module(x)
    assert [p.cooperative for p in plans] == [True, False, False]
    assert_close(out, oracle(x.double())[0], torch.float32, "output")
    assert torch.equal(out, again)

    def broken(*args):
        raise RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered")
    monkeypatch.setattr(persistent, "lstm_persistent_fwd", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        module(x)


def test_gpu_plans_launch_cooperatively(monkeypatch):
    monkeypatch.setattr(persistent_config, "_gpu_budget",
                        lambda device: (132, 256 * 1024, 227 * 1024))
    plan, _ = persistent_config.plan(4, torch.device("cuda"), torch.float16, 8, 256)
    assert plan.cooperative == persistent_config.COOPERATIVE and plan.max_regs == 255
    assert not persistent_config.not_cooperative(plan).cooperative


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_inference_without_saving_gives_the_same_bits(cell):
    """torch.no_grad runs the kernels with SAVE=False: same outputs, nothing else written."""
    module, _ = twin_modules(cell, I, H, num_layers=2, backend="persistent")
    x = torch.randn(4, 3, I)
    out, finals = module(x)
    with torch.no_grad():
        out_ng, finals_ng = module(x)
    assert torch.equal(out, out_ng)
    for a, b in zip(finals if cell == "lstm" else [finals],
                    finals_ng if cell == "lstm" else [finals_ng]):
        assert torch.equal(a, b)


# -------------------------------------------------------- compiled for a GPU, without one
COMPILE_FOR_SM90 = r'''
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lstm_triton.kernels import persistent_config, persistent_gru, persistent_lstm
FP32_RESIDENT = persistent_config.fp32_resident_compiles()  # else the GPU plans stream fp32
DTYPES = {"fp16": (0, tl.float32), "bf16": (0, tl.float32), "fp32": (1, tl.float32),
          "fp64": (2, tl.float64)}
# issue 18's options (kernels/step_variant.py): all off, as plain layers compile (set to
# True by tests/test_variants.py, which compiles the kernels with every option on)
VARIANT_FLAGS = ("KEEP", "SCALE_KEEP", "DROP", "ZONE_C", "ZONE_H", "CARRY")
VARIANT = False
for kernel in (persistent_lstm.lstm_persistent_fwd_kernel,
               persistent_lstm.lstm_persistent_bwd_kernel,
               persistent_gru.gru_persistent_fwd_kernel, persistent_gru.gru_persistent_bwd_kernel):
    for dt, resident in (("fp16", True), ("bf16", True), ("bf16", False), ("fp32", False),
                         ("fp32", FP32_RESIDENT), ("fp64", False)):
        dot, compute = DTYPES[dt]
        for proj in ((False, True) if "PROJ" in kernel.arg_names else (None,)):
            cx = dict(REVERSE=True, RESIDENT=resident, DOT=dot, COMPUTE=compute, BLOCK_B=16,
                      BLOCK_H=16, BLOCK_K=4 if dot == 2 else 64, SPLIT=2, KP=64, NP=3)
            cx.update({k: True for k in ("SAVE", "HAS_BHH") if k in kernel.arg_names})
            cx.update({k: False for k in ("PARTIALS",) if k in kernel.arg_names})
            cx.update({k: VARIANT for k in VARIANT_FLAGS if k in kernel.arg_names})
            # the step-tagged exchange (issue 16) in the bf16 resident build, the counter else
            cx.update(TAGS=64 if (dt, resident) == ("bf16", True) else 0)
            if "TRANS" in kernel.arg_names:  # the narrow forward's transposed dot (issue 16)
                cx.update(TRANS=(dt, resident) in (("fp16", True), ("bf16", False)))
            if proj is not None:  # the LSTM, with and without a projection (two meetings a step)
                cx.update(PROJ=proj, BLOCK_O=32 if proj else 16)
                if "PROJ_SPLIT" in kernel.arg_names:
                    cx.update(PROJ_SPLIT=2)
            state = "*fp64" if dt == "fp64" else "*fp32"
            ptrs = {"bs_ptr": "*i32", "off_ptr": "*i64", "sync_ptr": "*i64", "c_save_ptr": state}
            sig = {n: "constexpr" if n in cx else (ptrs.get(n, "*" + dt) if n.endswith("_ptr")
                                                   else "i32") for n in kernel.arg_names}
            triton.compile(ASTSource(kernel, sig, constexprs=cx), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": 4})
from lstm_triton.kernels import gru_pointwise, lstm_pointwise
for kernel in (lstm_pointwise.lstm_step_fwd_kernel, lstm_pointwise.lstm_step_bwd_kernel,
               gru_pointwise.gru_step_fwd_kernel, gru_pointwise.gru_step_bwd_kernel):
    for dt in ("fp16", "bf16", "fp32", "fp64"):
        compute = tl.float64 if dt == "fp64" else tl.float32
        state = "*fp64" if dt == "fp64" else "*fp32"
        flags = ("WRITE_H_STATE", "SAVE", "ADD_DH_REC")
        cx = {k: True for k in flags if k in kernel.arg_names}
        cx.update({k: VARIANT for k in VARIANT_FLAGS if k in kernel.arg_names})
        cx.update(COMPUTE=compute, BLOCK_B=16, BLOCK_H=128)
        ptrs = {n: state for n in ("c_ptr", "dc_ptr", "c_save_ptr", "c_prev_ptr", "c0_ptr")}
        sig = {n: "constexpr" if n in cx else (ptrs.get(n, "*" + dt) if n.endswith("_ptr")
                                               else "i32") for n in kernel.arg_names}
        triton.compile(ASTSource(kernel, sig, constexprs=cx), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 4})
# a cell step in one launch (kernels/cell_fused.py), inference and training, at the blocks
# config.fused_cell_launch gives a GPU
# and a small layer's loop at one launch a step (kernels/fused_steps.py): the cell kernel
# on the input projection (PROJECTED, keeping h_n: STATE) and the loop's backward kernel
from lstm_triton.kernels import cell_fused, fused_steps
for kernel, layer in ((cell_fused.lstm_cell_fused_kernel, False),
                      (cell_fused.lstm_cell_fused_kernel, True),
                      (cell_fused.gru_cell_fused_kernel, False),
                      (cell_fused.gru_cell_fused_kernel, True),
                      (fused_steps.lstm_step_fused_bwd_kernel, True),
                      (fused_steps.gru_step_fused_bwd_kernel, True)):
    for dt in ("fp16", "bf16", "fp32", "fp64"):
        dot, compute = DTYPES[dt]
        for save in (False, True):
            cx = dict(DOT=dot, COMPUTE=compute, BLOCK_B=16, BLOCK_H=16,
                      BLOCK_K=16 if dt == "fp64" else 32)
            cx.update({k: v for k, v in (("HAS_BIAS", not layer), ("SAVE", save),
                                         ("PROJECTED", layer), ("STATE", layer))
                       if k in kernel.arg_names})
            state = "*fp64" if dt == "fp64" else "*fp32"
            ptrs = {"c1_ptr": state, "c_save_ptr": state, "dc_ptr": state,
                    "direct_ptr": state}
            if layer:  # a layer's c is its state
                ptrs.update(c0_ptr=state)
            sig = {n: "constexpr" if n in cx else (ptrs.get(n, "*" + dt) if n.endswith("_ptr")
                                                   else "i32") for n in kernel.arg_names}
            triton.compile(ASTSource(kernel, sig, constexprs=cx),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
# an LSTM cell step's backward in one program (kernels/cell_fused_backward.py), in every
# dtype, at its largest tile, (rows, units, inputs) (16, 16, 32), whose float32 / bfloat16
# builds must not spill (config.fused_cell_backward_launch's limits)
from bench.compiled import ptxas_usage
from lstm_triton.kernels import cell_fused_backward
kernel = cell_fused_backward.lstm_cell_fused_bwd_kernel
for dt in ("fp16", "bf16", "fp32", "fp64"):
    dot, compute = DTYPES[dt]
    for block_b, block_i in ((16, 32),):
        cx = dict(HAS_BIAS=True, DOT=dot, COMPUTE=compute, BLOCK_B=block_b, BLOCK_H=16,
                  BLOCK_I=block_i)
        state = "*fp64" if dt == "fp64" else "*fp32"
        sig = {n: "constexpr" if n in cx else ((state if n == "c_save_ptr" else "*" + dt)
                                               if n.endswith("_ptr") else "i32")
               for n in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, sig, constexprs=cx),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        if dt in ("fp32", "bf16"):
            regs, spill = ptxas_usage(compiled.asm["ptx"])
            assert spill == 0, (dt, block_b, block_i, regs, spill)
print("compiled")
'''


@pytest.mark.sm90
@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter never compiles: build every kernel (persistent, and the stepwise
    kernels in every dtype) for an H100 (sm_90) in a process
    without TRITON_INTERPRET, for each dtype and weight mode the GPU plans choose. Catches
    compiler-only failures (scoping, layouts, an LLVM abort) before any GPU is at hand."""
    run_compiled_for_sm90(COMPILE_FOR_SM90, expect="compiled")


WARPS_SHARE_THE_DOT = r'''
import dataclasses, torch, triton
from bench.compiled import compile_case, h100_plan
from lstm_triton.kernels import persistent_config
for cell, n_gates in (("lstm", 4), ("gru", 3)):
    for direction in ("fwd", "bwd"):
        for hidden, resident in ((256, True), (768, True), (1024, False)):
            plan = h100_plan(cell, torch.bfloat16, 16, hidden)
            assert plan.resident or not resident, (cell, hidden, plan)
            plan = dataclasses.replace(plan, resident=resident)
            got = compile_case(cell, direction, torch.bfloat16, 16, hidden, plan=plan)
            n = 4 * plan.block_h if direction == "fwd" else plan.block_o
            k = hidden if direction == "fwd" else n_gates * hidden
            dot = persistent_config.recurrent_dot(plan, n_gates, hidden, hidden,
                                                  direction == "bwd")
            step = dot["SPLIT"] * plan.block_k
            k_run = dot["KP"] * dot["NP"] if resident else triton.cdiv(k, step) * step
            useful = (plan.block_b // 16) * (n // 8) * (k_run // 16)  # mma.m16n8k16 of one step
            assert got["mma_per_smsp"] * 4 == useful, (cell, direction, hidden, got, useful)
            # a couple of registers at most (GRU backward, H=768: 8 B); the kernels that
            # repeated the dot in every warp spilled 2 KiB
            assert got["spill_bytes"] <= 16, (cell, direction, hidden, got)
            if resident:  # the plan's shared-memory estimate is what the compiler allocates
                w, a = persistent_config.resident_bytes(k, n, plan.block_b, torch.bfloat16,
                                                        plan.dot)
                assert got["smem_kib"] * 1024 == w + a, (cell, direction, hidden, got, w + a)
print("shared")
'''


@pytest.mark.sm90
@pytest.mark.slow
def test_warps_share_the_recurrent_dot_instead_of_repeating_it():
    """At batch 16 the recurrent dot is one 16-row mma tile. Compiled for an H100 (sm_90),
    each step's tensor-core instructions must be spread over the SM's four sub-partitions
    with none repeated (forward: the fused gate tile's columns; backward: K-chunks), and
    ptxas must spill no more than a couple of registers: resident (H=256, and H=768 in
    K pieces) and streamed (H=1024) W_hh, LSTM and GRU. A resident plan's shared memory is
    what plan() budgets."""
    run_compiled_for_sm90(WARPS_SHARE_THE_DOT, expect="shared")


# ------------------------------------------------- the step's critical path (issue 16)
MMA = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"


def test_mma_chain_depth_counts_dependent_mma_not_all_mma():
    """bench.compiled.mma_chain_depth on hand-written PTX: three mma into one accumulator are
    a chain of 3; two independent chains of 2 summed by an add and fed to one more mma are 3;
    a value reloaded from memory starts a new chain."""
    from bench.compiled import mma_chain_depth

    def mma(d, a, c):
        return f"\t{MMA} {{ {d} }}, {{ {a} }}, {{ %r90, %r91 }}, {{ {c} }};"
    serial = "\n".join(mma("%f1, %f2, %f3, %f4", "%r1, %r2, %r3, %r4", "%f1, %f2, %f3, %f4")
                       for _ in range(3))
    assert mma_chain_depth(serial) == 3
    two_chains = "\n".join([
        "\tmov.f32 %f1, 0f00000000;",
        mma("%f1, %f2, %f3, %f4", "%r1, %r2, %r3, %r4", "%f1, %f2, %f3, %f4"),
        mma("%f1, %f2, %f3, %f4", "%r1, %r2, %r3, %r4", "%f1, %f2, %f3, %f4"),
        mma("%f5, %f6, %f7, %f8", "%r1, %r2, %r3, %r4", "%f9, %f9, %f9, %f9"),
        mma("%f5, %f6, %f7, %f8", "%r1, %r2, %r3, %r4", "%f5, %f6, %f7, %f8"),
        "\tadd.f32 %f10, %f1, %f5;  // the partial sums, reduced once",
        mma("%f11, %f12, %f13, %f14", "%r1, %r2, %r3, %r4", "%f10, %f9, %f9, %f9")])
    assert mma_chain_depth(two_chains) == 3
    through_memory = "\n".join([
        mma("%f1, %f2, %f3, %f4", "%r1, %r2, %r3, %r4", "%f1, %f2, %f3, %f4"),
        "\tst.shared.f32 [%r5], %f1;", "\tbar.sync 0;", "\tld.shared.f32 %f1, [%r5];",
        mma("%f1, %f2, %f3, %f4", "%r1, %r2, %r3, %r4", "%f1, %f9, %f9, %f9")])
    assert mma_chain_depth(through_memory) == 1
    assert mma_chain_depth("\tadd.f32 %f1, %f2, %f3;") == 0


MMA_CHAIN = r'''
import torch
from bench.compiled import compile_case, h100_plan
from lstm_triton.kernels import persistent_config
for hidden in (768, 1024):
    plan = h100_plan("lstm", torch.bfloat16, 16, hidden)
    got = compile_case("lstm", "fwd", torch.bfloat16, 16, hidden, plan=plan)
    kp, n_pieces = persistent_config.k_pieces(hidden, plan.block_b)
    # default plan: every piece's mma accumulate into one fused gate tile, one chain of K/16
    assert got["mma_chain"] == kp * n_pieces // 16, (hidden, got)
    assert got["mma_chain"] == got["mma_per_smsp"] * 4 // plan.num_warps, got  # all of a warp's
    for cell in ("lstm", "gru"):  # issue 16's split K: at most 16 dependent mma, as many mma
        for chain in (16, 8):
            plan = h100_plan(cell, torch.bfloat16, 16, hidden)
            default = compile_case(cell, "fwd", torch.bfloat16, 16, hidden, plan=plan)
            got = compile_case(cell, "fwd", torch.bfloat16, 16, hidden,
                               plan=persistent_config.with_chain(plan, chain))
            assert got["mma_chain"] == chain, (cell, hidden, chain, got)
            assert got["mma_per_smsp"] == default["mma_per_smsp"], (got, default)
print("chained")
'''


@pytest.mark.sm90
@pytest.mark.slow
def test_compiled_report_shows_the_forward_mma_chain():
    """Compiled for sm_90, the default forward (bf16, B=16, H=768 and 1024, resident) runs one
    warp's mma as a single dependent chain of K/16: what bench.compiled's `mma chain` reports.
    With the split-K option (persistent_config.with_chain(plan, n), n = 16 and 8) the LSTM
    and GRU forward run chains of n, the same number of mma."""
    run_compiled_for_sm90(MMA_CHAIN, expect="chained")


STEP_TAGS_COMPILE = r'''
import torch
from bench.compiled import compile_case, h100_plan
from lstm_triton.kernels import persistent_config
for cell in ("lstm", "gru"):
    for direction in ("fwd", "bwd"):
        plan = h100_plan(cell, torch.bfloat16, 16, 768)
        default = compile_case(cell, direction, torch.bfloat16, 16, 768, plan=plan)
        got = compile_case(cell, direction, torch.bfloat16, 16, 768,
                           plan=persistent_config.with_step_tags(plan))
        # the exchange changes the meetings only: the same dot, the same shared memory
        for fact in ("mma_per_smsp", "mma_chain", "smem_kib", "spill_bytes"):
            assert got[fact] == default[fact], (cell, direction, fact, got, default)
        assert got["spill_bytes"] == 0 and got["regs"] <= 255, got
        # counter: one release add and acquire polls of one word; tags: a release max into
        # the program's own word, and acquire polls of every tag
        assert "red.release.add" in default["sync_ops"] or "atom.release.add" in \
            default["sync_ops"], default
        assert "release.add" not in got["sync_ops"] and "release.max" in got["sync_ops"], got
        assert "atom.acquire.add" in got["sync_ops"], got
print("tagged")
'''


TAG_POLL_BY_LOAD = r'''
import os
os.environ["LSTM_TRITON_TAG_POLL"] = "load"
import torch
from bench.compiled import compile_case, h100_plan
from lstm_triton.kernels import persistent_config
for cell, direction in (("lstm", "fwd"), ("gru", "bwd")):
    plan = persistent_config.with_step_tags(h100_plan(cell, torch.bfloat16, 16, 768))
    got = compile_case(cell, direction, torch.bfloat16, 16, 768, plan=plan)
    assert "ld.acquire.b64" in got["sync_ops"] and "atom.acquire" not in got["sync_ops"], got
    assert got["spill_bytes"] == 0, got
print("loaded")
'''


@pytest.mark.sm90
@pytest.mark.slow
def test_step_tags_polled_by_acquire_loads_compile_for_sm90():
    """LSTM_TRITON_TAG_POLL=load (a GPU-only variant: inline PTX, which the interpreter
    cannot run) compiles the tag poll to `ld.global.gpu.acquire` loads, no atom left."""
    run_compiled_for_sm90(TAG_POLL_BY_LOAD, expect="loaded")


@pytest.mark.sm90
@pytest.mark.slow
def test_step_tags_compile_for_sm90_with_the_same_dot():
    """The step-tagged exchange compiled for an H100 (bf16, B=16, H=768, LSTM and GRU, both
    passes): the same mma count and chain, shared memory and (no) spills as the default
    plan; the meetings become a release max into the program's own tag word and an acquire
    poll of every tag, and no release add on a shared counter is left."""
    run_compiled_for_sm90(STEP_TAGS_COMPILE, expect="tagged")


NARROW_COMPILE = r'''
import torch
from bench.compiled import compile_case, h100_plan
from lstm_triton.kernels import persistent_config
for cell in ("lstm", "gru"):
    for hidden in (768, 1024):
        plan = h100_plan(cell, torch.bfloat16, 16, hidden)
        default = compile_case(cell, "fwd", torch.bfloat16, 16, hidden, plan=plan)
        got = compile_case(cell, "fwd", torch.bfloat16, 16, hidden,
                           plan=persistent_config.with_narrow_forward(plan))
        # twice the programs, 8 units each, half the mma per sub-partition, none repeated
        assert (got["grid"], default["grid"]) == (hidden // 8, hidden // 16), (got, default)
        assert got["mma_per_smsp"] * 2 == default["mma_per_smsp"], (got, default)
        # the batch (16) is the transposed dot's N: its warps split K in 8 chunks, so no
        # warp runs more than a chunk's K/16 mma in a row
        kp = persistent_config.k_pieces(hidden, 16)[0]
        assert got["split"] == 8 and got["mma_chain"] == kp // 8 // 16, got
        # shared memory: at most W's slice, 4 x 8 rows of H (Triton 3.6 holds it there; 3.9
        # keeps it in registers, the mma's A operand), not the default's 4 x 16 and an A piece
        assert got["spill_bytes"] == 0 and got["smem_kib"] * 1024 <= 32 * hidden * 2, got
        assert default["smem_kib"] * 1024 > 64 * hidden * 2, default
print("narrow")
'''


@pytest.mark.sm90
@pytest.mark.slow
def test_narrow_forward_compiles_for_sm90_on_twice_the_programs():
    """The narrow option compiled for an H100 (bf16, B=16, H=768 and 1024, LSTM and GRU
    forward): 96 / 128 programs where the default runs 48 / 64, half the mma per
    sub-partition, chains of one K-chunk (2 at H=768, 4 at H=1024), no spill, and shared
    memory at most the program's W slice (Triton 3.6: 48 / 64 KiB, W there; 3.9: 16 / 32
    KiB, W in registers as the transposed dot's M operand; the default: 104 / 144 KiB)."""
    run_compiled_for_sm90(NARROW_COMPILE, expect="narrow")


# issue 16's plan options, each applied to every persistent plan of a test
PLAN_OPTIONS = {"tf32x3": persistent_config.tf32x3,
                "chain4": lambda p: persistent_config.with_chain(p, 4),
                "tags": persistent_config.with_step_tags}


@pytest.fixture
def plan_option(request, monkeypatch):
    """Every persistent plan with the option `request.param` on; returns the plans used."""
    default_plan, used, option = persistent_config.plan, [], PLAN_OPTIONS[request.param]

    def plan(*args):
        p, reason = default_plan(*args)
        p = option(p) if p is not None else None
        used.append(p)
        return p, reason
    monkeypatch.setattr(persistent_config, "plan", plan)
    return used


def test_tf32x3_is_an_option_not_the_default():
    cpu, cuda = torch.device(DEVICE), torch.device("cuda")
    assert persistent_config.dot_mode(torch.float32, cuda) == persistent_config.DOT_IEEE_F32
    p = persistent_config.plan(4, cpu, torch.float32, 3, 20)[0]
    assert persistent_config.tf32x3(p).dot == persistent_config.DOT_TF32X3
    for dtype in (torch.float64, torch.float16):  # only float32's dot changes
        p = persistent_config.plan(4, cpu, dtype, 3, 20)[0]
        assert persistent_config.tf32x3(p) == p


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("hidden", [pytest.param(20, id="H20-one-piece"),
                                    pytest.param(160, id="H160-three-pieces")])
@pytest.mark.parametrize("plan_option", ["tf32x3", "chain4", "tags"], indirect=True)
def test_plan_options_packed_bidirectional_match_torch(cell, hidden, plan_option):
    """Each option of issue 16 on (forward, every gradient, packed, both directions) against
    float64, float32. tf32x3: the interpreter computes any tl.dot in IEEE float32, so this
    checks the wiring of DOT_TF32X3, not 3xTF32's rounding (test_tf32x3_emulated_error_...).
    chain4: the forward's W in 64-row pieces (H=160: three), each its own partial sum.
    tags: every meeting through the step-tagged exchange (one program: its own tag)."""
    check_packed_bidirectional(cell, hidden, torch.float32)
    assert plan_option and all(p.dot == persistent_config.DOT_TF32X3 or p.chain == 4
                               or p.step_tags for p in plan_option)
    n_gates = 4 if cell == "lstm" else 3
    fwd = persistent_config.recurrent_dot(plan_option[0], n_gates, hidden, hidden, False)
    assert fwd["PARTIALS"] == (plan_option[0].chain > 0)
    if fwd["PARTIALS"]:
        assert (fwd["KP"], fwd["NP"]) == ((32, 1) if hidden == 20 else (64, 3))


@interpreter_only
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("plan_option", ["chain4"], indirect=True)
def test_forward_partial_sums_in_bfloat16_match_torch(cell, plan_option):
    """bfloat16 (upcast under the interpreter) with the forward's partial sums, H=100 (two
    64-row pieces, the second padded), packed and bidirectional, against float64."""
    check_packed_bidirectional(cell, 100, torch.bfloat16)
    assert plan_option and all(p.chain == 4 for p in plan_option)


NARROW = {"resident": persistent_config.with_narrow_forward,
          "streamed": lambda p: persistent_config.with_narrow_forward(
              persistent_config.streamed(p)),
          "chain4": lambda p: persistent_config.with_narrow_forward(
              persistent_config.with_chain(p, 4)),
          "tags": lambda p: persistent_config.with_step_tags(
              persistent_config.with_narrow_forward(p))}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("hidden, variant", [
    pytest.param(5, "resident", id="H5-8-units"),
    pytest.param(160, "resident", id="H160-three-pieces"),
    pytest.param(20, "streamed", id="H20-streamed"),
    pytest.param(160, "chain4", id="H160-partial-sums"),
    pytest.param(20, "tags", id="H20-step-tags")])
def test_narrow_forward_packed_bidirectional_matches_torch(cell, hidden, variant, monkeypatch):
    """The narrow option (issue 16): the forward's recurrent dot transposed (W's fused gate tile
    as M, the batch as N), backward as it is. Under the interpreter one program covers every
    unit: H=5 runs BLOCK_H = 8 (32 rows of M, the GPU's shape at H=768); H=160 three
    resident pieces; H=20 W streamed in chunks; H=160 with the forward's partial sums; H=20
    with the step-tagged exchange too (the GPU's comparison pairs them). Packed,
    bidirectional, float32, every gradient against float64."""
    default_plan, used = persistent_config.plan, []

    def plan(*args):
        p, reason = default_plan(*args)
        used.append(NARROW[variant](p))
        return used[-1], reason
    monkeypatch.setattr(persistent_config, "plan", plan)
    check_packed_bidirectional(cell, hidden, torch.float32)
    assert used and all(p.narrow for p in used)
    fwd = persistent_config.forward_plan(used[0], hidden, hidden)
    assert fwd.narrow and fwd.grid == 1 and fwd.block_h == (8 if hidden == 5 else used[0].block_h)
    n_gates = 4 if cell == "lstm" else 3
    assert persistent_config.recurrent_dot(fwd, n_gates, hidden, hidden, False)["TRANS"]


def test_narrow_forward_plans_more_programs_on_a_gpu(monkeypatch):
    """On 132 SMs the narrow forward runs 8 units a program (96 programs at H=768, 128 at
    H=1024) where the default runs 16 (48 / 64); backward keeps the default's layout; an LSTM
    with a projection keeps it too; off by default."""
    monkeypatch.setattr(persistent_config, "_gpu_budget",
                        lambda device: (132, 256 * 1024, 227 * 1024))
    cuda = torch.device("cuda")
    for hidden, default_grid, narrow_grid in ((768, 48, 96), (1024, 64, 128), (256, 16, 32)):
        p = persistent_config.plan(4, cuda, torch.bfloat16, 16, hidden)[0]
        assert not p.narrow and persistent_config.forward_plan(p, hidden, hidden) == p
        on = persistent_config.with_narrow_forward(p)
        fwd = persistent_config.forward_plan(on, hidden, hidden)
        assert (p.grid, fwd.grid, fwd.block_h, fwd.block_o) == (default_grid, narrow_grid, 8, 8)
        assert persistent_config.recurrent_dot(fwd, 4, hidden, hidden, False)["TRANS"]
        assert "TRANS" not in persistent_config.recurrent_dot(on, 4, hidden, hidden, True)
        assert not persistent_config.forward_plan(on, hidden, hidden // 2).narrow  # proj_size
    # 4096 units on 132 SMs: 32 units a program either way, the dot still transposed
    p = persistent_config.with_narrow_forward(persistent_config.plan(3, cuda, torch.bfloat16,
                                                                     16, 4096)[0])
    fwd = persistent_config.forward_plan(p, 4096, 4096)
    assert (fwd.grid, fwd.block_h, fwd.narrow) == (p.grid, p.block_h, True)


def test_chain_option_is_off_by_default_and_a_power_of_two():
    cpu = torch.device(DEVICE)
    p = persistent_config.plan(4, cpu, torch.float32, 3, 160)[0]
    assert p.chain == 0 and not persistent_config.recurrent_dot(p, 4, 160, 160, False)["PARTIALS"]
    assert persistent_config.recurrent_dot(persistent_config.with_chain(p, 4), 4, 160, 160,
                                           True).keys() == {"KP", "NP", "SPLIT"}  # backward as is
    with pytest.raises(ValueError, match="power of two"):
        persistent_config.with_chain(p, 12)
    # streamed: one accumulator whatever the option (the pieces are a resident W's)
    s = persistent_config.with_chain(persistent_config.streamed(p), 4)
    assert not persistent_config.recurrent_dot(s, 4, 160, 160, False)["PARTIALS"]


def test_lab_switches_a_plan_option_for_a_whole_process_by_name(monkeypatch):
    """LSTM_TRITON_PLAN (read at import) names one of PLAN_OPTIONS for every plan the process
    makes: the first-contact command's decomposition times each option against the default
    this way. An unknown name fails at import with the names to use; unset, the defaults."""
    cpu = torch.device(DEVICE)
    default = persistent_config.plan(4, cpu, torch.float32, 3, 160)[0]
    assert persistent_config.PLAN_OPTION_NAME == "default" and default.chain == 0
    for name, expect in (("chain16", lambda p: p.chain == 16),
                         ("tf32x3", lambda p: p.dot == persistent_config.DOT_TF32X3),
                         ("tags", lambda p: p.step_tags and not p.narrow),
                         ("narrow", lambda p: p.narrow and not p.step_tags),
                         ("narrow+tags", lambda p: p.narrow and p.step_tags)):
        monkeypatch.setattr(persistent_config, "PLAN_OPTION", persistent_config.PLAN_OPTIONS[name])
        assert expect(persistent_config.plan(4, cpu, torch.float32, 3, 160)[0]), name
    env = dict(os.environ, LSTM_TRITON_PLAN="chain17")
    run = subprocess.run([sys.executable, "-c", "import lstm_triton.kernels.persistent_config"],
                         env=env, capture_output=True, text=True)
    assert run.returncode != 0
    assert "LSTM_TRITON_PLAN='chain17' is not a plan option: use one of default, chain16" in run.stderr


def test_tf32x3_emulated_error_is_float32s_not_tf32s():
    """bench.tf32x3_error emulates 3xTF32 as Triton lowers it (split into tf32 big + small,
    three products): against float64 at the recurrent dot's K it stays within 2x of IEEE
    float32's error, where one tf32 product is hundreds of times worse."""
    from bench.tf32x3_error import relative_errors, round_tf32
    x = torch.tensor([1 + 2 ** -11, 1 + 2 ** -10 + 2 ** -12, -(1 + 3 * 2 ** -11), 1e-30])
    want = torch.tensor([1 + 2 ** -10, 1 + 2 ** -10, -(1 + 2 ** -9), 1e-30])  # ties away
    assert torch.equal(round_tf32(x)[:3], want[:3])
    assert (round_tf32(x).view(torch.int32) & 0x1FFF == 0).all()
    for k in (256, 1024):
        e = relative_errors(k, trials=2)
        assert e["tf32x3"] <= 2 * e["ieee"] + 1e-7 and e["tf32"] > 100 * e["ieee"], (k, e)


TF32X3_COMPILES = r'''
import dataclasses, torch
from bench.compiled import compile_case, h100_plan
from lstm_triton.kernels import persistent_config
for cell in ("lstm", "gru"):
    for direction in ("fwd", "bwd"):
        plan = persistent_config.tf32x3(h100_plan(cell, torch.float32, 16, 768))
        assert plan.dot == persistent_config.DOT_TF32X3 and not plan.resident, plan
        got = compile_case(cell, direction, torch.float32, 16, 768, plan=plan)
        bf16 = compile_case(cell, direction, torch.bfloat16, 16, 768,
                            plan=dataclasses.replace(h100_plan(cell, torch.bfloat16, 16, 768),
                                                     resident=False, block_k=plan.block_k))
        # tensor cores, not FMA: three m16n8k8 tf32 mma where bf16 runs one m16n8k16
        assert got["mma_per_smsp"] == 6 * bf16["mma_per_smsp"] > 0, (got, bf16)
print("tf32x3")
'''


@pytest.mark.sm90
@pytest.mark.slow
def test_tf32x3_option_compiles_for_sm90_onto_tensor_cores():
    """The float32 option compiled for an H100 (the plan streams float32 W_hh at H=768): the
    recurrent dot becomes mma (IEEE float32 has none: FMA), 3 tf32 mma per bf16 one's
    K=16 half, so 6x bf16's count; LSTM and GRU, both passes."""
    run_compiled_for_sm90(TF32X3_COMPILES, expect="tf32x3")
