"""Mutation audit: does the test suite catch a one-line bug?

Each mutant in scripts/mutants.json is one textual change (`old` -> `new`, unique in its
file) that a bug could make: a dropped term of a gradient, an off-by-one mask, a check
removed. The audit applies one mutant at a time to a private copy of the repository, runs
the test files listed for it (`pytest -x`), and records which test failed. A mutant the
tests do not catch is a gap, unless it is marked `equivalent` with the reason it cannot
change a result (for example, a store already masked to the rows it changes).

    python scripts/mutation_audit.py            # every mutant (~25 min on 2 CPU cores)
    python scripts/mutation_audit.py pl1 sw2    # some

Exits 1 when a mutant that is not marked equivalent survives, or one marked equivalent is
caught (then the mark is wrong). Not part of the test suite: it runs the suite ~65 times.
The main checkout is never written: the copy lives in a temporary folder, and
`lstm_triton/kernels` there is a link to the copy's `kernels/`, so the editable install's
mapping (which points at the main checkout) is not used.
"""
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUTANTS = REPO / "scripts" / "mutants.json"


def private_copy() -> Path:
    root = Path(tempfile.mkdtemp(prefix="lstm_triton_mutants_")) / "repo"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    (root / "lstm_triton" / "kernels").symlink_to("../kernels")
    return root


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0].split(" ", 1)[1]
    return "the test process crashed (an out-of-bounds access under the interpreter?)"


def run(root: Path, mutant: dict) -> dict:
    path = root / mutant["file"]
    source = path.read_text()
    if source.count(mutant["old"]) != 1:
        return dict(mutant, result="STALE", by=f"`old` occurs {source.count(mutant['old'])}x")
    path.write_text(source.replace(mutant["old"], mutant["new"]))
    start = time.time()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", *mutant["tests"], "-x", "-q",
                               "-p", "no:cacheprovider", "-m", "not slow"],
                              cwd=root, capture_output=True, text=True, timeout=900)
    finally:
        path.write_text(source)
    caught = done.returncode != 0
    return dict(mutant, result="caught" if caught else "SURVIVED",
                by=first_failure(done.stdout + done.stderr) if caught else "",
                seconds=round(time.time() - start, 1))


def main(ids):
    mutants = json.loads(MUTANTS.read_text())
    if ids:
        mutants = [m for m in mutants if m["id"] in ids]
    root = private_copy()
    check = subprocess.run([sys.executable, "-c", "import lstm_triton.kernels as k; "
                            "print(k.__file__)"], cwd=root, capture_output=True, text=True)
    assert check.stdout.startswith(str(root)), f"imports do not resolve into the copy: {check}"
    bad = 0
    for mutant in mutants:
        row = run(root, mutant)
        equivalent = "equivalent" in mutant
        wrong = row["result"] == "STALE" or (row["result"] == "caught") == equivalent
        bad += wrong
        note = f"equivalent: {mutant['equivalent']}" if equivalent else row["by"]
        print(f"{'!!' if wrong else '  '} {row['id']:7} {row['result']:8} "
              f"{row.get('seconds', 0):6.1f}s  {mutant['file']}: {mutant['desc']}  [{note}]",
              flush=True)
    shutil.rmtree(root.parent)
    print(f"{len(mutants)} mutants, {bad} not as expected")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(set(sys.argv[1:])))
