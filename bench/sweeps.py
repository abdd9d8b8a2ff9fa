"""The lab's named sweeps, in one place: each answers one question.

A `Case` is one shape (cell, dtype, batch, seq_len, input, hidden, layers,
direction); a `Sweep` is a named list of cases varying one `axis`. The same
case may sit in several sweeps; the lab measures it once and the report
finds it again by its key.

    pytest bench/ --benchmark-only                    # GPU: DEFAULT_SWEEPS; CPU: "smoke"
    pytest bench/ --benchmark-only --sweep seq_len-full
    pytest bench/ --benchmark-only --sweep all        # every GPU sweep (several commands' worth)

Shape sweeps run in float16: the dtype autocast gives cuDNN RNNs
(aten/src/ATen/cudnn/AutocastRNN.cpp) and the usual mixed-precision training
dtype; the "dtype" sweep asks what float32 and bfloat16 change. Input size =
hidden size unless a sweep says otherwise. Layout is time-major (T, B, I), as
nn.LSTM defaults to.

Default GPU sweep time on one H100, estimated (see `estimate_seconds`, whose
constants are guesses until a GPU run replaces them with the pytest wall time):
26 unique cases x 2 passes x 4 implementations = 208 tests, about 4 minutes
(3.8 by the model), whether the persistent backend raises NotImplementedError
(skipped at once) or lands and runs about as fast as cuDNN. The stepwise
backend is host-bound (~50 us of Python + launches per step forward, ~120 us
forward+backward), so the T=4096 and 4-layer cases dominate. Even at twice the
estimate it fits inside one 10-minute command. `--sweep all` (96 cases, about
12 minutes by the model, the bar sweeps included) does not: run it as separate commands,
e.g. `--sweep default`, then `--sweep seq_len-full,batch-gru,hidden-gru,hidden-small-batch,
dtype-long`, then `--sweep bar-lstm,bar-gru` (rows of the same day, device and --lab-tag
merge into one CSV). The model counts each kernel variant's compile as measured by bench/compiled.py
(`compile_seconds`) but leaves out host time to generate inputs (found in review: ~70 s), so a
phase of scripts/gpu_run.sh gets a margin, and a phase cut by its limit still writes the
rows it measured.
`python -m bench.sweeps` prints the case counts and estimates per sweep.
"""
from dataclasses import asdict, dataclass, replace

DTYPES = ("fp32", "bf16", "fp16")
SEQ_LENS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # log-spaced, x2
SEQ_LENS_DEFAULT = (16, 64, 256, 1024, 4096)  # log-spaced, x4
BATCHES = (1, 8, 64, 256)
HIDDENS = (128, 256, 512, 1024, 2048)  # log-spaced, x2


@dataclass(frozen=True)
class Case:
    cell: str  # "lstm" | "gru"
    dtype: str  # "fp32" | "bf16" | "fp16"
    batch: int
    seq_len: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False

    @property
    def id(self) -> str:
        """Readable test id, e.g. lstm-fp16-B8-T256-I512-H512-L1 (bidirectional: L2bi)."""
        stack = f"L{self.num_layers}" + ("bi" if self.bidirectional else "")
        return (f"{self.cell}-{self.dtype}-B{self.batch}-T{self.seq_len}"
                f"-I{self.input_size}-H{self.hidden_size}-{stack}")

    def key(self) -> tuple:
        return tuple(asdict(self).values())


KEY_COLUMNS = tuple(Case.__dataclass_fields__)  # the CSV columns that identify a case


@dataclass(frozen=True)
class Sweep:
    name: str
    question: str
    axis: str  # the CSV column (or derived column: "stack", "shape") that varies
    cases: tuple

    @property
    def title(self) -> str:
        return f"{self.name}: {self.question}"


def _lstm(batch, seq_len, hidden, dtype="fp16", cell="lstm", **kw) -> Case:
    return Case(cell, dtype, batch, seq_len, kw.pop("input_size", hidden), hidden, **kw)


def _both_cells(cases):
    return tuple(replace(c, cell=cell) for c in cases for cell in ("lstm", "gru"))


