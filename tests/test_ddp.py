"""DistributedDataParallel: two CPU processes on gloo give the gradients of one process.

Each rank runs half of the batch through a DDP-wrapped model built from the
same seed; DDP averages the gradients, which (with a loss averaged over the
batch) must equal the gradients of a single process on the whole batch.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rnn_testing import assert_close, interpreter_only
from torch import nn

WORLD = 2
DTYPE = torch.float64


class Model(nn.Module):
    def __init__(self):
        from lstm_triton import TritonGRU, TritonLSTM

        super().__init__()
        self.lstm = TritonLSTM(3, 4, bidirectional=True, batch_first=True, backend="stepwise")
        self.gru = TritonGRU(8, 3, batch_first=True, backend="stepwise")
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, h = self.gru(y)
        return self.head(y[:, -1] + h[0])


def build_model():
    torch.manual_seed(1234)
    return Model().to(DTYPE)


def batch():
    generator = torch.Generator().manual_seed(99)
    x = torch.randn(2 * WORLD, 5, 3, dtype=DTYPE, generator=generator)
    target = torch.randn(2 * WORLD, 2, dtype=DTYPE, generator=generator)
    return x, target


def loss_fn(model, x, target):
    return (model(x) - target).square().mean()


def worker(rank, out_dir):
    # The interpreter must be chosen before triton decorates the kernels (import time).
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # the ranks talk over loopback only
    torch.set_num_threads(1)
    # A file store, not TCP: with TCP, rank 0 hosts the store, and a rank still tearing
    # down after rank 0 exits can abort ("terminate called without an active exception").
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'store')}",
                            rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(build_model())
        x, target = batch()
        shard = slice(rank * 2, rank * 2 + 2)
        loss_fn(model, x[shard], target[shard]).backward()
        grads = {name: p.grad for name, p in model.module.named_parameters()}
        torch.save(grads, os.path.join(out_dir, f"grads_{rank}.pt"))
        dist.barrier()  # both ranks are done before either tears the group down
    finally:
        dist.destroy_process_group()
    # The results are saved: leave without the interpreter's shutdown. When torch.compile
    # had run in the parent (tests/test_compile.py before this file), a rank sometimes
    # aborted there ("terminate called without an active exception": a C++ thread still
    # joinable at exit) after its work was done; 1 run in 3 of the two files together.
    os._exit(0)


@interpreter_only  # CPU processes over gloo, kernels interpreted in each rank
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_ddp_gradients_equal_single_process(tmp_path):
    mp.spawn(worker, args=(str(tmp_path),), nprocs=WORLD, join=True)

    model = build_model()
    x, target = batch()
    loss_fn(model, x, target).backward()
    for rank in range(WORLD):
        grads = torch.load(tmp_path / f"grads_{rank}.pt")
        assert grads.keys() == dict(model.named_parameters()).keys()
        for name, p in model.named_parameters():
            assert_close(grads[name], p.grad, DTYPE, f"rank {rank} grad of {name}")
