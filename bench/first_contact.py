"""The first GPU contact in one command (`bash scripts/gpu_run.sh first`, issue 15).

    python -m bench.first_contact --out DIR [--seconds 510]

Phases, in this order, each with its own time budget, all under one deadline:

  env      nvidia-smi, versions, SM count, clocks (after ~1 s of matmuls leaves idle clocks)
  compile  each kernel variant the race and the decomposition launch, compiled in parallel
           worker processes (one per core, at most 16) that run it once at T=2: warms
           Triton's on-disk cache before anything is timed, and records each variant's
           compile time (first call minus second call)
  race     LSTM and GRU x fp16 and bf16 x fwd and fwd+bwd at B=16, H=768, T=1024: persistent
           against cuDNN, each checked against float64 first (the lab), cuDNN's kernel names
           in each cuDNN row; then one stepwise case at T=256 (host cost per step)
  tests    a chosen subset of tests/test_gpu.py, each test in its own process and timeout
  host     bench/host.py with real launches (issue 17): cells, stepwise, persistent at
           B=2, H=16 against torch's cuDNN modules; then stepwise with CUDA-graph replay
  barrier  bench/barrier.py at grids 1, 16, 32, 48, 64, 132, cooperative and plain
  decomp   persistent bf16 forward, H 256/512/1024 x T 256/1024 x B 1/16, default and
           issue 16's chain16; float32 forward B=16 H=1024, default and tf32x3
           (DECOMP_VARIANTS: each option against the default, each in its own process)
  sweep    the rest of the bar sweeps (bar-lstm, bar-gru), until the deadline

Every row is appended to its CSV in DIR and flushed to disk the moment it is measured
(bench/rows.append), so a run cut at any moment, SIGKILL included, returns every row
finished before the cut. Whatever could hang (a barrier, a sync, a test) runs in a child
process under its phase's timeout, killed with its process group when the time is up (a
Python blocked in a CUDA sync takes no SIGINT); children die with this process (Linux's
parent-death signal). Files in DIR, flat, 7 at most (the device tool returns 8):

  first-log.txt       every phase's output, with a header per command
  first-phases.csv    one row per phase: budget, seconds, outcome
  first-env.csv       key, value
  first-compile.csv   one row per kernel variant: compile seconds
  first-lab.csv       the lab's rows (race, decomp, sweep; phase and variant columns)
  first-barrier.csv   one row per grid and launch mode
  first-tests.csv     one row per chosen test: outcome, seconds
  first-host.csv      bench/host.py's rows (graphs column: replayed or plain)

Without CUDA the same phases run in the same order through Triton's interpreter at tiny
shapes, every row labelled SMOKE: the rehearsal the test suite runs (tests/test_first_contact.py).
No network is needed.
"""
import argparse
import csv
import ctypes
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from . import rows

REPO = rows.REPO
LOG, PHASES, ENV, COMPILE = "first-log.txt", "first-phases.csv", "first-env.csv", "first-compile.csv"
LAB, BARRIER, TESTS = "first-lab.csv", "first-barrier.csv", "first-tests.csv"
HOST = "first-host.csv"
FILES = (LOG, PHASES, ENV, COMPILE, LAB, BARRIER, TESTS, HOST)

# Seconds per phase on a GPU (about 8 minutes in all; the sweep takes what is left), and
# in the CPU rehearsal. FIRST_<PHASE>_SECONDS overrides one.
# decomp: ~25 s a variant on a GPU (DECOMP_VARIANTS), ~20 s in the rehearsal
# The order puts correctness (tests) and the headline (race) before the finer comparisons.
BUDGET_GPU = dict(env=15, compile=60, race=100, tests=150, barrier=30, host=45, decomp=160,
                  sweep=480)
BUDGET_SMOKE = dict(env=20, compile=40, race=60, tests=30, barrier=20, host=60, decomp=160,
                    sweep=60)
PHASE_ORDER = tuple(BUDGET_GPU)
MIN_PHASE_S = 5  # a phase with less than this left before the deadline is skipped

