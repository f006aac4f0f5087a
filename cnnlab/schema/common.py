"""What every command's schema shares: the data and augment groups, the unknown-key check with its "did you mean",
and resolving every interpolation up front. Light on purpose (dataclasses, OmegaConf): `cnnlab --help` imports it.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from cnnlab.errors import CnnlabError


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = "${oc.env:CNNLAB_DATA_ROOT,./data}"
    download: bool = True
    batch_size: int = 128
    eval_batch_size: Optional[int] = None  # null: 2 x batch_size
    num_workers: int = 2
    val_split: Any = 0.1  # a fraction of the training set, or "test" (select on the test split)
    image_size: Optional[int] = None  # null: the dataset's native size
    channels: Optional[int] = None
    num_classes: Optional[int] = None
    num_samples: int = 1024  # synthetic only
    subset: Optional[int] = None  # keep at most n training images per class
    eval_subset: Optional[int] = None  # evaluate val and test on their first n images only (cheap small runs)
    classes: Optional[list[Any]] = None  # keep only these classes (names or indices), relabelled 0..k-1 in this order
    loader: str = "auto"  # auto | device | dataloader (auto: device, but dataloader for large image files)
    val_fraction: float = 0.1  # imagefolder without a val/ folder: held out per class as the test split
    download_url: Optional[str] = None  # imagefolder: an archive to fetch into data.root when it is missing


@dataclass
class AugmentConfig:
    """Train-time augmentation; presets in configs/augment/ set a few keys each and compose in order
    (augment=[basic,cutout,mixup]). Applied: resized crop, padded crop, flip, jitter, policy, erasing,
    cutout, then mixup/cutmix on the batch. Evaluation never augments."""

    resized_crop: bool = False  # random resized crop back to the image size (the large-image standard)
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # area fraction range
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 4 / 3])  # aspect ratio range (w / h)
    crop_padding: int = 0  # random crop with this padding (CIFAR standard: 4): a translation by up to this many pixels
    crop_pad_mode: str = "zeros"  # zeros | reflect (airbench: translate 2 with reflect padding)
    flip: bool = False  # horizontal flip
    flip_mode: str = "random"  # random (each image, p 0.5) | alternate (airbench: random in epoch 1, then each
    # image mirrored every other epoch; device loader only, the DataLoader path flips at random)
    color_jitter: float = 0.0  # brightness, contrast, saturation factors drawn from [1 - x, 1 + x]
    hue: float = 0.0  # hue shift drawn from [-hue, hue] (<= 0.5)
    policy: Optional[str] = None  # autoaugment | randaugment | trivialaugment
    autoaugment_policy: str = "imagenet"  # imagenet | cifar10 | svhn
    randaugment_n: int = 2  # RandAugment: ops per image
    randaugment_m: int = 9  # RandAugment: magnitude 0..30
    erasing: float = 0.0  # random erasing probability
    erasing_scale: list[float] = field(default_factory=lambda: [0.02, 0.33])
    erasing_ratio: list[float] = field(default_factory=lambda: [0.3, 3.3])
    cutout: int = 0  # side of the cutout square in pixels (0: off)
    mixup_alpha: float = 0.0  # MixUp: lambda ~ Beta(alpha, alpha) (0: off)
    cutmix_alpha: float = 0.0  # CutMix: lambda ~ Beta(alpha, alpha) (0: off)
    mix_prob: float = 1.0  # probability that a batch is mixed at all
    mix_switch_prob: float = 0.5  # with both on: probability of CutMix rather than MixUp


# trainer.precision / eval precision: autocast dtypes (cnnlab/engine/device.py resolves them)
PRECISIONS = ("auto", "bf16_native", "fp32", "bf16", "fp16")

# Keys Hydra's instantiate reads itself.
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def unknown(key: str, known: list[str], where: str) -> CnnlabError:
    """One line naming the key and the nearest valid one (or, with none near, the valid ones)."""
    known = [k for k in known if k not in HYDRA_KEYS]
    guess = difflib.get_close_matches(key.rpartition(".")[2], known, n=1, cutoff=0.6)
    hint = (
        f"did you mean {key.rpartition('.')[0] + '.' if '.' in key else ''}{guess[0]}?"
        if guess
        else f"the keys there: {', '.join(sorted(known))}"
    )
    return CnnlabError(f"unknown key {key} ({where}; {hint})")


def check_keys(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Every key of `cfg` must be a field of the dataclass `schema` (recursively for dataclass fields).

    Hydra's `+key=value` adds keys even where the schema is closed, and a key nothing reads would be
    silently ignored: `+trainer.epochz=3` would train 15 epochs. Open (Any) fields are not walked here.
    """
    hints = typing.get_type_hints(schema)
    known = [f.name for f in dataclasses.fields(schema)]
    for key in OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else ():
        if key not in known:
            raise unknown(f"{prefix}{key}", known, "not in the config schema")
        if dataclasses.is_dataclass(hints[key]) and isinstance(cfg._get_node(key), DictConfig):
            check_keys(cfg._get_node(key), hints[key], f"{prefix}{key}.")


def resolve_all(cfg: DictConfig) -> None:
    """Resolve every interpolation once, up front: an unset `${oc.env:X}` or a dangling `${a.b}` is the
    user's config, so one line naming the key, not a traceback wherever the value is first read."""
    from omegaconf.errors import InterpolationResolutionError

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as ex:
        detail = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        detail = detail.removeprefix("KeyError raised while resolving interpolation: ").strip('"')
        raise CnnlabError(f"cannot resolve {ex.full_key}: {detail}") from None
