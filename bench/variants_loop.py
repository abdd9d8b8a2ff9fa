"""Beyond nn.LSTM (issue 18): each recurrent option, fused, against the nearest thing a user
runs today.

    python -m bench.variants_loop [--options zoneout,resets,...] [--cells lstm,gru]
                                  [--batch 16] [--hidden 768] [--seq-len 1024] [--dtype bf16]
    python -m bench.variants_loop --smoke      # no GPU: interpreter, tiny, not a timing

Options: zoneout, resets, weight_drop, recurrent_dropout, variational_dropout (2 layers),
layer_norm. Implementations, on the same module's parameters:
  stepwise, persistent  the fused Triton backends (persistent falls back to stepwise, with a
                        FallbackWarning, where it does: layer_norm)
  loop                  the per-step PyTorch loop (the "reference" backend): what a
                        hand-written nn.LSTMCell loop does (several small launches per step
                        from Python), and what zoneout, layer-norm and recurrent-dropout
                        users run today (haste aside)
  cudnn-steps           resets only: the RL loop, one cuDNN call per step with (1 - done)
                        masks on the state (CleanRL, sb3-contrib, TorchRL)
  cudnn-masked          weight_drop only: AWD-LSTM's WeightDrop, cuDNN on a masked copy of
                        W_hh made per call (torch.func.functional_call)
Every row records the largest difference of its output from the loop's, with the same
masks (every implementation draws them from the same seed), so a timing of wrong numbers
shows as such. GPU time from CUDA events, median of several calls after a warm-up, forward
(training mode: the random options draw) and forward+backward; tokens/s = batch * seq_len /
time. The raw CSV goes to reports/raw/variants/.
"""
import argparse
import datetime
import platform
import statistics
import time
import warnings
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from lstm_triton import FallbackWarning, TritonGRU, TritonLSTM

from . import rows
from .rows import REPORTS, slug

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OPTIONS = {  # constructor options of each benchmarked variant
    "zoneout": dict(zoneout=0.1),
    "resets": {},  # resets= in forward: an episode start in about 1 step in 16
    "weight_drop": dict(weight_drop=0.5),
    "recurrent_dropout": dict(recurrent_dropout=0.25),
    "variational_dropout": dict(num_layers=2, dropout=0.25, variational_dropout=True),
    "layer_norm": dict(layer_norm=True),
}
BASELINES = {"resets": ("cudnn-steps",), "weight_drop": ("cudnn-masked",)}
COLUMNS = ("date", "device", "torch", "triton", "smoke", "option", "cell", "dtype", "batch",
           "hidden", "seq_len", "pass", "impl", "ms", "tokens_per_s", "max_abs_diff_vs_loop",
           "timer")
SEED = 1234


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


def _torch_twin(module):
    """torch's own module with the same parameters (no options): cuDNN on CUDA."""
    cls = nn.LSTM if module.cell == "lstm" else nn.GRU
    twin = cls(module.input_size, module.hidden_size, num_layers=module.num_layers,
               device=module.weight_ih_l0.device, dtype=module.weight_ih_l0.dtype)
    twin.load_state_dict({k: v for k, v in module.state_dict().items() if not k.startswith("ln_")})
    return twin


def resets_by_steps(twin, x, resets):
    """The RL loop: one call per step, the state zeroed where an episode starts."""
    state, outs = None, []
    for t in range(x.shape[0]):
        keep = (~resets[t]).to(x.dtype)[None, :, None]
        if state is not None:
            state = tuple(s * keep for s in state) if isinstance(state, tuple) else state * keep
        y, state = twin(x[t:t + 1], state)
        outs.append(y)
    return torch.cat(outs)


def masked_weight_call(twin, module, x):
    """AWD-LSTM's WeightDrop: cuDNN on W_hh masked per call (one mask per layer)."""
    params = dict(twin.named_parameters())
    for name in [n for n in params if n.startswith("weight_hh")]:
        w = getattr(module, name)
        params[name] = w * torch.bernoulli(torch.full_like(w, 1 - module.weight_drop)) / (
            1 - module.weight_drop)
    return torch.func.functional_call(twin, params, (x,))[0]


