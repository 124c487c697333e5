"""Which samples each rank uses at each optimiser step: a pure function of (seed, step, rank).

The primary stream (forget pairs, or ft_Data when fine-tuning) is an endless sequence of seeded per-epoch
permutations; optimiser step ``s`` takes positions [s*B, (s+1)*B) of it, so every step is a full batch on every
rank (a short last batch would leave ranks making different calls) and a resumed run needs only the step
number. Retain samples come from their own stream, B per step. The global batch is split into
``world_size * grad_accum`` equal micro-batches; when sample lengths are known, the global batch is ordered by
length before it is split, so each micro-batch holds samples of similar length and pads little. Which samples
form a step never depends on lengths, so neither does the (globally normalised) loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def _permutation(seed: int, stream: int, epoch: int, n: int) -> tuple[int, ...]:
    return tuple(np.random.default_rng([seed, stream, epoch]).permutation(n).tolist())


@dataclass(frozen=True)
class StepSampler:
    num_primary: int
    num_retain: int
    batch_size: int
    world_size: int
    rank: int
    grad_accum: int
    seed: int
    primary_lengths: tuple[int, ...] | None = None
    retain_lengths: tuple[int, ...] | None = None
    retain_per_forget: int = 1

    def __post_init__(self):
        if self.num_primary <= 0:
            raise ValueError("the primary (forget) split is empty: nothing to train on")
        if self.batch_size % (self.world_size * self.grad_accum):
            raise ValueError(f"batch_size {self.batch_size} is not divisible by world_size x grad_accum "
                             f"({self.world_size} x {self.grad_accum})")

    @property
    def micro_batch(self) -> int:
        return self.batch_size // (self.world_size * self.grad_accum)

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        if max_steps:
            return max_steps
        return max(1, math.ceil(epochs * self.num_primary / self.batch_size))

    def epoch_of(self, step: int) -> int:
        return (step * self.batch_size) // self.num_primary

    def _stream(self, stream: int, n: int, start: int, count: int) -> list[int]:
        out = []
        for pos in range(start, start + count):
            epoch, offset = divmod(pos, n)
            out.append(_permutation(self.seed, stream, epoch, n)[offset])
        return out

    def _global(self, stream: int, n: int, step: int, lengths: tuple[int, ...] | None,
                factor: int = 1) -> list[int]:
        size = self.batch_size * factor
        batch = self._stream(stream, n, step * size, size)
        if lengths is not None:
            batch = sorted(batch, key=lambda i: lengths[i])  # stable: ties keep the random order
        return batch

    def micro_indices(self, step: int, micro: int) -> tuple[list[int], list[int]]:
        """(primary indices, retain indices) of this rank's micro-batch ``micro`` at optimiser step ``step``."""
        slot = micro * self.world_size + self.rank
        part = slice(slot * self.micro_batch, (slot + 1) * self.micro_batch)
        primary = self._global(0, self.num_primary, step, self.primary_lengths)[part]
        if not self.num_retain:
            return primary, []
        k = self.retain_per_forget
        retain = self._global(1, self.num_retain, step, self.retain_lengths, k)[part.start * k:part.stop * k]
        return primary, retain
