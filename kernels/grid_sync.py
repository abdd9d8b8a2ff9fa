"""Grid-wide barrier for persistent kernels: bounded, so it can fail but never hang.

A persistent kernel keeps every program alive for the whole time loop and
meets the others at least once per step. The barrier state is one int64 word in
global memory: a monotonic arrival count in the low bits and a failure flag in
bit 62. A meeting is split in two halves:

  grid_arrive  every program adds 1 (release) once its stores for the meeting
               are done;
  grid_wait    it then waits until the count reaches k * n_programs for its k-th
               meeting (acquire).

Work that reads nothing written by other programs (this step's input
projection, the saved gates backward reads) is issued between the two halves,
so its memory latency overlaps the wait instead of adding to the step; stores
that no other program reads in this launch (forward's saved gates) go after
the arrive, so the release does not wait for them. The count is never reset,
so there is no reset race, and the word belongs to one launch only:
`new_sync_state` allocates a fresh zeroed one per launch (two launches on two
streams never share it). int64, so the count cannot wrap (int32 would after
~8M steps of a 132-program grid meeting twice per step).

Count and flag share one word so that each poll is one L2 round trip, not two:
the wait is the persistent step's floor.

The wait is bounded. A program that polls `spin_limit` times without seeing
every arrival (the grid is not co-resident: another kernel holds the SMs, or
more programs were launched than fit) sets the flag and returns 0; every other
program sees the flag in its own wait and returns 0 too, so the whole grid
drains in bounded time. The launcher reads the flag after the launch and reruns
the step loop on the stepwise backend (with a warning); under CUDA graph capture,
where the host cannot read it, the outputs become NaN instead (launch_failed), and so do a
cooperative launch's under persistent_config.DEFERRED_BARRIER_CHECK, whose flag the host
reads later without waiting for the kernel (deferred_failures). The
persistent kernels are launched cooperatively (persistent_config.COOPERATIVE), so the
driver starts a grid only once all of it is resident; the bounded wait is the guard
behind that.

kernels/step_tags.py meets without the shared counter (a tag word per program, a plan
option of issue 16); it keeps this word for its failure flag, so the launcher's side
(launch_failed) is the same for both.
"""
import collections
import threading

import torch
import triton
import triton.language as tl

from . import graph_capture

FAILED_BIT = 62
FAILED = tl.constexpr(1 << FAILED_BIT)
COUNT_MASK = tl.constexpr((1 << FAILED_BIT) - 1)


def new_sync_state(device, tags: int = 0) -> torch.Tensor:
    """A fresh zeroed barrier word for one launch, followed by `tags` zeroed tag words when
    the launch exchanges by step tags (kernels/step_tags.py)."""
    return torch.zeros(1 + tags, dtype=torch.int64, device=device)


def failed_sync_state(device, tags: int = 0) -> torch.Tensor:
    """A barrier word whose failure flag is already set (tests: every wait fails at once)."""
    # filled on the device, not copied from the host: usable inside a CUDA graph capture
    state = torch.zeros(1 + tags, dtype=torch.int64, device=device)
    state[:1] = FAILED.value
    return state


def barrier_failed(sync_state: torch.Tensor) -> bool:
    """True when some program of the launch gave up waiting (reads back: synchronises)."""
    # the word alone when there are no tag words: .item() of a one-element tensor, without
    # a select (~1.5 µs of a call's host time, issue 17)
    word = sync_state if sync_state.numel() == 1 else sync_state[0]
    return bool(int(word.item()) & FAILED.value)


def launch_failed(sync_state: torch.Tensor, outputs, deferred: bool = False) -> bool:
    """True when the launch's barrier failed and the caller must rerun it on stepwise.

    Reading the flag is a host sync, which a CUDA graph capture forbids. Under capture the
    flag stays on the device: the launch's `outputs` (None entries skipped) are filled
    with NaN there when it is set, and False is returned (graph_capture.py says why).
    deferred (a cooperative launch under persistent_config.DEFERRED_BARRIER_CHECK): the
    same outside a capture, and the flag is copied to the host without waiting, for
    `deferred_failures` to read once the copy has landed."""
    if not (deferred or graph_capture.capturing(sync_state.device)):
        return barrier_failed(sync_state)
    failed = (sync_state[:1] & FAILED.value) != 0  # (1,) bool, broadcast over each output
    for out in outputs:
        if out is not None:
            out.masked_fill_(failed, float("nan"))
    if deferred and not graph_capture.capturing(sync_state.device):
        _PENDING.append(_flag_on_host(sync_state))
    return False