SWEEPS = {s.name: s for s in [
    # ---------------------------------------------------------------- default GPU sweep
    Sweep("seq_len", "how does each implementation scale with sequence length? "
          "(LSTM fp16, B=8, H=512)", "seq_len",
          tuple(_lstm(8, t, 512) for t in SEQ_LENS_DEFAULT)),
    Sweep("batch", "how does throughput grow with batch? (LSTM fp16, T=512, H=512)", "batch",
          tuple(_lstm(b, 512, 512) for b in BATCHES)),
    Sweep("hidden", "how does each implementation scale with hidden size? "
          "(LSTM fp16, B=16, T=512, I=H)", "hidden_size",
          tuple(_lstm(16, 512, h) for h in HIDDENS)),
    Sweep("cell", "LSTM vs GRU at the same shapes (fp16)", "shape",
          _both_cells([_lstm(8, 256, 512), _lstm(64, 512, 512), _lstm(16, 512, 1024)])),
    Sweep("layers", "what does a deeper or bidirectional stack cost? (LSTM fp16, B=16, T=256, "
          "H=512)", "stack",
          tuple(_lstm(16, 256, 512, num_layers=n, bidirectional=bi)
                for n, bi in [(1, False), (2, False), (4, False), (2, True)])),
    Sweep("dtype", "what do float32 and bfloat16 change? (B=16, T=512, H=512)", "dtype",
          _both_cells([_lstm(16, 512, 512, dtype=d) for d in DTYPES])),
    # ------------------------------------------------------- behind --sweep NAME / all
    Sweep("seq_len-full", "sequence length 16..4096, every octave, LSTM and GRU "
          "(fp16, B=8, H=512)", "seq_len",
          _both_cells([_lstm(8, t, 512) for t in SEQ_LENS])),
    Sweep("batch-gru", "batch sweep for the GRU (fp16, T=512, H=512)", "batch",
          tuple(_lstm(b, 512, 512, cell="gru") for b in BATCHES)),
    Sweep("hidden-gru", "hidden-size sweep for the GRU (fp16, B=16, T=512, I=H)", "hidden_size",
          tuple(_lstm(16, 512, h, cell="gru") for h in HIDDENS)),
    Sweep("hidden-small-batch", "hidden size at batch 1, the latency case (LSTM fp16, T=512)",
          "hidden_size", tuple(_lstm(1, 512, h) for h in HIDDENS)),
    Sweep("dtype-long", "dtypes over a long sequence (B=8, T=4096, H=512)", "dtype",
          _both_cells([_lstm(8, 4096, 512, dtype=d) for d in DTYPES])),
    # ------------------------------------------- issue 6's bar (behind --sweep bar-lstm / bar-gru)
    # T=1024, one layer: B 1..64 x H 256..1024 in bf16 and fp32 (the 3x / 2x ratios and the
    # 2 us/step), cuDNN's own persistent case (fp16, B=16, H=768), and large batch (B=256,
    # where auto must stay within 10% of cuDNN). Their rows also feed bench/calibrate.py.
    *[Sweep(f"bar-{cell}", f"issue 6's bar for the {cell.upper()}: T=1024, batch 1-256, "
            f"H 256-1024, bf16/fp32, and fp16 B=16 H=768", "shape",
            tuple(_lstm(b, 1024, h, dtype=d, cell=cell)
                  for d in ("bf16", "fp32") for b in (1, 16, 64) for h in (256, 512, 1024))
            + (_lstm(16, 1024, 768, dtype="fp16", cell=cell),)
            + tuple(_lstm(256, 1024, h, dtype=d, cell=cell)
                    for d in ("bf16", "fp16") for h in (512, 1024)))
      for cell in ("lstm", "gru")],
    # ------------------------------------ the first-contact command (scripts/gpu_run.sh first)
    # The race: cuDNN's own persistent case (fp16 LSTM, B=16, H=768, T=1024) and its per-step
    # ones (bf16, the GRU); one stepwise case at T=256 for the host cost per step; the
    # decomposition: persistent bf16 forward, the slope in T is the per-step cost.
    Sweep("race", "persistent against cuDNN where everything hinges (B=16, T=1024, H=768)",
          "shape", _both_cells([_lstm(16, 1024, 768, dtype=d) for d in ("fp16", "bf16")])),
    Sweep("race-stepwise", "the stepwise host cost per step (LSTM fp16, B=16, T=256, H=768)",
          "shape", (_lstm(16, 256, 768),)),
    Sweep("decomp", "the persistent bf16 forward's per-step cost: H 256-1024, T 256/1024, "
          "B 1/16", "shape",
          tuple(_lstm(b, t, h, dtype="bf16") for h in (256, 512, 1024) for t in (256, 1024)
                for b in (1, 16))),
    # the float32 pair for issue 16's 3xTF32 option (default IEEE against tf32x3)
    Sweep("decomp-fp32", "the persistent float32 forward's per-step cost (B=16, H=1024, "
          "T 256/1024), LSTM and GRU", "shape",
          _both_cells([_lstm(16, t, 1024, dtype="fp32") for t in (256, 1024)])),
    # ------------------------------------ issue 17: host overhead (bench/host.py, no cases:
    # bench/test_host.py runs it; also on every CPU smoke run)
    Sweep("host", "what does a call cost the host against torch's own modules? "
          "(bench/host.py: B=2, H=16, launches a no-op on a CPU machine)", "shape", ()),
    # ------------------------------------ issue 18: the options beyond nn.LSTM
    # (bench/variants_loop.py, no cases: bench/test_variants_loop.py runs it; on a CPU run
    # as a smoke rehearsal)
    Sweep("variants", "each option beyond nn.LSTM, fused, against what users run today "
          "(bench/variants_loop.py: the per-step loop, the RL loop, WeightDrop)", "option", ()),
    # ------------------------------------------------------------- CPU smoke sweep
    Sweep("smoke", "SMOKE: does the lab run end to end? (interpreter on CPU, not performance)",
          "seq_len",
          _both_cells([_lstm(2, 4, 16, dtype="fp32"), _lstm(2, 8, 16, dtype="fp32")])
          + (_lstm(1, 4, 8, dtype="fp32", num_layers=2, bidirectional=True),)),
    # the first-contact command's phases at tiny shapes, for its CPU rehearsal (SMOKE)
    Sweep("smoke-race", "SMOKE: the race's phase at tiny shapes", "shape",
          _both_cells([_lstm(2, 3, 8, dtype=d) for d in ("fp16", "bf16")])),
    Sweep("smoke-race-stepwise", "SMOKE: the stepwise row at a tiny shape", "shape",
          (_lstm(2, 4, 8),)),
    Sweep("smoke-bar", "SMOKE: the rest of the bar sweeps, at tiny shapes", "shape",
          _both_cells([_lstm(2, 4, 8, dtype="bf16")])),
    Sweep("smoke-decomp", "SMOKE: the decomposition at tiny shapes", "shape",
          tuple(_lstm(b, t, 8, dtype="bf16") for t in (2, 4) for b in (1, 2))),
    Sweep("smoke-decomp-fp32", "SMOKE: the float32 decomposition at a tiny shape", "shape",
          (_lstm(2, 3, 8, dtype="fp32"),)),
]}

