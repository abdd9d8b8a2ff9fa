"""Tables and plots from a raw CSV of the lab; nothing in reports/ is edited by hand.

    python -m bench.report reports/raw/<date>-<device>.csv [--reports DIR]

Writes, beside the CSV's folder (reports/ for reports/raw/X.csv):
  X.md        headline, correctness, per-sweep throughput and speedup tables, LSTM vs GRU
  X/*.png     tokens/s and speedup against seq_len, batch and hidden size
and rewrites reports/README.md, the index of the latest run per device.
A smoke CSV (column smoke=True) gives files named *-smoke and headed
"SMOKE RUN — interpreter on CPU, not performance".
Called by bench/conftest.py at the end of every lab session.
"""
import argparse
import math
import re
from pathlib import Path

import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .rows import REPORTS  # noqa: E402
from .sweeps import KEY_COLUMNS, SWEEPS  # noqa: E402

SMOKE_BANNER = "SMOKE RUN — interpreter on CPU, not performance"
BASELINES = ("cudnn", "torch-cpu")
IMPL_ORDER = ("triton-stepwise", "triton-persistent", "triton-auto", "cudnn", "torch-cpu")
PLOT_AXES = ("seq_len", "batch", "hidden_size")
# Columns that move with a sweep's axis (derived axes, and I = H in the hidden sweeps).
COVARYING = {"stack": ("num_layers", "bidirectional"),
             "shape": ("batch", "seq_len", "input_size", "hidden_size"),
             "hidden_size": ("input_size",)}


# ----------------------------------------------------------------------- loading
def load(csv_path) -> pd.DataFrame:
    df = pd.read_csv(csv_path)
    for col in ("smoke", "bidirectional"):
        df[col] = df[col].astype(str).str.lower().eq("true")
    df["note"] = df["note"].fillna("").astype(str)
    df["stack"] = df.num_layers.astype(str) + "x" + df.bidirectional.map({True: "bi",
                                                                         False: "uni"})
    df["shape"] = ("B" + df.batch.astype(str) + " T" + df.seq_len.astype(str)
                   + " I" + df.input_size.astype(str) + " H" + df.hidden_size.astype(str))
    return df


def baseline_of(df) -> str:
    present = [b for b in BASELINES if (df.impl == b).any()]
    return present[0] if present else BASELINES[0]


def with_speedup(df) -> pd.DataFrame:
    """Adds `speedup` = baseline median_ms / impl median_ms on the same case and pass."""
    base = df[(df.impl == baseline_of(df)) & (df.status == "ok")]
    keys = list(KEY_COLUMNS) + ["pass"]
    base = base[keys + ["median_ms"]].rename(columns={"median_ms": "baseline_ms"})
    out = df.merge(base, on=keys, how="left")
    out["speedup"] = out.baseline_ms / out.median_ms
    return out


def in_sweep(df, sweep) -> pd.DataFrame:
    keys = {c.key() for c in sweep.cases}
    mask = [tuple(r) in keys for r in df[list(KEY_COLUMNS)].itertuples(index=False)]
    return df[mask]


# -------------------------------------------------------------------- formatting
def si(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def fmt_x(value) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.2f}x"


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def ordered_impls(impls):
    return sorted(set(impls), key=lambda i: IMPL_ORDER.index(i) if i in IMPL_ORDER else 99)


def meta(df) -> dict:
    first = df.iloc[0]
    commit = first.get("commit", "")
    return dict(device=first.device, torch=first.torch, triton=first.triton,
                commit="" if pd.isna(commit) else str(commit),
                date=", ".join(sorted(df.date.astype(str).unique())),
                timer=first.timer, smoke=bool(df.smoke.any()))


def heading(m, dtypes, extra="") -> str:
    """The line over every table: device, dtype, versions, date (and SMOKE)."""
    smoke = f"**{SMOKE_BANNER}** · " if m["smoke"] else ""
    return (f"{smoke}*{m['device']} · {'/'.join(dtypes)} · torch {m['torch']} · "
            f"triton {m['triton']} · {m['date']}{extra}*")


def cell_text(row, value_fn) -> str:
    if row.status != "ok":
        return row.status  # skipped / wrong / error: never a number
    return value_fn(row)


