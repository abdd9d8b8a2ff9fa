"""Test configuration: the Triton interpreter on CPU-only machines, NaN-poisoned allocations.

TRITON_INTERPRET must be set before triton decorates the kernels, i.e. before
lstm_triton is imported, so it is set here at collection time. On a machine
with CUDA the kernels compile for the GPU and the tests run there (CUDA is made
torch's default device).
"""
import os

import torch

if torch.cuda.is_available():
    torch.set_default_device("cuda")  # the same specification, on the GPU's compiled kernels
else:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from rnn_testing import poison_allocations  # noqa: E402


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    """Every torch.empty / new_empty / empty_like in a test starts as NaN, so an
    element a kernel forgets to write fails the comparison instead of passing by luck."""
    poison_allocations(monkeypatch)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
