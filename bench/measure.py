"""How one case is measured: modules with shared weights, rotated inputs, the
float64 oracle, the correctness guard, the GPU timer and the result row.

Implementations (the `impl` column):
  triton-stepwise / triton-persistent / triton-auto   TritonLSTM/TritonGRU(backend=...)
  cudnn       torch.nn.LSTM / nn.GRU on CUDA (the baseline on a GPU); its `backend` column
              says whether cuDNN really ran (cudnn) or ATen's own loop (aten-native)
  torch-cpu   torch.nn.LSTM / nn.GRU on the CPU (the baseline of a smoke run; never "cudnn")
Every implementation of a case loads the same state_dict and sees the same inputs.

Correctness guard: before timing, each implementation's output and final states (and
for fwdbwd the gradients of the input and of every parameter) are compared with an
oracle: torch's own module in float64 holding the same weights and inputs rounded to the
case's dtype. max_rel_err = max |impl - oracle| / max |oracle| over the compared tensors.
The baseline is checked the same way, so the column compares both with the truth, and a
Triton implementation's threshold is tied to the baseline's own error (`tolerance`). Above
it the row says `wrong` and the case is not timed.

The timed figure is the synchronised latency of one call: GPU time from an event recorded
before the call to one recorded after it, which includes the gaps while the host launches
(each backend's own host work, e.g. the persistent backend's read of its barrier flag), as
a user calling the module once sees it; calls do not overlap one another.
"""
import contextlib
import re
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .sweeps import Case, flops

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TRITON_IMPLS = ("triton-stepwise", "triton-persistent", "triton-auto")
# Loose on purpose: the guard catches wrong kernels (O(1) errors, NaN), not
# rounding; accumulated rounding over T=4096 steps must not trip it.
TOLERANCE = {"fp32": 1e-3, "bf16": 1e-1, "fp16": 3e-2}
N_INPUTS = 4  # inputs rotated among timed calls, so no call reuses the last one's input; the
# weights stay hot in L2 as in real use, and at small shapes all 4 inputs fit in L2 too

# Rounds: as many as fit in about TIMED_BUDGET_S, within [MIN_ROUNDS, MAX_ROUNDS].
GPU_TIMING = dict(budget_s=0.4, min_rounds=5, max_rounds=100, warmup_rounds=2)
CPU_TIMING = dict(budget_s=0.0, min_rounds=2, max_rounds=2, warmup_rounds=0)  # smoke only


def baseline_impl(device: torch.device) -> str:
    return "cudnn" if device.type == "cuda" else "torch-cpu"


def impls_for(device: torch.device) -> tuple:
    return TRITON_IMPLS + (baseline_impl(device),)


def select_impls(values, device: torch.device) -> tuple:
    """Implementations from --impl values (repeatable, comma-separated); None: all of them."""
    known = impls_for(device)
    if not values:
        return known
    chosen = [v.strip() for value in values for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in known]
    if unknown:
        raise ValueError(f"unknown --impl {', '.join(unknown)}; on {device.type}: "
                         + ", ".join(known))
    return tuple(i for i in known if i in chosen)


def backend_of(impl: str):
    """The TritonLSTM backend an impl name stands for, or None for torch's module."""
    return impl.removeprefix("triton-") if impl.startswith("triton-") else None


class CudaEventTimer:
    """A pytest-benchmark timer reading GPU time: each call records a CUDA event, waits for
    it, and returns seconds since the first call. The difference of two calls is the GPU
    time of what was launched between them, synchronised. The total is kept in a Python
    float (double) and each step read from the previous event only: elapsed_time is a
    float32 of milliseconds, so reading every event from one session-start event would lose
    resolution as the session ran (~31 us steps after 262 s, found in review)."""

    def __init__(self):
        self._last, self._seconds = None, 0.0

    def __call__(self) -> float:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        event.synchronize()
        if self._last is not None:
            self._seconds += self._last.elapsed_time(event) / 1e3
        self._last = event
        return self._seconds

    def __repr__(self):
        return "CudaEventTimer"


cuda_event_timer = CudaEventTimer()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------- the case
@dataclass
class Setup:
    """Weights and inputs of one case, shared by every implementation."""
    case: Case
    device: torch.device
    state_dict: dict  # float32 on the CPU
    xs: list  # N_INPUTS inputs (T, B, I) in the case dtype
    dys: list  # N_INPUTS output gradients (T, B, n_dir*H)


def torch_module(case: Case, backend=None) -> nn.Module:
    kwargs = dict(input_size=case.input_size, hidden_size=case.hidden_size,
                  num_layers=case.num_layers, bidirectional=case.bidirectional)
    if backend is None:
        return (nn.LSTM if case.cell == "lstm" else nn.GRU)(**kwargs)
    from lstm_triton import TritonGRU, TritonLSTM

    return (TritonLSTM if case.cell == "lstm" else TritonGRU)(**kwargs, backend=backend)


