"""Host overhead: what a call costs the CPU, against torch's own modules in the same run.

    python -m bench.host [--quick] [--out DIR]       (default reports/host/)
    pytest bench/ --benchmark-only                    (bench/test_host.py runs it)

At small sizes a GPU finishes a step in microseconds, so the host's work per step is the
speed. This measures that work on any machine: on a CPU machine Triton's driver is
replaced by `FakeH100` (kernels are compiled for sm_90 by the real compiler, bound and
specialised by Triton's real runtime, and the launch itself is a no-op), the GEMMs run on
tiny CPU tensors, and torch's nn.LSTMCell / nn.GRUCell / nn.LSTM / nn.GRU run on the same
tiny CPU tensors, their real math included, interleaved with ours round by round. On a
CUDA machine (--device cuda) the same calls run with real launches on CUDA tensors and
torch's modules are cuDNN's; each call is then timed by the wall clock with a
synchronisation before and after it, so the figure is the call's latency, host and GPU
together (at these sizes the GPU's share is a few microseconds per kernel).

Every figure is HOST OVERHEAD, never GPU speed. Cases:
  cell      TritonLSTMCell / TritonGRUCell call vs nn.LSTMCell / nn.GRUCell, B=2, I=H=16,
            inference (no_grad) and training (forward + backward of the outputs' sum)
  stepwise  one-layer TritonLSTM / TritonGRU backend="stepwise", T=1 (a step called on its
            own, as a decoder calls it), 16 and 64: per step
  persistent backend="persistent" call at T = 16, 64, 256: host cost vs T, each timed in
            pairs of its own against our stepwise call of the same T, against our
            stepwise call of one step (T=1), and against the layer's GEMMs alone (their
            CPU math, which a GPU runs asynchronously: the call's cost net of it is the
            host's own, which must not grow with T)
  readback  (CUDA only) a 2-layer TritonLSTM / TritonGRU on persistent, B=16, I=H=256, T=128:
            each launch's barrier flag read back at once (the default) against deferred
            (persistent_config.DEFERRED_BARRIER_CHECK), in a pair of their own: what the
            read's wait for the kernel costs a call (last column)

Must run without TRITON_INTERPRET (the interpreter replaces @triton.jit functions, which
then cannot be compiled): bench/test_host.py runs it in a subprocess.
"""
import argparse
import csv
import datetime
import os
import platform
import statistics
import time
from importlib import metadata
from pathlib import Path

import torch

from .first_contact import _commit  # git describe of the checkout

REPO = Path(__file__).resolve().parents[1]
LABEL = "HOST OVERHEAD on a CPU machine (Triton launch a no-op, GEMMs on tiny CPU tensors): " \
        "not GPU speed"
GOALS = {"cell": 1.0, "stepwise": 2.0}  # issue 17: at most this many times torch's host time


class _NoLaunch:
    """Triton's launcher, replaced: binding, specialisation and the cache lookup all ran."""

    def __init__(self, src, metadata):
        pass

    def __call__(self, *args):
        pass


class _FakeUtils:
    def load_binary(self, name, kernel, shared, device):
        # module, function (a handle naming the binary: the tests check which one launched),
        # n_regs, n_spills, n_max_threads
        return None, hash(bytes(kernel)), 0, 0, 1024

    def get_device_properties(self, device):
        return dict(max_shared_mem=232448, multiprocessor_count=132, max_num_regs=65536,
                    warpSize=32)


class FakeH100:
    """A Triton driver that reports an active sm_90 device and launches nothing: the JIT
    runtime (binder, specialisation, cache, compile) runs exactly as on a GPU, on CPU
    tensors. Written against the driver interface Triton 3.6 and 3.9 share
    (triton.runtime.driver.set_active, CompiledKernel._init_handles)."""

    launcher_cls = _NoLaunch

    def __init__(self):
        self.utils = _FakeUtils()

    @staticmethod
    def is_active():
        return True

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", 90, 32)

    def get_device_capability(self, device=None):
        return (9, 0)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def map_python_to_cpp_type(self, ty):
        raise NotImplementedError("FakeH100 builds no C launcher")

    def get_benchmarker(self):
        raise NotImplementedError("FakeH100 times nothing")


