"""The two loaders. Both yield (normalised float images, labels) on the training device, per epoch seeded.

- DeviceLoader: the whole uint8 dataset on the device; shuffling is a device permutation, augmentation is
  batched tensor ops (the fast path).
- WorkerLoader: a torch DataLoader (workers, pinned memory, persistent workers) running the per-image
  torchvision v2 pipeline, for datasets that do not fit in memory.

Shared interface (the trainer, evaluate and the tests rely on it): `set_epoch(e)`, `len(loader)`,
iteration, `labels` (the whole split), and the attributes `train` (shuffle + augment) and `augment` (None: no
augmentation); `mixer` (mixup/cutmix) applies only when `train`, and then the labels are (B, num_classes)
probabilities. An epoch's batches depend only on (seed, epoch, shard), never on what ran before: a resumed run
sees the same data. `shard` (sharding.py) is this rank's share of a distributed job: `indices()` gives the
dataset indices this rank sees in the current epoch, in order.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cnnlab.data.augment import Position
from cnnlab.data.datasets import FileList, read_image
from cnnlab.data.sharding import Shard
from cnnlab.data.transforms import Normalise
from cnnlab.errors import CnnlabError


def _one_line(ex: CnnlabError) -> CnnlabError:
    """A CnnlabError raised in a worker comes back with the worker's traceback in its message: keep the last line."""
    return CnnlabError(str(ex).strip().splitlines()[-1].removeprefix("cnnlab.errors.CnnlabError: "))