def make_setup(case: Case, device: torch.device, seed: int = 0) -> Setup:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    state_dict = torch_module(case).state_dict()
    dtype = DTYPES[case.dtype]
    n_dir = 2 if case.bidirectional else 1
    shape_x = (case.seq_len, case.batch, case.input_size)
    shape_y = (case.seq_len, case.batch, n_dir * case.hidden_size)
    xs = [torch.randn(shape_x, generator=gen).to(device, dtype) for _ in range(N_INPUTS)]
    dys = [torch.randn(shape_y, generator=gen).to(device, dtype) for _ in range(N_INPUTS)]
    return Setup(case, device, state_dict, xs, dys)


def build(setup: Setup, impl: str, pass_: str, dtype=None) -> nn.Module:
    """The implementation with the case's weights, in eval mode for an inference pass:
    nn.LSTM/GRU pass `self.training` to cuDNN, which then runs its training forward
    (reserve buffer, saved activations) even under no_grad, and would be timed slower
    than its real inference path (found in review; the Triton backends key on grad mode)."""
    module = torch_module(setup.case, backend_of(impl))
    module.load_state_dict(setup.state_dict)
    module.train(pass_ == "fwdbwd")
    return module.to(setup.device, dtype or DTYPES[setup.case.dtype])


def step_fn(module, pass_: str):
    """The timed callable: fwd under no_grad, or a training step's forward+backward."""
    if pass_ == "fwd":
        def fwd(x, dy):
            with torch.no_grad():
                return module(x)[0]
        return fwd

    def fwdbwd(x, dy):
        out = module(x)[0]
        out.backward(dy)
        return out
    return fwdbwd


def fresh_args(module, x, dy, pass_):
    """Arguments of one call: x with requires_grad for fwdbwd, no stale gradients."""
    module.zero_grad(set_to_none=True)
    if pass_ == "fwdbwd":
        x = x.detach().requires_grad_(True)
    return x, dy


# ---------------------------------------------------------------- correctness
_oracle_cache: dict = {}


def oracle(setup: Setup, pass_: str, baseline: str):
    """checked_tensors of torch's module in float64 on the same rounded weights and inputs
    x[0], dy[0]. Cached for the case being measured."""
    key = (setup.case, pass_, setup.device.type)
    if key not in _oracle_cache:
        _oracle_cache.clear()
        try:
            _oracle_cache[key] = _run_oracle(setup, pass_, baseline, setup.device)
        except RuntimeError:  # no float64 RNN on this device: the CPU computes it
            _oracle_cache[key] = _run_oracle(setup, pass_, baseline, torch.device("cpu"))
    return _oracle_cache[key]


def _run_oracle(setup: Setup, pass_: str, baseline: str, device):
    module = build(setup, baseline, pass_, dtype=DTYPES[setup.case.dtype]).to(device,
                                                                               torch.float64)
    x, dy = (t.to(device, torch.float64) for t in (setup.xs[0], setup.dys[0]))
    return checked_tensors(module, x, dy, pass_)


def checked_tensors(module, x, dy, pass_: str) -> list:
    """What the guard compares: the output and the final states, and for fwdbwd the
    gradients of the input and of every parameter (half of backward's work is the weight
    gradients: a backward that got them wrong must not be timed as fast)."""
    x, dy = fresh_args(module, x, dy, pass_)
    with torch.no_grad() if pass_ == "fwd" else torch.enable_grad():
        out, finals = module(x)
        finals = list(finals) if isinstance(finals, tuple) else [finals]
        tensors = [out.detach()] + [f.detach() for f in finals]
        if pass_ == "fwdbwd":
            out.backward(dy)
            tensors += [x.grad.detach()] + [p.grad.detach() for p in module.parameters()]
    return tensors


def rel_err(actual, expected) -> float:
    actual, expected = actual.detach().to(torch.float64), expected.to(torch.float64)
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    if err != err:  # NaN anywhere
        return float("inf")
    return err / max(scale, 1e-30)


def check(module, setup: Setup, pass_: str, baseline: str) -> float:
    """max_rel_err of one call on x[0] (and dy[0]) against the float64 oracle, over the
    output, the final states and (fwdbwd) every gradient."""
    want = oracle(setup, pass_, baseline)
    got = checked_tensors(module, setup.xs[0], setup.dys[0], pass_)
    return max(rel_err(g, w) for g, w in zip(got, want))


_baseline_err_cache: dict = {}


def baseline_err(setup: Setup, pass_: str, baseline: str) -> float:
    """The baseline's own max_rel_err on this case (cached per case and pass)."""
    key = (setup.case, pass_, setup.device.type)
    if key not in _baseline_err_cache:
        _baseline_err_cache.clear()
        _baseline_err_cache[key] = check(build(setup, baseline, pass_), setup, pass_, baseline)
    return _baseline_err_cache[key]