# Deferred launches' flags not yet read: (a host tensor holding the flag word, the CUDA event
# after its copy or None). Read in launch order; at most MAX_PENDING wait unread, beyond
# which the oldest copy is waited for (a host far ahead of its GPU).
_PENDING = collections.deque()
MAX_PENDING = 256
# threads that launch at once (one stream each) share the queue: a check takes its head
# only under the lock, so no flag is popped unread
_PENDING_LOCK = threading.Lock()


def _flag_on_host(sync_state):
    if sync_state.device.type != "cuda":  # the interpreter's launch has run: nothing to wait
        return sync_state[:1], None
    # The copy runs on the current stream of the flag's device, the launch's; the event is
    # recorded there too, whatever device is current (a layer on a second GPU).
    host = torch.empty(1, dtype=torch.int64, pin_memory=True)
    host.copy_(sync_state[:1], non_blocking=True)
    copied = torch.cuda.Event()
    copied.record(torch.cuda.current_stream(sync_state.device))
    return host, copied


def deferred_failures() -> int:
    """How many deferred launches, of those whose flag has reached the host since the last
    call, had a failed barrier (their outputs are NaN). Waits for no kernel."""
    failed = 0
    if not _PENDING:  # the common case, without the lock
        return failed
    with _PENDING_LOCK:
        while _PENDING:
            host, copied = _PENDING[0]
            if copied is not None and not copied.query():
                if len(_PENDING) <= MAX_PENDING:
                    break
                copied.synchronize()
            _PENDING.popleft()
            failed += bool(int(host.item()) & FAILED.value)
    return failed


def arrivals(sync_state: torch.Tensor) -> int:
    """Arrivals counted so far (tests, benchmarks)."""
    return int(sync_state[0].item()) & COUNT_MASK.value


@triton.jit
def grid_not_failed(sync_ptr):
    """False when the launch's barrier has already failed (checked before the time loop)."""
    return (tl.load(sync_ptr) & FAILED) == 0


@triton.jit
def grid_start(sync_ptr):
    """Meeting 0 of a persistent launch: arrive (so the first wait also checks that the whole
    grid is running) and return (programs as int64, for meeting targets; False when the
    barrier had already failed)."""
    ok = grid_not_failed(sync_ptr)
    grid_arrive(sync_ptr)
    return tl.num_programs(0).to(tl.int64), ok


@triton.jit
def grid_arrive(sync_ptr):
    """Count this program's arrival, after all of its threads' earlier stores.

    `debug_barrier` (bar.sync) orders every thread's prior stores before the
    release add, which Triton issues from one thread of the program."""
    tl.debug_barrier()
    tl.atomic_add(sync_ptr, 1, sem="release")


@triton.jit
def grid_wait(sync_ptr, target, spin_limit):
    """Wait until `target` arrivals are counted; 1 when met, 0 when the spin budget ran out
    or another program already reported failure (the caller must then stop: its results
    are discarded by the launcher).

    The acquire reads plus the trailing bar.sync order the program's later loads after the
    other programs' stores; loads of data written by other programs should still use
    cache_modifier=".cg" (L2), so no stale L1 line is read."""
    state = tl.atomic_add(sync_ptr, 0, sem="acquire")
    spins = 0
    while ((state & COUNT_MASK) < target) & ((state & FAILED) == 0) & (spins < spin_limit):
        state = tl.atomic_add(sync_ptr, 0, sem="acquire")
        spins += 1
    met = ((state & COUNT_MASK) >= target) & ((state & FAILED) == 0)
    tl.atomic_or(sync_ptr, FAILED, mask=met == 0, sem="release")
    tl.debug_barrier()
    return met


@triton.jit
def grid_barrier(sync_ptr, target, spin_limit):
    """Arrive, then wait for `target` arrivals (a meeting with nothing to overlap)."""
    grid_arrive(sync_ptr)
    return grid_wait(sync_ptr, target, spin_limit)
