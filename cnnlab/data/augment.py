"""The `augment` config turned into a pipeline: batched for the device loader, per image for the DataLoader.

Each augmentation is one `Op` object in STEPS: the config keys it reads and their range checks, when it is
on, its batched form (uint8 batch on the device, draws from the loader's generators) and its per-image
torchvision v2 form. Both pipelines run the active ops in STEPS order with the same sampling rules:
resized crop -> padded crop -> flip -> colour jitter -> policy (auto/rand/trivial) -> erasing -> cutout;
then (in the loaders) normalise -> mixup/cutmix. Erasing and cutout fill with the dataset mean, which
normalises to zero.

Adding an op: one Op subclass here (appended to STEPS), one field in AugmentConfig (cnnlab/schema/common.py),
one preset in configs/augment/.

Batched ops also get the batch's `Position` (dataset indices, epoch, seed): the alternating flip needs to
know which image is which. Its per-image form (DataLoader path) is a random flip: the same share of mirrored
images in every epoch, without the alternation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab.checks import choice, number
from cnnlab.data import transforms as T
from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from torchvision.transforms import v2


@dataclass
class Position:
    """Where a training batch comes from: its images' dataset indices (None: 0..B-1), the epoch, the seed."""

    index: torch.Tensor | None = None
    epoch: int = 0
    seed: int = 0

    def flips(self, n: int, device: torch.device) -> torch.Tensor:
        """The alternating flip's mask for the batch's n images."""
        index = self.index if self.index is not None else torch.arange(n, device=device)
        return T.alternating_flips(index.to(device), self.epoch, self.seed)


Batched = Callable[[torch.Tensor, torch.Generator, np.random.Generator, Position], torch.Tensor]


def _pair(cfg: DictConfig, key: str, high: float | None = None) -> None:
    value = list(cfg.augment[key])
    if (
        len(value) != 2
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
        or not 0 < value[0] <= value[1]
        or (high is not None and value[1] > high)
    ):
        limit = f" <= {high}" if high is not None else ""
        raise CnnlabError(f"augment.{key} must be [low, high] with 0 < low <= high{limit}, got {value}")


class Op:
    """One augmentation step. `check` gets the whole train config (keys are named augment.<key> in errors)."""

    def check(self, cfg: DictConfig) -> None:
        """Raise CnnlabError naming the key when a value is out of range."""

    def active(self, aug: DictConfig) -> bool:
        raise NotImplementedError

    def batched(self, aug: DictConfig, fill: torch.Tensor) -> Batched:
        """(x uint8 (B, C, H, W), torch generator, numpy generator, Position) -> x, for the device loader."""
        raise NotImplementedError

    def per_image(self, aug: DictConfig, size: int, fill: tuple[int, ...]) -> list:
        """The torchvision v2 transforms doing the same per image, for the DataLoader path."""
        raise NotImplementedError


class ResizedCrop(Op):
    def check(self, cfg):
        _pair(cfg, "crop_scale", 1.0)
        _pair(cfg, "crop_ratio")

    def active(self, aug):
        return bool(aug.resized_crop)

    def batched(self, aug, fill):
        return lambda x, g, rng, pos: T.random_resized_crop(x, aug.crop_scale, aug.crop_ratio, g)

    def per_image(self, aug, size, fill):
        from torchvision.transforms import v2

        return [v2.RandomResizedCrop(size, scale=tuple(aug.crop_scale), ratio=tuple(aug.crop_ratio), antialias=True)]


class PaddedCrop(Op):
    """Random crop with zero or reflect padding (a translation by up to crop_padding pixels); on the device it
    also does the flip. Batched, it crops from padded images: the batch padded, or (BatchAugment.take) the
    whole dataset padded once."""

    def check(self, cfg):
        number(cfg, "augment.crop_padding", low=0, integer=True)
        choice(cfg, "augment.crop_pad_mode", ("zeros", "reflect"))
        choice(cfg, "augment.flip_mode", ("random", "alternate"))
        size = OmegaConf.select(cfg, "data.image_size")
        if cfg.augment.crop_pad_mode == "reflect" and size and cfg.augment.crop_padding >= size:
            raise CnnlabError(f"augment.crop_padding must be < the image size ({size}) with crop_pad_mode=reflect")

    def active(self, aug):
        return bool(aug.crop_padding)

    def batched(self, aug, fill):
        crop = self.from_padded(aug, with_mirror=False)
        return lambda x, g, rng, pos: crop(self.pad(aug, x, False), torch.arange(len(x), device=x.device), g, pos)

    def pad(self, aug, images: torch.Tensor, with_mirror: bool) -> torch.Tensor:
        return T.pad(images, aug.crop_padding, reflect=aug.crop_pad_mode == "reflect", with_mirror=with_mirror)

    def from_padded(self, aug, with_mirror: bool) -> Callable:
        """(images padded by self.pad, the batch's indices into them, torch generator, Position) -> the batch."""
        p = aug.crop_padding
        if aug.flip and aug.flip_mode == "alternate":
            return lambda padded, index, g, pos: T.random_crop_from(
                padded, index, p, g, mirrored=pos.flips(len(index), padded.device), with_mirror=with_mirror
            )
        flip = 0.5 if aug.flip else 0.0
        return lambda padded, index, g, pos: T.random_crop_from(padded, index, p, g, flip, with_mirror=with_mirror)

    def per_image(self, aug, size, fill):
        from torchvision.transforms import v2

        mode = "reflect" if aug.crop_pad_mode == "reflect" else "constant"
        return [v2.RandomCrop(size, padding=aug.crop_padding, padding_mode=mode)]


