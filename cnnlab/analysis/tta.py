"""Test-time augmentation: the model's logits averaged over an image and its mirror image."""

from __future__ import annotations

import torch
from torch import nn


class FlipAverage(nn.Module):
    """(model(x) + model(x flipped left-right)) / 2: one batch of twice the size, so one forward pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(torch.cat([x, x.flip(-1)]))
        plain, mirrored = logits.chunk(2)
        return (plain + mirrored) / 2
