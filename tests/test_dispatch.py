"""What backend="auto" runs, and the "torch" backend it falls back to:

  - "torch" is torch's own forward on the same parameters: the same bits as nn.LSTM /
    nn.GRU / the cells, gradients included, PackedSequence included;
  - on a CPU without the Triton interpreter, auto runs "torch";
  - on CUDA, auto runs the backend measured fastest at the nearest measured case of the
    same cell, dtype, pass and GPU generation (lstm_triton/dispatch_table.py), and cuDNN
    ("torch") with no measurement near enough, on another GPU generation, or when equally
    near measurements disagree;
  - the modules describe each call to auto correctly (batch, length, dtype, training);
  - bench/calibrate.py turns a lab CSV into that table, choosing a Triton backend only on a
    clear measured win over cuDNN.
"""
import csv
import importlib.util

import pytest
import torch
from rnn_testing import DEVICE, TORCH_MODULES
from torch import nn
from torch.nn.utils.rnn import pack_sequence

from lstm_triton import (TritonGRU, TritonGRUCell, TritonLSTM, TritonLSTMCell, dispatch,
                         plain_call, rnn)
from lstm_triton.dispatch import Workload, auto_cuda_backend

OURS = {"lstm": TritonLSTM, "gru": TritonGRU}


# ------------------------------------------------------------------- the torch backend
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_backend_is_torchs_own_forward_bit_for_bit(cell):
    ours = OURS[cell](3, 5, num_layers=2, bidirectional=True, backend="torch")
    theirs = TORCH_MODULES[cell](3, 5, num_layers=2, bidirectional=True)
    theirs.load_state_dict(ours.state_dict())
    packed = pack_sequence([torch.randn(n, 3) for n in (4, 1, 3)], enforce_sorted=False)
    results = []
    for m in (ours, theirs):
        out, finals = m(packed)
        finals = finals if isinstance(finals, tuple) else (finals,)
        loss = out.data.square().sum() + sum(f.sum() for f in finals)
        results.append([out.data, *finals, *torch.autograd.grad(loss, list(m.parameters()))])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("ours_cls, theirs_cls", [(TritonLSTMCell, nn.LSTMCell),
                                                  (TritonGRUCell, nn.GRUCell)])
def test_torch_backend_of_the_cells_is_torchs_own_cell(ours_cls, theirs_cls):
    ours, theirs = ours_cls(3, 4, backend="torch"), theirs_cls(3, 4)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3)
    a, b = ours(x), theirs(x)
    for p, q in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert torch.equal(p, q)


def test_auto_without_triton_runs_torch_not_the_reference_loop(monkeypatch):
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    monkeypatch.setattr(rnn, "run_layer", None)  # the Triton/reference path must not run
    ours = TritonLSTM(3, 4, device="cpu")
    theirs = nn.LSTM(3, 4, device="cpu")
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3, device="cpu")
    assert torch.equal(ours(x)[0], theirs(x)[0])


# ------------------------------------------------------------------ auto on CUDA: table
H100 = (9, 0)
LSTM_BF16 = Workload("lstm", torch.bfloat16, batch=16, hidden=512, seq_len=1024,
                     training=False)
TABLE = (
    # cell, capability, dtype, pass, batch, hidden, seq_len, backend, speedup
    ("lstm", "9.0", "bf16", "fwd", 16, 512, 1024, "persistent", 4.0),
    ("lstm", "9.0", "bf16", "fwd", 256, 512, 1024, "torch", 1.0),
    ("lstm", "9.0", "bf16", "fwdbwd", 16, 512, 1024, "stepwise", 1.2),
)


def query(table=TABLE, capability=H100, **changes):
    fields = {**LSTM_BF16.__dict__, **changes}
    return auto_cuda_backend(Workload(**fields), capability, table)


def test_auto_with_no_measurement_runs_cudnn():
    assert query(table=()) == "torch"


def test_auto_takes_the_nearest_measured_case():
    assert query() == "persistent"
    assert query(batch=8, hidden=384) == "persistent"  # 1 + 0.4 octaves away
    assert query(seq_len=4096) == "persistent"  # 2 octaves: the limit
    assert query(batch=200) == "torch"  # nearer the B=256 measurement
    assert query(training=True) == "stepwise"  # training is measured separately


def test_auto_runs_cudnn_far_from_every_measurement():
    assert query(hidden=4096) == "torch"  # three octaves away
    assert query(batch=1, seq_len=64) == "torch"


def test_auto_applies_a_table_only_to_the_gpu_generation_it_was_measured_on():
    assert query(capability=(8, 0)) == "torch"
    assert query(dtype=torch.float16) == "torch"  # no fp16 row
    assert query(cell="gru") == "torch"


def test_equally_near_measurements_that_disagree_give_cudnn():
    table = TABLE[:1] + (("lstm", "9.0", "bf16", "fwd", 64, 512, 1024, "stepwise", 1.1),)
    assert query(table=table, batch=32) == "torch"


