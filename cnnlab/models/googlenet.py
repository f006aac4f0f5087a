"""GoogLeNet / Inception v1 (Szegedy et al., 2014): inception modules of parallel 1x1, 3x3, 5x5 and pool branches."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.blocks import conv_norm_act, init_weights
from cnnlab.models.knobs import check_choice

# (in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) per module; an int k = max-pool k/2
MODULES = [
    (192, 64, 96, 128, 16, 32, 32),
    (256, 128, 128, 192, 32, 96, 64),
    3,
    (480, 192, 96, 208, 16, 48, 64),
    (512, 160, 112, 224, 24, 64, 64),
    (512, 128, 128, 256, 24, 64, 64),
    (512, 112, 144, 288, 32, 64, 64),
    (528, 256, 160, 320, 32, 128, 128),
    2,
    (832, 256, 160, 320, 32, 128, 128),
    (832, 384, 192, 384, 48, 128, 128),
]


class Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, cp, norm, act, k5):
        super().__init__()
        cna = lambda i, o, k: conv_norm_act(i, o, k, norm=norm, act=act, eps=1e-3)  # noqa: E731
        self.branches = nn.ModuleList(
            [
                cna(cin, c1, 1),
                nn.Sequential(cna(cin, c3r, 1), cna(c3r, c3, 3)),
                nn.Sequential(cna(cin, c5r, 1), cna(c5r, c5, k5)),
                nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), cna(cin, cp, 1)),
            ]
        )

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


class GoogLeNet(nn.Module):
    """torchvision's GoogLeNet without the auxiliary heads (6,624,904 parameters at 1000 classes).

    `branch3_kernel`: torchvision (and its pretrained weights) use 3x3 in the "5x5" branch; 5 gives the
    paper's 5x5. Images <= 64 px get a stride-1 stem without its first max-pool.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int = 224,
        stem: str = "auto",
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.2,
        branch3_kernel: int = 3,
    ):
        super().__init__()
        check_choice("stem", stem, ("auto", "imagenet", "cifar"))
        check_choice("branch3_kernel", branch3_kernel, (3, 5))
        cifar = image_size <= 64 if stem == "auto" else stem == "cifar"
        cna = lambda i, o, k, s=1: conv_norm_act(i, o, k, s, norm=norm, act=act, eps=1e-3)  # noqa: E731
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        stem_layers = [cna(in_channels, 64, 3)] if cifar else [cna(in_channels, 64, 7, 2), pool()]
        layers = stem_layers + [cna(64, 64, 1), cna(64, 192, 3), pool()]
        for m in MODULES:
            layers.append(
                nn.MaxPool2d(m, 2, ceil_mode=True) if isinstance(m, int) else Inception(*m, norm, act, branch3_kernel)
            )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(1024, num_classes)
        )
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.features(x))
