"""Building blocks shared by the model families: activation and norm by name, conv-norm-act, SE, the VGG-style
conv stack, MBConv, weight init. The conv-norm-act, SE and stochastic-depth pieces are torchvision's.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.knobs import ACTIVATIONS, NORMS, check_choice

if TYPE_CHECKING:  # torchvision is imported where a block is built: a LeNet run needs none of it (start-up time)
    from torchvision.ops import Conv2dNormActivation, SqueezeExcitation


def make_act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise CnnlabError(f"model.act must be one of {', '.join(ACTIVATIONS)}; got {name!r}")
    cls = ACTIVATIONS[name]
    return cls(inplace=True) if cls in (nn.ReLU, nn.SiLU, nn.ReLU6, nn.Hardswish, nn.LeakyReLU) else cls()


def make_norm(kind: str, channels: int, eps: float = 1e-5, key: str = "norm") -> nn.Module:
    """For feature maps: BatchNorm, GroupNorm (for tiny batches: up to 32 groups that divide the channels),
    layer norm (one group: each sample normalised over channels and positions) or nothing."""
    check_choice(key, kind, NORMS)
    if kind == "batch":
        return nn.BatchNorm2d(channels, eps=eps)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels, eps=eps)
    if kind == "layer":
        return nn.GroupNorm(1, channels, eps=eps)
    return nn.Identity()


def make_norm1d(kind: str, features: int, key: str = "norm") -> nn.Module:
    """The same choice for the vectors between fully connected layers."""
    check_choice(key, kind, NORMS)
    if kind == "batch":
        return nn.BatchNorm1d(features)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, features), features)
    if kind == "layer":
        return nn.LayerNorm(features)
    return nn.Identity()


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never more than 10% down (the MobileNet/EfficientNet rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_norm_act(
    cin: int,
    cout: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    norm: str = "batch",
    act: str | None = "relu",
    padding: int | None = None,
    bias: bool | None = None,
    eps: float = 1e-5,
) -> Conv2dNormActivation:
    """conv (bias only when there is no norm after it) - norm - activation; `act=None` leaves it linear.

    torchvision's Conv2dNormActivation with our knobs by name (its state_dict keys: 0 conv, 1 norm).
    """
    from torchvision.ops import Conv2dNormActivation

    check_choice("norm", norm, NORMS)
    return Conv2dNormActivation(
        cin,
        cout,
        kernel_size,
        stride,
        padding,
        groups,
        norm_layer=None if norm == "none" else partial(make_norm, norm, eps=eps),
        activation_layer=None if act is None else partial(make_act, act),
        inplace=None,  # make_act decides
        bias=bias,
    )


def squeeze_excite(channels: int, squeeze: int, act: str = "relu", gate: str = "sigmoid") -> SqueezeExcitation:
    """Squeeze-and-excitation (Hu et al., 2018): global pool -> 1x1 reduce -> act -> 1x1 expand -> gate."""
    from torchvision.ops import SqueezeExcitation

    return SqueezeExcitation(
        channels, squeeze, partial(make_act, act), nn.Hardsigmoid if gate == "hardsigmoid" else nn.Sigmoid
    )


def conv_stack(
    cfg,
    in_channels: int,
    image_size: int,
    pooler,
    norm: str = "batch",
    act: str = "relu",
    bias: bool | None = None,
    padding: int = 1,
    dropout2d: float = 0.0,
):
    """VGG-style stack from a list: an int is a 3x3 conv-norm-act with that width, "M" a 2x2 pool.

    A pool is skipped once the map is 1 pixel wide (so deep stacks still run on 28x28 inputs).
    Returns (nn.Sequential, out_channels, out_size).
    """
    layers, c, size = [], in_channels, image_size
    for v in cfg:
        if v == "M":
            if size >= 2:
                layers.append(pooler(2, 2, channels=c))
                size //= 2
            if dropout2d:
                layers.append(nn.Dropout2d(dropout2d))
        else:
            layers.append(conv_norm_act(c, v, 3, norm=norm, act=act, padding=padding, bias=bias))
            c, size = v, size + 2 * padding - 2
    if size < 1:
        raise CnnlabError(f"a {image_size}x{image_size} input shrinks below 1 pixel in this network")
    return nn.Sequential(*layers), c, size


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """Kaiming (fan_out) for convs, norms at 1/0, linears N(0, linear_std) or PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight.requires_grad:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 and EfficientNet's MBConv: 1x1 expand - kxk depthwise - [SE] - 1x1 linear projection,
    with a residual connection (and stochastic depth) when the shape is kept.

    `se_squeeze`: SE bottleneck channels (0: no SE); `se_act` / `se_gate`: its activation and gate.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        expanded: int,
        kernel_size: int,
        stride: int,
        act: str,
        norm: str = "batch",
        se_squeeze: int = 0,
        se_act: str = "relu",
        se_gate: str = "sigmoid",
        drop_path: float = 0.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        layers = []
        if expanded != cin:
            layers.append(conv_norm_act(cin, expanded, 1, norm=norm, act=act, eps=eps))
        layers.append(
            conv_norm_act(expanded, expanded, kernel_size, stride, groups=expanded, norm=norm, act=act, eps=eps)
        )
        if se_squeeze:
            layers.append(squeeze_excite(expanded, se_squeeze, se_act, se_gate))
        layers.append(conv_norm_act(expanded, cout, 1, norm=norm, act=None, eps=eps))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        from torchvision.ops import StochasticDepth

        self.drop_path = StochasticDepth(drop_path, "row") if self.residual and drop_path else nn.Identity()

    def forward(self, x):
        out = self.block(x)
        return x + self.drop_path(out) if self.residual else out
