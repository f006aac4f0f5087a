"""LeNet-5 (LeCun et al., 1998): conv5x5(6) - pool - conv5x5(16) - pool - FC120 - FC84 - FC."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.layers import make_act, make_pool


class LeNet5(nn.Module):
    """Unpadded convolutions, so the FC input depends on the image size: 16x4x4 at 28x28, 16x5x5 at 32x32."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 32,
                 act: str = "relu", pool: str = "avg"):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5), make_act(act), make_pool(pool, 2, channels=6),
            nn.Conv2d(6, 16, 5), make_act(act), make_pool(pool, 2, channels=16),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, image_size, image_size)).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 120), make_act(act),
            nn.Linear(120, 84), make_act(act),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