def test_choose_backend_reads_the_gpu_generation(monkeypatch):
    monkeypatch.setattr(dispatch.dispatch_table, "MEASURED", TABLE)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: H100)
    cuda = torch.device("cuda")
    assert dispatch.choose_backend("auto", cuda, LSTM_BF16) == "persistent"
    assert dispatch.choose_backend("auto", cuda, None) == "stepwise"  # a cell's single step
    assert dispatch.choose_backend("stepwise", cuda, LSTM_BF16) == "stepwise"


# ------------------------------------------------------- what the modules tell auto
@pytest.fixture
def seen(monkeypatch):
    calls = []

    def record(requested, device, workload=None):
        calls.append(workload)
        return "reference"
    monkeypatch.setattr(rnn, "choose_backend", record)
    monkeypatch.setattr(plain_call, "choose_backend", record)  # the common call's road
    return calls


def test_modules_describe_padded_batch_first_and_packed_calls(seen):
    gru = TritonGRU(3, 6, batch_first=True, dtype=torch.float64)
    gru(torch.randn(4, 7, 3, dtype=torch.float64))  # (B, T, I)
    # both roads ask (the plain one first, then the general one, as "reference" was chosen)
    assert seen == [Workload("gru", torch.float64, 4, 6, 7, training=True)] * 2
    lstm = TritonLSTM(3, 6)
    with torch.no_grad():
        lstm(pack_sequence([torch.randn(n, 3) for n in (5, 2)]))
    assert seen[-1] == Workload("lstm", torch.float32, 2, 6, 5, training=False)
    lstm.requires_grad_(False)
    lstm(torch.randn(5, 3))  # unbatched, nothing requires grad: inference
    assert seen[-1] == Workload("lstm", torch.float32, 1, 6, 5, training=False)


# ----------------------------------------------------------- calibration from a lab CSV
def write_csv(path, rows):
    from bench.rows import COLUMNS
    base = dict(date="2026-11-24", device="NVIDIA H100", capability="9.0", smoke="False",
                status="ok", cell="lstm", dtype="bf16", pass_="fwd", batch=16, seq_len=1024,
                input_size=512, hidden_size=512, num_layers=1, bidirectional="False")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for impl, changes in rows:
            row = {**base, "impl": impl, **changes}
            row["pass"] = row.pop("pass_")
            writer.writerow({c: row.get(c, "") for c in COLUMNS})


def load_table(path):
    spec = importlib.util.spec_from_file_location("table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calibration_picks_triton_only_on_a_clear_measured_win(tmp_path):
    from bench import calibrate
    raw, out = tmp_path / "raw.csv", tmp_path / "table.py"
    write_csv(raw, [
        ("cudnn", dict(median_ms=8.0)),  # B=16: persistent 4x faster
        ("triton-persistent", dict(median_ms=2.0)),
        ("triton-stepwise", dict(median_ms=12.0)),
        ("triton-auto", dict(median_ms=1.0)),  # auto's own rows never count
        ("cudnn", dict(batch=256, median_ms=10.0)),  # B=256: stepwise only 2% faster
        ("triton-stepwise", dict(batch=256, median_ms=9.8)),
        ("cudnn", dict(batch=64, median_ms=5.0)),  # B=64: the fast one was wrong
        ("triton-persistent", dict(batch=64, median_ms=1.0, status="wrong")),
        ("cudnn", dict(batch=1, median_ms=5.0, num_layers=2)),  # stacks are not a case
        ("triton-persistent", dict(batch=8, median_ms=1.0)),  # no cuDNN row: left out
    ])
    calibrate.main([str(raw), "--out", str(out)])
    table = load_table(out)
    assert table.SOURCE == str(raw)
    assert [row[4] for row in table.MEASURED] == [16, 64, 256]
    by_batch = {row[4]: row[7:] for row in table.MEASURED}
    assert by_batch == {16: ("persistent", 4.0), 64: ("torch", 1.0), 256: ("torch", 1.0)}
    assert query(table=table.MEASURED) == "persistent"
    assert query(table=table.MEASURED, batch=256) == "torch"


def test_committed_table_is_well_formed():
    """Every row names a real backend and a measured speedup; Triton rows beat cuDNN."""
    from lstm_triton import dispatch_table
    for row in dispatch_table.MEASURED:
        cell, _cap, dtype, pass_, batch, hidden, seq_len, backend, speedup = row
        assert cell in OURS and pass_ in ("fwd", "fwdbwd") and dtype in ("fp32", "bf16", "fp16")
        assert backend in ("torch", *dispatch.TRITON_BACKENDS)
        assert min(batch, hidden, seq_len) > 0 and (backend == "torch" or speedup > 1)
    assert (dispatch_table.SOURCE is None) == (not dispatch_table.MEASURED)


def test_device_of_the_specification_is_consistent():
    assert torch.empty(0).device.type == DEVICE
