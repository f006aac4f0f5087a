"""EfficientNet-B0..B7 (Tan & Le, 2019): the B0 MBConv table scaled by compound coefficients.

Compound scaling: depth = alpha^phi, width = beta^phi, resolution = gamma^phi with alpha * beta^2 * gamma^2 ~ 2
(alpha=1.2, beta=1.1, gamma=1.15). The published (rounded) coefficients per variant are below; channels are
rounded to multiples of 8 and repeats rounded up, as in torchvision (B0 has 5,288,548 parameters).
"""

from __future__ import annotations

import math

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.blocks import InvertedResidual, conv_norm_act, init_weights, make_divisible
from cnnlab.models.knobs import check_choice

# variant -> (width, depth, resolution, dropout)
COEFFICIENTS = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}
# B0 stages: expansion, channels, repeats, kernel, first stride
B0 = [
    (1, 16, 1, 3, 1),
    (6, 24, 2, 3, 2),
    (6, 40, 2, 5, 2),
    (6, 80, 3, 3, 2),
    (6, 112, 3, 5, 1),
    (6, 192, 4, 5, 2),
    (6, 320, 1, 3, 1),
]


class EfficientNet(nn.Module):
    """`variant` picks the coefficients; `width_mult`, `depth_mult`, `dropout` override them one by one.

    MBConv blocks with SE (squeeze to a quarter of the block's input channels) and SiLU; stochastic depth grows
    linearly to `drop_path` over the blocks. Images <= 64 px get a stride-1 stem. (The resolution coefficient
    is what the data should be resized to; the network itself takes any size.)
    """

    def __init__(
        self,
        variant: str = "b0",
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int = 224,
        width_mult: float | None = None,
        depth_mult: float | None = None,
        dropout: float | None = None,
        drop_path: float = 0.2,
        norm: str = "batch",
        act: str = "silu",
        se: bool = True,
        stem: str = "auto",
    ):
        super().__init__()
        check_choice("variant", variant, tuple(COEFFICIENTS))
        check_choice("stem", stem, ("auto", "imagenet", "cifar"))
        w, d, _, p = COEFFICIENTS[variant]
        w, d, p = (
            (w if width_mult is None else width_mult),
            (d if depth_mult is None else depth_mult),
            (p if dropout is None else dropout),
        )
        for key, v in (("width_mult", w), ("depth_mult", d)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise CnnlabError(f"model.{key} must be a number > 0; got {v!r}")
        cifar = image_size <= 64 if stem == "auto" else stem == "cifar"
        c = make_divisible(32 * w)
        layers = [conv_norm_act(in_channels, c, 3, 1 if cifar else 2, norm=norm, act=act)]
        stages = [(t, make_divisible(ch * w), math.ceil(n * d), k, s) for t, ch, n, k, s in B0]
        total, index = sum(n for _, _, n, _, _ in stages), 0
        for t, out, n, k, s in stages:
            for i in range(n):
                squeeze = max(1, c // 4) if se else 0
                layers.append(
                    InvertedResidual(
                        c,
                        out,
                        make_divisible(c * t),
                        k,
                        s if i == 0 else 1,
                        act,
                        norm,
                        squeeze,
                        act,
                        "sigmoid",
                        drop_path * index / total,
                    )
                )
                c, index = out, index + 1
        layers.append(conv_norm_act(c, 4 * c, 1, norm=norm, act=act))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(p), nn.Linear(4 * c, num_classes)
        )
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.features(x))
