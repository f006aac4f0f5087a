"""ResNet (He et al., 2015) and its variants from one class, switched by keyword arguments:

- basic (two 3x3) or bottleneck (1x1 reduce, 3x3, 1x1 expand x4) blocks, torchvision's v1.5 layout (stride on the 3x3);
- `groups` / `width_per_group`: ResNeXt's grouped 3x3 and Wide ResNet's wider bottleneck, as torchvision
  defines resnext50_32x4d and wide_resnet50_2;
- `preact`: pre-activation blocks (BN-act-conv, clean identity path; He et al., 2016);
- `se`: squeeze-and-excitation on the residual branch; `skip=False`: the same net without shortcuts;
- `stem`: conv7x7/2 + maxpool (imagenet) or conv3x3/1 (cifar), chosen by image size when "auto".

The configs name the variants (configs/model/resnext50_32x4d.yaml sets groups and width_per_group, ...).
"""

from __future__ import annotations

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.layers import (ConvNormAct, SqueezeExcite, check_bool, check_choice, init_weights, make_act,
                                  make_norm)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, mid: int, stride: int, bottleneck: bool, groups: int, norm: str,
                 act: str, se: bool, skip: bool, preact: bool, dropout: float):
        super().__init__()
        if bottleneck:
            shapes = [(cin, mid, 1, 1, 1), (mid, mid, 3, stride, groups), (mid, cout, 1, 1, 1)]
        else:
            shapes = [(cin, cout, 3, stride, groups), (cout, cout, 3, 1, groups)]
        bias = norm == "none"
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=bias) for i, o, k, s, g in shapes)
        # Post-activation normalises each conv's output; pre-activation each conv's input.
        self.norms = nn.ModuleList(make_norm(norm, o if not preact else i) for i, o, *_ in shapes)
        self.acts = nn.ModuleList(make_act(act) for _ in shapes)
        self.drop = nn.Dropout(dropout) if dropout else None  # Wide ResNet's dropout between the convs
        self.se = SqueezeExcite(cout, max(1, cout // 16)) if se else None
        self.preact, self.skip = preact, skip
        self.project = None
        if skip and (stride != 1 or cin != cout):  # 1x1 strided projection when the shape changes
            conv = nn.Conv2d(cin, cout, 1, stride, bias=bias)
            self.project = conv if preact else nn.Sequential(conv, make_norm(norm, cout))

    def forward(self, x):
        return self._pre(x) if self.preact else self._post(x)

    def _post(self, x):
        out, last = x, len(self.convs) - 1
        for i, (conv, norm, act) in enumerate(zip(self.convs, self.norms, self.acts)):
            out = norm(conv(out))
            if i < last:
                out = act(out)
                if i == 0 and self.drop is not None:
                    out = self.drop(out)
        if self.se is not None:
            out = self.se(out)
        if self.skip:
            out = out + (x if self.project is None else self.project(x))
        return self.acts[-1](out)

    def _pre(self, x):
        out = self.acts[0](self.norms[0](x))
        shortcut = x if self.project is None else self.project(out)
        out = self.convs[0](out)
        for i in range(1, len(self.convs)):
            if i == 1 and self.drop is not None:
                out = self.drop(out)
            out = self.convs[i](self.acts[i](self.norms[i](out)))
        if self.se is not None:
            out = self.se(out)
        return out + shortcut if self.skip else out


class ResNet(nn.Module):
    def __init__(self, layers, bottleneck: bool = False, widths=(64, 128, 256, 512), stem_width: int = 64,
                 groups: int = 1, width_per_group: int = 64, num_classes: int = 1000, in_channels: int = 3,
                 image_size: int = 224, stem: str = "auto", norm: str = "batch", act: str = "relu", se: bool = False,
                 skip: bool = True, preact: bool = False, dropout: float = 0.0, block_dropout: float = 0.0,
                 width_mult: float = 1.0, depth_mult: float = 1.0):
        super().__init__()
        check_choice("stem", stem, ("auto", "imagenet", "cifar"))
        check_choice("norm", norm, ("batch", "group", "none"))
        for key, v in (("bottleneck", bottleneck), ("se", se), ("skip", skip), ("preact", preact)):
            check_bool(key, v)
        for key, v in (("width_mult", width_mult), ("depth_mult", depth_mult)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise CnnlabError(f"model.{key} must be a number > 0; got {v!r}")
        if len(layers) != len(widths):
            raise CnnlabError(f"model.layers ({list(layers)}) and model.widths ({list(widths)}) differ in length")
        scale = lambda c: max(1, round(c * width_mult))  # noqa: E731
        cifar = image_size <= 64 if stem == "auto" else stem == "cifar"
        c = scale(stem_width)
        if cifar:  # 3x3/1 and no max-pool: a 32x32 image keeps its resolution into the first stage
            self.stem = nn.Conv2d(in_channels, c, 3, 1, 1, bias=False) if preact else \
                ConvNormAct(in_channels, c, 3, norm=norm, act=act)
        else:
            self.stem = nn.Sequential(ConvNormAct(in_channels, c, 7, 2, norm=norm, act=act), nn.MaxPool2d(3, 2, 1))
        expansion = 4 if bottleneck else 1
        stages = []
        for i, (n, planes) in enumerate(zip(layers, widths)):
            planes = scale(planes)
            mid = int(planes * width_per_group / 64) * groups if bottleneck else planes
            blocks = []
            for j in range(max(1, round(n * depth_mult))):
                blocks.append(ResidualBlock(c, planes * expansion, mid, 2 if (j == 0 and i > 0) else 1, bottleneck,
                                            groups if bottleneck else 1, norm, act, se, skip, preact, block_dropout))
                c = planes * expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)  # "layers": the name optim.stage_modules splits into stages
        # Pre-activation blocks end on a conv: normalise and activate once more before pooling.
        self.final = nn.Sequential(make_norm(norm, c), make_act(act)) if preact else nn.Identity()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes))
        init_weights(self)

    def forward(self, x):
        return self.head(self.final(self.layers(self.stem(x))))


def resnet18(**kw) -> ResNet:
    return ResNet(layers=[2, 2, 2, 2], **kw)


def resnet34(**kw) -> ResNet:
    return ResNet(layers=[3, 4, 6, 3], **kw)


def resnet50(**kw) -> ResNet:
    return ResNet(layers=[3, 4, 6, 3], bottleneck=True, **kw)


def resnet101(**kw) -> ResNet:
    return ResNet(layers=[3, 4, 23, 3], bottleneck=True, **kw)


def resnet152(**kw) -> ResNet:
    return ResNet(layers=[3, 8, 36, 3], bottleneck=True, **kw)


def wide_resnet(depth: int = 28, widen: int = 10, **kw) -> ResNet:
    """WRN-depth-k (Zagoruyko & Komodakis, 2016): 16-stem, three stages of (depth-4)/6 pre-activation basic
    blocks with 16k, 32k, 64k channels."""
    if (depth - 4) % 6 or depth < 10:
        raise CnnlabError(f"model.depth must be 6n+4 (10, 16, 22, 28, 40, ...) for a Wide ResNet; got {depth}")
    n = (depth - 4) // 6
    return ResNet(layers=[n] * 3, widths=[16 * widen, 32 * widen, 64 * widen], stem_width=16,
                  **{"preact": True, **kw})