# ------------------------------------------------------------------------ tables
def headline(df, m) -> str:
    """Geometric-mean speedup of each Triton impl against the baseline, all cases."""
    base = baseline_of(df)
    rows = []
    ok = df[(df.status == "ok") & df.speedup.notna() & (df.impl != base)]
    for (cell, dtype, pass_, impl), g in ok.groupby(["cell", "dtype", "pass", "impl"]):
        s = g.speedup
        gm = math.exp(s.map(math.log).mean())
        rows.append((cell, dtype, pass_, impl, fmt_x(gm), f"{fmt_x(s.min())} – {fmt_x(s.max())}",
                     len(g)))
    if not rows:
        return "No Triton implementation was timed against the baseline in this run.\n"
    rows.sort(key=lambda r: (r[0], r[1], r[2], IMPL_ORDER.index(r[3])))
    return (heading(m, sorted(ok.dtype.unique())) + "\n\n"
            + md_table(["cell", "dtype", "pass", "impl", f"speedup vs {base} (geomean)",
                        "range", "cases"], rows) + "\n")


def correctness(df, m) -> str:
    rows = []
    for impl, g in df.groupby("impl"):
        checked = g[g.max_rel_err.notna()]
        counts = g.status.value_counts()
        rows.append((impl, len(g), counts.get("ok", 0), counts.get("wrong", 0),
                     counts.get("skipped", 0), counts.get("error", 0),
                     f"{checked.max_rel_err.max():.2e}" if len(checked) else "—"))
    rows.sort(key=lambda r: IMPL_ORDER.index(r[0]) if r[0] in IMPL_ORDER else 99)
    text = (heading(m, sorted(df.dtype.unique())) + "\n\n"
            + md_table(["impl", "rows", "ok", "wrong", "skipped", "error",
                        "max max_rel_err"], rows) + "\n")
    bad = df[df.status != "ok"]
    if len(bad):
        reasons = bad.groupby(["impl", "status", "note"]).size().reset_index(name="rows")
        text += "\n" + md_table(["impl", "status", "reason", "rows"],
                                [(r.impl, r.status, r.note.replace("|", "/")[:160], r.rows)
                                 for r in reasons.itertuples()]) + "\n"
    return text


def sweep_tables(df, sweep, m) -> str:
    axis = sweep.axis
    fixed = [c for c in KEY_COLUMNS if c != axis and c not in COVARYING.get(axis, ())]
    base = baseline_of(df)
    parts = [f"## {sweep.name}\n\n{sweep.question}\n"]
    for fixed_values, g in df.groupby(fixed, sort=False):
        label = ", ".join(f"{k}={v}" for k, v in zip(fixed, fixed_values))
        for pass_, gp in g.groupby("pass", sort=False):
            impls = ordered_impls(gp.impl)
            xs = sorted(gp[axis].unique(), key=_axis_sort)
            by = {(getattr(r, axis), r.impl): r for r in gp.itertuples()}
            head = heading(m, sorted(gp.dtype.unique()), f" · {label} · {pass_}")
            thr = [[x] + [cell_text(by[(x, i)], lambda r: f"{si(r.tokens_per_s)} "
                                    f"({r.median_ms:.3g} ms)") if (x, i) in by else "—"
                          for i in impls] for x in xs]
            parts.append(f"{head}\n\nThroughput, tokens/s (median ms):\n\n"
                         + md_table([axis] + impls, thr) + "\n")
            triton = [i for i in impls if i != base]
            spd = [[x] + [cell_text(by[(x, i)], lambda r: fmt_x(r.speedup))
                          if (x, i) in by else "—" for i in triton] for x in xs]
            parts.append(f"Speedup vs {base} (its median ms / the impl's):\n\n"
                         + md_table([axis] + triton, spd) + "\n")
            if gp.peak_mem_mb.notna().any():
                mem = [[x] + [cell_text(by[(x, i)], lambda r: f"{r.peak_mem_mb:.4g}")
                              if (x, i) in by else "—" for i in impls] for x in xs]
                parts.append("Peak memory per call, MB (above weights and inputs):\n\n"
                             + md_table([axis] + impls, mem) + "\n")
    return "\n".join(parts)


def _axis_sort(x):
    if isinstance(x, str):
        nums = [int(n) for n in re.findall(r"\d+", x)]
        order = {"fp32": 0, "bf16": 1, "fp16": 2}
        return (order.get(x, 9), nums, x)
    return (0, [x], "")


