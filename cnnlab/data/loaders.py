"""The two loaders. Both yield (normalised float images, labels) on the training device, per epoch seeded.

- DeviceLoader: the whole uint8 dataset on the device; shuffling is a device permutation, augmentation is
  batched tensor ops (the fast path).
- WorkerLoader: a torch DataLoader (workers, pinned memory, persistent workers) running the per-image
  torchvision v2 pipeline, for datasets that do not fit in memory.

Shared interface (the trainer, evaluate and the tests rely on it): `set_epoch(e)`, `len(loader)`,
iteration, `labels`, and the attributes `train` (shuffle + augment) and `augment` (None: no augmentation);
`mixer` (mixup/cutmix) applies only when `train`, and then the labels are (B, num_classes) probabilities.
An epoch's batches depend only on (seed, epoch), never on what ran before: a resumed run sees the same data.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cnnlab.data.datasets import FileList, read_image
from cnnlab.errors import CnnlabError


def _one_line(ex: CnnlabError) -> CnnlabError:
    """A CnnlabError raised in a worker comes back with the worker's traceback in its message: keep the last line."""
    return CnnlabError(str(ex).strip().splitlines()[-1].removeprefix("cnnlab.errors.CnnlabError: "))


class _Loader:
    """Epoch bookkeeping, batch counting, normalisation and mixing, common to both loaders."""

    def __init__(self, labels: torch.Tensor, batch_size: int, mean, std, device, *, train: bool, augment,
                 mixer=None, seed: int = 0):
        self.labels, self.batch_size = labels, batch_size
        self.train, self.augment, self.seed, self.epoch = train, augment, seed, 0
        self.mixer = mixer if (train and mixer is not None and mixer.active) else None
        # Normalise in one fused op: (x - 255 mean) / (255 std) on the raw uint8 values.
        self._shift = (torch.tensor(mean, device=device) * 255).view(1, -1, 1, 1)
        self._scale = (torch.tensor(std, device=device) * 255).view(1, -1, 1, 1)

    @property
    def drop_last(self) -> bool:
        """Training drops the last partial batch (a batch of 1 breaks BatchNorm); evaluation sees everything."""
        return self.train and len(self.labels) > self.batch_size

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else len(self.labels)

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
        return (x.float() - self._shift) / self._scale

    def _finish(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
        x = self.normalise(x)
        if self.train and self.mixer is not None:
            x, y = self.mixer(x, y, rng)
        return x, y


class DeviceLoader(_Loader):
    """`images` (N, C, H, W) uint8 and `labels` already on the training device; `augment` a BatchAugment."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean, std, *,
                 train: bool = False, augment=None, mixer=None, seed: int = 0):
        augment = augment if (train and augment is not None and augment.active) else None
        super().__init__(labels, batch_size, mean, std, images.device, train=train, augment=augment,
                         mixer=mixer, seed=seed)
        self.images = images
        self._generator = torch.Generator(device=images.device)

    def __iter__(self):
        g = self._generator
        g.manual_seed(self.epoch_seed)
        rng = np.random.default_rng(self.epoch_seed)  # per-batch draws (mixup, jitter order) stay on the host
        order = torch.randperm(len(self.labels), generator=g, device=g.device) if self.train else None
        for i in range(len(self)):
            with _one_thread(self.images.device):
                batch = self._batch(i, order, g, rng)
            yield batch

    def _batch(self, i: int, order, g: torch.Generator, rng: np.random.Generator):
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        if order is None:
            x, y = self.images[sl], self.labels[sl]
        else:  # index_select: several times faster than x[idx] for a batch of images
            x, y = self.images.index_select(0, order[sl]), self.labels.index_select(0, order[sl])
        if self.train and self.augment is not None:
            x = self.augment(x, g, rng)
        return self._finish(x, y, rng)


@contextmanager
def _one_thread(device: torch.device):
    """On the CPU, prepare a batch with one intra-op thread: the ops are small and memory-bound, and several
    threads fighting over busy cores are 5-15x slower than one (measured on 2 shared cores)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
        order = torch.randperm(n, generator=g).tolist() if lo.train else list(range(n))
        seeds = torch.randint(2**62, (n,), generator=g).tolist() if augmenting else [None] * n
        for i in range(len(lo)):
            batch = order[i * lo.batch_size:(i + 1) * lo.batch_size]
            yield [(j, seeds[j]) for j in batch]


class WorkerLoader(_Loader):
    """A DataLoader over `images` (a CPU uint8 tensor or a FileList) with per-image v2 transforms."""

    def __init__(self, images, labels: torch.Tensor, batch_size: int, mean, std, device, *, train: bool = False,
                 augment=None, eval_transform=None, mixer=None, seed: int = 0, num_workers: int = 2):
        super().__init__(labels, batch_size, mean, std, device, train=train, augment=augment if train else None,
                         mixer=mixer, seed=seed)
        self.device = torch.device(device)
        self.loader = DataLoader(
            _Samples(images, labels, augment, eval_transform), batch_sampler=_EpochBatches(self),
            num_workers=num_workers, pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0)

    def __iter__(self):
        rng = np.random.default_rng(self.epoch_seed)
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
    batches = [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)]
    loader = DataLoader(samples, batch_sampler=batches, num_workers=num_workers)
    try:
        return torch.cat([x for x, _ in loader])
    except CnnlabError as ex:
        raise _one_line(ex) from None
