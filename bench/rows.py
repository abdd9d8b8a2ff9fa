"""The raw CSV: its columns, where it lives, and how a run's rows merge into it.

One row per (case, pass, impl). Every table and plot in reports/ is made from
these files by bench/report.py; nothing there is edited by hand.

  reports/raw/<date>-<device>[-<tag>].csv      a GPU run (tag: --lab-tag)
  reports/smoke/raw/<date>-<device>-smoke.csv  a smoke run (CPU interpreter or
                                               --sweep smoke): not performance

Rows of the same date and device merge: a re-measured (case, pass, impl)
replaces its old row, others stay, so a sweep split over several commands
ends in one file.
"""
import csv
import io
import os
import re
from pathlib import Path

from .sweeps import KEY_COLUMNS

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "reports"

COLUMNS = (
    "date", "device",
    "capability",  # CUDA compute capability, e.g. 9.0 (empty on CPU): keys the auto table
    "torch", "triton",
    "cudnn",  # torch.backends.cudnn.version() (empty on CPU)
    "commit",  # `git describe --always --dirty` of the tree measured ("-dirty": uncommitted code)
    "smoke", "sweep",
    *KEY_COLUMNS[:1], "impl", "backend", KEY_COLUMNS[1], "pass", *KEY_COLUMNS[2:],
    "status",  # ok | wrong | skipped | error | fallback (ran, but not as the impl names)
    "correct",  # True: within tolerance of the float64 oracle; False: wrong; empty: unchecked
    "max_rel_err",  # vs the float64 oracle: output, final states, fwdbwd every gradient
    "baseline_rel_err",  # the baseline's own max_rel_err on the case
    "tolerance",  # for Triton rows tied to baseline_rel_err (bench/measure.py: tolerance)
    "median_ms", "q1_ms", "q3_ms", "rounds",
    "tokens_per_s",  # batch * seq_len / (median_ms / 1e3)
    "tflops",  # bench.sweeps.flops (matmul FLOPs; fwdbwd = 3 x fwd) / median time
    "peak_mem_mb",  # CUDA: peak allocated during one call above what was allocated before
    "timer",  # cuda-events (GPU time, synchronised) | cpu-wall (smoke)
    "tf32",  # whether TF32 was allowed for cuBLAS / cuDNN float32 (the lab turns it off)
    "kernels",  # baseline rows on CUDA: the GPU kernels one call ran (profiler), which say
    # which cuDNN algorithm it was (persistent or per-step); on the CPU the aten RNN ops
    "note",
)
# A streamed CSV (--lab-stream: scripts/gpu_run.sh first) adds which phase and plan variant
# of the command measured the row.
STREAM_COLUMNS = ("phase", "variant") + COLUMNS
ROW_KEY = KEY_COLUMNS + ("impl", "pass")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def raw_path(date: str, device: str, smoke: bool, reports: Path = REPORTS,
             tag: str = "") -> Path:
    """tag (--lab-tag): keeps one run's rows apart from another's of the same day and device
    (scripts/gpu_run.sh tags each phase, so `auto` never replaces the `bar` CSV's rows that
    calibrated it)."""
    name = f"{date}-{slug(device)}" + (f"-{slug(tag)}" if tag else "")
    if smoke:
        return reports / "smoke" / "raw" / f"{name}-smoke.csv"
    return reports / "raw" / f"{name}.csv"


def _key(row: dict) -> tuple:
    return tuple(str(row[c]) for c in ROW_KEY)


def write(rows, path: Path) -> Path:
    """Merge `rows` into the CSV at `path` (new rows win on the same key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = {}
    if path.exists():
        with path.open(newline="") as f:
            for old in csv.DictReader(f):
                merged[_key(old)] = {c: old.get(c, "") for c in COLUMNS}
    for row in rows:
        merged[_key(row)] = {c: _fmt(row.get(c)) for c in COLUMNS}
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(merged.values())
    return path


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def append(path: Path, row: dict, columns=STREAM_COLUMNS) -> None:
    """Append one row to the CSV at `path` the moment it is measured, and flush it to disk:
    a run killed at any moment (SIGKILL included) leaves every row finished before the kill.
    The header is written with the first row. Each row is one write(2) on a file opened
    O_APPEND, so a kill between rows never leaves half a line, and rows of processes
    appending to the same file never interleave within a line."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore",
                            lineterminator="\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size == 0:
            writer.writeheader()
        writer.writerow({c: _fmt(row.get(c)) for c in columns})
        os.write(fd, buf.getvalue().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