def tolerance(dtype_name: str, baseline_error) -> float:
    """The guard's threshold for a Triton implementation: 8x the baseline's own error on
    the case, at least a tenth of the dtype's loose bound and at most the bound. Found in
    review: bf16's fixed 1e-1 let a kernel that drops b_hh pass (error 3-7e-2) where
    cuDNN's own error is ~4e-3."""
    cap = TOLERANCE[dtype_name]
    if baseline_error is None or baseline_error != baseline_error:
        return cap
    return min(cap, max(8 * baseline_error, cap / 10))


def baseline_backend(module, setup: Setup, pass_: str) -> str:
    """What torch's module ran on CUDA: "cudnn" when aten::_cudnn_rnn was called, else
    "aten-native" (e.g. bfloat16 with a cuDNN older than torch's bf16-RNN requirement),
    so a row is never labelled as against cuDNN when cuDNN did not run."""
    return baseline_run(module, setup, pass_)[0]


KERNELS_CHARS = 600  # the kernels column's length at most (cuDNN's names are long templates)


def baseline_run(module, setup: Setup, pass_: str) -> tuple:
    """(backend, kernels) of one profiled call of torch's module: backend as in
    baseline_backend; kernels the names of the GPU kernels the call launched, in order of
    first launch, "; "-joined. cuDNN picks its persistent or its per-step RNN algorithm by
    itself (fp16 LSTM at B=16, H=768 should get the persistent one, bf16 and the GRU the
    per-step one), and a cuDNN row means nothing until it says which ran. On the CPU
    (no GPU kernels) the RNN ops torch ran instead (aten::lstm, ...)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if setup.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    x, dy = fresh_args(module, setup.xs[0], setup.dys[0], pass_)
    with profile(activities=activities) as prof:
        step_fn(module, pass_)(x, dy)
        sync(setup.device)
    events = prof.events()
    ran_cudnn = any("_cudnn_rnn" in e.name for e in events)
    if setup.device.type == "cuda":
        names = [e.name for e in events if e.device_type == DeviceType.CUDA]
    else:
        names = [e.name for e in events
                 if e.name.startswith("aten::") and re.search(r"lstm|gru|rnn", e.name)]
    kernels = "; ".join(dict.fromkeys(names))
    return ("cudnn" if ran_cudnn else "aten-native"), kernels[:KERNELS_CHARS]


@contextlib.contextmanager
def recording_fallbacks(messages: list):
    """Collect the FallbackWarnings of the block (a persistent launch rerun on stepwise, a
    refused cooperative launch): the row then says the impl did not run as named. Their
    once-per-process memory is cleared first, so every case reports its own."""
    from lstm_triton import FallbackWarning, dispatch

    dispatch._warned.clear()  # a refused cooperative launch stays remembered (persistent.py)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FallbackWarning)
        yield
    messages.extend(str(w.message) for w in caught if issubclass(w.category, FallbackWarning))


# -------------------------------------------------------------------- timing
class Rotation:
    """pytest-benchmark `setup`: the next pre-generated input, fresh gradients."""

    def __init__(self, module, setup: Setup, pass_: str):
        self.module, self.setup, self.pass_, self.i = module, setup, pass_, 0

    def __call__(self):
        k = self.i % N_INPUTS
        self.i += 1
        args = fresh_args(self.module, self.setup.xs[k], self.setup.dys[k], self.pass_)
        return args, {}


def estimate_call_s(fn, rotation, device) -> float:
    """Seconds of one (already warm) call, synchronised: sizes the number of rounds."""
    args, _ = rotation()
    sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def rounds_for(device, call_s) -> dict:
    """pedantic's schedule; `call_s()` (one timed call) is only run when rounds vary."""
    cfg = GPU_TIMING if device.type == "cuda" else CPU_TIMING
    rounds = cfg["min_rounds"]
    if cfg["max_rounds"] > cfg["min_rounds"]:
        rounds = int(cfg["budget_s"] / max(call_s(), 1e-9))
        rounds = max(cfg["min_rounds"], min(cfg["max_rounds"], rounds))
    return dict(rounds=rounds, warmup_rounds=cfg["warmup_rounds"], iterations=1)


def peak_mem_mb(fn, rotation, device):
    """Peak memory one call allocates above what was allocated before it (weights
    and inputs excluded): activations, saved state, outputs, gradients. CUDA only."""
    if device.type != "cuda":
        return None
    args, _ = rotation()
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn(*args)
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


# ----------------------------------------------------------------------- rows
def short_error(exc: Exception, limit: int = 240) -> str:
    """One line for the CSV's note column: type and message, module reprs removed."""
    text = re.sub(r"<module '[^']*'( from '[^']*')?>", "<module>", str(exc))
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text}"[:limit]


def derived(case: Case, pass_: str, median_s: float) -> dict:
    return dict(
        median_ms=median_s * 1e3,
        tokens_per_s=case.batch * case.seq_len / median_s,
        tflops=flops(case, pass_) / median_s / 1e12,
    )
