"""MobileNets: V1 (depthwise-separable convs), V2 (inverted residuals, linear bottlenecks), V3 (+ SE, h-swish).

V2/V3 follow torchvision's layouts exactly (3,504,872 / 2,542,856 / 5,483,032 parameters at 1000 classes).
Images <= 64 px get a stride-1 stem so that a 32x32 image ends on a 2x2 map rather than 1x1.
"""

from __future__ import annotations

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.blocks import InvertedResidual, conv_norm_act, init_weights, make_act, make_divisible
from cnnlab.models.knobs import check_choice


def _stem(in_channels: int, out: int, stem: str, image_size: int, norm: str, act: str, **kw) -> nn.Module:
    """The conv3x3 stem: stride 2 at ImageNet sizes, stride 1 for small (CIFAR-sized) images."""
    check_choice("stem", stem, ("auto", "imagenet", "cifar"))
    cifar = image_size <= 64 if stem == "auto" else stem == "cifar"
    return conv_norm_act(in_channels, out, 3, 1 if cifar else 2, norm=norm, act=act, **kw)


def _check_width(width_mult) -> None:
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise CnnlabError(f"model.width_mult must be a number > 0; got {width_mult!r}")


def _head(c: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes))


class MobileNetV1(nn.Module):
    """conv3x3/2 (32) then 13 depthwise-separable blocks (depthwise 3x3 - BN - act - pointwise 1x1 - BN - act)."""

    BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int = 224,
        width_mult: float = 1.0,
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.2,
        stem: str = "auto",
    ):
        super().__init__()
        _check_width(width_mult)
        c = make_divisible(32 * width_mult)
        layers = [_stem(in_channels, c, stem, image_size, norm, act)]
        for out, stride in self.BLOCKS:
            out = make_divisible(out * width_mult)
            layers += [
                conv_norm_act(c, c, 3, stride, groups=c, norm=norm, act=act),
                conv_norm_act(c, out, 1, norm=norm, act=act),
            ]
            c = out
        self.features = nn.Sequential(*layers)
        self.classifier = _head(c, num_classes, dropout)
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.features(x))


class MobileNetV2(nn.Module):
    # expansion t, channels c, repeats n, first stride s
    SETTINGS = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int = 224,
        width_mult: float = 1.0,
        norm: str = "batch",
        act: str = "relu6",
        dropout: float = 0.2,
        stem: str = "auto",
    ):
        super().__init__()
        _check_width(width_mult)
        c = make_divisible(32 * width_mult)
        layers = [_stem(in_channels, c, stem, image_size, norm, act)]
        for t, out, n, s in self.SETTINGS:
            out = make_divisible(out * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c, out, round(c * t), 3, s if i == 0 else 1, act, norm))
                c = out
        last = make_divisible(1280 * max(1.0, width_mult))
        layers.append(conv_norm_act(c, last, 1, norm=norm, act=act))
        self.features = nn.Sequential(*layers)
        self.classifier = _head(last, num_classes, dropout)
        init_weights(self, linear_std=0.01)

    def forward(self, x):
        return self.classifier(self.features(x))


# kernel, expanded, out, SE, activation, stride (Howard et al., 2019, Tables 1 and 2)
V3_LARGE = [
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2),
    (3, 200, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 480, 112, True, "hardswish", 1),
    (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2),
    (5, 960, 160, True, "hardswish", 1),
    (5, 960, 160, True, "hardswish", 1),
]
V3_SMALL = [
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hardswish", 2),
    (5, 240, 40, True, "hardswish", 1),
    (5, 240, 40, True, "hardswish", 1),
    (5, 120, 48, True, "hardswish", 1),
    (5, 144, 48, True, "hardswish", 1),
    (5, 288, 96, True, "hardswish", 2),
    (5, 576, 96, True, "hardswish", 1),
    (5, 576, 96, True, "hardswish", 1),
]


class MobileNetV3(nn.Module):
    def __init__(
        self,
        variant: str = "large",
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int = 224,
        width_mult: float = 1.0,
        norm: str = "batch",
        dropout: float = 0.2,
        se: bool = True,
        stem: str = "auto",
    ):
        super().__init__()
        check_choice("variant", variant, ("large", "small"))
        _check_width(width_mult)
        table, head_width = (V3_LARGE, 1280) if variant == "large" else (V3_SMALL, 1024)
        adjust = lambda ch: make_divisible(ch * width_mult)  # noqa: E731
        c = adjust(16)
        layers = [_stem(in_channels, c, stem, image_size, norm, "hardswish", eps=1e-3)]
        for k, exp, out, use_se, act, s in table:
            exp, out = adjust(exp), adjust(out)
            squeeze = make_divisible(exp // 4) if use_se and se else 0
            layers.append(InvertedResidual(c, out, exp, k, s, act, norm, squeeze, "relu", "hardsigmoid", eps=1e-3))
            c = out
        layers.append(conv_norm_act(c, 6 * c, 1, norm=norm, act="hardswish", eps=1e-3))
        self.features = nn.Sequential(*layers)
        last = adjust(head_width)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6 * c, last),
            make_act("hardswish"),
            nn.Dropout(dropout),
            nn.Linear(last, num_classes),
        )
        init_weights(self, linear_std=0.01)

    def forward(self, x):
        return self.classifier(self.features(x))
