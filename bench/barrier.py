"""The persistent kernels' floor: what one grid barrier costs, with no math around it.

    python -m bench.barrier [--out reports/raw/barrier/<date>-<device>.csv]

Launches a kernel whose programs do nothing but meet `steps` times through
kernels/grid_sync.grid_barrier, for grids from 1 program to one per SM, and
reports GPU time per meeting (CUDA events, median of several launches after a
warm-up). NOTES.md predicts ~1-2 us per meeting on an H100; the persistent
step can be no faster than this. GPU only: under the interpreter a grid of more
than one program cannot meet.
"""
import argparse
import csv
import datetime
import statistics
from importlib import metadata
from pathlib import Path

import torch
import triton
import triton.language as tl

from lstm_triton.kernels.grid_sync import (barrier_failed, grid_barrier, grid_not_failed,
                                           new_sync_state)
from lstm_triton.kernels.persistent_config import SPIN_LIMIT

from .rows import REPORTS, slug


@triton.jit
def _meet_kernel(sync_ptr, steps, spin_limit):
    n_prog = tl.num_programs(0).to(tl.int64)
    ok = grid_not_failed(sync_ptr)
    s = 0
    while (s < steps) & ok:
        ok = grid_barrier(sync_ptr, (s + 1) * n_prog, spin_limit)
        s += 1


def time_meetings(grid: int, steps: int, repeats: int = 7) -> tuple:
    """(median us per meeting over the launches that met, NaN if none did; failed
    launches) for `grid` programs meeting `steps` times."""
    per_meeting, failures = [], 0
    for k in range(repeats + 1):  # the first launch compiles and warms up
        sync = new_sync_state("cuda")
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        _meet_kernel[(grid,)](sync, steps, SPIN_LIMIT, num_warps=4)
        end.record()
        end.synchronize()
        failed = barrier_failed(sync)
        failures += failed
        if k and not failed:  # a failed launch stops early: its time is not a meeting's
            per_meeting.append(start.elapsed_time(end) * 1e3 / steps)
    return (statistics.median(per_meeting) if per_meeting else float("nan")), failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (a grid barrier cannot meet under the interpreter)")
    props = torch.cuda.get_device_properties(0)
    n_sm = props.multi_processor_count
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    # its own folder: reports/raw/*.csv are the lab's CSVs, which the report index reads
    out = Path(args.out or REPORTS / "raw" / "barrier" / f"{date}-{slug(props.name)}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for grid in sorted({1, 8, 16, 32, 48, 64, 96, n_sm}):
        if grid > n_sm:
            continue
        us, failed = time_meetings(grid, args.steps)
        rows.append(dict(date=date, device=props.name, torch=torch.__version__,
                         triton=metadata.version("triton"), grid=grid, steps=args.steps,
                         us_per_meeting=f"{us:.4g}", failed_launches=failed))
        print(f"grid {grid:4d}: {us:7.3f} us per meeting  (failed launches: {failed})",
              flush=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
