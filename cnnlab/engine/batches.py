"""Loader wrappers for the debug presets: fewer batches per epoch, or the same few batches every epoch."""

from __future__ import annotations

import itertools


class LimitedBatches:
    """At most `n` batches of `loader` per pass (debug=fast)."""

    def __init__(self, loader, n: int):
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return min(len(self.loader), self.n)

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)


class FixedBatches:
    """The first `n` training batches, drawn once and repeated every epoch (debug=overfit).

    A model that cannot drive these to ~100% accuracy has a bug in its wiring, not a lack of data.
    Soft targets (mixup/cutmix) become hard labels so the batches also serve as the validation set.
    """

    def __init__(self, loader, n: int):
        loader.set_epoch(0)
        self.batches = [(x, y.argmax(1) if y.ndim == 2 else y) for x, y in itertools.islice(iter(loader), n)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def set_epoch(self, epoch: int) -> None:
        pass
