"""The persistent kernels' floor: what one grid barrier costs, with no math around it.

    python -m bench.barrier [--out reports/raw/barrier/<date>-<device>.csv]

Launches a kernel whose programs do nothing but meet `steps` times through
kernels/grid_sync.grid_barrier, for grids from 1 program to one per SM, and
reports GPU time per meeting (CUDA events, median of several launches after a
warm-up). Mode `tags` meets through the step-tagged exchange instead (kernels/step_tags.py,
issue 16's plan option; launched cooperatively): the same meeting without the shared
counter, A against `cooperative`; `tags-load` polls the tags by acquire loads (step_tags.
TAG_POLL). NOTES.md predicts ~1-2 us per meeting on an H100; the persistent
step can be no faster than this. GPU only: under the interpreter a grid of more
than one program cannot meet.
"""
import argparse
import datetime
import platform
import statistics
import time
from importlib import metadata
from pathlib import Path

import torch
import triton
import triton.language as tl

from lstm_triton.kernels.grid_sync import (barrier_failed, grid_barrier, grid_not_failed,
                                           new_sync_state)
from lstm_triton.kernels.persistent_config import SPIN_LIMIT
from lstm_triton.kernels.step_tags import exchange_arrive, exchange_start, exchange_wait

from . import rows
from .rows import REPORTS, slug


@triton.jit
def _meet_kernel(sync_ptr, steps, spin_limit, TAGS: tl.constexpr, LOAD: tl.constexpr):
    if TAGS == 0:
        n_prog = tl.num_programs(0).to(tl.int64)
        ok = grid_not_failed(sync_ptr)
        s = 0
        while (s < steps) & ok:
            ok = grid_barrier(sync_ptr, (s + 1) * n_prog, spin_limit)
            s += 1
    else:  # as the persistent kernels meet with the option on: start, then wait / arrive
        n_prog, ok = exchange_start(sync_ptr, TAGS)
        s = 0
        while (s < steps) & ok:
            ok = exchange_wait(sync_ptr, s + 1, n_prog, spin_limit, TAGS, LOAD)
            exchange_arrive(sync_ptr, s + 2, TAGS)
            s += 1


def time_meetings(grid: int, steps: int, repeats: int = 7, cooperative: bool = False,
                  device="cuda", tags: bool = False, load: bool = False) -> tuple:
    """(median us per meeting over the launches that met, NaN if none did; failed
    launches) for `grid` programs meeting `steps` times; `cooperative`: launched as a CUDA
    cooperative grid (as the persistent kernels are). On the CPU (the interpreter, one
    program: --smoke) the time is host wall time, not a GPU figure. tags: through the
    step-tagged exchange, one tag lane per program; load: its tags polled by acquire loads
    (step_tags.TAG_POLL; GPU only, the interpreter polls by atom whatever is asked)."""
    per_meeting, failures = [], 0
    lanes = triton.next_power_of_2(grid) if tags else 0
    for k in range(repeats + 1):  # the first launch compiles and warms up
        sync = new_sync_state(device, lanes)
        kwargs = dict(num_warps=4, TAGS=lanes, LOAD=load and device == "cuda")
        if cooperative:
            kwargs["launch_cooperative_grid"] = True
        if device == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            _meet_kernel[(grid,)](sync, steps, SPIN_LIMIT, **kwargs)
            end.record()
            end.synchronize()
            elapsed_us = start.elapsed_time(end) * 1e3
        else:
            t0 = time.perf_counter()
            _meet_kernel[(grid,)](sync, steps, SPIN_LIMIT, **kwargs)
            elapsed_us = (time.perf_counter() - t0) * 1e6
        failed = barrier_failed(sync)
        failures += failed
        if k and not failed:  # a failed launch stops early: its time is not a meeting's
            per_meeting.append(elapsed_us / steps)
    return (statistics.median(per_meeting) if per_meeting else float("nan")), failures


COLUMNS = ("date", "device", "torch", "triton", "smoke", "mode", "grid", "steps",
           "us_per_meeting", "failed_launches", "timer")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--out", default=None)
    parser.add_argument("--grids", default="1,8,16,32,48,64,96,SMS",
                        help="comma-separated grid sizes; SMS is the device's SM count")
    parser.add_argument("--modes", default="plain",
                        help="comma-separated: plain, cooperative (a CUDA cooperative launch), "
                             "tags (cooperative, through the step-tagged exchange), tags-load "
                             "(its tags polled by acquire loads instead of atomics)")
    parser.add_argument("--smoke", action="store_true",
                        help="no GPU: one program through the interpreter (SMOKE, not a "
                             "timing; the first-contact command's CPU rehearsal)")
    args = parser.parse_args(argv)
    if args.smoke:
        name, n_sm, device, steps = f"cpu-{platform.machine()}", 1, "cpu", min(args.steps, 8)
    elif not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (a grid barrier cannot meet under the interpreter; "
                     "--smoke rehearses one program)")
    else:
        props = torch.cuda.get_device_properties(0)
        name, n_sm, device, steps = props.name, props.multi_processor_count, "cuda", args.steps
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    # its own folder: reports/raw/*.csv are the lab's CSVs, which the report index reads
    out = Path(args.out or REPORTS / "raw" / "barrier" / f"{date}-{slug(name)}.csv")
    grids = sorted({n_sm if g.strip() == "SMS" else int(g) for g in args.grids.split(",")})
    for mode in args.modes.split(","):
        for grid in grids:
            if grid > n_sm:
                continue
            us, failed = time_meetings(grid, steps, cooperative=mode != "plain",
                                       device=device, tags=mode.startswith("tags"),
                                       load=mode == "tags-load")
            # appended and flushed at once: a launch that hangs later loses no earlier row
            rows.append(out, dict(date=date, device=name, torch=torch.__version__,
                                  triton=metadata.version("triton"), smoke=args.smoke,
                                  mode=mode, grid=grid, steps=steps,
                                  us_per_meeting=f"{us:.4g}", failed_launches=failed,
                                  timer="cpu-wall" if args.smoke else "cuda-events"),
                        columns=COLUMNS)
            print(f"{mode:>11} grid {grid:4d}: {us:9.3f} us per meeting  "
                  f"(failed launches: {failed})" + ("  [SMOKE: not a timing]" if args.smoke
                                                    else ""), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
