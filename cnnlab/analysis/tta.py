"""Test-time augmentation: the model's logits averaged over views of each image (`tta=none|flip|flip_translate`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TTA_LEVELS = ("none", "flip", "flip_translate")


class FlipAverage(nn.Module):
    """(model(x) + model(x flipped left-right)) / 2: one batch of twice the size, so one forward pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(torch.cat([x, x.flip(-1)]))
        plain, mirrored = logits.chunk(2)
        return (plain + mirrored) / 2


class FlipTranslateAverage(nn.Module):
    """airbench94's multi-view TTA: half the weight on the flip average of the image, a quarter each on the flip
    averages of the image shifted one pixel up-left and down-right (reflect padding). 6 views, one forward pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        views = torch.cat([x, padded[..., :h, :w], padded[..., 2:, 2:]])
        logits = self.model(torch.cat([views, views.flip(-1)]))
        per_view = logits.view(2, 3, len(x), -1).mean(0)  # each view averaged with its mirror image
        return 0.5 * per_view[0] + 0.25 * (per_view[1] + per_view[2])


def with_tta(model: nn.Module, level: str) -> nn.Module:
    """`model` evaluated at TTA `level` (one of TTA_LEVELS)."""
    return {"none": lambda m: m, "flip": FlipAverage, "flip_translate": FlipTranslateAverage}[level](model)
