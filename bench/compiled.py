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

These are facts about the generated code, not timings: they say how much work
each step puts on one warp, which the GPU session then times (NOTES.md). Runs
on any machine with Triton, no GPU needed; run it without TRITON_INTERPRET (the
interpreter replaces @triton.jit functions, which then cannot be compiled).
"""
import argparse
import csv
import datetime
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lstm_triton.kernels import persistent_config, persistent_gru, persistent_lstm

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


def compile_case(cell, direction, dtype, batch, hidden, plan=None):
    """Compile one kernel at its H100 plan (or at `plan`) and read the facts of the table."""
    plan = plan or h100_plan(cell, dtype, batch, hidden)
    kernel = KERNELS[cell, direction]
    n_gates, backward = (4 if cell == "lstm" else 3), direction == "bwd"
    k, _ = persistent_config.recurrent_shape(n_gates, hidden, hidden, plan.block_h,
                                             plan.block_o, backward)
    cx = dict(REVERSE=False, RESIDENT=plan.resident, DOT=plan.dot, COMPUTE=tl.float32,
              BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, BLOCK_K=plan.block_k,
              SAVE=True, HAS_BHH=True, PROJ=False, BLOCK_O=plan.block_o,
              PROJ_SPLIT=1,  # no projection in these cases
              **persistent_config.recurrent_dot(plan, n_gates, hidden, hidden, backward))
    cx = {n: v for n, v in cx.items() if n in kernel.arg_names}
    dt = DTYPES[dtype]
    ptrs = {"bs_ptr": "*i32", "off_ptr": "*i64", "sync_ptr": "*i64", "c_save_ptr": "*fp32"}
    sig = {n: "constexpr" if n in cx else (ptrs.get(n, "*" + dt) if n.endswith("_ptr")
                                           else "i32") for n in kernel.arg_names}
    compiled = triton.compile(ASTSource(kernel, sig, constexprs=cx), target=TARGET,
                              options={"num_warps": plan.num_warps, "maxnreg": plan.max_regs})
    ptx = compiled.asm["ptx"]
    mma = ptx.count("mma.sync")
    chunks = 1 if plan.resident else triton.cdiv(k, cx["SPLIT"] * plan.block_k)
    regs, spill = ptxas_usage(ptx)
    chain = mma_chain_depth(ptx) * chunks  # a streamed W's loop body runs `chunks` times
    return dict(cell=cell, **{"pass": direction}, dtype=dt, batch=batch, hidden=hidden,
                mode="resident" if plan.resident else f"streamed x{chunks}",
                split=cx["SPLIT"], grid=plan.grid, warps=plan.num_warps,
                mma_per_smsp=mma * chunks * plan.num_warps // 4, mma_chain=chain,
                regs=regs, spill_bytes=spill, smem_kib=compiled.metadata.shared / 1024)


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
           "tf32x3": (torch.float32, ("fwd", "bwd"), persistent_config.tf32x3)}


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
             "| cell | pass | dtype | option | B | H | W_hh | split | grid | warps | "
             "mma/SMSP/step | mma chain | regs | spill B | smem KiB |", "|" + "---|" * 15]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['pass']} | {r['dtype']} | {r['option']} | "
                     f"{r['batch']} | {r['hidden']} | {r['mode']} | {r['split']} | {r['grid']} | "
                     f"{r['warps']} | {r['mma_per_smsp']} | {r['mma_chain']} | {r['regs']} | "
                     f"{r['spill_bytes']} | {r['smem_kib']:.0f} |")
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