DEFAULT_SWEEPS = ("seq_len", "batch", "hidden", "cell", "layers", "dtype")
SMOKE_SWEEPS = ("smoke",)
GPU_SWEEPS = tuple(n for n in SWEEPS if not n.startswith("smoke"))


def resolve(names, on_gpu: bool) -> tuple:
    """Sweep names from --sweep values (repeatable, comma-separated; "all", "default")."""
    if not names:
        return DEFAULT_SWEEPS if on_gpu else SMOKE_SWEEPS
    out = []
    for value in names:
        for name in filter(None, (v.strip() for v in value.split(","))):
            expanded = {"all": GPU_SWEEPS, "default": DEFAULT_SWEEPS}.get(name, (name,))
            for n in expanded:
                if n not in SWEEPS:
                    raise ValueError(f"unknown sweep {n!r}; known: all, default, "
                                     + ", ".join(SWEEPS))
                if n not in out:
                    out.append(n)
    if "smoke" in out and len(out) > 1:
        raise ValueError("the smoke sweep runs alone (its rows are labelled smoke)")
    return tuple(out)


def cases_of(sweep_names) -> list:
    """Unique cases of the named sweeps, in order, each with the sweeps it belongs to."""
    seen = {}
    for name in sweep_names:
        for case in SWEEPS[name].cases:
            seen.setdefault(case, []).append(name)
    return [(case, tuple(names)) for case, names in seen.items()]


# --------------------------------------------------------------------------- FLOPs
GATES = {"lstm": 4, "gru": 3}


def forward_flops(case: Case) -> float:
    """Standard matmul FLOP count of one forward pass (pointwise gate math not counted).

    Per layer and direction: 2 * B * T * (I_l + H) * G*H, with G = 4 gates for
    the LSTM and 3 for the GRU, I_l = input_size for layer 0 and
    n_dir * H for deeper layers. (A projected LSTM would add 2*B*T*H*P and use
    P for the recurrent width; the lab does not sweep proj_size.)
    Backward costs about twice the forward, so forward+backward = 3x forward.
    """
    n_dir = 2 if case.bidirectional else 1
    gh = GATES[case.cell] * case.hidden_size
    total = 0.0
    for layer in range(case.num_layers):
        in_size = case.input_size if layer == 0 else n_dir * case.hidden_size
        total += n_dir * 2.0 * case.batch * case.seq_len * (in_size + case.hidden_size) * gh
    return total


def flops(case: Case, pass_: str) -> float:
    return forward_flops(case) * (3.0 if pass_ == "fwdbwd" else 1.0)


