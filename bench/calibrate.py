"""Write lstm_triton/dispatch_table.py (what backend="auto" runs on CUDA) from lab CSVs.

    python -m bench.calibrate reports/raw/<date>-<device>.csv [more.csv] [--out PATH]

For every measured case (cell, dtype, pass, batch, hidden, seq_len) of a single-layer,
unidirectional sweep row, it compares the median times of triton-stepwise,
triton-persistent and cudnn. The case's backend is the fastest Triton backend when it
beats cuDNN by more than MARGIN, else "torch" (cuDNN): auto switches away from cuDNN only
on a measured, clear win. Rows that are not `ok` (wrong, skipped, error) and smoke rows
never count; a case where cuDNN itself was not measured is left out.

The rows keep the GPU's compute capability (the CSV's `capability` column), so a table
measured on an H100 (9.0) is not applied to other GPU generations.
"""
import argparse
import csv
from pathlib import Path

from .rows import REPO

TABLE = REPO / "lstm_triton" / "dispatch_table.py"
MARGIN = 0.05  # a Triton backend must be >5% faster than cuDNN to be chosen
CANDIDATES = {"triton-stepwise": "stepwise", "triton-persistent": "persistent",
              "cudnn": "torch"}

HEADER = '''"""What backend="auto" runs on CUDA: the fastest backend measured per case.

Written by `python -m bench.calibrate {sources}`; regenerate rather than edit.
Each row: (cell, compute capability, dtype, pass, batch, hidden, seq_len, backend,
speedup of that backend over cuDNN, measured). dispatch.auto_cuda_backend looks up
the nearest row; with no row near enough it runs cuDNN ("torch").
A Triton backend is listed only where it was more than {margin:.0%} faster than cuDNN.
"""
SOURCE = {source!r}  # the raw CSV(s) the rows come from

'''


def _case_key(row):
    return (row["cell"], row["capability"], row["dtype"], row["pass"], int(row["batch"]),
            int(row["hidden_size"]), int(row["seq_len"]))


def measured_winners(paths):
    """{case key: (backend, speedup over cuDNN)} from the `ok` single-layer rows."""
    times = {}
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if (row.get("smoke") == "True" or row.get("status") != "ok"
                        or row["impl"] not in CANDIDATES or not row.get("capability")
                        or row["num_layers"] != "1" or row["bidirectional"] == "True"
                        or not row.get("median_ms")):
                    continue
                times.setdefault(_case_key(row), {})[CANDIDATES[row["impl"]]] = \
                    float(row["median_ms"])
    winners = {}
    for key, by_backend in sorted(times.items()):
        if "torch" not in by_backend:
            continue
        cudnn = by_backend["torch"]
        triton = {b: t for b, t in by_backend.items() if b != "torch"}
        best = min(triton, key=triton.get) if triton else None
        if best is not None and triton[best] < cudnn / (1 + MARGIN):
            winners[key] = (best, cudnn / triton[best])
        else:
            winners[key] = ("torch", 1.0)
    return winners


def render(winners, sources) -> str:
    names = [str(Path(s).resolve().relative_to(REPO)) if Path(s).resolve().is_relative_to(REPO)
             else str(s) for s in sources]
    lines = [HEADER.format(sources=" ".join(names), margin=MARGIN,
                           source=names[0] if len(names) == 1 else tuple(names)),
             "MEASURED = ("]
    for key, (backend, speedup) in winners.items():
        lines.append(f"    {key + (backend, round(speedup, 3))!r},")
    lines.append(")")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", help="raw lab CSV(s) from a GPU run")
    parser.add_argument("--out", default=str(TABLE), help=f"table to write (default {TABLE})")
    args = parser.parse_args(argv)
    winners = measured_winners(args.csv)
    if not winners:
        parser.error("no usable rows (ok, single-layer, with cuDNN measured and a capability)")
    Path(args.out).write_text(render(winners, args.csv))
    chosen = {}
    for backend, _ in winners.values():
        chosen[backend] = chosen.get(backend, 0) + 1
    print(f"wrote {args.out}: {len(winners)} cases, " +
          ", ".join(f"{b}: {n}" for b, n in sorted(chosen.items())))


if __name__ == "__main__":
    main()
