"""DenseNet (Huang et al., 2017): every layer sees the concatenation of all earlier ones in its block."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.blocks import conv_norm_act, init_weights, make_act, make_norm
from cnnlab.models.knobs import check_choice


class DenseLayer(nn.Module):
    """BN-act-conv1x1 (bn_size * growth) - BN-act-conv3x3 (growth); returns only the new features."""

    def __init__(self, cin: int, growth: int, bn_size: int, norm: str, act: str, dropout: float):
        super().__init__()
        mid = bn_size * growth
        self.body = nn.Sequential(
            make_norm(norm, cin),
            make_act(act),
            nn.Conv2d(cin, mid, 1, bias=False),
            make_norm(norm, mid),
            make_act(act),
            nn.Conv2d(mid, growth, 3, padding=1, bias=False),
        )
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x):
        return torch.cat([x, self.drop(self.body(x))], 1)


class DenseNet(nn.Module):
    """Dense blocks joined by transitions (BN-act-conv1x1 compressing channels, 2x2 average pool).

    Images <= 64 px get a conv3x3/1 stem with 2 x growth channels and no max-pool.
    """

    def __init__(
        self,
        block_config=(6, 12, 24, 16),
        growth_rate: int = 32,
        bn_size: int = 4,
        compression: float = 0.5,
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int = 224,
        stem: str = "auto",
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        check_choice("stem", stem, ("auto", "imagenet", "cifar"))
        cifar = image_size <= 64 if stem == "auto" else stem == "cifar"
        c = 2 * growth_rate
        if cifar:
            layers = [nn.Conv2d(in_channels, c, 3, 1, 1, bias=False)]
        else:
            layers = [conv_norm_act(in_channels, c, 7, 2, norm=norm, act=act), nn.MaxPool2d(3, 2, 1)]
        for i, n in enumerate(block_config):
            for _ in range(n):
                layers.append(DenseLayer(c, growth_rate, bn_size, norm, act, dropout))
                c += growth_rate
            if i < len(block_config) - 1:
                out = int(c * compression)
                layers += [make_norm(norm, c), make_act(act), nn.Conv2d(c, out, 1, bias=False), nn.AvgPool2d(2, 2)]
                c = out
        layers += [make_norm(norm, c), make_act(act)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.features(x))