# Plan variants the decomposition times against each other, each A against the default on
# the same sweep: (variant, sweep, environment of the lab process). Issue 16's options are
# switched by LSTM_TRITON_PLAN (kernels/persistent_config.PLAN_OPTIONS); chain16 splits the
# bf16 forward's mma chain (48 -> 16 at H=768, 64 -> 16 at H=1024), tf32x3 only changes a
# float32 plan, hence its own float32 sweep; tags meets through the step-tagged exchange
# (kernels/step_tags.py) instead of the shared arrival counter (tags-load: its poll by acquire
# loads, step_tags.TAG_POLL); narrow runs the forward on twice the programs, 8 units each
# (persistent_config.forward_plan), alone and with tags (its extra programs make the
# exchange dearer, which the tags may pay back).
DECOMP_VARIANTS = (("default", "decomp", {}),
                   ("chain16", "decomp", {"LSTM_TRITON_PLAN": "chain16"}),
                   ("tags", "decomp", {"LSTM_TRITON_PLAN": "tags"}),
                   ("tags-load", "decomp", {"LSTM_TRITON_PLAN": "tags",
                                            "LSTM_TRITON_TAG_POLL": "load"}),
                   ("narrow", "decomp", {"LSTM_TRITON_PLAN": "narrow"}),
                   ("narrow+tags", "decomp", {"LSTM_TRITON_PLAN": "narrow+tags"}),
                   ("default", "decomp-fp32", {}),
                   ("tf32x3", "decomp-fp32", {"LSTM_TRITON_PLAN": "tf32x3"}))

# tests/test_gpu.py, chosen: many programs at the barrier, two persistent launches at once,
# CUDA-graph capture and replay. (label, -k expression, seconds)
GPU_TESTS = (
    ("many-programs-lstm-bf16-768", "many_program and lstm and not proj and 768 and bf16", 60),
    ("two-launches-lstm-1024-coop", "two_persistent and lstm and 1024 and cooperative", 60),
    # issue 17: stepwise calls replayed from graphs of their own (lstm_triton/graphs.py)
    ("graph-replay-stepwise", "stepwise_calls_replay_from_cuda_graphs", 60),
    # issue 16: the options the decomposition times, right first
    ("plan-options-lstm-768", "plan_options and lstm and 768", 60),
    # issue 17: a cell step in one launch (kernels/cell_fused.py), many programs
    ("fused-cell", "fused_cell_step", 60),
    # issue 17: a small layer's loop at one launch a step (kernels/fused_steps.py)
    ("fused-layer-loop", "fused_layer_loop", 60),
    ("graph-replay-lstm-persistent", "cuda_graph and lstm and persistent", 60),
    ("many-programs-gru-fp16-768", "many_program and gru and 768 and fp16", 60),
    ("graph-training-lstm", "make_graphed_callables and lstm", 60),
    # issue 17: barrier flags read later (persistent_config.DEFERRED_BARRIER_CHECK)
    ("deferred-flag-lstm", "deferred_flag and lstm", 60),
)
SMOKE_TESTS = GPU_TESTS[:1]  # skipped without CUDA: the rehearsal runs the phase's plumbing

PHASE_COLUMNS = ("phase", "smoke", "budget_s", "seconds", "outcome", "detail")
COMPILE_COLUMNS = ("smoke", "device", "triton", "backend", "cell", "dtype", "batch", "hidden",
                   "compile_fwd_s", "compile_train_s", "first_fwd_s", "first_train_s",
                   "status", "note")
TEST_COLUMNS = ("smoke", "test", "select", "timeout_s", "seconds", "outcome", "passed",
                "failed", "skipped", "errors")


