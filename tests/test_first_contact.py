"""The first-contact command (`bash scripts/gpu_run.sh first`, bench/first_contact.py),
rehearsed on the CPU: the same phases in the same order through the interpreter at tiny
shapes, labelled SMOKE. What it must guarantee on the GPU, checked here: every row is on
disk the moment it is measured (a SIGKILL loses none that was finished, and leaves no half
row), and it leaves only its few flat files in $OUT."""
import csv
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from bench import first_contact, rows

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="the CPU rehearsal (on a GPU the command runs for real)")


def start(out: Path) -> subprocess.Popen:
    """The command exactly as a device machine runs it, with $OUT set, in its own session
    so the test can SIGKILL all of it."""
    # not the test runner's identity either: a pytest-xdist worker's PYTEST_XDIST_* would
    # make the lab's own pytest (pytest-benchmark) think it runs under xdist and measure nothing
    env = {k: v for k, v in os.environ.items()
           if k != "TRITON_INTERPRET" and not k.startswith("PYTEST_")}
    env.update(OUT=str(out), FIRST_SECONDS="380")
    return subprocess.Popen(["bash", "scripts/gpu_run.sh", "first"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def read_csv(path: Path) -> list:
    """Rows of a streamed CSV, each checked whole: every line ends in a newline and has
    exactly the header's number of fields."""
    text = path.read_text()
    assert text.endswith("\n"), f"{path.name}: its last row is cut"
    table = list(csv.reader(text.splitlines()))
    header, body = table[0], table[1:]
    for line in body:
        assert len(line) == len(header), f"{path.name}: a row is not whole: {line}"
    return [dict(zip(header, line)) for line in body]


def streamed_in_log(out: Path) -> list:
    """The rows the lab said it streamed: (impl, pass, shape, status), in order."""
    log = (out / first_contact.LOG).read_text()
    return re.findall(r"lstm_triton lab: row streamed (\S+) (\S+) (\S+) (\S+)", log)


def key(row: dict) -> tuple:
    shape = f"{row['cell']}-{row['dtype']}-B{row['batch']}-T{row['seq_len']}-H{row['hidden_size']}"
    return row["impl"], row["pass"], shape, row["status"]


def test_a_sigkilled_run_keeps_every_row_finished_before_the_kill(tmp_path):
    """Killed (SIGKILL, the whole process group) as soon as the race has streamed a few
    rows: every row the log says was streamed is in the CSV, whole, and the phases after
    the kill never ran."""
    out = tmp_path / "out"
    child = start(out)
    lab = out / first_contact.LAB
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if lab.exists() and lab.read_text().count("\n") >= 4:  # header + 3 rows
                break
            time.sleep(0.05)
        assert child.poll() is None, "the rehearsal ended before it could be killed"
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    time.sleep(0.5)  # children die with their parent (PR_SET_PDEATHSIG); let them go
    streamed = read_csv(lab)
    logged = streamed_in_log(out)
    assert len(streamed) >= 3 and logged
    assert set(logged) <= {key(r) for r in streamed}
    assert all(r["smoke"] == "True" and r["phase"] == "race" for r in streamed)
    phases = [r["phase"] for r in read_csv(out / first_contact.PHASES)]
    assert phases == ["env", "compile"]  # the race was cut; nothing after it started
    assert child.returncode == -signal.SIGKILL


def test_the_rehearsal_runs_every_phase_in_order_and_leaves_its_files_flat(tmp_path):
    out = tmp_path / "out"
    child = start(out)
    output, _ = child.communicate(timeout=360)
    assert child.returncode == 0, output[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(first_contact.FILES) and len(names) <= 8  # the device tool's limit
    assert all(p.is_file() and re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in out.iterdir())
    phases = read_csv(out / first_contact.PHASES)
    assert [p["phase"] for p in phases] == list(first_contact.PHASE_ORDER)
    assert all(p["outcome"] == "ok" and p["smoke"] == "True" for p in phases), phases
    lab = read_csv(out / first_contact.LAB)
    assert set(lab[0]) == set(rows.STREAM_COLUMNS)
    assert [p for p in dict.fromkeys(r["phase"] for r in lab)] == ["race", "decomp", "sweep"]
    assert all(r["smoke"] == "True" and r["status"] == "ok" for r in lab), lab
    race = [r for r in lab if r["phase"] == "race"]
    baseline = [r for r in race if r["impl"] == "torch-cpu"]
    assert {(r["cell"], r["dtype"], r["pass"]) for r in baseline} == {
        (c, d, p) for c in ("lstm", "gru") for d in ("fp16", "bf16") for p in ("fwd", "fwdbwd")}
    assert all(r["kernels"].startswith(f"aten::{r['cell']}") for r in baseline)
    assert any(r["impl"] == "triton-stepwise" for r in race)
    decomp = [r for r in lab if r["phase"] == "decomp"]
    assert {r["pass"] for r in decomp} == {"fwd"}
    # each of issue 16's options against the default, on its own dtype's sweep
    assert {(r["variant"], r["dtype"]) for r in decomp} == {
        ("default", "bf16"), ("chain16", "bf16"), ("tags", "bf16"), ("tags-load", "bf16"),
        ("narrow", "bf16"), ("narrow+tags", "bf16"), ("default", "fp32"), ("tf32x3", "fp32")}
    assert {(r["key"]) for r in read_csv(out / first_contact.ENV)} >= {"torch", "triton",
                                                                        "device"}
    compiled = read_csv(out / first_contact.COMPILE)
    assert len(compiled) == len(first_contact.variants(smoke=True))
    assert all(r["status"] == "ok" and float(r["first_train_s"]) > 0 for r in compiled)
    barrier = read_csv(out / first_contact.BARRIER)
    assert {(r["mode"], r["grid"]) for r in barrier} == {("cooperative", "1"), ("plain", "1"),
                                                         ("tags", "1"), ("tags-load", "1")}
    assert [r["outcome"] for r in read_csv(out / first_contact.TESTS)] == ["skipped"]
    host = read_csv(out / first_contact.HOST)  # issue 17: the no-op launcher on the CPU
    assert {(r["kind"], r["cell"], r["pass"]) for r in host} == {
        ("cell", c, p) for c in ("lstm", "gru") for p in ("fwd", "fwdbwd")}
    assert all(float(r["ours_us"]) > 0 and float(r["torch_us"]) > 0 for r in host)
