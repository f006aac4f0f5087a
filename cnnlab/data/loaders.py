"""The device-resident loader: a uint8 dataset on the training device, shuffled and augmented in batches."""

from __future__ import annotations

import math

import torch

from cnnlab.data.transforms import BatchAugment


class DeviceLoader:
    """Yields (normalised float images, labels) batches, all on the dataset's device.

    Shuffling and augmentation draw from a generator reseeded from (seed, epoch) at each epoch, so an
    epoch's batches do not depend on what ran before it: a resumed run sees the same data.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean, std, *,
                 train: bool = False, augment: BatchAugment | None = None, seed: int = 0):
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.train = train
        self.augment = augment if (train and augment is not None and augment.active) else None
        self.seed = seed
        self.epoch = 0
        self.drop_last = train and len(labels) > batch_size  # a batch of 1 breaks BatchNorm in train mode
        device = images.device
        # Normalise in one fused op: (x - 255 mean) / (255 std) on the raw uint8 values.
        self._shift = (torch.tensor(mean, device=device) * 255).view(1, -1, 1, 1)
        self._scale = (torch.tensor(std, device=device) * 255).view(1, -1, 1, 1)
        self._generator = torch.Generator(device=device)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self._shift) / self._scale

    def __iter__(self):
        n = len(self.labels)
        g = self._generator
        g.manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(n, generator=g, device=g.device) if self.train else None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            if order is None:
                x, y = self.images[sl], self.labels[sl]
            else:
                idx = order[sl]
                x, y = self.images[idx], self.labels[idx]
            if self.augment is not None:
                x = self.augment(x, g)
            yield self.normalise(x), y