def install_fake_h100():
    """Make Triton and lstm_triton treat CPU tensors as runnable on an H100 that launches
    nothing: Triton's active driver, dispatch's "can Triton run here" and the persistent
    plan (planned for an H100 as bench/compiled.py does)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("bench.host needs the real Triton compiler: unset TRITON_INTERPRET")
    from triton.runtime import driver

    driver.set_active(FakeH100())
    from lstm_triton import persistent
    from lstm_triton.kernels import persistent_config

    from .compiled import H100

    # every module that imported the name, not only dispatch (ops.py checks it in backward)
    import sys
    for name, module in list(sys.modules.items()):
        if name.startswith("lstm_triton") and hasattr(module, "triton_can_run"):
            module.triton_can_run = lambda device: True

    def h100_plan(cell, device, dtype, batch, hidden, out_size):
        return persistent_config.plan(4 if cell == "lstm" else 3, torch.device("cuda"), dtype,
                                      batch, hidden, out_size, budget=tuple(H100.values()))
    persistent.persistent_plan = h100_plan


# ------------------------------------------------------------------------------- timing
def time_pair(ours, theirs, calls, warmup, sync=None):
    """(median, q1, q3) seconds per call of `ours` and of `theirs`, each call timed on its own
    and the two alternating call by call (which goes first alternates too), so both see the
    same machine state."""
    for fn in (ours, theirs):
        for _ in range(warmup):
            fn()
    times = ([], [])
    # On the CPU: the calling thread's CPU time, which a shared machine's other processes
    # do not inflate (torch runs one intra-op thread here). With real launches (CUDA) the
    # wall clock, synchronised around each call.
    clock = time.perf_counter if sync else time.thread_time
    for k in range(calls):
        order = ((ours, times[0]), (theirs, times[1]))
        for fn, out in (order if k % 2 == 0 else order[::-1]):
            if sync:
                sync()
            start = clock()
            fn()
            if sync:
                sync()
            out.append(clock() - start)
    return [(statistics.median(t), *statistics.quantiles(t, n=4)[::2]) for t in times]


def _outputs(out):
    """Every tensor of a cell's or a module's output, flattened."""
    if isinstance(out, torch.Tensor):
        return [out]
    flat = []
    for o in out:
        flat.extend(_outputs(o))
    return flat


def make_call(module, x, hx, train):
    if not train:
        def infer():
            with torch.no_grad():
                module(x, hx)
        return infer

    def step():
        sum(t.sum() for t in _outputs(module(x, hx))).backward()
    return step


STEPWISE_LENGTHS = (1, 16, 64)  # T of the stepwise cases; persistent ones there are timed
#                                 against our stepwise call too, and every one against T=1's


def gemm_math(module, x, train):
    """A call of the layer's GEMMs alone, on tensors of the module call's shapes, through
    the functions our layers call (stepwise.input_projection; in training also
    lstm_weight_grads / gru_weight_grads, which the persistent backward shares): the CPU
    math in a persistent call's time here. On a GPU they are asynchronous launches, so what
    is left of the call is the host's own cost."""
    from lstm_triton import stepwise
    from lstm_triton.schedule import Schedule

    steps, batch, n_in = x.shape
    rows = x.reshape(steps * batch, n_in)
    lstm = module.cell == "lstm"
    w_ih = module.weight_ih_l0.detach()
    bias = (module.bias_ih_l0 + module.bias_hh_l0 if lstm else module.bias_ih_l0).detach()
    sched = Schedule.build(None, rows.shape[0], batch, False)
    d_gates = torch.randn(rows.shape[0], w_ih.shape[0], device=x.device)
    y = torch.randn(rows.shape[0], module.hidden_size, device=x.device)
    h0 = torch.randn(batch, module.hidden_size, device=x.device)

    def call():
        stepwise.input_projection(rows, w_ih, bias)
        if not train:
            return
        if lstm:  # need_dx False: the benchmark's inputs do not require grad
            stepwise.lstm_weight_grads(d_gates, rows, y, h0, sched, w_ih, True, False)
        else:
            stepwise.gru_weight_grads(d_gates, d_gates, rows, y, h0, sched, w_ih, True, False)
    return call