class Flip(Op):
    def active(self, aug):
        return bool(aug.flip)

    def batched(self, aug, fill):
        if aug.crop_padding:  # fused into PaddedCrop's gather, in the same place of the order
            return lambda x, g, rng, pos: x
        if aug.flip_mode == "alternate":
            return lambda x, g, rng, pos: T.mirror(x, pos.flips(len(x), x.device))
        return lambda x, g, rng, pos: T.random_flip(x, g)

    def per_image(self, aug, size, fill):
        from torchvision.transforms import v2

        return [v2.RandomHorizontalFlip()]  # flip_mode=alternate too: per image, the epoch is not known


class ColorJitter(Op):
    def check(self, cfg):
        number(cfg, "augment.color_jitter", low=0, high=1)
        number(cfg, "augment.hue", low=0, high=0.5)

    def active(self, aug):
        return bool(aug.color_jitter or aug.hue)

    def batched(self, aug, fill):
        return lambda x, g, rng, pos: T.color_jitter(x, aug.color_jitter, aug.hue, rng.permutation(4).tolist(), g)

    def per_image(self, aug, size, fill):
        from torchvision.transforms import v2

        s = aug.color_jitter
        return [v2.ColorJitter(brightness=s or None, contrast=s or None, saturation=s or None, hue=aug.hue or None)]


class Policy(Op):
    """AutoAugment / RandAugment / TrivialAugment: torchvision's v2 policy per image, BatchedPolicy on a batch."""

    NAMES = ("autoaugment", "randaugment", "trivialaugment")

    def check(self, cfg):
        if cfg.augment.policy is not None:
            choice(cfg, "augment.policy", self.NAMES)
        choice(cfg, "augment.autoaugment_policy", ("imagenet", "cifar10", "svhn"))
        number(cfg, "augment.randaugment_n", low=0, integer=True)
        number(cfg, "augment.randaugment_m", low=0, high=30, integer=True)

    def active(self, aug):
        return bool(aug.policy)

    def reference(self, aug) -> v2.Transform:
        from cnnlab.data.policies import reference_policy  # torchvision: only when a policy is used

        return reference_policy(aug.policy, aug.autoaugment_policy, aug.randaugment_n, aug.randaugment_m)

    def batched(self, aug, fill):
        from cnnlab.data.policies import BatchedPolicy

        policy = BatchedPolicy(self.reference(aug))
        return lambda x, g, rng, pos: policy(x, rng)

    def per_image(self, aug, size, fill):
        return [self.reference(aug)]


class Erasing(Op):
    def check(self, cfg):
        number(cfg, "augment.erasing", low=0, high=1)
        _pair(cfg, "erasing_scale", 1.0)
        _pair(cfg, "erasing_ratio")

    def active(self, aug):
        return bool(aug.erasing)

    def batched(self, aug, fill):
        return lambda x, g, rng, pos: T.random_erasing(x, aug.erasing, aug.erasing_scale, aug.erasing_ratio, fill, g)

    def per_image(self, aug, size, fill):
        from torchvision.transforms import v2

        return [
            v2.RandomErasing(
                aug.erasing, scale=tuple(aug.erasing_scale), ratio=tuple(aug.erasing_ratio), value=list(fill)
            )
        ]


class Cutout(Op):
    def check(self, cfg):
        number(cfg, "augment.cutout", low=0, integer=True)

    def active(self, aug):
        return bool(aug.cutout)

    def batched(self, aug, fill):
        return lambda x, g, rng, pos: T.cutout(x, aug.cutout, fill, g)

    def per_image(self, aug, size, fill):
        return [_CutoutImage(aug.cutout, fill)]


class _CutoutImage:
    """Per-image cutout for a v2 pipeline (torchvision has none): the batched op on a batch of one."""

    def __init__(self, size: int, fill: tuple[int, ...]):
        self.size, self.fill = size, torch.tensor(fill, dtype=torch.uint8)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return T.cutout(image[None], self.size, self.fill, None)[0]


