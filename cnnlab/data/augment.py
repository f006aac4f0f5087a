"""The `augment` config turned into a pipeline: batched for the device loader, per image for the DataLoader.

Both pipelines apply the same steps in the same order, with the same sampling rules:
resized crop -> padded crop -> flip -> colour jitter -> policy (auto/rand/trivial) -> erasing -> cutout;
then (in the loaders) normalise -> mixup/cutmix. Erasing and cutout fill with the dataset mean, which
normalises to zero. Policies are per-image torchvision v2 transforms on both paths (correct before fast).
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig
from torchvision.transforms import v2

from cnnlab.data import transforms as T

POLICIES = ("autoaugment", "randaugment", "trivialaugment")


def policy_transform(aug: DictConfig):
    """The configured torchvision v2 policy, or None."""
    if not aug.policy:
        return None
    if aug.policy == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy(aug.autoaugment_policy))
    if aug.policy == "randaugment":
        return v2.RandAugment(num_ops=aug.randaugment_n, magnitude=aug.randaugment_m)
    return v2.TrivialAugmentWide()


def is_active(aug: DictConfig) -> bool:
    """Whether any per-image step is on (mixup/cutmix are the loaders' business)."""
    return bool(aug.resized_crop or aug.crop_padding or aug.flip or aug.color_jitter or aug.hue or aug.policy
                or aug.erasing or aug.cutout)


class BatchAugment:
    """Train-time augmentation of a uint8 batch on its device (per-image draws from the loader's generator)."""

    def __init__(self, aug: DictConfig, fill: tuple[int, ...]):
        self.aug = aug
        self.fill = torch.tensor(fill, dtype=torch.uint8)
        self.policy = policy_transform(aug)

    @property
    def active(self) -> bool:
        return is_active(self.aug)

    def __call__(self, x: torch.Tensor, generator: torch.Generator, rng: np.random.Generator) -> torch.Tensor:
        a = self.aug
        if a.resized_crop:
            x = T.random_resized_crop(x, a.crop_scale, a.crop_ratio, generator)
        if a.crop_padding:
            x = T.random_crop(x, a.crop_padding, generator, flip=0.5 if a.flip else 0.0)
        elif a.flip:
            x = T.random_flip(x, generator)
        if a.color_jitter or a.hue:
            x = T.color_jitter(x, a.color_jitter, a.hue, rng.permutation(4).tolist(), generator)
        if self.policy is not None:
            with torch.random.fork_rng(devices=[]):  # v2 policies draw from the global RNG: isolate and seed it
                torch.manual_seed(int(rng.integers(2**62)))
                x = torch.stack([self.policy(image) for image in x])
        if self.fill.device != x.device:  # once: a host-to-device copy per batch would sync every step
            self.fill = self.fill.to(x.device)
        fill = self.fill
        if a.erasing:
            x = T.random_erasing(x, a.erasing, a.erasing_scale, a.erasing_ratio, fill, generator)
        if a.cutout:
            x = T.cutout(x, a.cutout, fill, generator)
        return x


class Cutout:
    """Per-image cutout for a v2 pipeline (torchvision has none): the batched op on a batch of one."""

    def __init__(self, size: int, fill: tuple[int, ...]):
        self.size, self.fill = size, torch.tensor(fill, dtype=torch.uint8)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return T.cutout(image[None], self.size, self.fill, None)[0]


def image_transform(aug: DictConfig | None, size: int, fill: tuple[int, ...], *, from_files: bool) -> v2.Compose:
    """The per-image v2 pipeline on uint8 (C, H, W) tensors; `aug` None: evaluation (no augmentation).

    Files (any size) are first brought to size x size: a random resized crop of the whole image when
    training with `resized_crop`, else resize the short side and centre-crop.
    """
    steps = []
    if from_files:
        steps.append(v2.PILToTensor())
        if not (aug is not None and aug.resized_crop):
            steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    if aug is None:
        return v2.Compose(steps or [v2.Identity()])
    if aug.resized_crop:
        steps.append(v2.RandomResizedCrop(size, scale=tuple(aug.crop_scale), ratio=tuple(aug.crop_ratio),
                                          antialias=True))
    if aug.crop_padding:
        steps.append(v2.RandomCrop(size, padding=aug.crop_padding))
    if aug.flip:
        steps.append(v2.RandomHorizontalFlip())
    if aug.color_jitter or aug.hue:
        s = aug.color_jitter
        steps.append(v2.ColorJitter(brightness=s or None, contrast=s or None, saturation=s or None,
                                    hue=aug.hue or None))
    if (policy := policy_transform(aug)) is not None:
        steps.append(policy)
    if aug.erasing:
        steps.append(v2.RandomErasing(aug.erasing, scale=tuple(aug.erasing_scale), ratio=tuple(aug.erasing_ratio),
                                      value=list(fill)))
    if aug.cutout:
        steps.append(Cutout(aug.cutout, fill))
    return v2.Compose(steps or [v2.Identity()])
