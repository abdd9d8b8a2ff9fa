"""Which batch rows are active at each timestep of one layer-direction.

Every sequence batch, padded or packed, is handled as a PackedSequence is:
time-major rows `x[offsets[t] : offsets[t] + batch_sizes[t]]` hold step t of
the sequences still running, longest first. A padded (T, B) batch is the case
`batch_sizes == [B] * T`. The kernels therefore never spend time on a
sequence past its end, and the final state of each sequence is the state at
its own last step (rows that stopped are never written again).
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Schedule:
    batch_sizes: tuple  # (T,) python ints, non-increasing, batch_sizes[0] == B
    offsets: tuple  # (T,) first packed row of each step
    reverse: bool

    @staticmethod
    def build(batch_sizes, n_rows: int, batch: int, reverse: bool) -> "Schedule":
        if batch_sizes is None:
            steps = n_rows // batch if batch else 0
            sizes = (batch,) * steps
        else:
            sizes = tuple(int(b) for b in batch_sizes.tolist())
        offsets, total = [], 0
        for b in sizes:
            offsets.append(total)
            total += b
        return Schedule(sizes, tuple(offsets), reverse)

    @property
    def steps(self) -> int:
        return len(self.batch_sizes)

    def order(self):
        """Timesteps in processing order."""
        return range(self.steps - 1, -1, -1) if self.reverse else range(self.steps)

    def rows(self, t: int) -> slice:
        return slice(self.offsets[t], self.offsets[t] + self.batch_sizes[t])

    def previous(self, t: int):
        """(rows of the step processed before t, how many of t's rows continue from it).

        Rows of t past that count start from the initial state: only possible
        in the reverse direction of a packed batch, where short sequences join late.
        """
        p = t + 1 if self.reverse else t - 1
        if p < 0 or p >= self.steps:
            return None, 0
        return self.rows(p), min(self.batch_sizes[p], self.batch_sizes[t])

    def previous_index(self, device) -> torch.Tensor:
        """(N,) row of cat([y, h0]) holding each row's previous state (for dW_hh)."""
        n_rows = sum(self.batch_sizes)
        index = torch.empty(n_rows, dtype=torch.int64)
        for t in range(self.steps):
            rows, n_prev = self.previous(t)
            bs = self.batch_sizes[t]
            target = index[self.rows(t)]
            target.copy_(torch.arange(n_rows, n_rows + bs))  # from h0
            if rows is not None:
                target[:n_prev] = torch.arange(rows.start, rows.start + n_prev)
        return index.to(device)
