"""What the compiler makes of the persistent kernels, without a GPU.

    python -m bench.compiled [--out PATH.md]
    (default reports/compiled/<date>-triton<version>.md, its rows in a .csv beside it)

Compiles each persistent kernel for an H100 (sm_90, 132 SMs, 227 KiB of shared
memory per program) at the plan `persistent_config.plan` gives the bar's cases
(batch 16, bf16, H 256 to 1024) and reports, per kernel and step:

  mma/SMSP   tensor-core instructions (mma.sync, PTX) per step that each of the
             SM's four sub-partitions issues: per warp times warps / 4, the serial
             tensor-core work of a step. A streamed W counts its K-loop's body times
             the number of iterations.
  mma chain  the longest chain of dependent mma one warp runs per step (`mma_chain_depth`):
             mma that accumulate into the result of an earlier one wait for it, ~30
             cycles each on sm_90, so a deep chain is latency the count cannot see.
  regs       registers per thread and bytes spilled (ptxas -v).
  smem       shared memory of the program (a resident W lives there).
  sync ops   the distinct global memory-ordering instructions of the grid's meetings
             (`sync_ops`: e.g. `red.release.add` + `ld.acquire` for grid_sync's counter,
             `red.release.max` + `atom.acquire.add` for the step-tagged exchange).
  compile s  wall time of one cold compile here (sweeps.py reads it for its estimate).

Each kernel is compiled as its launch would compile it: the real launcher runs on CPU
tensors of the case's shapes with its kernel replaced by a recorder, and the JIT runtime's
own binder specialises those arguments (runtime_source).

These are facts about the generated code, not timings: they say how much work
each step puts on one warp, which the GPU session then times (NOTES.md). Runs
on any machine with Triton, no GPU needed; run it without TRITON_INTERPRET (the
interpreter replaces @triton.jit functions, which then cannot be compiled).
"""
import argparse
import contextlib
import csv
import datetime
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lstm_triton.kernels import persistent_config, persistent_gru, persistent_lstm
from lstm_triton.schedule import Schedule

from .rows import REPORTS

H100 = dict(n_sm=132, reg_bytes=65536 * 4, smem_bytes=232448)
TARGET = GPUTarget("cuda", 90, 32)
KERNELS = {("lstm", "fwd"): persistent_lstm.lstm_persistent_fwd_kernel,
           ("lstm", "bwd"): persistent_lstm.lstm_persistent_bwd_kernel,
           ("gru", "fwd"): persistent_gru.gru_persistent_fwd_kernel,
           ("gru", "bwd"): persistent_gru.gru_persistent_bwd_kernel}
DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def h100_plan(cell, dtype, batch, hidden):
    """persistent_config.plan as it runs on an H100, computed here without one."""
    plan, reason = persistent_config.plan(4 if cell == "lstm" else 3, torch.device("cuda"),
                                          dtype, batch, hidden, budget=tuple(H100.values()))
    if plan is None:
        raise ValueError(reason)
    return plan


LAUNCHERS = {("lstm", "fwd"): (persistent_lstm, "lstm_persistent_fwd"),
             ("lstm", "bwd"): (persistent_lstm, "lstm_persistent_bwd"),
             ("gru", "fwd"): (persistent_gru, "gru_persistent_fwd"),
             ("gru", "bwd"): (persistent_gru, "gru_persistent_bwd")}
STEPS = 2  # T is not specialised on (do_not_specialize): any length compiles the same code


class _Captured(Exception):
    """Raised by the stand-in kernel: the launcher's arguments, exactly as it passes them."""

    def __init__(self, args, kwargs, grid):
        super().__init__("captured")
        self.args, self.kwargs, self.grid = args, kwargs, grid


class _CapturingKernel:
    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise _Captured(args, kwargs, grid)
        return launch


def launch_arguments(cell, direction, dtype, batch, hidden, plan):
    """(args, kwargs, programs) the real launcher passes its kernel for one layer-direction of
    (batch, hidden), without a GPU: the launcher runs on CPU tensors of the same shapes,
    strides and dtypes and its kernel is replaced by a stand-in that records the call."""
    module, name = LAUNCHERS[cell, direction]
    kernel_name = name + "_kernel"
    rows = STEPS * batch
    sched = Schedule.build(None, rows, batch, reverse=False)
    t = lambda *shape, dt=dtype: torch.zeros(shape, dtype=dt)  # noqa: E731
    state = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    if (cell, direction) == ("lstm", "fwd"):
        args = (t(rows, 4 * hidden), sched, t(batch, hidden), t(batch, hidden),
                t(4 * hidden, hidden), None, True)
    elif (cell, direction) == ("lstm", "bwd"):
        args = (t(rows, hidden), t(batch, hidden), t(batch, hidden), sched, t(batch, hidden),
                t(4 * hidden, hidden), None, t(rows, 4 * hidden), t(rows, hidden, dt=state))
    elif (cell, direction) == ("gru", "fwd"):
        args = (t(rows, 3 * hidden), sched, t(batch, hidden), t(3 * hidden, hidden),
                t(3 * hidden), True)
    else:
        args = (t(rows, hidden), t(batch, hidden), sched, t(batch, hidden),
                t(3 * hidden, hidden), t(rows, hidden), t(rows, 4 * hidden))
    real = getattr(module, kernel_name)
    setattr(module, kernel_name, _CapturingKernel())
    try:
        getattr(module, name)(*args, plan)
    except _Captured as call:
        return call.args, call.kwargs, call.grid[0]
    finally:
        setattr(module, kernel_name, real)
    raise RuntimeError(f"{name} did not launch its kernel")


