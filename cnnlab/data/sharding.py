"""Which samples each rank of a distributed (torchrun + DDP) job sees; one rank and no sharding otherwise.

Training: every rank draws the same permutation of the split (same seed, same epoch) and takes every
`world`-th entry of it from position `rank`, cut to n // world entries. Every rank therefore has the same
number of batches (DDP ranks must take the same number of optimizer steps), no sample appears twice in an
epoch, and the at most world - 1 samples past n // world x world sit the epoch out (a different few each
epoch, since the permutation changes; the padding the usual DistributedSampler adds instead would repeat
samples). Because the shares interleave, the union of the ranks' i-th batches is exactly the i-th batch of a
1-process run with batch size world x batch_size: the same global batches, whatever the number of ranks.

Evaluation: contiguous disjoint slices with no padding and no duplicates (sizes differ by at most one);
`cnnlab.engine.metrics.evaluate` adds the ranks' sums, so the metrics are those of the whole split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    def __post_init__(self):
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in a world of {self.world}")

    @classmethod
    def current(cls) -> Shard:
        """This process's share in the initialised torch.distributed process group (the whole data without one)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def train_size(self, n: int) -> int:
        """Samples per rank per training epoch (equal on every rank)."""
        return n // self.world

    def train(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's share of an epoch's permutation `order` (on any device)."""
        if self.world == 1:
            return order
        return order[self.rank :: self.world][: self.train_size(len(order))]

    def eval_range(self, n: int) -> range:
        """This rank's contiguous slice of an n-sample evaluation split."""
        return range(n * self.rank // self.world, n * (self.rank + 1) // self.world)

    def augment_seed(self, epoch_seed: int) -> int:
        """The seed of this rank's augmentation draws in an epoch: rank 0 keeps `epoch_seed` (a 1-process run
        is unchanged), the others get independent streams."""
        if self.rank == 0:
            return epoch_seed
        return int(np.random.SeedSequence([epoch_seed, self.rank]).generate_state(1, np.uint64)[0] >> 1)