# ------------------------------------------------------------------- time estimate
# Guesses for an H100, to be replaced by measured numbers after the first GPU run.
HOST_US_PER_STEP = {"fwd": 50.0, "fwdbwd": 120.0}  # stepwise: Python + launches per step
SUSTAINED_TFLOPS = {"fp32": 25.0, "bf16": 150.0, "fp16": 150.0}  # what the GEMMs reach
TIMED_BUDGET_S = 0.4  # bench/measure.py: rounds are chosen to fill about this much
UNTIMED_CALLS = 5  # correctness + estimate + 2 warm-up + memory
MIN_ROUNDS = 5
TEST_OVERHEAD_S = 0.3  # module build, inputs, oracle, pytest bookkeeping
STARTUP_S = 20.0  # interpreter, torch import, CUDA context, report at the end
# Compile time of each persistent kernel variant (a cell, pass, dtype, padded batch and
# hidden size: one compile for its forward, one for its backward) replaces the old flat
# guess of 60 s a session, about 10x too low for the bar sweeps. Read from the newest
# reports/compiled/*.csv (bench/compiled.py: one cold compile per kernel, measured on a
# CPU's compile-for-sm_90 path, preferring Triton 3.6, the GPU image's version); a
# variant not in the table is taken at that table's slowest compile. The first-contact
# command measures the GPU machine's own (first-compile.csv).
STEPWISE_COMPILE_S = 2.0  # the stepwise kernels of one dtype (a guess: small kernels)


def measured_compile_seconds(folder=None) -> dict:
    """{(cell, pass, dtype, batch, hidden): seconds} from the newest compiled-code CSV."""
    import csv
    from pathlib import Path
    folder = Path(folder or Path(__file__).resolve().parents[1] / "reports" / "compiled")
    tables = sorted(folder.glob("*-triton*.csv"), key=lambda p: ("triton3.6" in p.name, p.name))
    if not tables:
        return {}
    with open(tables[-1]) as f:
        return {(r["cell"], r["pass"], r["dtype"], int(r["batch"]), int(r["hidden"])):
                float(r["compile_s"]) for r in csv.DictReader(f) if r.get("compile_s")}


def compile_seconds(sweep_names, impls, table=None) -> float:
    """Compile time of every kernel variant the sweeps' cases launch, once each."""
    from lstm_triton.kernels.persistent_config import MAX_BATCH, pad_dot
    table = measured_compile_seconds() if table is None else table
    worst = max(table.values(), default=10.0)
    total, seen = 0.0, set()
    for case, _ in cases_of(sweep_names):
        if "triton-stepwise" in impls or "triton-auto" in impls:
            seen.add(("stepwise", case.dtype))
        if "triton-persistent" in impls and case.batch <= MAX_BATCH:
            for pass_ in ("fwd", "bwd"):
                seen.add((case.cell, pass_, case.dtype, pad_dot(case.batch), case.hidden_size))
    for variant in seen:
        total += STEPWISE_COMPILE_S if variant[0] == "stepwise" else table.get(variant, worst)
    return total


def estimate_call_seconds(case: Case, pass_: str, impl: str) -> float:
    compute = flops(case, pass_) / (SUSTAINED_TFLOPS[case.dtype] * 1e12)
    if impl in ("cudnn", "torch-cpu", "triton-persistent"):
        return compute  # one launch per layer (or a fused library loop)
    steps = case.seq_len * case.num_layers * (2 if case.bidirectional else 1)
    return max(compute, steps * HOST_US_PER_STEP[pass_] * 1e-6)


def estimate_seconds(sweep_names, impls=("triton-stepwise", "triton-persistent", "triton-auto",
                                         "cudnn")) -> float:
    total = compile_seconds(sweep_names, impls) + STARTUP_S
    for case, _ in cases_of(sweep_names):
        for pass_ in ("fwd", "fwdbwd"):
            for impl in impls:
                t = estimate_call_seconds(case, pass_, impl)
                rounds = max(MIN_ROUNDS, min(100, int(TIMED_BUDGET_S / max(t, 1e-6))))
                total += TEST_OVERHEAD_S + (UNTIMED_CALLS + rounds) * t
    return total


def _summary():
    print(f"{'sweep':<20} {'cases':>5} {'tests':>6} {'est. min (H100)':>16}")
    for name in SWEEPS:
        n = len(cases_of([name]))
        est = "-" if name.startswith("smoke") else f"{estimate_seconds([name]) / 60:.1f}"
        print(f"{name:<20} {n:>5} {n * 8:>6} {est:>16}")
    n = len(cases_of(DEFAULT_SWEEPS))
    print(f"{'DEFAULT':<20} {n:>5} {n * 8:>6} {estimate_seconds(DEFAULT_SWEEPS) / 60:>16.1f}")
    n = len(cases_of(GPU_SWEEPS))
    print(f"{'all':<20} {n:>5} {n * 8:>6} {estimate_seconds(GPU_SWEEPS) / 60:>16.1f}")


if __name__ == "__main__":
    _summary()