def runtime_source(kernel, args, kwargs, target=TARGET):
    """(ASTSource, options) exactly as the JIT runtime builds them when it launches `kernel`
    with these arguments: the same binder (triton.runtime.jit) specialises each pointer and
    integer (tt.divisibility 16 where the value is divisible by 16; an integer 1 becomes a
    constant) and parses the launch options, so the code compiled here is the code a launch
    runs. Without this specialisation the H=768 forward compiled to 233 registers and scalar
    loads instead of 155 and 16-byte ld.global.v4 (issue 15)."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound,
                                                              specialization, options)
    return ASTSource(kernel, signature, constexprs, attrs), options.__dict__


def compile_case(cell, direction, dtype, batch, hidden, plan=None):
    """Compile one kernel at its H100 plan (or at `plan`), specialised as its launch is, and
    read the facts of the table; compile_s is the wall time of that compile (this machine's
    CPU, no cache)."""
    plan = plan or h100_plan(cell, dtype, batch, hidden)
    kernel = KERNELS[cell, direction]
    n_gates = 4 if cell == "lstm" else 3
    k, _ = persistent_config.recurrent_shape(n_gates, hidden, hidden, plan.block_h,
                                             plan.block_o, direction == "bwd")
    # the launch's own grid: a narrow forward's differs from the plan's (forward_plan)
    args, kwargs, grid = launch_arguments(cell, direction, dtype, batch, hidden, plan)
    src, options = runtime_source(kernel, args, kwargs)
    with tempfile.TemporaryDirectory() as cache, _triton_cache(cache):
        start = time.perf_counter()
        compiled = triton.compile(src, target=TARGET, options=options)
        compile_s = time.perf_counter() - start
    ptx = compiled.asm["ptx"]
    mma = ptx.count("mma.sync")
    split = kwargs["SPLIT"]
    chunks = 1 if plan.resident else triton.cdiv(k, split * plan.block_k)
    regs, spill = ptxas_usage(ptx)
    chain = mma_chain_depth(ptx) * chunks  # a streamed W's loop body runs `chunks` times
    return dict(cell=cell, **{"pass": direction}, dtype=DTYPES[dtype], batch=batch,
                hidden=hidden, mode="resident" if plan.resident else f"streamed x{chunks}",
                split=split, grid=grid, warps=plan.num_warps,
                mma_per_smsp=mma * chunks * plan.num_warps // 4, mma_chain=chain,
                regs=regs, spill_bytes=spill, smem_kib=compiled.metadata.shared / 1024,
                v4_loads=len(re.findall(r"ld\.global(\.\w+)*\.v4", ptx)), sync_ops=sync_ops(ptx),
                compile_s=round(compile_s, 2))


@contextlib.contextmanager
def _triton_cache(path):
    """A private, empty Triton cache: compile_s is a cold compile, never a cache hit."""
    old = os.environ.get("TRITON_CACHE_DIR")
    os.environ["TRITON_CACHE_DIR"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRITON_CACHE_DIR")
        else:
            os.environ["TRITON_CACHE_DIR"] = old


_REG = re.compile(r"%[A-Za-z_]+[0-9]*")
_NO_DEST = ("st.", "bra", "bar.", "ret", "red.", "fence", "membar", "@")


def _operands(text):
    """Top-level comma-separated operands of one PTX instruction (braces kept whole)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur] if cur.strip() else parts


def mma_chain_depth(ptx):
    """Longest chain of dependent mma.sync in `ptx`, in program order.

    Every register carries the depth of the deepest mma chain its value came from: an mma's
    results are one deeper than the deepest of its operands (the accumulator C, and A, B),
    any other instruction passes on the deepest of its sources, and a value that went
    through memory (a load, e.g. partial sums exchanged through shared memory) starts at
    zero: it no longer waits on a chain in registers. Read in text order, a loop body
    counts once (the caller multiplies by its trip count), and the step loop's accumulator
    starts from zeros every step, so this is the chain of one step of one warp (every warp
    runs the same instructions on its own tile)."""
    depth, longest = {}, 0
    for line in ptx.splitlines():
        line = line.split("//")[0].strip().rstrip(";")
        if not line or line.endswith(":") or line.startswith((".", "{", "}")):
            continue
        pred = line.startswith("@")
        if pred:  # a predicated instruction may leave its destination as it was
            line = line.split(None, 1)[1] if " " in line else ""
        opcode, _, rest = line.partition(" ")
        ops = _operands(rest)
        if not ops or opcode.startswith(_NO_DEST):
            continue
        dests = _REG.findall(ops[0])
        sources = [r for op in ops[1:] for r in _REG.findall(op)]
        if opcode.startswith(("ld.", "ldmatrix", "atom.")):
            d = 0  # through memory (shfl stays in registers: it passes the depth on)
        else:
            d = max((depth.get(r, 0) for r in sources), default=0)
        if opcode.startswith("mma"):
            d += 1
            longest = max(longest, d)
        for r in dests:
            depth[r] = max(d, depth.get(r, 0)) if pred else d
    return longest


