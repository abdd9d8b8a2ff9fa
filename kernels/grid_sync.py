"""Grid-wide barrier for persistent kernels: bounded, so it can fail but never hang.

A persistent kernel keeps every program alive for the whole time loop and
meets the others once per step. The barrier is a monotonic arrival counter in
global memory: before its k-th meeting each program adds 1 (release) and then
waits until the counter reaches k * n_programs (acquire). The counter is never
reset, so there is no reset race, and it must belong to one launch only:
`new_sync_state` allocates a fresh zeroed one per launch (two launches on two
streams never share it).

The wait is bounded. A program that spins `spin_limit` times without seeing
every arrival (the grid is not co-resident: another kernel holds the SMs, or
more programs were launched than fit) sets the failure flag and returns 0;
every other program sees the flag in its own wait and returns 0 too, so the
whole grid drains in bounded time. The launcher reads the flag after the
launch and reruns the step loop on the stepwise backend (with a warning).

Layout of the sync state: int32[2] = [arrivals, failed].
"""
import torch
import triton
import triton.language as tl


def new_sync_state(device) -> torch.Tensor:
    """A fresh zeroed [arrivals, failed] pair for one launch."""
    return torch.zeros(2, dtype=torch.int32, device=device)


def barrier_failed(sync_state: torch.Tensor) -> bool:
    """True when some program of the launch gave up waiting (reads back: synchronises)."""
    return bool(sync_state[1].item() != 0)


@triton.jit
def grid_barrier(sync_ptr, target, spin_limit):
    """Arrive, then wait until `target` arrivals are counted.

    Returns 1 when the grid met, 0 when the spin budget ran out or another
    program already reported failure (the caller must then stop: its results
    are discarded by the launcher).

    Memory ordering: `debug_barrier` (bar.sync) orders every thread's prior
    stores before the release add done for the program; the acquire reads plus
    the trailing bar.sync order the program's later loads after the other
    programs' stores. Loads of data written by other programs should still use
    cache_modifier=".cg" (L2), so no stale L1 line is read.
    """
    tl.debug_barrier()
    tl.atomic_add(sync_ptr, 1, sem="release")
    arrived = tl.atomic_add(sync_ptr, 0, sem="acquire")
    failed = tl.atomic_add(sync_ptr + 1, 0, sem="acquire")
    spins = 0
    while (arrived < target) & (failed == 0) & (spins < spin_limit):
        arrived = tl.atomic_add(sync_ptr, 0, sem="acquire")
        failed = tl.atomic_add(sync_ptr + 1, 0, sem="acquire")
        spins += 1
    met = (arrived >= target) & (failed == 0)
    tl.atomic_xchg(sync_ptr + 1, 1, mask=met == 0, sem="release")
    tl.debug_barrier()
    return met
