"""`build(data_cfg, augment_cfg, device, seed)`: load -> split -> statistics -> DataSpec -> loaders.

The `data` and `augment` groups are read as plain mappings: this package does not know the config schema
(the commands hand it validated groups). `augment_cfg=None` builds no augmentation at all, which is what
evaluation, prediction and feature extraction want (and keeps them independent of the augment keys a
checkpoint's stored config happens to have).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from cnnlab.data.augment import BatchAugment, image_transform, is_active
from cnnlab.data.datasets import ArrayDataset, FileList, Images, make_synthetic
from cnnlab.data.folders import load_imagefolder
from cnnlab.data.loaders import DeviceLoader, WorkerLoader, decode_files
from cnnlab.data.mix import Mixer
from cnnlab.data.sharding import Shard
from cnnlab.data.sources import SOURCES
from cnnlab.data.spec import DataBundle, DataSpec, Loader
from cnnlab.data.transforms import resize_uint8
from cnnlab.errors import CnnlabError

DEVICE_MAX_FILE_SIZE = 64  # auto: image-file datasets up to this size are decoded once and kept on the device
STATS_SAMPLE = 2000  # image-file datasets on the DataLoader path: mean/std from this many training images


# ----------------------------------------------------------------------------------------------------- load
def _source(cfg: DictConfig, seed: int) -> ArrayDataset:
    return SOURCES[cfg.name](Path(cfg.root).expanduser(), cfg.download)


def _imagefolder(cfg: DictConfig, seed: int) -> ArrayDataset:
    return load_imagefolder(Path(cfg.root).expanduser(), cfg.download_url, cfg.val_fraction, seed, cfg.download)


def _synthetic(cfg: DictConfig, seed: int) -> ArrayDataset:
    return make_synthetic(cfg.channels or 3, cfg.image_size or 32, cfg.num_classes or 10, cfg.num_samples, seed)


# data.name -> (data config, seed) -> the dataset on the CPU
LOADERS: dict[str, Callable[[DictConfig, int], ArrayDataset]] = {
    **dict.fromkeys(SOURCES, _source),
    "imagefolder": _imagefolder,
    "synthetic": _synthetic,
}
DATASETS = tuple(LOADERS)


def load_arrays(data_cfg: DictConfig, seed: int = 0) -> ArrayDataset:
    """The dataset on the CPU: uint8 arrays at the configured image size, or image files."""
    name = data_cfg.name
    if name not in LOADERS:
        raise CnnlabError(f"data.name '{name}' is not a dataset; choose from: {', '.join(DATASETS)}")
    arrays = select_classes(LOADERS[name](data_cfg, seed), data_cfg.get("classes"), name)
    if isinstance(arrays.train_x, FileList):
        if not data_cfg.image_size:
            raise CnnlabError(f"{name} images come in many sizes: set data.image_size (e.g. 224)")
        if data_cfg.channels not in (None, 3):
            raise CnnlabError(f"data.channels={data_cfg.channels} but {name} images are read as RGB (3 channels)")
        return arrays
    if data_cfg.image_size:
        arrays.train_x = resize_uint8(arrays.train_x, data_cfg.image_size)
        arrays.test_x = resize_uint8(arrays.test_x, data_cfg.image_size)
    if data_cfg.channels and data_cfg.channels != arrays.train_x.shape[1]:
        raise CnnlabError(
            f"data.channels={data_cfg.channels} but {name} images have {arrays.train_x.shape[1]} channel(s)"
        )
    return arrays


def select_classes(arrays: ArrayDataset, wanted, name: str) -> ArrayDataset:
    """data.classes: keep only these classes (names or indices) in both splits, relabelled 0..k-1 in the given
    order (e.g. CIFAR-10's four vehicles as a 4-class dataset)."""
    if not wanted:
        return arrays
    names = list(arrays.classes)
    picked = []
    for w in wanted:
        if isinstance(w, int) and not isinstance(w, bool) and 0 <= w < len(names):
            picked.append(w)
        elif isinstance(w, str) and w in names:
            picked.append(names.index(w))
        else:
            raise CnnlabError(f"data.classes: {w!r} is not a class of {name}; its classes: {', '.join(names)}")
    if len(set(picked)) != len(picked):
        raise CnnlabError(f"data.classes names a class twice: {list(wanted)}")
    relabel = torch.full((len(names),), -1, dtype=torch.long)
    relabel[picked] = torch.arange(len(picked))
    for split in ("train", "test"):
        y = relabel[getattr(arrays, f"{split}_y")]
        keep = torch.nonzero(y >= 0).flatten()
        setattr(arrays, f"{split}_x", getattr(arrays, f"{split}_x")[keep])
        setattr(arrays, f"{split}_y", y[keep])
    arrays.classes = [names[i] for i in picked]
    return arrays


def on_device(data_cfg: DictConfig, from_files: bool, size: int) -> bool:
    """data.loader: device | dataloader | auto (device, except image files larger than DEVICE_MAX_FILE_SIZE)."""
    if data_cfg.loader != "auto":
        return data_cfg.loader == "device"
    return not from_files or size <= DEVICE_MAX_FILE_SIZE


# ---------------------------------------------------------------------------------------------------- split
@dataclass
class Splits:
    """The run's three splits on the CPU (arrays or files)."""

    train_x: Images
    train_y: torch.Tensor
    val_x: Images
    val_y: torch.Tensor
    test_x: Images
    test_y: torch.Tensor
    val_is_test: bool = False


def subset_per_class(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the first n examples of every class (in the dataset's order)."""
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:n] for c in labels.unique()])
    return keep.sort().values


