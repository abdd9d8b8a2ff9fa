"""Layer-normalised LSTM / GRU (issue 18): the fused stepwise layers against the per-step
PyTorch loop that users of layer-normalised cells run today.

    python -m bench.layer_norm_loop [--cells lstm,gru] [--batch 16] [--hidden 768]
                                    [--seq-len 1024] [--dtype bf16] [--out CSV]
    python -m bench.layer_norm_loop --smoke      # no GPU: interpreter, tiny, not a timing

The loop is the "reference" backend: the layer-normalised cell written step by step in
PyTorch (lstm_triton/reference.py, F.layer_norm on each step's projections), which is what
NeMo's ln_lstm, torchaudio's _CustomLSTM or a hand-written nn.LSTMCell + nn.LayerNorm loop
do: several small launches per step from Python. Both run the same module's parameters;
each row also records the largest difference of the output from the loop's (a timing of
wrong numbers would be worthless). GPU time from CUDA events, median of several calls
after a warm-up, forward and forward+backward; tokens/s = batch * seq_len / time.
"""
import argparse
import datetime
import platform
import statistics
import time
from importlib import metadata
from pathlib import Path

import torch

from lstm_triton import TritonGRU, TritonLSTM

from . import rows
from .rows import REPORTS, slug

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
IMPLS = ("stepwise", "reference")  # fused kernels; the per-step PyTorch loop
COLUMNS = ("date", "device", "torch", "triton", "smoke", "cell", "dtype", "batch", "hidden",
           "seq_len", "pass", "impl", "ms", "tokens_per_s", "max_abs_diff_vs_loop", "timer")


def time_call(fn, device, repeats):
    """Median milliseconds of fn() over `repeats` calls after one warm-up call."""
    times = []
    for k in range(repeats + 1):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            fn()
            elapsed = (time.perf_counter() - t0) * 1e3
        if k:
            times.append(elapsed)
    return statistics.median(times)


def measure(cell, dtype, batch, hidden, seq_len, device, repeats=5):
    """Rows (dicts) for each implementation and pass at one shape."""
    cls = TritonLSTM if cell == "lstm" else TritonGRU
    module = cls(hidden, hidden, layer_norm=True, device=device, dtype=dtype)
    x = torch.randn(seq_len, batch, hidden, device=device, dtype=dtype, requires_grad=True)
    module.backend = "reference"
    with torch.no_grad():
        want = module(x)[0].float()
    out = []
    for impl in IMPLS:
        module.backend = impl
        with torch.no_grad():
            diff = (module(x)[0].float() - want).abs().max().item()

        def forward():
            with torch.no_grad():
                module(x)

        def forward_backward():
            module(x)[0].sum().backward()

        for pass_, fn in (("fwd", forward), ("fwdbwd", forward_backward)):
            ms = time_call(fn, device, repeats)
            out.append(dict(cell=cell, dtype=[k for k, v in DTYPES.items() if v == dtype][0],
                            batch=batch, hidden=hidden, seq_len=seq_len, pass_=pass_,
                            impl=impl, ms=ms, tokens_per_s=batch * seq_len / (ms / 1e3),
                            diff=diff))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="no GPU: tiny shapes through the interpreter (not a timing)")
    args = parser.parse_args(argv)
    if args.smoke:
        name, device = f"cpu-{platform.machine()}", "cpu"
        args.batch, args.hidden, args.seq_len, args.repeats = 2, 8, 4, 1
        args.dtype = "fp32"
    elif not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (--smoke rehearses it through the interpreter)")
    else:
        name, device = torch.cuda.get_device_name(0), "cuda"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    # its own folder: reports/raw/*.csv are the lab's CSVs, which the report index reads
    out = Path(args.out or REPORTS / "raw" / "layer_norm" / f"{date}-{slug(name)}.csv")
    for cell in args.cells.split(","):
        for r in measure(cell, DTYPES[args.dtype], args.batch, args.hidden, args.seq_len,
                         device, args.repeats):
            rows.append(out, dict(date=date, device=name, torch=torch.__version__,
                                  triton=metadata.version("triton"), smoke=args.smoke,
                                  cell=r["cell"], dtype=r["dtype"], batch=r["batch"],
                                  hidden=r["hidden"], seq_len=r["seq_len"], **{"pass": r["pass_"]},
                                  impl=r["impl"], ms=f"{r['ms']:.4g}",
                                  tokens_per_s=f"{r['tokens_per_s']:.4g}",
                                  max_abs_diff_vs_loop=f"{r['diff']:.3g}",
                                  timer="cpu-wall" if args.smoke else "cuda-events"),
                        columns=COLUMNS)
            print(f"{r['cell']} {r['dtype']} B={r['batch']} H={r['hidden']} T={r['seq_len']} "
                  f"{r['pass_']:>6} {r['impl']:>9}: {r['ms']:10.3f} ms  "
                  f"{r['tokens_per_s']:12.1f} tokens/s  (max |diff| vs loop {r['diff']:.2g})"
                  + ("  [SMOKE: not a timing]" if args.smoke else ""), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