def cases(device, quick, kinds=("cell", "stepwise", "persistent")):
    """(kind, cell, pass, T, our module, torch module, x, hx, our stepwise twin or None) for
    every measured call; a persistent module's twin is the same module on stepwise (timed
    at the same T, and at T=1 on the first step of x)."""
    from lstm_triton import TritonGRU, TritonGRUCell, TritonLSTM, TritonLSTMCell

    B, I, H = 2, 16, 16
    out = []
    for cell, ours_cls, theirs_cls in (("lstm", TritonLSTMCell, torch.nn.LSTMCell),
                                       ("gru", TritonGRUCell, torch.nn.GRUCell)):
        if "cell" not in kinds:
            break
        theirs = theirs_cls(I, H).to(device)
        ours = ours_cls(I, H, backend="stepwise").to(device)
        ours.load_state_dict(theirs.state_dict())
        h = torch.randn(B, H, device=device)
        hx = (h, torch.randn(B, H, device=device)) if cell == "lstm" else h
        for pass_ in ("fwd", "fwdbwd"):
            out.append(("cell", cell, pass_, 1, ours, theirs, torch.randn(B, I, device=device),
                        hx, None))
    module_cls = {"lstm": (TritonLSTM, torch.nn.LSTM), "gru": (TritonGRU, torch.nn.GRU)}
    for backend, lengths in (("stepwise", STEPWISE_LENGTHS),
                             ("persistent", (16, 64) if quick else (16, 64, 256))):
        if backend not in kinds:
            continue
        for cell, (ours_cls, theirs_cls) in module_cls.items():
            theirs = theirs_cls(I, H).to(device)
            ours = ours_cls(I, H, backend=backend).to(device)
            ours.load_state_dict(theirs.state_dict())
            twin = None
            if backend == "persistent":  # timed against our stepwise module too (run)
                twin = ours_cls(I, H, backend="stepwise").to(device)
                twin.load_state_dict(theirs.state_dict())
            for T in lengths:
                x = torch.randn(T, B, I, device=device)
                for pass_ in ("fwd", "fwdbwd"):
                    out.append((backend, cell, pass_, T, ours, theirs, x, None, twin))
    return out


def readback_cases(device):
    """The readback kind's calls (as cases()): a model whose next layer's host work could
    overlap the kernel before it, were the barrier flag not read back at once."""
    from lstm_triton import TritonGRU, TritonLSTM

    B, I, H, T = 16, 256, 256, 128
    out = []
    for cell, ours_cls, theirs_cls in (("lstm", TritonLSTM, torch.nn.LSTM),
                                       ("gru", TritonGRU, torch.nn.GRU)):
        theirs = theirs_cls(I, H, num_layers=2).to(device)
        ours = ours_cls(I, H, num_layers=2, backend="persistent").to(device)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(T, B, I, device=device)
        for pass_ in ("fwd", "fwdbwd"):
            out.append(("readback", cell, pass_, T, ours, theirs, x, None, None))
    return out


def set_deferred(on):
    """Persistent launches' barrier flags read later (on) or at once (the default)."""
    from lstm_triton.kernels import persistent_config
    persistent_config.DEFERRED_BARRIER_CHECK = on


def deferred(call, on):
    """`call` under set_deferred(on)."""
    def run():
        set_deferred(on)
        call()
    return run