# Issue 16's plan options (persistent_config), compiled beside the defaults: name ->
# (dtype, passes, plan -> plan). Their defaults stay off until a GPU times them.
OPTIONS = {"chain16": (torch.bfloat16, ("fwd",), lambda p: persistent_config.with_chain(p, 16)),
           "tf32x3": (torch.float32, ("fwd", "bwd"), persistent_config.tf32x3),
           "tags": (torch.bfloat16, ("fwd", "bwd"), persistent_config.with_step_tags),
           "narrow": (torch.bfloat16, ("fwd",), persistent_config.with_narrow_forward)}


def option_rows(hiddens):
    """compile_case rows of every OPTIONS entry, batch 16, at each hidden size."""
    rows = []
    for name, (dtype, passes, option) in OPTIONS.items():
        for cell in ("lstm", "gru"):
            for direction in passes:
                for h in hiddens:
                    got = compile_case(cell, direction, dtype, 16, h,
                                       plan=option(h100_plan(cell, dtype, 16, h)))
                    rows.append(dict(got, option=name))
    return rows


_SYNC_OP = re.compile(r"\b(atom|red|ld|st)\.global\.gpu\.(acquire|release)\.(\w+)")


def sync_ops(ptx):
    """The distinct acquire/release global instructions in `ptx` ("red.release.add ..."):
    how the grid's meetings compile (an `atom` returns its old value, a `red` does not)."""
    return " ".join(sorted({f"{m[0]}.{m[1]}.{m[2]}" for m in _SYNC_OP.findall(ptx)}))


def ptxas_usage(ptx):
    """(registers per thread, spilled bytes) reported by Triton's own ptxas for sm_90a."""
    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(90).path
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.ptx"
        path.write_text(ptx)
        done = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", str(path), "-o", "/dev/null"],
                              capture_output=True, text=True, check=True)
    regs = re.search(r"Used (\d+) registers", done.stderr)
    spill = re.search(r"(\d+) bytes spill stores", done.stderr)
    return int(regs.group(1)) if regs else -1, int(spill.group(1)) if spill else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--hidden", default="256,512,768,1024")
    args = parser.parse_args(argv)
    rows = [compile_case(cell, direction, torch.bfloat16, 16, int(h))
            for cell in ("lstm", "gru") for direction in ("fwd", "bwd")
            for h in args.hidden.split(",")]
    rows = [dict(r, option="default") for r in rows]
    rows += option_rows([int(h) for h in args.hidden.split(",")])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    lines = [f"# Persistent kernels as compiled for sm_90 (H100), {date}, triton "
             f"{triton.__version__}", "",
             "Static facts about the generated code (no GPU, no timing): "
             "`python -m bench.compiled`.", "",
             "Compiled as a launch compiles: the JIT runtime's own binder specialises the "
             "launcher's real arguments (pointers and sizes divisible by 16). v4 loads: "
             "16-byte `ld.global...v4` in the PTX. compile s: one cold compile on this "
             "machine's CPU (the compile-for-sm_90 path, not a GPU machine's).", "",
             "| cell | pass | dtype | option | B | H | W_hh | split | grid | warps | "
             "mma/SMSP/step | mma chain | regs | spill B | smem KiB | v4 loads | sync ops | "
             "compile s |",
             "|" + "---|" * 18]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['pass']} | {r['dtype']} | {r['option']} | "
                     f"{r['batch']} | {r['hidden']} | {r['mode']} | {r['split']} | {r['grid']} | "
                     f"{r['warps']} | {r['mma_per_smsp']} | {r['mma_chain']} | {r['regs']} | "
                     f"{r['spill_bytes']} | {r['smem_kib']:.0f} | {r['v4_loads']} | "
                     f"{r['sync_ops']} | {r['compile_s']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out or REPORTS / "compiled" / f"{date}-triton{triton.__version__}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        fields = ["date", "target", "torch", "triton", *rows[0]]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow(dict(r, date=date, target="cuda sm_90 (H100 plan: 132 SMs)",
                                 torch=torch.__version__, triton=triton.__version__))
    print(f"wrote {out} and {out.with_suffix('.csv').name}")
    return rows


if __name__ == "__main__":
    main()
