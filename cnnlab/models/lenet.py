"""LeNet-5 (LeCun et al., 1998): conv5x5(6) - pool - conv5x5(16) - pool - FC120 - FC84 - FC."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.layers import make_act, pool_factory


class LeNet5(nn.Module):
    """Unpadded convolutions, so the FC input depends on the image size: 16x4x4 at 28x28, 16x5x5 at 32x32."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 32,
                 act: str = "relu", pool: str = "avg", pool_p: float = 2.0, pool_lambda="random"):
        super().__init__()
        pooler = pool_factory(pool, pool_p, pool_lambda)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5), make_act(act), pooler(2, channels=6),
            nn.Conv2d(6, 16, 5), make_act(act), pooler(2, channels=16),
        )
        side = ((image_size - 4) // 2 - 4) // 2  # conv5 (-4), pool (/2), conv5, pool
        if side < 1:
            raise CnnlabError(f"LeNet-5 needs images of at least 12x12; got {image_size}x{image_size}")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120), make_act(act),
            nn.Linear(120, 84), make_act(act),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