STEPS: tuple[Op, ...] = (ResizedCrop(), PaddedCrop(), Flip(), ColorJitter(), Policy(), Erasing(), Cutout())


def check(cfg: DictConfig) -> None:
    """Range checks of every augment key (the train and preview commands call this), mixup/cutmix included."""
    for op in STEPS:
        op.check(cfg)
    for key in ("mixup_alpha", "cutmix_alpha"):
        number(cfg, f"augment.{key}", low=0)
    for key in ("mix_prob", "mix_switch_prob"):
        number(cfg, f"augment.{key}", low=0, high=1)


def is_active(aug: DictConfig) -> bool:
    """Whether any per-image step is on (mixup/cutmix are the loaders' business)."""
    return any(op.active(aug) for op in STEPS)


PREPAD_MAX_BYTES = 1 << 30  # BatchAugment.take pads a dataset once up to this size; above, each batch


class BatchAugment:
    """Train-time augmentation of a uint8 batch on its device (per-image draws from the loader's generators)."""

    def __init__(self, aug: DictConfig, fill: tuple[int, ...]):
        self.aug = aug
        self.fill = torch.tensor(fill, dtype=torch.uint8)
        self._ops = [op for op in STEPS if op.active(aug)]
        self._device, self._steps = None, []
        self._padded: tuple[torch.Tensor, torch.Tensor] | None = None  # (dataset, its padded copy)

    @property
    def active(self) -> bool:
        return bool(self._ops)

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator, rng: np.random.Generator, position: Position | None = None
    ) -> torch.Tensor:
        """`position`: where the batch comes from (the device loader passes it; None: indices 0..B-1, epoch 0)."""
        return self._run(self._prepare(x.device), x, generator, rng, position or Position())

    def take(
        self,
        images: torch.Tensor,
        index: torch.Tensor,
        generator: torch.Generator,
        rng: np.random.Generator,
        position: Position,
    ) -> torch.Tensor:
        """self(images.index_select(0, index), ...), the same pixels and draws, but a padded crop that comes
        first reads its windows straight from the dataset padded once (airbench's way: no batch is gathered,
        padded or copied before the crop). The padded copy, with each image's mirror image after it when flipping (a
        mirrored crop is then a window too), is kept while `images` is the dataset, up to PREPAD_MAX_BYTES:
        (1 + 2 padding / H)^2 the dataset's size, twice that with flips (CIFAR-10: 240 MB, 480 MB)."""
        steps = self._prepare(images.device)
        first = self._ops[0] if self._ops else None
        if isinstance(first, PaddedCrop):
            padded = self._padded_dataset(first, images)
            if padded is not None:
                x = first.from_padded(self.aug, bool(self.aug.flip))(padded, index, generator, position)
                return self._run(steps[1:], x, generator, rng, position)
        return self._run(steps, images.index_select(0, index), generator, rng, position)

    def _padded_dataset(self, crop: PaddedCrop, images: torch.Tensor) -> torch.Tensor | None:
        if self._padded is None or self._padded[0] is not images:
            h, w = images.shape[-2:]
            p, copies = self.aug.crop_padding, 2 if self.aug.flip else 1
            if copies * images.numel() * (h + 2 * p) * (w + 2 * p) // (h * w) > PREPAD_MAX_BYTES:
                return None
            self._padded = (images, crop.pad(self.aug, images, bool(self.aug.flip)))
        return self._padded[1]

    def _prepare(self, device: torch.device) -> list[Batched]:
        if self._device != device:  # once: the fill goes to the device (a copy per batch would sync)
            self._device = device
            fill = self.fill.to(device)
            self._steps = [op.batched(self.aug, fill) for op in self._ops]
        return self._steps

    @staticmethod
    def _run(steps, x, generator, rng, position) -> torch.Tensor:
        for step in steps:
            x = step(x, generator, rng, position)
        return x


def _unchanged(image):
    return image


def image_transform(aug: DictConfig | None, size: int, fill: tuple[int, ...], *, from_files: bool) -> v2.Compose:
    """The per-image v2 pipeline on uint8 (C, H, W) tensors; `aug` None: evaluation (no augmentation).

    Files (any size) are first brought to size x size: a random resized crop of the whole image when
    training with `resized_crop`, else resize the short side and centre-crop.
    """
    if not from_files and (aug is None or not any(op.active(aug) for op in STEPS)):
        return _unchanged  # arrays, nothing to do: no torchvision to import
    from torchvision.transforms import v2

    steps = []
    if from_files:
        steps.append(v2.PILToTensor())
        if not (aug is not None and aug.resized_crop):
            steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    if aug is not None:
        for op in STEPS:
            if op.active(aug):
                steps += op.per_image(aug, size, fill)
    return v2.Compose(steps or [v2.Identity()])
