"""Which batch rows are active at each timestep of one layer-direction.

Every sequence batch, padded or packed, is handled as a PackedSequence is:
time-major rows `x[offsets[t] : offsets[t] + batch_sizes[t]]` hold step t of
the sequences still running, longest first. A padded (T, B) batch is the case
`batch_sizes == [B] * T`. The kernels therefore never spend time on a
sequence past its end, and the final state of each sequence is the state at
its own last step (rows that stopped are never written again).
"""
import functools
from dataclasses import dataclass

import torch

from .kernels.graph_capture import host_to_device


@dataclass(frozen=True)
class Schedule:
    batch_sizes: tuple  # (T,) python ints, non-increasing, batch_sizes[0] == B
    offsets: tuple  # (T,) first packed row of each step
    reverse: bool

    @staticmethod
    def build(batch_sizes, n_rows: int, batch: int, reverse: bool) -> "Schedule":
        if batch_sizes is None:  # padded: made once per (T, B, direction), see _padded
            return _padded(n_rows // batch if batch else 0, batch, reverse)
        else:
            sizes = tuple(int(b) for b in batch_sizes.tolist())
        offsets, total = [], 0
        for b in sizes:
            offsets.append(total)
            # not `+=`: under torch.jit.trace the sizes are 0-d tensors, and an in-place add
            # would move every offset already appended along with the running total
            total = total + b
        return Schedule(sizes, tuple(offsets), reverse)

    @property
    def steps(self) -> int:
        return len(self.batch_sizes)

    @functools.cached_property  # counted once per schedule, not at each use (O(T))
    def padded(self) -> bool:
        """Every step runs the whole batch (a padded (T, B) input, or equal lengths)."""
        return self.batch_sizes.count(self.batch_sizes[0] if self.steps else 0) == self.steps

    def order(self):
        """Timesteps in processing order."""
        return range(self.steps - 1, -1, -1) if self.reverse else range(self.steps)

    def rows(self, t: int) -> slice:
        return slice(self.offsets[t], self.offsets[t] + self.batch_sizes[t])

    def previous_step(self, t: int):
        """(the step processed before t or None, how many of t's rows continue from it)."""
        p = t + 1 if self.reverse else t - 1
        if p < 0 or p >= self.steps:
            return None, 0
        return p, min(self.batch_sizes[p], self.batch_sizes[t])

    def previous(self, t: int):
        """(rows of the step processed before t, how many of t's rows continue from it).

        Rows of t past that count start from the initial state: only possible
        in the reverse direction of a packed batch, where short sequences join late.
        """
        p, n_prev = self.previous_step(t)
        return (None if p is None else self.rows(p)), n_prev

    def previous_index(self, device) -> torch.Tensor:
        """(N,) row of cat([y, h0]) holding each row's previous state (for dW_hh).

        Row j of step t continues row j of the step processed before it (see `previous`)
        when j is below both steps' batch sizes, else it starts from h0's row j (index
        N + j). Built with tensor ops, not a loop over steps: a packed batch of T=1024
        steps took ~12 ms of host time per backward as a Python loop."""
        sizes = torch.tensor(self.batch_sizes, dtype=torch.int64)
        offsets = torch.tensor(self.offsets, dtype=torch.int64)
        n_rows, steps = int(sizes.sum()), self.steps
        # the step processed before each step, as a shift by one (none at the first)
        prev_sizes, prev_offsets = torch.zeros_like(sizes), torch.zeros_like(offsets)
        if self.reverse:
            prev_sizes[:-1], prev_offsets[:-1] = sizes[1:], offsets[1:]
        else:
            prev_sizes[1:], prev_offsets[1:] = sizes[:-1], offsets[:-1]
        n_prev = torch.minimum(prev_sizes, sizes)
        step = torch.repeat_interleave(torch.arange(steps), sizes)  # (N,) each row's step
        j = torch.arange(n_rows) - offsets[step]  # each row's place within its step
        index = torch.where(j < n_prev[step], prev_offsets[step] + j, n_rows + j)
        return host_to_device(index, device)  # also inside a CUDA graph capture


@functools.lru_cache(maxsize=32)
def _padded(steps: int, batch: int, reverse: bool) -> Schedule:
    """A padded batch's schedule, shared by every call of its (T, B, direction): a schedule
    is immutable, and its two T-long tuples were the one part of a persistent call's Python
    that grew with T (~12 µs at T=256, ~50 at T=1024 a training call; issue 17). One holds
    ~44 bytes a step (an offset past 256 is an int object of its own), so 32 of them at
    T=10,000 hold ~14 MB."""
    return Schedule((batch,) * steps, tuple(range(0, steps * batch, batch or 1)), reverse)