def _die_with_parent():
    """preexec_fn of every child: killed when this process dies (SIGKILL included)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Run:
    def __init__(self, out: Path, seconds: float, smoke: bool):
        self.out, self.smoke = out, smoke
        self.start = time.monotonic()
        self.deadline = self.start + seconds
        self.budget = dict(BUDGET_SMOKE if smoke else BUDGET_GPU)
        for name in self.budget:
            self.budget[name] = float(os.environ.get(f"FIRST_{name.upper()}_SECONDS",
                                                     self.budget[name]))
        self.reports = Path(tempfile.mkdtemp(prefix="first-reports-"))
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
        if smoke:
            self.env["TRITON_INTERPRET"] = "1"
        else:
            self.env.pop("TRITON_INTERPRET", None)

    def log(self, text: str):
        with open(self.out / LOG, "a") as f:
            f.write(text + "\n")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def command(self, cmd, seconds, env=None) -> tuple:
        """Run cmd in its own process group, output appended to the log, killed (the whole
        group) after `seconds`. Returns (exit code or "timeout", seconds taken)."""
        seconds = max(1.0, min(seconds, self.left()))
        self.log(f"\n=== {datetime.datetime.now(datetime.timezone.utc):%H:%M:%S} "
                 f"(timeout {seconds:.0f} s) {' '.join(map(str, cmd))}")
        t0 = time.monotonic()
        with open(self.out / LOG, "a") as log:
            child = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env or self.env,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, process_group=0,
                                     preexec_fn=_die_with_parent)
            try:
                code = child.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                code = "timeout"
        self.log(f"=== exit {code} after {time.monotonic() - t0:.1f} s")
        return code, time.monotonic() - t0

    def lab(self, phase, sweep, impls, seconds, passes="both", variant="default", env=None):
        # -s: the lab's "row streamed" lines reach the log as each row is appended
        cmd = [sys.executable, "-m", "pytest", "bench/test_bench.py", "--benchmark-only", "-q",
               "-s", "-p", "no:cacheprovider", "--no-lab-report", "--lab-reports", self.reports,
               "--lab-stream", self.out / LAB, "--lab-phase", phase, "--lab-variant", variant,
               "--lab-pass", passes, "--sweep", sweep, "--impl", ",".join(impls)]
        if self.smoke:
            cmd += ["--device", "cpu"]
        return self.command(cmd, seconds, env)

    @property
    def baseline(self):
        return "torch-cpu" if self.smoke else "cudnn"

    def sweep_name(self, name):
        return f"smoke-{name}" if self.smoke else name


# ------------------------------------------------------------------------------ phases
def phase_env(run, seconds):
    if not run.smoke:
        run.command(["nvidia-smi"], min(seconds, 10))
    return run.command([sys.executable, "-m", "bench.first_contact", "_env", run.out / ENV],
                       seconds)


def variants(smoke):
    """(backend, cell, dtype, batch, hidden) each launched by the race and the decomposition."""
    if smoke:
        return [("persistent", "lstm", "bf16", 2, 8), ("stepwise", "lstm", "fp16", 2, 8)]
    race = [("persistent", c, d, 16, 768) for c in ("lstm", "gru") for d in ("fp16", "bf16")]
    decomp = [("persistent", "lstm", "bf16", b, h) for h in (256, 512, 1024) for b in (1, 16)
              if (b, h) != (16, 768)]
    fp32 = [("persistent", c, "fp32", 16, 1024) for c in ("lstm", "gru")]
    return race + decomp + fp32 + [("stepwise", "lstm", "fp16", 16, 768)]


def phase_compile(run, seconds):
    """Compile (warm) every variant in parallel worker processes; a row per variant."""
    todo = variants(run.smoke)
    workers = max(1, min(16, os.cpu_count() or 1, len(todo)))
    t_end = time.monotonic() + seconds

    def one(v):
        with tempfile.NamedTemporaryFile("r", suffix=".json") as res:
            code, _ = run.command([sys.executable, "-m", "bench.first_contact", "_warm",
                                   res.name, *map(str, v)], t_end - time.monotonic())
            text = Path(res.name).read_text().strip()
        return v, code, (json.loads(text) if text else {})

    codes = []
    with ThreadPoolExecutor(workers) as pool:
        for fut in as_completed([pool.submit(one, v) for v in todo]):
            (backend, cell, dtype, batch, hidden), code, result = fut.result()
            codes.append(code)
            rows.append(run.out / COMPILE, dict(
                result, smoke=run.smoke, backend=backend, cell=cell, dtype=dtype, batch=batch,
                hidden=hidden, status="ok" if code == 0 else str(code)), columns=COMPILE_COLUMNS)
    bad = [c for c in codes if c != 0]
    return (bad[0] if bad else 0), None


def phase_race(run, seconds):
    t_end = time.monotonic() + seconds
    code, _ = run.lab("race", run.sweep_name("race"), ["triton-persistent", run.baseline],
                      seconds * 0.85)
    code2, _ = run.lab("race", run.sweep_name("race-stepwise"), ["triton-stepwise"],
                       t_end - time.monotonic())
    return (code if code != 0 else code2), None


def phase_barrier(run, seconds):
    cmd = [sys.executable, "-m", "bench.barrier", "--out", run.out / BARRIER,
           "--grids", "1,16,32,48,64,SMS", "--modes", "cooperative,plain,tags,tags-load"]
    return run.command(cmd + (["--smoke"] if run.smoke else ["--steps", "2048"]), seconds)


def phase_decomp(run, seconds):
    codes, share = [], seconds / len(DECOMP_VARIANTS)
    for name, sweep, extra in DECOMP_VARIANTS:
        code, _ = run.lab("decomp", run.sweep_name(sweep), ["triton-persistent"], share,
                          passes="fwd", variant=name, env=dict(run.env, **extra))
        codes.append(code)
    bad = [c for c in codes if c != 0]
    return (bad[0] if bad else 0), None


def phase_tests(run, seconds):
    codes, t_end = [], time.monotonic() + seconds
    for label, select, limit in (SMOKE_TESTS if run.smoke else GPU_TESTS):
        limit = min(limit, t_end - time.monotonic())
        if limit < MIN_PHASE_S or run.left() < MIN_PHASE_S:
            break
        with tempfile.NamedTemporaryFile(suffix=".xml") as junit:
            code, took = run.command(
                [sys.executable, "-m", "pytest", "tests/test_gpu.py", "-q", "-p",
                 "no:cacheprovider", "-k", select, f"--junitxml={junit.name}"], limit)
            counts = _junit_counts(junit.name)
        codes.append(code)
        outcome = {0: "passed", 1: "failed", 5: "none-collected"}.get(code, str(code))
        if code == 0 and counts["skipped"] and not counts["passed"]:
            outcome = "skipped"
        rows.append(run.out / TESTS, dict(counts, smoke=run.smoke, test=label, select=select,
                                          timeout_s=limit, seconds=f"{took:.1f}",
                                          outcome=outcome), columns=TEST_COLUMNS)
    bad = [c for c in codes if c not in (0, 5)]
    return (bad[0] if bad else 0), None


def _junit_counts(path):
    import xml.etree.ElementTree as ET
    counts = dict(passed=0, failed=0, skipped=0, errors=0)
    try:
        for case in ET.parse(path).iter("testcase"):
            kinds = {child.tag for child in case}
            key = ("failed" if "failure" in kinds else "errors" if "error" in kinds
                   else "skipped" if "skipped" in kinds else "passed")
            counts[key] += 1
    except (ET.ParseError, OSError):  # killed before pytest wrote it
        pass
    return counts


def phase_host(run, seconds):
    """Issue 17's benchmark: on a GPU with real launches (plain, then stepwise replaying CUDA
    graphs); in the rehearsal its CPU form (the no-op launcher, which needs the real
    compiler: no TRITON_INTERPRET) on the LSTM and GRU cells only."""
    t_end = time.monotonic() + seconds
    env = {k: v for k, v in run.env.items() if k != "TRITON_INTERPRET"}
    runs = ([["--device", "cpu", "--kinds", "cell", "--label", "smoke"]] if run.smoke else
            [["--device", "cuda", "--label", "plain"],
             ["--device", "cuda", "--kinds", "stepwise", "--graphs", "--label", "graphs"]])
    codes = []
    for i, extra in enumerate(runs):
        out_dir = run.reports / f"host{i}"
        code, _ = run.command([sys.executable, "-m", "bench.host", "--quick", "--out", out_dir,
                               *extra], t_end - time.monotonic(), env)
        codes.append(code)
        for path in sorted(out_dir.glob("*.csv")):
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    rows.append(run.out / HOST, row, columns=tuple(row))
    bad = [c for c in codes if c != 0]
    return (bad[0] if bad else 0), None


def phase_sweep(run, seconds):
    sweep = run.sweep_name("bar") if run.smoke else "bar-lstm,bar-gru"
    impls = ["triton-stepwise", "triton-persistent", run.baseline]
    return run.lab("sweep", sweep, impls, seconds)


PHASE_FUNCS = dict(env=phase_env, compile=phase_compile, race=phase_race,
                   barrier=phase_barrier, decomp=phase_decomp, tests=phase_tests,
                   host=phase_host, sweep=phase_sweep)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float,
                        default=float(os.environ.get("FIRST_SECONDS", 510)),
                        help="the whole command's deadline (default 510 s)")
    parser.add_argument("--smoke", action="store_true", default=None,
                        help="the CPU rehearsal (default: when no CUDA device is present)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke is None:
        import torch
        args.smoke = not torch.cuda.is_available()
    run = Run(out, args.seconds, args.smoke)
    label = "SMOKE (CPU interpreter, tiny shapes: not performance)" if run.smoke else "GPU"
    run.log(f"first contact: {label}; deadline {args.seconds:.0f} s; phases "
            + ", ".join(f"{p} {run.budget[p]:.0f} s" for p in PHASE_ORDER))
    for name in PHASE_ORDER:
        left = run.left()
        t0 = time.monotonic()
        if left < MIN_PHASE_S:
            outcome, detail = "skipped", f"{left:.0f} s left before the deadline"
        else:
            code, _ = PHASE_FUNCS[name](run, min(run.budget[name], left))
            outcome = {0: "ok", "timeout": "timeout"}.get(code, f"exit {code}")
            detail = ""
        rows.append(out / PHASES, dict(phase=name, smoke=run.smoke, budget_s=run.budget[name],
                                       seconds=f"{time.monotonic() - t0:.1f}",
                                       outcome=outcome, detail=detail), columns=PHASE_COLUMNS)
        print(f"first contact: {name:8s} {outcome:10s} {time.monotonic() - t0:6.1f} s"
              + ("  [SMOKE]" if run.smoke else ""), flush=True)
    print(f"first contact: files in {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")


# ------------------------------------------------------------- child-process entry points
def _env(path):
    """Versions, device, clocks; a second of matmuls first so the clocks leave idle."""
    import platform
    from importlib import metadata

    import torch
    facts = dict(python=platform.python_version(), torch=torch.__version__,
                 triton=metadata.version("triton"), cuda_available=torch.cuda.is_available(),
                 interpret=os.environ.get("TRITON_INTERPRET", ""), commit=_commit())
    if torch.cuda.is_available():
        a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            a @ a
        torch.cuda.synchronize()
        props = torch.cuda.get_device_properties(0)
        facts.update(device=props.name, capability=f"{props.major}.{props.minor}",
                     sm_count=props.multi_processor_count,
                     memory_gib=round(props.total_memory / 2**30, 1),
                     cudnn=torch.backends.cudnn.version(), cuda=torch.version.cuda)
        try:
            done = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.max.sm,"
                                   "clocks.mem,power.draw,temperature.gpu,driver_version",
                                   "--format=csv,noheader"], capture_output=True, text=True,
                                  timeout=10)
            facts["nvidia_smi"] = done.stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            facts["nvidia_smi"] = f"unavailable: {e}"
    else:
        facts.update(device=f"cpu-{platform.machine()}", smoke=True)
    for key, value in facts.items():
        rows.append(Path(path), dict(key=key, value=value), columns=("key", "value"))
        print(f"{key}: {value}", flush=True)


def _commit():
    try:
        return subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _warm(path, backend, cell, dtype, batch, hidden):
    """One variant at T=2: inference then training, each twice; compile time = first call
    minus second (the second hits the cache). Writes a JSON object to `path`."""
    import warnings

    import torch

    from lstm_triton import FallbackWarning, TritonGRU, TritonLSTM

    from .measure import DTYPES
    batch, hidden = int(batch), int(hidden)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = (TritonLSTM if cell == "lstm" else TritonGRU)(hidden, hidden, backend=backend)
    module = module.to(device, DTYPES[dtype])
    x = torch.randn(2, batch, hidden, device=device, dtype=DTYPES[dtype])

    def timed(train):
        t0 = time.perf_counter()
        if train:
            module(x.requires_grad_())[0].float().sum().backward()
        else:
            with torch.no_grad():
                module(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FallbackWarning)
        first_fwd, second_fwd = timed(False), timed(False)
        first_train, second_train = timed(True), timed(True)
    notes = sorted({str(w.message) for w in caught if issubclass(w.category, FallbackWarning)})
    from importlib import metadata
    result = dict(device=device, triton=metadata.version("triton"),
                  compile_fwd_s=round(first_fwd - second_fwd, 3),
                  compile_train_s=round(first_train - second_train, 3),
                  first_fwd_s=round(first_fwd, 3), first_train_s=round(first_train, 3),
                  note="; ".join(notes)[:240] or ("SMOKE: the interpreter compiles nothing"
                                                  if device == "cpu" else ""))
    Path(path).write_text(json.dumps(result))
    print(f"warm {backend} {cell} {dtype} B={batch} H={hidden}: {result}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_env":
        _env(*sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_warm":
        _warm(*sys.argv[2:])
    else:
        main()
