"""Data: `build(cfg.data, cfg.augment, device, seed)` -> DataBundle(train, val, test loaders, DataSpec).

Honest evaluation by default: `data.val_split` (a fraction) is held out of the training set with a seeded
permutation and picks the best checkpoint; the test split is only for the final report.
`data.val_split=test` selects on the test split instead, as much published code does.

Modules: sources.py names the datasets (idx.py, cifar.py, svhn.py + matlab.py, stl10.py, folders.py,
datasets.py for what they share); augment.py turns the augment group into a pipeline, built from
transforms.py (batched ops) and mix.py (mixup/cutmix); loaders.py has the device-resident loader and the
DataLoader one. `data.loader=auto` keeps everything on the device except image files larger than
DEVICE_MAX_FILE_SIZE, which stream through DataLoader workers (`data.num_workers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Union

import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab.config import AugmentConfig
from cnnlab.data.augment import BatchAugment, image_transform, is_active
from cnnlab.data.datasets import ArrayDataset, FileList, make_synthetic
from cnnlab.data.folders import load_imagefolder
from cnnlab.data.loaders import DeviceLoader, WorkerLoader, decode_files
from cnnlab.data.mix import Mixer
from cnnlab.data.sources import SOURCES
from cnnlab.data.transforms import resize_uint8
from cnnlab.errors import CnnlabError

DATASETS = (*SOURCES, "imagefolder", "synthetic")
DEVICE_MAX_FILE_SIZE = 64  # auto: image-file datasets up to this size are decoded once and kept on the device
STATS_SAMPLE = 2000  # image-file datasets on the DataLoader path: mean/std from this many training images
Loader = Union[DeviceLoader, WorkerLoader]


@dataclass
class DataSpec:
    """What a model and a report need to know about the data, and nothing about how it is loaded."""

    num_classes: int
    channels: int
    image_size: int
    classes: list[str] = field(default_factory=list)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def as_dict(self) -> dict:
        return {"num_classes": self.num_classes, "channels": self.channels, "image_size": self.image_size,
                "classes": list(self.classes), "mean": list(self.mean), "std": list(self.std)}


@dataclass
class DataBundle:
    train: Loader
    val: Loader
    test: Loader
    spec: DataSpec
    val_is_test: bool = False


def load_arrays(data_cfg: DictConfig, seed: int = 0) -> ArrayDataset:
    """The dataset on the CPU: uint8 arrays at the configured image size, or image files."""
    name = data_cfg.name
    if name == "synthetic":
        arrays = make_synthetic(data_cfg.channels or 3, data_cfg.image_size or 32, data_cfg.num_classes or 10,
                                data_cfg.num_samples, seed)
    elif name == "imagefolder":
        arrays = load_imagefolder(Path(data_cfg.root).expanduser(), data_cfg.download_url, data_cfg.val_fraction,
                                  seed, data_cfg.download)
    elif name in SOURCES:
        arrays = SOURCES[name](Path(data_cfg.root).expanduser(), data_cfg.download)
    else:
        raise CnnlabError(f"data.name '{name}' is not a dataset; choose from: {', '.join(DATASETS)}")
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
            f"data.channels={data_cfg.channels} but {name} images have {arrays.train_x.shape[1]} channel(s)")
    return arrays


def augment_options(augment_cfg: DictConfig | None) -> DictConfig:
    """The augment group on top of the schema's defaults (a checkpoint's older config may lack or add keys)."""
    known = {f.name for f in fields(AugmentConfig)}
    given = {k: v for k, v in (augment_cfg or {}).items() if k in known}
    return OmegaConf.merge(OmegaConf.structured(AugmentConfig), given)


def on_device(data_cfg: DictConfig, from_files: bool, size: int) -> bool:
    """data.loader: device | dataloader | auto (device, except image files larger than DEVICE_MAX_FILE_SIZE)."""
    if data_cfg.loader != "auto":
        return data_cfg.loader == "device"
    return not from_files or size <= DEVICE_MAX_FILE_SIZE


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


def build(data_cfg: DictConfig, augment_cfg: DictConfig, device: torch.device, seed: int = 0,
          stats: tuple | None = None) -> DataBundle:
    """Load, split and wrap the dataset in loaders for `device`; `stats` reuses a checkpoint's mean/std."""
    arrays = load_arrays(data_cfg, seed)
    from_files = isinstance(arrays.train_x, FileList)
    size = data_cfg.image_size or arrays.train_x.shape[-1]
    workers = data_cfg.num_workers
    plain = image_transform(None, size, (0,), from_files=from_files)  # what evaluation sees
    device_path = on_device(data_cfg, from_files, size)
    if from_files and device_path:  # decode once, keep the arrays
        arrays.train_x, arrays.test_x = (decode_files(x, plain, workers) for x in (arrays.train_x, arrays.test_x))
        from_files = False
    train_x, train_y = arrays.train_x, arrays.train_y
    if data_cfg.subset:
        keep = subset_per_class(train_y, data_cfg.subset)
        train_x, train_y = train_x[keep], train_y[keep]
    val_is_test = data_cfg.val_split == "test"
    if val_is_test:
        val_x, val_y = arrays.test_x, arrays.test_y
    else:
        tr, va = split_train_val(len(train_y), float(data_cfg.val_split), seed)
        train_x, train_y, val_x, val_y = train_x[tr], train_y[tr], train_x[va], train_y[va]
    if stats is None:
        sample = train_x
        if from_files:
            pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))[:STATS_SAMPLE]
            sample = decode_files(train_x[pick], plain, workers)
        stats = channel_stats(sample)
    mean, std = stats
    num_classes = data_cfg.num_classes or len(arrays.classes)
    if int(arrays.train_y.max()) >= num_classes:
        raise CnnlabError(f"data.num_classes={num_classes} but the labels go up to {int(arrays.train_y.max())}")
    channels = 3 if from_files else train_x.shape[1]
    spec = DataSpec(num_classes, channels, size, arrays.classes, mean, std)

    aug = augment_options(augment_cfg)
    fill = tuple(round(255 * m) for m in mean)  # erasing/cutout fill: the mean, which normalises to 0
    mixer = Mixer(num_classes, aug.mixup_alpha, aug.cutmix_alpha, aug.mix_prob, aug.mix_switch_prob)
    eval_bs = data_cfg.eval_batch_size or 2 * data_cfg.batch_size
    if device_path:
        def loader(x, y, bs, train):
            return DeviceLoader(x.to(device), y.to(device), bs, mean, std, train=train, seed=seed,
                                augment=BatchAugment(aug, fill) if train else None, mixer=mixer if train else None)
    else:
        augmenting = image_transform(aug, size, fill, from_files=from_files) if is_active(aug) else None

        def loader(x, y, bs, train):
            return WorkerLoader(x, y, bs, mean, std, device, train=train, augment=augmenting if train else None,
                                eval_transform=plain, mixer=mixer if train else None, seed=seed,
                                num_workers=workers)

    train = loader(train_x, train_y, data_cfg.batch_size, True)
    test = loader(arrays.test_x, arrays.test_y, eval_bs, False)
    val = test if val_is_test else loader(val_x, val_y, eval_bs, False)
    return DataBundle(train, val, test, spec, val_is_test)