def machine():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(device="cpu", quick=False, out_dir=None, label="", kinds=("cell", "stepwise",
                                                                  "persistent"), graphs=False):
    """Measure every case; write the raw CSV and the markdown table; return the rows.
    graphs: stepwise calls replay CUDA graphs (lstm_triton/graphs.py; CUDA only)."""
    device = torch.device(device)
    from lstm_triton import graphs as graph_replay
    graph_replay.ENABLED = graphs
    if device.type == "cpu":
        install_fake_h100()
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    # one intra-op thread: the tensors are tiny, and on a shared CPU a second thread only
    # adds contention noise to both columns
    torch.set_num_threads(1)
    torch.manual_seed(0)
    calls, warmup = (150, 10) if quick else (600, 30)
    date = datetime.datetime.now(datetime.timezone.utc)
    common = dict(
        date=date.strftime("%Y-%m-%d %H:%M"), device=str(device),
        machine=machine() if device.type == "cpu" else torch.cuda.get_device_name(device),
        cores=os.cpu_count(), python=platform.python_version(), torch=torch.__version__,
        triton=metadata.version("triton"), commit=_commit(), label=label,
        launch="no-op (FakeH100, sm_90)" if device.type == "cpu" else "real",
        graphs=graphs)
    measured = cases(device, quick, kinds)
    if "readback" in kinds:  # by default on CUDA only: a no-op launch leaves nothing to wait
        measured += readback_cases(device)  # for, so on the CPU it only checks the code path
    # Every case runs a few calls before any is timed: the run's first calls (compiles,
    # caches, the allocator's first blocks) otherwise landed on its first case, whose both
    # columns (LSTMCell inference) read ~55 µs in full runs against ~30 µs in later ones.
    for kind, cell, pass_, T, ours, theirs, x, hx, twin in measured:
        for module in (ours, theirs) + ((twin,) if twin is not None else ()):
            fn = make_call(module, x, hx, pass_ == "fwdbwd")
            for _ in range(3):
                fn()
    rows = []
    csv_path = csv_path_of(common, device, Path(out_dir) if out_dir else REPO / "reports" / "host")
    for kind, cell, pass_, T, ours, theirs, x, hx, twin in measured:
        n = max(20, calls // max(1, T // 16)) if kind != "cell" else calls
        (mine, q1, q3), (ref, rq1, rq3) = time_pair(
            make_call(ours, x, hx, pass_ == "fwdbwd"), make_call(theirs, x, hx, pass_ == "fwdbwd"),
            n, warmup if kind == "cell" else 3, sync)
        # a persistent call against our stepwise call of the same T, in a pair of its own:
        # the machine's speed moves between cases, so only calls timed together compare
        vs_stepwise = vs_one_step = net = deferred_ratio = None
        if kind == "readback":
            call = make_call(ours, x, hx, pass_ == "fwdbwd")
            (d, *_), (a, *_) = time_pair(deferred(call, True), deferred(call, False), n, 3,
                                         sync)
            deferred_ratio = d / a
            set_deferred(False)  # the default again for the rows after
        if twin is not None:
            train = pass_ == "fwdbwd"
            if T in STEPWISE_LENGTHS:
                (p, *_), (s, *_) = time_pair(make_call(ours, x, hx, train),
                                             make_call(twin, x, hx, train), n, 3, sync)
                vs_stepwise = p / s
            # "as small as the stepwise step's": against one step called on its own
            (p, *_), (s, *_) = time_pair(make_call(ours, x, hx, train),
                                         make_call(twin, x[:1], hx, train), n, 3, sync)
            vs_one_step = p / s
            if device.type == "cpu":  # net of the GEMMs' CPU math (gemm_math)
                (p, *_), (g, *_) = time_pair(make_call(ours, x, hx, train),
                                             gemm_math(ours, x, train), n, 3)
                net = (p - g) * 1e6
        steps = T if kind != "cell" else 1
        row = dict(common, kind=kind, cell=cell, **{"pass": pass_}, batch=x.shape[-2]
                   if x.dim() > 1 else 1, input_size=x.shape[-1], hidden_size=ours.hidden_size,
                   seq_len=T, ours_us=mine * 1e6, ours_q1_us=q1 * 1e6, ours_q3_us=q3 * 1e6,
                   torch_us=ref * 1e6, torch_q1_us=rq1 * 1e6, torch_q3_us=rq3 * 1e6,
                   ours_per_step_us=mine * 1e6 / steps, torch_per_step_us=ref * 1e6 / steps,
                   ratio=mine / ref, goal=GOALS.get(kind, ""), calls=n,
                   persistent_over_stepwise=vs_stepwise,
                   persistent_over_one_step=vs_one_step, ours_net_of_gemm_us=net,
                   deferred_over_at_once=deferred_ratio)
        rows.append(row)
        # each row on disk the moment it is measured: a run cut short (the first-contact
        # command's host phase has a time budget) keeps every row finished before the cut
        append(row, csv_path, first=len(rows) == 1)
        print(f"{kind:10s} {cell:4s} {pass_:6s} T={T:<4d} ours {mine * 1e6:8.1f} us "
              f"torch {ref * 1e6:8.1f} us  ratio {mine / ref:5.2f}", flush=True)
    write(rows, csv_path, device)
    return rows


def csv_path_of(common, device, out_dir):
    """<out_dir>/<date>-<device>-triton<v>[-label].csv (the .md table goes beside it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = (f"{common['date'][:10]}-{device.type}-triton{common['triton']}"
            + (f"-{common['label']}" if common["label"] else ""))
    return out_dir / f"{stem}.csv"


def append(row, csv_path, first):
    """One raw row onto the CSV (a new file with its header for the first)."""
    with open(csv_path, "w" if first else "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if first:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def write(rows, csv_path, device):
    """The markdown table of `rows` beside their raw CSV."""
    first = rows[0]
    title = LABEL if device.type == "cpu" else "LATENCY with real launches on " + \
        first["machine"] + ": wall time per call, synchronised before and after (host and " \
        "GPU together)"
    lines = [f"# {title}", "",
             f"{first['date']} UTC · {first['machine']} ({first['cores']} cores, shared) · "
             f"python {first['python']} · torch {first['torch']} · triton {first['triton']} · "
             f"commit {first['commit']} · launch {first['launch']}", "",
             "Medians over single calls (`calls` of each; CPU time of the calling thread, one "
             "intra-op thread), ours and torch's alternating call by call in one run "
             "(`python -m bench.host`). B=2, I=H=16, float32. Cells: one call (fwdbwd: "
             "forward + backward of the outputs' sum). Modules: one layer; per step = call / T. "
             "torch's column is nn.LSTMCell / nn.GRUCell / nn.LSTM / nn.GRU on the same "
             "tensors, its real math included. Persistent rows: each call also timed in "
             "pairs of its own against our stepwise call of the same T, against our stepwise "
             "call of one step (T=1, a step called on its own), and against the layer's "
             "GEMMs alone (their CPU math, asynchronous on a GPU; the call net of it is the "
             "host's own cost).", "",
             "| kind | cell | pass | T | ours µs/call | ours µs/step | torch µs/call | "
             "torch µs/step | ratio | goal |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        goal = f"≤ {r['goal']:.1f}× ({'holds' if r['ratio'] <= r['goal'] else 'misses'})" \
            if r["goal"] else "T-independent"
        if r["ours_net_of_gemm_us"] is not None:
            goal += f" ({r['ours_net_of_gemm_us']:.0f} µs net of the GEMMs' CPU math)"
        if r["persistent_over_stepwise"] is not None:
            goal += f"; {r['persistent_over_stepwise']:.2f}× our stepwise call of this T"
        if r["deferred_over_at_once"] is not None:
            goal = (f"flag read later: {r['deferred_over_at_once']:.2f}× the call with it read "
                    "at once")
        if r["persistent_over_one_step"] is not None:
            goal += f"; {r['persistent_over_one_step']:.2f}× our stepwise call of one step"
        lines.append(f"| {r['kind']} | {r['cell']} | {r['pass']} | {r['seq_len']} | "
                     f"{r['ours_us']:.1f} | {r['ours_per_step_us']:.2f} | {r['torch_us']:.1f} | "
                     f"{r['torch_per_step_us']:.2f} | {r['ratio']:.2f} | {goal} |")
    csv_path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {csv_path} and {csv_path.with_suffix('.md').name}")
    return csv_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="fewer rounds and lengths")
    parser.add_argument("--out", default=None, help="directory (default reports/host)")
    parser.add_argument("--label", default="", help="suffix of the files' names")
    parser.add_argument("--kinds", default=None,
                        help="which calls (comma-separated: cell, stepwise, persistent, "
                        "readback; default all, readback only on CUDA)")
    parser.add_argument("--graphs", action="store_true",
                        help="stepwise calls replay CUDA graphs (lstm_triton/graphs.py)")
    args = parser.parse_args(argv)
    kinds = args.kinds or "cell,stepwise,persistent" + (",readback" if args.device == "cuda"
                                                         else "")
    run(args.device, args.quick, args.out, args.label, tuple(kinds.split(",")), args.graphs)


if __name__ == "__main__":
    main()
