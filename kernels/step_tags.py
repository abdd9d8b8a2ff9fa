"""The step-tagged exchange: a persistent kernel's meetings without a shared arrival counter.

grid_sync.py meets on one word that every program adds to and every program polls. Here
(issue 16, a plan option: persistent_config.with_step_tags) each program owns a tag word
and publishes in it how many times it has arrived, after storing its slice of the
exchanged tensor (h_t, the gate gradients, the projection's m_t); a consumer waits until
the tags of the programs whose slices it needs reach the meeting it is at. No two
programs write the same word, so the last arrival does not queue behind the others' adds
at one address, and every consumer polls all the tags in one vector read (TAGS lanes,
one per program: the recurrent dot needs every slice of h_{t-1}, so every program).

State: the launch's int64 barrier word (grid_sync.new_sync_state(device, TAGS)) followed
by TAGS tag words, fresh and zeroed per launch (two launches on two streams never share
them). Word 0 keeps its role for the launcher: its failure flag says the launch failed.

The meeting numbers are the barrier's: meeting 1 is the start (every program publishes
1, so the first wait also checks that the whole grid is running), and a program that
has arrived m times has published m; meeting m is met when every tag is >= m. The
kernels call `exchange_start` / `exchange_arrive` / `exchange_wait`, which run either
this exchange or grid_sync's counter, by the constexpr TAGS (0: the counter).

Memory ordering (the argument the GPU relies on; the interpreter runs one program):
  producer  every thread stores its part of the slice; bar.sync (tl.debug_barrier) orders
            those stores before what the program's one publishing thread does next; that
            thread's max on the tag (`red`/`atom.global.gpu.release.max`) is a release at
            GPU scope, and a release is cumulative: the stores the bar.sync ordered before it
            are visible to any thread that acquires the value it wrote (or a later one: each
            later value of a tag is another release of the same program, issued after more
            stores).
  consumer  the poll is `atom.global.gpu.acquire.add` of 0 on each tag (Triton's loads take no
            memory semantics), so once every tag is >= m, each of the producers' releases
            synchronises with the poll; the trailing bar.sync extends that to every thread
            of the consumer, and the slices are then read through L2 (.cg,
            persistent_tiles.load_rows), never from a stale L1 line.
  reuse     no slice is overwritten during a launch (each step's rows are written once),
            so a producer running one meeting ahead cannot clobber what a consumer reads:
            no second (write-after-read) wait is needed, as with the counter.
The tag is raised with `max`, not a plain exchange, so that a failure flag set in it
(below) is never cleared by a later publication of the same program.

Bounded, with grid_sync's contract: a wait that polls `spin_limit` times without seeing
every tag reach m (a program that never started, or gave up) sets the failure flag in
word 0 (read by the launcher, which falls back to stepwise) and in its own tag, where
every program waiting on it sees it at its next poll and gives up too; a preset flag in
word 0 stops the loop before it starts (grid_sync.grid_not_failed).
"""
import os

import triton
import triton.language as tl

from .config import interpreting
from .grid_sync import COUNT_MASK, FAILED, grid_arrive, grid_not_failed, grid_start, grid_wait

# How a consumer polls the tags. "atom" (the default): an acquire add of 0 per tag lane, which
# Triton keeps an L2 read-modify-write. "load": an acquire load per lane through inline PTX
# (`ld.global.gpu.acquire`, what Triton makes of grid_sync's scalar poll), for a GPU to time
# against "atom" (bench.barrier's tags-load mode; LSTM_TRITON_TAG_POLL=load for whole
# processes). The interpreter cannot run inline PTX: there the poll is always "atom", so the
# CPU tests never run "load"; it is compiled for sm_90 (tests/test_persistent.py).
TAG_POLL = os.environ.get("LSTM_TRITON_TAG_POLL", "atom")
if TAG_POLL not in ("atom", "load"):
    raise ValueError(f"LSTM_TRITON_TAG_POLL={TAG_POLL!r}: use atom or load")