class _Loader:
    """Epoch bookkeeping, batch counting, normalisation and mixing, common to both loaders."""

    def __init__(
        self,
        labels: torch.Tensor,
        batch_size: int,
        mean,
        std,
        device,
        *,
        train: bool,
        augment,
        mixer=None,
        seed: int = 0,
        shard: Shard | None = None,
    ):
        self.labels, self.batch_size = labels, batch_size
        self.train, self.augment, self.seed, self.epoch = train, augment, seed, 0
        self.shard = shard or Shard()
        self._shuffle_device = torch.device("cpu")  # where the epoch's permutation is drawn
        self.mixer = mixer if (train and mixer is not None and mixer.active) else None
        self._normalise = Normalise(mean, std, device)

    @property
    def _share(self) -> int:
        """Samples this rank sees per epoch (the whole split with one rank)."""
        n = len(self.labels)
        return self.shard.train_size(n) if self.train else len(self.shard.eval_range(n))

    @property
    def drop_last(self) -> bool:
        """Training drops the last partial batch (a batch of 1 breaks BatchNorm); evaluation sees everything."""
        return self.train and self._share > self.batch_size

    def __len__(self) -> int:
        n = self._share
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else self._share

    def _order(self, generator: torch.Generator | None, device=None) -> torch.Tensor:
        """This rank's dataset indices for the epoch: its share of a shuffle drawn from `generator` (seeded
        alike on every rank) when training, else its slice of the split in order."""
        n = len(self.labels)
        if self.train:
            order = torch.randperm(n, generator=generator, device=device)
            return self.shard.train(order)[: self.num_samples]
        share = self.shard.eval_range(n)
        return torch.arange(share.start, share.stop, device=device)

    def indices(self) -> torch.Tensor:
        """The dataset indices this rank's batches hold in the current epoch, in order (for tests and tools)."""
        g = torch.Generator(device=self._shuffle_device).manual_seed(self.epoch_seed)
        return self._order(g, g.device).cpu()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def evaluation_mode(self):
        """Switch this loader to evaluation (in order, every image, no augmentation or mixing); returns it."""
        self.train, self.augment, self.mixer = False, None, None
        return self

    @property
    def epoch_seed(self) -> int:
        return self.seed * 100_003 + self.epoch

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalise(x)

    @property
    def augment_seed(self) -> int:
        """Seed of this rank's per-epoch augmentation and mixing draws (sharding.Shard.augment_seed)."""
        return self.shard.augment_seed(self.epoch_seed)

    def _finish(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
        x = self.normalise(x)
        if self.train and self.mixer is not None:
            x, y = self.mixer(x, y, rng)
        return x, y


class DeviceLoader(_Loader):
    """`images` (N, C, H, W) uint8 and `labels` already on the training device; `augment` a BatchAugment."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean,
        std,
        *,
        train: bool = False,
        augment=None,
        mixer=None,
        seed: int = 0,
        shard: Shard | None = None,
    ):
        augment = augment if (train and augment is not None and augment.active) else None
        super().__init__(
            labels,
            batch_size,
            mean,
            std,
            images.device,
            train=train,
            augment=augment,
            mixer=mixer,
            seed=seed,
            shard=shard,
        )
        self.images = images
        self._generator = torch.Generator(device=images.device)
        self._shuffle_device = images.device

    def __iter__(self):
        g = self._generator
        g.manual_seed(self.epoch_seed)  # the shuffle: the same on every rank
        order = self._order(g, g.device) if self.train else None
        seed = self.augment_seed
        if seed != self.epoch_seed:  # ranks > 0: their own augmentation stream
            g.manual_seed(seed)
        rng = np.random.default_rng(seed)  # per-batch draws (mixup, jitter order) stay on the host
        start = self.shard.eval_range(len(self.labels)).start
        # the batch is made with torch's intra-op threads, as the model's step is: on a quiet 2-core Xeon, 2
        # threads make CIFAR batches of 64-512 1.4-1.8x faster than one (MNIST 1.8-2.1x)
        for i in range(len(self)):
            yield self._batch(i, order, start, g, rng)

    def _batch(self, i: int, order, start: int, g: torch.Generator, rng: np.random.Generator):
        if order is None:  # evaluation: a contiguous slice of this rank's range
            end = min(start + (i + 1) * self.batch_size, start + self._share)
            sl = slice(start + i * self.batch_size, end)
            x, y = self.images[sl], self.labels[sl]
        else:  # index_select: several times faster than x[idx] for a batch of images
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            y = self.labels.index_select(0, index)
            if self.augment is not None:  # gathers the batch itself (a padded crop reads the padded dataset)
                x = self.augment.take(self.images, index, g, rng, Position(index, self.epoch, self.seed))
            else:
                x = self.images.index_select(0, index)
        return self._finish(x, y, rng)


class _Samples(Dataset):
    """Decoded images by key (index, seed): seed None -> the eval transform, else the train transform
    under that seed (so a sample's augmentation does not depend on which worker draws it)."""

    def __init__(self, images, labels: torch.Tensor, train_transform, eval_transform):
        self.images, self.labels = images, labels
        self.train_transform, self.eval_transform = train_transform, eval_transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        index, seed = key
        image = read_image(self.images.paths[index]) if isinstance(self.images, FileList) else self.images[index]
        if seed is None:
            return self.eval_transform(image), self.labels[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.train_transform(image), self.labels[index]


class _EpochBatches:
    """The batch sampler: read by the DataLoader in the main process at every epoch, so it sees the
    loader's current epoch and mode even when the workers persist."""

    def __init__(self, loader: WorkerLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        lo = self.loader
        n = len(lo.labels)
        g = torch.Generator().manual_seed(lo.epoch_seed)
        augmenting = lo.train and lo.augment is not None
        order = lo._order(g).tolist()
        # one seed per sample of the split, drawn alike on every rank: a sample's augmentation does not depend
        # on which rank or worker draws it (and the ranks' samples, hence their seeds, are disjoint)
        seeds = torch.randint(2**62, (n,), generator=g).tolist() if augmenting else [None] * n
        for i in range(len(lo)):
            batch = order[i * lo.batch_size : (i + 1) * lo.batch_size]
            yield [(j, seeds[j]) for j in batch]


class WorkerLoader(_Loader):
    """A DataLoader over `images` (a CPU uint8 tensor or a FileList) with per-image v2 transforms."""

    def __init__(
        self,
        images,
        labels: torch.Tensor,
        batch_size: int,
        mean,
        std,
        device,
        *,
        train: bool = False,
        augment=None,
        eval_transform=None,
        mixer=None,
        seed: int = 0,
        num_workers: int = 2,
        shard: Shard | None = None,
    ):
        super().__init__(
            labels,
            batch_size,
            mean,
            std,
            device,
            train=train,
            augment=augment if train else None,
            mixer=mixer,
            seed=seed,
            shard=shard,
        )
        self.device = torch.device(device)
        self.loader = DataLoader(
            _Samples(images, labels, augment, eval_transform),
            batch_sampler=_EpochBatches(self),
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def __iter__(self):
        rng = np.random.default_rng(self.augment_seed)
        try:
            for x, y in self.loader:
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                yield self._finish(x, y, rng)
        except CnnlabError as ex:
            raise _one_line(ex) from None


def decode_files(files: FileList, transform, num_workers: int, batch_size: int = 64) -> torch.Tensor:
    """Decode and transform every file once (in worker processes): a (N, C, H, W) uint8 tensor."""
    samples = _Samples(files, torch.zeros(len(files), dtype=torch.long), None, transform)
    keys = [(i, None) for i in range(len(files))]
    batches = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
    loader = DataLoader(samples, batch_sampler=batches, num_workers=num_workers)
    try:
        return torch.cat([x for x, _ in loader])
    except CnnlabError as ex:
        raise _one_line(ex) from None