def split_train_val(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random hold-out: (train indices, val indices)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise CnnlabError(f"data.val_split={fraction} leaves no training images out of {n}")
    return order[n_val:], order[:n_val]


def split(arrays: ArrayDataset, data_cfg: DictConfig, seed: int) -> Splits:
    """data.subset (per class), then data.val_split: a held-out fraction of the training set, or "test"; then
    data.eval_subset: val and test cut to their first n images (a cheap run's evaluation)."""
    train_x, train_y = arrays.train_x, arrays.train_y
    if data_cfg.subset:
        keep = subset_per_class(train_y, data_cfg.subset)
        train_x, train_y = train_x[keep], train_y[keep]
    if data_cfg.val_split == "test":
        splits = Splits(train_x, train_y, arrays.test_x, arrays.test_y, arrays.test_x, arrays.test_y, True)
    else:
        tr, va = split_train_val(len(train_y), float(data_cfg.val_split), seed)
        splits = Splits(train_x[tr], train_y[tr], train_x[va], train_y[va], arrays.test_x, arrays.test_y)
    n = data_cfg.get("eval_subset")
    if n:
        first = torch.arange(min(n, len(splits.val_y))), torch.arange(min(n, len(splits.test_y)))
        splits.val_x, splits.val_y = splits.val_x[first[0]], splits.val_y[first[0]]
        splits.test_x, splits.test_y = splits.test_x[first[1]], splits.test_y[first[1]]
    return splits


# ------------------------------------------------------------------------------------------------ the spec
def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units (computed, never copied from a paper).

    Exact and fast: a 256-bin histogram per channel instead of a float copy of every pixel.
    """
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / n
        std = var.sqrt() if var > 0 else torch.tensor(255.0, dtype=torch.float64)  # constant: leave unscaled
        means.append(float(mean) / 255)
        stds.append(float(std) / 255)
    return tuple(means), tuple(stds)


def training_stats(train_x: Images, decode, workers: int, seed: int):
    """(mean, std) of the training split; image files: of STATS_SAMPLE of them, decoded with `decode`."""
    if isinstance(train_x, FileList):
        pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))[:STATS_SAMPLE]
        train_x = decode_files(train_x[pick], decode, workers)
    return channel_stats(train_x)


def make_spec(data_cfg: DictConfig, arrays: ArrayDataset, splits: Splits, size: int, stats) -> DataSpec:
    num_classes = len(arrays.classes) if data_cfg.get("classes") else data_cfg.num_classes or len(arrays.classes)
    if int(arrays.train_y.max()) >= num_classes:
        raise CnnlabError(f"data.num_classes={num_classes} but the labels go up to {int(arrays.train_y.max())}")
    channels = 3 if isinstance(splits.train_x, FileList) else splits.train_x.shape[1]
    mean, std = stats
    return DataSpec(num_classes, channels, size, arrays.classes, mean, std)


# -------------------------------------------------------------------------------------------------- loaders
@dataclass
class LoaderFactory:
    """Makes the run's loaders; what they share (device path, normalisation, seed, shard, the train-time
    augmentation and mixing, the evaluation transform of the DataLoader path) is set once."""

    device: torch.device
    on_device: bool
    spec: DataSpec
    seed: int
    shard: Shard
    augment: object  # train-time pipeline: a BatchAugment (device) or a v2 transform (DataLoader); or None
    mixer: Mixer | None
    eval_transform: object  # the DataLoader path's per-image transform when not augmenting
    workers: int

    def __call__(self, x: Images, y: torch.Tensor, batch_size: int, train: bool) -> Loader:
        common = {
            "train": train,
            "augment": self.augment if train else None,
            "mixer": self.mixer if train else None,
            "seed": self.seed,
            "shard": self.shard,
        }
        mean, std = self.spec.mean, self.spec.std
        if self.on_device:
            return DeviceLoader(x.to(self.device), y.to(self.device), batch_size, mean, std, **common)
        return WorkerLoader(
            x,
            y,
            batch_size,
            mean,
            std,
            self.device,
            eval_transform=self.eval_transform,
            num_workers=self.workers,
            **common,
        )


def train_augment(aug: DictConfig | None, device_path: bool, size: int, fill: tuple[int, ...], from_files: bool):
    """The train-time pipeline of the chosen path, or None when nothing augments."""
    if aug is None or not is_active(aug):
        return None
    return BatchAugment(aug, fill) if device_path else image_transform(aug, size, fill, from_files=from_files)


# ---------------------------------------------------------------------------------------------------- build
def build(
    data_cfg: DictConfig,
    augment_cfg: DictConfig | None,
    device: torch.device,
    seed: int = 0,
    stats: tuple | None = None,
    shard: Shard | None = None,
) -> DataBundle:
    """Load, split and wrap the dataset in loaders for `device`. `stats` reuses a checkpoint's mean/std;
    `shard` is this rank's share (default: the torch.distributed process group's, else everything)."""
    arrays = load_arrays(data_cfg, seed)
    from_files = isinstance(arrays.train_x, FileList)
    size = data_cfg.image_size or arrays.train_x.shape[-1]
    workers = data_cfg.num_workers
    plain = image_transform(None, size, (0,), from_files=from_files)  # what evaluation sees
    device_path = on_device(data_cfg, from_files, size)
    if from_files and device_path:  # decode once, keep the arrays
        arrays.train_x, arrays.test_x = (decode_files(x, plain, workers) for x in (arrays.train_x, arrays.test_x))
        from_files = False
    splits = split(arrays, data_cfg, seed)
    spec = make_spec(data_cfg, arrays, splits, size, stats or training_stats(splits.train_x, plain, workers, seed))

    aug = augment_cfg
    fill = tuple(round(255 * m) for m in spec.mean)  # erasing/cutout fill: the mean, which normalises to 0
    mixer = (
        None
        if aug is None
        else Mixer(spec.num_classes, aug.mixup_alpha, aug.cutmix_alpha, aug.mix_prob, aug.mix_switch_prob)
    )
    make = LoaderFactory(
        device,
        device_path,
        spec,
        seed,
        shard or Shard.current(),
        train_augment(aug, device_path, size, fill, from_files),
        mixer,
        plain,
        workers,
    )
    eval_bs = data_cfg.eval_batch_size or 2 * data_cfg.batch_size
    train = make(splits.train_x, splits.train_y, data_cfg.batch_size, True)
    test = make(splits.test_x, splits.test_y, eval_bs, False)
    val = test if splits.val_is_test else make(splits.val_x, splits.val_y, eval_bs, False)
    return DataBundle(train, val, test, spec, splits.val_is_test)