def implementations(option, module, twin, x, resets):
    """(name, forward callable returning the output) of each implementation."""
    def on(backend):
        def call():
            module.backend = backend
            return module(x, resets=resets)[0]
        return call
    impls = [("loop", on("reference")), ("stepwise", on("stepwise")),
             ("persistent", on("persistent"))]
    if option == "resets":
        impls.append(("cudnn-steps", lambda: resets_by_steps(twin, x, resets)))
    if option == "weight_drop":
        impls.append(("cudnn-masked", lambda: masked_weight_call(twin, module, x)))
    return impls


def measure(option, cell, dtype, batch, hidden, seq_len, device, repeats=5):
    """Rows (dicts) for each implementation and pass of one option at one shape."""
    cls = TritonLSTM if cell == "lstm" else TritonGRU
    kwargs = dict(OPTIONS[option])
    if cell == "gru" and isinstance(kwargs.get("zoneout"), tuple):
        kwargs["zoneout"] = kwargs["zoneout"][1]
    module = cls(hidden, hidden, device=device, dtype=dtype, **kwargs)
    twin = _torch_twin(module)
    x = torch.randn(seq_len, batch, hidden, device=device, dtype=dtype, requires_grad=True)
    resets = torch.rand(seq_len, batch, device=device) < 1 / 16 if option == "resets" else None
    name = [k for k, v in DTYPES.items() if v == dtype][0]
    impls = implementations(option, module, twin, x, resets)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        torch.manual_seed(SEED)
        want = impls[0][1]().float()
        diffs = {}
        for impl, call in impls:
            torch.manual_seed(SEED)  # the same masks as the loop's
            diffs[impl] = (call().float() - want).abs().max().item()
    out = []
    for impl, call in impls:
        def forward(call=call):
            with torch.no_grad():
                call()

        def forward_backward(call=call):
            call().float().sum().backward()

        for pass_, fn in (("fwd", forward), ("fwdbwd", forward_backward)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FallbackWarning)
                ms = time_call(fn, device, repeats)
            out.append(dict(option=option, cell=cell, dtype=name, batch=batch, hidden=hidden,
                            seq_len=seq_len, pass_=pass_, impl=impl, ms=ms,
                            tokens_per_s=batch * seq_len / (ms / 1e3), diff=diffs[impl]))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--options", default=",".join(OPTIONS))
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
    suffix = "-smoke" if args.smoke else ""
    out = Path(args.out or REPORTS / "raw" / "variants" / f"{date}-{slug(name)}{suffix}.csv")
    for option in args.options.split(","):
        for cell in args.cells.split(","):
            for r in measure(option, cell, DTYPES[args.dtype], args.batch, args.hidden,
                             args.seq_len, device, args.repeats):
                rows.append(out, dict(date=date, device=name, torch=torch.__version__,
                                      triton=metadata.version("triton"), smoke=args.smoke,
                                      option=r["option"], cell=r["cell"], dtype=r["dtype"],
                                      batch=r["batch"], hidden=r["hidden"],
                                      seq_len=r["seq_len"], **{"pass": r["pass_"]},
                                      impl=r["impl"], ms=f"{r['ms']:.4g}",
                                      tokens_per_s=f"{r['tokens_per_s']:.4g}",
                                      max_abs_diff_vs_loop=f"{r['diff']:.3g}",
                                      timer="cpu-wall" if args.smoke else "cuda-events"),
                            columns=COLUMNS)
                print(f"{r['option']:>19} {r['cell']} {r['dtype']} B={r['batch']} "
                      f"H={r['hidden']} T={r['seq_len']} {r['pass_']:>6} {r['impl']:>12}: "
                      f"{r['ms']:10.3f} ms {r['tokens_per_s']:12.1f} tokens/s "
                      f"(max |diff| vs loop {r['diff']:.2g})"
                      + ("  [SMOKE: not a timing]" if args.smoke else ""), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