def lstm_vs_gru(df, m) -> str:
    """Same shape, dtype, pass and impl: GRU tokens/s against LSTM tokens/s."""
    keys = [c for c in KEY_COLUMNS if c != "cell"] + ["pass", "impl"]
    ok = df[df.status == "ok"]
    lstm = ok[ok.cell == "lstm"][keys + ["tokens_per_s"]]
    gru = ok[ok.cell == "gru"][keys + ["tokens_per_s"]]
    both = lstm.merge(gru, on=keys, suffixes=("_lstm", "_gru"))
    if both.empty:
        return "No shape was measured for both cells in this run.\n"
    parts = []
    for dtype, g in both.groupby("dtype"):
        g = g.sort_values(["batch", "seq_len", "hidden_size", "num_layers", "pass"])
        rows = [(f"B{r.batch} T{r.seq_len} I{r.input_size} H{r.hidden_size} "
                 f"L{r.num_layers}{'bi' if r.bidirectional else ''}", r.pass_, r.impl,
                 si(r.tokens_per_s_lstm), si(r.tokens_per_s_gru),
                 fmt_x(r.tokens_per_s_gru / r.tokens_per_s_lstm))
                for r in g.rename(columns={"pass": "pass_"}).itertuples(index=False)]
        parts.append(heading(m, [dtype]) + "\n\n"
                     + md_table(["shape", "pass", "impl", "LSTM tokens/s", "GRU tokens/s",
                                 "GRU / LSTM"], rows) + "\n")
    return "\n".join(parts)


# ------------------------------------------------------------------------- plots
SHORT = {"batch": "B{}", "seq_len": "T{}", "input_size": "I{}", "hidden_size": "H{}",
         "num_layers": "L{}"}


def _short(column, value) -> str:
    if column == "bidirectional":
        return "bi" if value else "uni"
    return SHORT.get(column, "{}").format(value)


def plot_sweep(df, sweep, m, out_dir: Path, stem: str) -> list:
    """tokens/s and speedup against the sweep's axis, one panel per pass."""
    if sweep.axis not in PLOT_AXES:
        return []
    ok = df[df.status == "ok"]
    if ok.empty:
        return []
    base = baseline_of(df)
    fixed = [c for c in KEY_COLUMNS if c != sweep.axis and c not in COVARYING.get(sweep.axis, ())]
    varying = [c for c in fixed if ok[c].nunique() > 1]  # named in the legend
    written = []
    for metric, label in (("tokens_per_s", "tokens/s"), ("speedup", f"speedup vs {base}")):
        passes = [p for p in ("fwd", "fwdbwd") if (ok["pass"] == p).any()]
        fig, axes = plt.subplots(1, len(passes), figsize=(5.5 * len(passes), 4), squeeze=False)
        for ax, pass_ in zip(axes[0], passes):
            gp = ok[ok["pass"] == pass_]
            ax.set_prop_cycle(color=plt.cm.tab20.colors if gp.groupby(varying + ["impl"]).ngroups
                              > 10 else plt.cm.tab10.colors)
            for key, g in gp.groupby(varying + ["impl"]):
                impl = key[-1]
                if metric == "speedup" and impl == base:
                    continue
                g = g.sort_values(sweep.axis)
                name = " ".join([impl] + [_short(c, v) for c, v in zip(varying, key)])
                ax.plot(g[sweep.axis], g[metric], marker="o", label=name)
            ax.set_xscale("log", base=2)
            if metric == "tokens_per_s":
                ax.set_yscale("log")
            else:
                ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.set_xlabel(sweep.axis)
            ax.set_ylabel(label)
            ax.set_title(pass_)
            ax.grid(True, which="both", alpha=0.3)
        legend = {}
        for ax in axes[0]:
            legend.update(zip(*reversed(ax.get_legend_handles_labels())))
        ncol = min(3, max(1, len(legend)))
        fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=ncol, fontsize=8)
        dtypes = "/".join(sorted(ok.dtype.unique()))
        title = (f"{sweep.name}: {label} — {m['device']} · {dtypes} · torch {m['torch']} · "
                 f"triton {m['triton']} · {m['date']}")
        if m["smoke"]:
            title = f"{SMOKE_BANNER}\n{title}"
        fig.suptitle(title, fontsize=9, color="red" if m["smoke"] else "black")
        fig.tight_layout(rect=(0, 0.06 * math.ceil(len(legend) / ncol), 1, 1))
        path = out_dir / f"{sweep.name}-{metric.replace('_', '-')}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------------- the file
def output_paths(csv_path: Path):
    """(markdown, plot folder): beside the CSV's folder, named after it."""
    csv_path = Path(csv_path)
    out = csv_path.parent.parent if csv_path.parent.name == "raw" else csv_path.parent
    return out / f"{csv_path.stem}.md", out / csv_path.stem


