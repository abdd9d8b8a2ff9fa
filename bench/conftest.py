"""The lab's pytest plumbing: options, the interpreter on CPU, parametrisation,
result rows, and the CSV + report written at the end of the session.

    pytest bench/ --benchmark-only [--sweep NAME[,NAME]] [--device auto|cuda|cpu]

TRITON_INTERPRET must be set before triton decorates lstm_triton's kernels,
i.e. before lstm_triton is imported (as in tests/conftest.py). Nothing here
imports lstm_triton at module level; bench/test_bench.py does, at collection.
"""
import datetime
import os
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from bench import measure, rows, sweeps  # noqa: E402

SMOKE_BANNER = "SMOKE RUN — interpreter on CPU, not performance"


def pytest_addoption(parser):
    group = parser.getgroup("lstm_triton benchmark lab")
    group.addoption("--sweep", action="append", default=None, metavar="NAME",
                    help="named sweep(s) from bench/sweeps.py; repeatable or comma-separated; "
                         "'default' (the GPU default), 'all' (every GPU sweep), 'smoke'. "
                         "Default: 'default' on a GPU, 'smoke' on CPU.")
    group.addoption("--device", default="auto", choices=("auto", "cuda", "cpu"),
                    help="where to measure (auto: cuda if available). cpu is always a smoke run.")
    group.addoption("--impl", action="append", default=None, metavar="NAME",
                    help="implementation(s) to measure, repeatable or comma-separated: "
                         "triton-stepwise, triton-persistent, triton-auto, and the baseline "
                         "(cudnn on a GPU, torch-cpu on CPU). Default: all of them.")
    group.addoption("--lab-reports", default=None, metavar="DIR",
                    help="reports directory to write (default: <repo>/reports)")
    group.addoption("--lab-tag", default="", metavar="NAME",
                    help="suffix of the raw CSV's name, keeping this run's rows apart from "
                         "another's of the same day and device (scripts/gpu_run.sh: the phase)")
    group.addoption("--no-lab-report", action="store_true",
                    help="write the raw CSV only, not the markdown tables and plots")
    group.addoption("--lab-stream", default=None, metavar="CSV",
                    help="also append every row to this CSV the moment it is measured, flushed "
                         "to disk (scripts/gpu_run.sh first: a cut run keeps every row)")
    group.addoption("--lab-phase", default="", metavar="NAME",
                    help="the streamed rows' phase column (with --lab-stream)")
    group.addoption("--lab-variant", default="default", metavar="NAME",
                    help="the streamed rows' variant column: which plan variant ran")
    group.addoption("--lab-pass", default="both", choices=("fwd", "fwdbwd", "both"),
                    help="measure only the forward (no_grad) or only forward+backward")


@dataclass
class Lab:
    """One session's settings and the rows it measured."""
    device: torch.device
    device_name: str
    sweeps: tuple
    impls: tuple
    smoke: bool
    date: str
    versions: dict
    reports: Path
    tag: str = ""
    passes: tuple = ("fwd", "fwdbwd")
    stream: Path = None  # --lab-stream
    stream_fields: dict = field(default_factory=dict)  # phase, variant
    rows: list = field(default_factory=list)
    _setup: object = None

    def add(self, row: dict):
        """Keep a finished row for the session's CSV and, with --lab-stream, append it to the
        stream at once (then say so in the log: the rehearsal's test checks that every row the
        log names is in the stream)."""
        self.rows.append(row)
        if self.stream is not None:
            rows.append(self.stream, dict(row, **self.stream_fields))
            print(f"lstm_triton lab: row streamed {row['impl']} {row['pass']} "
                  f"{row['cell']}-{row['dtype']}-B{row['batch']}-T{row['seq_len']}-"
                  f"H{row['hidden_size']} {row.get('status')}", flush=True)

    def setup(self, case):
        """Weights and rotated inputs of `case`, shared by its implementations."""
        if self._setup is None or self._setup.case != case:
            self._setup = None  # free the previous case's tensors first
            self._setup = measure.make_setup(case, self.device)
        return self._setup

    def new_row(self, case, sweep_names, pass_, impl) -> dict:
        row = dict(date=self.date, device=self.device_name, capability=self.capability,
                   **self.versions, smoke=self.smoke,
                   sweep="+".join(sweep_names), impl=impl, backend=measure.backend_of(impl) or "",
                   pass_=pass_, **vars(case), timer=self.timer,
                   tf32=torch.backends.cuda.matmul.allow_tf32)
        row["pass"] = row.pop("pass_")
        return row

    @property
    def capability(self) -> str:
        if self.device.type != "cuda":
            return ""
        return "{}.{}".format(*torch.cuda.get_device_capability(self.device))

    @property
    def timer(self):
        return "cuda-events" if self.device.type == "cuda" else "cpu-wall"


