"""The options beyond nn.LSTM (bench/variants_loop.py, issue 18) as part of the lab.

Runs with `pytest bench/ --benchmark-only --sweep variants` on a GPU (B=16, H=768, T=1024,
bf16: each option on stepwise and persistent against the per-step loop, the RL loop of
cuDNN calls and WeightDrop), and on every CPU run as a smoke rehearsal (interpreter, tiny,
labelled smoke: not a timing). The benchmark fixture times the whole run once; the
figures are the CSV's, whose rows must each match the loop's output before they count.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.host import REPO
from bench.rows import slug


def test_options_against_what_users_run(lab, benchmark):
    if not (lab.smoke or "variants" in lab.sweeps):
        pytest.skip("the options benchmark runs on CPU runs and with --sweep variants")
    smoke = "-smoke" if lab.smoke else ""
    out = Path(lab.reports) / "raw" / "variants" / f"{lab.date}-{slug(lab.device_name)}{smoke}.csv"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                                    os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "bench.variants_loop", "--out", str(out)] + (
        ["--smoke", "--options", "zoneout,resets,weight_drop", "--cells", "lstm"]
        if lab.smoke else [])

    def run():
        return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=1800)

    done = benchmark.pedantic(run, rounds=1, iterations=1)
    assert done.returncode == 0, done.stderr[-3000:]
    table = list(csv.DictReader(open(out)))
    assert table and all(float(r["ms"]) > 0 for r in table)
    assert all(float(r["max_abs_diff_vs_loop"]) < 1e-2 for r in table), "an implementation differs"
    print(done.stdout)
