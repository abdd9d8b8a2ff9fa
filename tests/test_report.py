"""The lab's report writer (bench/report.py): tables, plots and the index from a raw CSV.

The CSV here is FIXTURE DATA: a handful of rows with made-up numbers, chosen so
the expected speedups are easy to check by hand (cudnn 2 ms, stepwise 4 ms ->
0.50x). Nothing in it is a measurement.
"""

import pytest

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from bench import report, rows  # noqa: E402  (pyproject puts the repository root on the path)

FIXTURE_DEVICE = "FIXTURE-GPU (made-up numbers)"


def fixture_row(cell="lstm", impl="cudnn", pass_="fwd", seq_len=16, batch=8, hidden=512,
                median_ms=2.0, status="ok", smoke=False, **extra):
    row = dict(date="2026-01-02", device=FIXTURE_DEVICE, torch="9.9.9", triton="8.8.8",
               commit="fixture", smoke=smoke, sweep="fixture", cell=cell, impl=impl,
               backend=impl.removeprefix("triton-") if "triton" in impl else "",
               dtype="fp16", batch=batch, seq_len=seq_len, input_size=hidden,
               hidden_size=hidden, num_layers=1, bidirectional=False, status=status,
               correct=status != "wrong", max_rel_err=1e-3 if status != "wrong" else 0.9,
               tolerance=3e-2, timer="cuda-events", tf32=False, note="FIXTURE DATA")
    row["pass"] = pass_
    if status == "ok":
        row.update(median_ms=median_ms, rounds=10, peak_mem_mb=12.5,
                   tokens_per_s=batch * seq_len / (median_ms / 1e3), tflops=1.0)
    row.update(extra)
    return row


def fixture_rows(smoke=False):
    out = []
    for seq_len in (16, 64):  # two points of the "seq_len" sweep (LSTM fp16, B=8, H=512)
        for pass_ in ("fwd", "fwdbwd"):
            out += [
                fixture_row(impl="cudnn", pass_=pass_, seq_len=seq_len, median_ms=2.0,
                            smoke=smoke),
                fixture_row(impl="triton-stepwise", pass_=pass_, seq_len=seq_len,
                            median_ms=4.0, smoke=smoke),
                fixture_row(impl="triton-persistent", pass_=pass_, seq_len=seq_len,
                            status="wrong", smoke=smoke,
                            note="FIXTURE DATA: max_rel_err above tolerance: not timed"),
            ]
    for cell, ms in (("lstm", 2.0), ("gru", 1.0)):  # one shape of the "cell" sweep
        out.append(fixture_row(cell=cell, impl="cudnn", seq_len=256, median_ms=ms, smoke=smoke))
    return out


@pytest.fixture
def gpu_csv(tmp_path):
    return rows.write(fixture_rows(), rows.raw_path("2026-01-02", FIXTURE_DEVICE, False,
                                                    tmp_path))


def test_raw_path_names_device_and_smoke(tmp_path):
    assert rows.raw_path("2026-01-02", "NVIDIA H100 80GB HBM3", False, tmp_path) == (
        tmp_path / "raw" / "2026-01-02-nvidia-h100-80gb-hbm3.csv")
    assert rows.raw_path("2026-01-02", "cpu-x86_64", True, tmp_path) == (
        tmp_path / "smoke" / "raw" / "2026-01-02-cpu-x86-64-smoke.csv")


def test_write_merges_a_remeasured_row(gpu_csv):
    again = fixture_row(impl="triton-stepwise", seq_len=16, median_ms=1.0)
    rows.write([again], gpu_csv)
    df = report.load(gpu_csv)
    assert len(df) == len(fixture_rows())
    picked = df[(df.impl == "triton-stepwise") & (df.seq_len == 16) & (df["pass"] == "fwd")]
    assert picked.median_ms.tolist() == [1.0]