_LAB = pytest.StashKey[Lab]()


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(rows.REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}"


def pytest_configure(config):
    if not hasattr(config.option, "sweep"):
        return
    requested = config.getoption("--device")
    if requested == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda: no CUDA device here")
    on_gpu = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if on_gpu else "cpu")
    if not on_gpu:
        # A CPU run on a GPU machine still needs the interpreter for Triton kernels.
        os.environ["TRITON_INTERPRET"] = "1"
    elif os.environ.get("TRITON_INTERPRET") == "1":
        raise pytest.UsageError("TRITON_INTERPRET=1 on a GPU run would time Triton's CPU "
                                "interpreter as GPU rows: unset it, or pass --device cpu")
    try:
        names = sweeps.resolve(config.getoption("--sweep"), on_gpu)
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    # float32 means IEEE float32 for everyone: cuDNN RNNs would use TF32 by default
    # while the Triton backends' cuBLAS GEMMs would not.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # torch >= 2.9 also has per-backend precision settings, which the flags above leave at
    # "none" (inherit) for cuDNN's RNNs: say IEEE explicitly where they exist
    for owner in (torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "rnn", None)):
        if owner is not None and hasattr(owner, "fp32_precision"):
            owner.fp32_precision = "ieee"
    try:
        impls = measure.select_impls(config.getoption("--impl"), device)
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    reports = config.getoption("--lab-reports") or rows.REPORTS
    config.stash[_LAB] = Lab(
        device=device, device_name=_device_name(device), sweeps=names, impls=impls,
        smoke=(not on_gpu) or names == sweeps.SMOKE_SWEEPS,
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        versions=dict(torch=torch.__version__, triton=metadata.version("triton"),
                      cudnn=torch.backends.cudnn.version() if on_gpu else "",
                      commit=_commit()),
        reports=Path(reports), tag=config.getoption("--lab-tag"),
        passes=(("fwd", "fwdbwd") if config.getoption("--lab-pass") == "both"
                else (config.getoption("--lab-pass"),)),
        stream=Path(config.getoption("--lab-stream")) if config.getoption("--lab-stream")
        else None,
        stream_fields=dict(phase=config.getoption("--lab-phase"),
                           variant=config.getoption("--lab-variant")))


def pytest_report_header(config):
    lab = config.stash.get(_LAB, None)
    if lab is None:
        return None
    lines = [f"lstm_triton lab: device={lab.device_name} sweeps={','.join(lab.sweeps)} "
             f"impls={','.join(lab.impls)} "
             f"torch={lab.versions['torch']} triton={lab.versions['triton']}"]
    if lab.smoke:
        lines.append(f"lstm_triton lab: {SMOKE_BANNER if lab.device.type == 'cpu' else 'SMOKE RUN'}"
                     " — rows go to reports/smoke/")
    else:
        est = sweeps.estimate_seconds(lab.sweeps, lab.impls) / 60
        lines.append(f"lstm_triton lab: estimated {est:.1f} min on an H100 (bench/sweeps.py)")
    return lines


def pytest_generate_tests(metafunc):
    if "lab_param" not in metafunc.fixturenames:
        return
    lab = metafunc.config.stash[_LAB]
    marks_gpu = dict(timer=measure.cuda_event_timer) if lab.device.type == "cuda" else {}
    params = []
    for case, names in sweeps.cases_of(lab.sweeps):
        for pass_ in lab.passes:
            group = f"{case.id}-{pass_}"
            for impl in lab.impls:
                params.append(pytest.param(
                    (case, names, pass_, impl),
                    id=("smoke-" if lab.smoke else "") + f"{group}-{impl}",
                    marks=pytest.mark.benchmark(group=group, **marks_gpu)))
    metafunc.parametrize("lab_param", params)


@pytest.fixture(scope="session")
def lab(request) -> Lab:
    return request.config.stash[_LAB]


def pytest_sessionfinish(session):
    lab = session.config.stash.get(_LAB, None)
    if lab is None or not lab.rows:
        return
    path = rows.write(lab.rows, rows.raw_path(lab.date, lab.device_name, lab.smoke, lab.reports,
                                              lab.tag))
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    say = tr.write_line if tr else print
    say(f"lstm_triton lab: {len(lab.rows)} rows -> {path}"
        + (f"  [{SMOKE_BANNER}]" if lab.smoke else ""))
    if session.config.getoption("--no-lab-report"):
        return
    try:
        from bench import report
    except ImportError as e:  # pandas / matplotlib absent: the CSV is still written
        say(f"lstm_triton lab: no report ({e}); pip install -e .[lab]")
        return
    for written in report.build(path, reports=lab.reports):
        say(f"lstm_triton lab: wrote {written}")