def build(csv_path, reports=None) -> list:
    """Write the markdown and plots for one raw CSV, then the reports/ index."""
    csv_path = Path(csv_path)
    df = with_speedup(load(csv_path))
    m = meta(df)
    md_path, plot_dir = output_paths(csv_path)
    written = []
    sections = []
    for sweep in SWEEPS.values():
        rows = in_sweep(df, sweep)
        if rows.empty:
            continue
        sections.append(sweep_tables(rows, sweep, m))
        for png in plot_sweep(rows, sweep, m, plot_dir, csv_path.stem):
            written.append(png)
            sections.append(f"![{sweep.name} {png.stem}]({plot_dir.name}/{png.name})\n")
    title = f"# {SMOKE_BANNER}\n\n" if m["smoke"] else ""
    title += f"# Benchmark lab: {m['device']}, {m['date']}\n\n"
    if m["smoke"]:
        title += ("> These figures come from Triton's CPU interpreter on tiny shapes. They show "
                  "that the lab runs end to end; they say nothing about speed.\n\n")
    body = (
        title
        + f"Generated by `python -m bench.report {_rel(csv_path)}`; do not edit by hand. "
        f"torch {m['torch']}, triton {m['triton']}, lstm_triton commit {m['commit'] or '?'}, "
        f"timer: {m['timer']} "
        "(median of the timed rounds), TF32 off. `tokens/s = batch * seq_len / median s`; "
        "TFLOP/s in the raw CSV use the matmul count in `bench/sweeps.py`. "
        "Correctness: every row was checked against torch's module in float64 on the same "
        "rounded weights and inputs before timing; a `wrong` row is never timed.\n\n"
        + "## Headline\n\n" + headline(df, m)
        + "\n## Correctness\n\n" + correctness(df, m)
        + "\n" + "\n".join(sections)
        + "\n## LSTM vs GRU\n\n" + lstm_vs_gru(df, m)
    )
    md_path.write_text(body)
    written.insert(0, md_path)
    reports = Path(reports) if reports else REPORTS
    if _is_under(csv_path, reports):
        written.append(write_index(reports))
    return written


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPORTS.parent))
    except ValueError:
        return str(path)


def _is_under(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------ index
DATE_PREFIX = re.compile(r"^(\d{4}-\d{2}-\d{2})-(.+)$")


def latest_runs(raw_dir: Path) -> dict:
    """{device slug: latest CSV} among raw_dir/<date>-<device>.csv."""
    latest = {}
    for path in sorted(raw_dir.glob("*.csv")):
        match = DATE_PREFIX.match(path.stem)
        if match:
            date, device = match.groups()
            if device not in latest or date >= DATE_PREFIX.match(latest[device].stem)[1]:
                latest[device] = path
    return latest


def write_index(reports: Path) -> Path:
    reports = Path(reports)
    lines = ["# Benchmark reports", "",
             "Generated by `bench/report.py` (the lab runs it at the end of "
             "`pytest bench/ --benchmark-only`); do not edit by hand. How to run and read the "
             "lab: [bench/README.md](../bench/README.md). Engineering notes and predictions: "
             "[NOTES.md](NOTES.md).", "", "## Latest GPU run per device", ""]
    gpu = latest_runs(reports / "raw")
    if not gpu:
        lines += ["No GPU run has been recorded yet: the GPU sweep remains to be run "
                  "(`pytest bench/ --benchmark-only` on a CUDA machine).", ""]
    for device, path in sorted(gpu.items()):
        df = with_speedup(load(path))
        m = meta(df)
        md, _ = output_paths(path)
        lines += [f"### {m['device']} — {m['date']}", "",
                  f"[tables and plots]({md.relative_to(reports)}) · "
                  f"[raw CSV]({path.relative_to(reports)}) · torch {m['torch']} · "
                  f"triton {m['triton']}", "", headline(df, m)]
    lines += ["## Smoke runs (not performance)", "",
              f"{SMOKE_BANNER}: these only show that the lab runs end to end.", ""]
    smoke = latest_runs(reports / "smoke" / "raw")
    rows = []
    for device, path in sorted(smoke.items()):
        m = meta(load(path))
        md, _ = output_paths(path)
        rows.append((f"{m['device']} (SMOKE)", m["date"], m["torch"], m["triton"],
                     f"[tables]({md.relative_to(reports)})",
                     f"[raw]({path.relative_to(reports)})"))
    lines.append(md_table(["device", "date", "torch", "triton", "report", "CSV"], rows)
                 if rows else "None yet.")
    index = reports / "README.md"
    index.write_text("\n".join(lines) + "\n")
    return index


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", nargs="+", type=Path, help="raw CSV(s) written by the lab")
    parser.add_argument("--reports", type=Path, default=None,
                        help="reports folder whose README.md index to rewrite "
                             "(default: the repository's reports/)")
    args = parser.parse_args(argv)
    for csv_path in args.csv:
        for path in build(csv_path, reports=args.reports):
            print(path)


if __name__ == "__main__":
    main()