POLL_BY_LOAD = tl.constexpr(TAG_POLL == "load" and not interpreting())


@triton.jit
def tags_publish(sync_ptr, count):
    """This program has arrived `count` times: raise its tag to count after all of its
    threads' earlier stores (bar.sync, then one release)."""
    tl.debug_barrier()
    tl.atomic_max(sync_ptr + 1 + tl.program_id(0), count, sem="release")


@triton.jit
def tags_lowest(sync_ptr, TAGS: tl.constexpr, LOAD: tl.constexpr = POLL_BY_LOAD):
    """One poll: the lowest tag of the grid's programs (acquire), -1 if one has failed.

    Every lane is allocated (lanes past the grid stay 0 and are skipped below), so the read
    needs no mask. Compiled for sm_90 (Triton 3.6 and 3.9) this vector add of 0 stays an
    `atom.acquire.add` per lane, masked or not, where grid_sync's scalar one becomes an
    `ld.acquire`: a cost the GPU must weigh (reports/NOTES.md, issue 16)."""
    lane = tl.arange(0, TAGS)
    mine = lane < tl.num_programs(0)
    if LOAD:  # see TAG_POLL
        tags = tl.inline_asm_elementwise("ld.global.gpu.acquire.b64 $0, [$1];", "=l,l",
                                         [sync_ptr + 1 + lane], dtype=tl.int64, is_pure=False,
                                         pack=1)
    else:
        tags = tl.atomic_add(sync_ptr + 1 + lane, 0, sem="acquire")
    key = tl.where((tags & FAILED) != 0, -1, tags & COUNT_MASK)
    return tl.min(tl.where(mine, key, COUNT_MASK), axis=0)


@triton.jit
def tags_wait(sync_ptr, meeting, spin_limit, TAGS: tl.constexpr,
              LOAD: tl.constexpr = POLL_BY_LOAD):
    """Wait until every program's tag is >= meeting; 1 when met, 0 when the spin budget ran
    out or a program reported failure (the caller must then stop)."""
    low = tags_lowest(sync_ptr, TAGS, LOAD)
    spins = 0
    while (low < meeting) & (low >= 0) & (spins < spin_limit):
        low = tags_lowest(sync_ptr, TAGS, LOAD)
        spins += 1
    met = low >= meeting
    failed = met == 0
    tl.atomic_or(sync_ptr, FAILED, mask=failed, sem="release")  # for the launcher
    tl.atomic_or(sync_ptr + 1 + tl.program_id(0), FAILED, mask=failed, sem="release")  # grid
    tl.debug_barrier()
    return met


@triton.jit
def exchange_start(sync_ptr, TAGS: tl.constexpr):
    """Meeting 1 (grid_sync.grid_start): (programs as int64, False when the launch's flag was
    already set)."""
    if TAGS == 0:
        n_prog, ok = grid_start(sync_ptr)
    else:
        ok = grid_not_failed(sync_ptr)
        tags_publish(sync_ptr, 1)
        n_prog = tl.num_programs(0).to(tl.int64)
    return n_prog, ok


@triton.jit
def exchange_arrive(sync_ptr, meeting, TAGS: tl.constexpr):
    """Arrive at `meeting` once this program's slice for it is stored."""
    if TAGS == 0:
        grid_arrive(sync_ptr)
    else:
        tags_publish(sync_ptr, meeting)


@triton.jit
def exchange_wait(sync_ptr, meeting, n_prog, spin_limit, TAGS: tl.constexpr,
                  LOAD: tl.constexpr = POLL_BY_LOAD):
    """Wait until every program has arrived at `meeting`; 1 when met, 0 on failure. LOAD: how
    the tags are polled (TAG_POLL; bench.barrier passes it, the kernels take the default)."""
    if TAGS == 0:
        met = grid_wait(sync_ptr, meeting * n_prog, spin_limit)
    else:
        met = tags_wait(sync_ptr, meeting, spin_limit, TAGS, LOAD)
    return met
