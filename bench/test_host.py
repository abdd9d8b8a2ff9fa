"""The host-overhead benchmark (bench/host.py) as part of the lab.

Runs with `pytest bench/ --benchmark-only` on every CPU run (beside the smoke sweep) and
with `--sweep host` anywhere (on a GPU: real launches). bench/host.py needs the real
Triton compiler, so it runs in a subprocess without TRITON_INTERPRET; its CSV and table
land in <reports>/host/. The benchmark fixture times the whole run once (pytest-benchmark
skips tests without it under --benchmark-only); the figures are the CSV's.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.host import REPO


def test_host_overhead(lab, benchmark):
    if not (lab.smoke or "host" in lab.sweeps):
        pytest.skip("the host-overhead benchmark runs on CPU runs and with --sweep host")
    out = Path(lab.reports) / "host"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "bench.host", "--device", lab.device.type, "--out",
               str(out)] + (["--quick"] if lab.smoke else [])

    def run():
        return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=1800)

    done = benchmark.pedantic(run, rounds=1, iterations=1)
    assert done.returncode == 0, done.stderr[-3000:]
    written = Path(done.stdout.strip().splitlines()[-1].split()[1])
    rows = list(csv.DictReader(open(written)))
    kinds = {(r["kind"], r["cell"], r["pass"]) for r in rows}
    assert {("cell", c, p) for c in ("lstm", "gru") for p in ("fwd", "fwdbwd")} <= kinds
    assert all(float(r["ours_us"]) > 0 and float(r["torch_us"]) > 0 for r in rows)
    # a stepwise step called on its own (T=1), and every persistent call against it
    assert {("stepwise", c, p, "1") for c in ("lstm", "gru") for p in ("fwd", "fwdbwd")} <= \
        {(r["kind"], r["cell"], r["pass"], r["seq_len"]) for r in rows}
    persistent = [r for r in rows if r["kind"] == "persistent"]
    assert persistent and all(float(r["persistent_over_one_step"]) > 0 for r in persistent)
    if lab.device.type == "cpu":  # the call net of its GEMMs' CPU math
        assert all(r["ours_net_of_gemm_us"] != "" for r in persistent)
    print(written.with_suffix(".md").read_text())