def test_tables_plots_and_index(gpu_csv, tmp_path):
    written = report.build(gpu_csv, reports=tmp_path)
    md = tmp_path / "2026-01-02-fixture-gpu-made-up-numbers.md"
    plots = tmp_path / "2026-01-02-fixture-gpu-made-up-numbers"
    assert md in written and (tmp_path / "README.md") in written
    text = md.read_text()
    # every table is headed by device, dtype, versions and date
    assert f"*{FIXTURE_DEVICE} · fp16 · torch 9.9.9 · triton 8.8.8 · 2026-01-02" in text
    assert "## seq_len" in text and "## cell" in text and "## LSTM vs GRU" in text
    assert "Speedup vs cudnn" in text
    # stepwise 4 ms against cudnn 2 ms on both points: 0.50x, in the tables and the headline
    assert "| lstm | fp16 | fwd | triton-stepwise | 0.50x | 0.50x – 0.50x | 2 |" in text
    assert "| 16 | 0.50x | wrong |" in text  # a wrong implementation gets no speed
    assert "4 ms)" in text and "64k (2 ms)" in text  # tokens/s = 8 * 16 / 2 ms
    # LSTM vs GRU: same shape, GRU twice as fast in the fixture
    assert "| B8 T256 I512 H512 L1 | fwd | cudnn | 1.02M | 2.05M | 2.00x |" in text
    assert "SMOKE" not in text
    for name in ("seq_len-tokens-per-s.png", "seq_len-speedup.png"):
        png = plots / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png in written
        assert f"({plots.name}/{name})" in text
    index = (tmp_path / "README.md").read_text()
    assert f"### {FIXTURE_DEVICE} — 2026-01-02" in index
    assert "(2026-01-02-fixture-gpu-made-up-numbers.md)" in index
    assert "(raw/2026-01-02-fixture-gpu-made-up-numbers.csv)" in index


def test_smoke_run_is_labelled_everywhere(tmp_path):
    csv = rows.write(fixture_rows(smoke=True),
                     rows.raw_path("2026-01-02", FIXTURE_DEVICE, True, tmp_path))
    written = report.build(csv, reports=tmp_path)
    md = tmp_path / "smoke" / "2026-01-02-fixture-gpu-made-up-numbers-smoke.md"
    assert md in written
    text = md.read_text()
    assert text.startswith(f"# {report.SMOKE_BANNER}")
    assert text.count(f"**{report.SMOKE_BANNER}**") >= 3  # over every table
    assert all("smoke" in str(p) for p in written if p.suffix == ".png")
    index = (tmp_path / "README.md").read_text()
    assert "No GPU run has been recorded yet" in index  # smoke rows are not a GPU run
    assert f"{FIXTURE_DEVICE} (SMOKE)" in index


def test_command_line(gpu_csv, tmp_path, capsys):
    report.main([str(gpu_csv), "--reports", str(tmp_path)])
    assert "2026-01-02-fixture-gpu-made-up-numbers.md" in capsys.readouterr().out


# ------------------------------------------------------------------ what the lab measures
def test_impl_option_selects_implementations_and_rejects_unknown_ones():
    import torch

    from bench import measure
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert measure.select_impls(None, cuda) == measure.impls_for(cuda)
    assert measure.select_impls(["cudnn,triton-persistent"], cuda) == ("triton-persistent",
                                                                       "cudnn")
    with pytest.raises(ValueError, match="torch-cpu"):
        measure.select_impls(["cudnn"], cpu)  # no cuDNN on a CPU run


def test_bar_sweeps_hold_every_case_issue_6_judges():
    from bench import sweeps
    for cell in ("lstm", "gru"):
        cases = set(sweeps.SWEEPS[f"bar-{cell}"].cases)
        bar = {(d, b, h) for d in ("bf16", "fp32") for b in (1, 16, 64) for h in (256, 512, 1024)}
        bar |= {("fp16", 16, 768), ("bf16", 256, 1024), ("fp16", 256, 1024)}
        for dtype, batch, hidden in bar:
            assert sweeps.Case(cell, dtype, batch, 1024, hidden, hidden) in cases


def test_a_row_that_is_not_ok_never_shows_a_number_even_with_a_time(tmp_path):
    """A `wrong` row is never timed by the lab; should one carry a time anyway (a stray or
    merged value), the report still shows its status, never a speed, and leaves it out of
    the headline's geometric means."""
    stray = [dict(r, median_ms=0.5, tokens_per_s=1e9) if r["status"] == "wrong" else r
             for r in fixture_rows()]
    csv = rows.write(stray, rows.raw_path("2026-01-02", FIXTURE_DEVICE, False, tmp_path))
    report.build(csv, reports=tmp_path)
    text = (tmp_path / "2026-01-02-fixture-gpu-made-up-numbers.md").read_text()
    assert "| 16 | 0.50x | wrong |" in text and "| 64 | 0.50x | wrong |" in text
    assert "4.00x" not in text  # cudnn 2 ms / the stray 0.5 ms: in no table, not the headline

