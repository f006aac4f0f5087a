"""ResNet (He et al., 2015) and its variants from one class, switched by keyword arguments:

- basic (two 3x3) or bottleneck (1x1 reduce, 3x3, 1x1 expand x4) blocks, torchvision's v1.5 layout (stride on the 3x3);
- `groups` / `width_per_group`: ResNeXt's grouped 3x3 and Wide ResNet's wider bottleneck, as torchvision
  defines resnext50_32x4d and wide_resnet50_2;
- `preact`: pre-activation blocks (BN-act-conv, clean identity path; He et al., 2016);
- `se`: squeeze-and-excitation on the residual branch; `skip=False`: the same net without shortcuts;
- `stem`: conv7x7/2 + pool (imagenet) or conv3x3/1 (cifar), chosen by image size when "auto"; `pool` picks the
  imagenet stem's pooling (max, blur = anti-aliased max, conv = strided conv, ...);
- `downsample`: how a stage halves the map: conv (a strided conv, the paper) or max / avg / blur (a stride-1 conv,
  then that pool with stride 2; blur is Zhang's (2019) anti-aliased ResNet);
- `shortcut`: where the shape changes, B (a strided 1x1 projection, torchvision's) or A (the identity subsampled
  and zero-padded with channels, no parameters: He et al.'s CIFAR ResNets, `cifar_resnet`).

The configs name the variants (configs/model/resnext50_32x4d.yaml sets groups and width_per_group, ...).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.blocks import conv_norm_act, init_weights, make_act, make_norm, squeeze_excite
from cnnlab.models.knobs import check_bool, check_choice, check_knobs, extends
from cnnlab.models.pooling import make_pool

DOWNSAMPLES = ("conv", "max", "avg", "blur")


class PadShortcut(nn.Module):
    """Option A (He et al., 2015): the identity, subsampled by the stride, with zero channels appended."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if cout < cin:
            raise CnnlabError(f"model.shortcut=A cannot shrink {cin} channels to {cout}: use model.shortcut=B")
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def downsampler(kind: str) -> nn.Module:
    """A stride-2 pool with the output size of a stride-2 3x3 conv (ceil(n / 2)); blur is the low-pass alone."""
    return make_pool("blur", 1, 2) if kind == "blur" else make_pool(kind, 3, 2, padding=1)


class ResidualBlock(nn.Module):
    def __init__(
        self,
        cin: int,
        cout: int,
        mid: int,
        stride: int,
        bottleneck: bool,
        groups: int,
        norm: str,
        act: str,
        se: bool,
        skip: bool,
        preact: bool,
        dropout: float,
        shortcut: str = "B",
        downsample: str = "conv",
    ):
        super().__init__()
        pooled = stride > 1 and downsample != "conv"  # a stride-1 conv followed by a pool with the stride
        conv_stride = 1 if pooled else stride
        if bottleneck:
            shapes = [(cin, mid, 1, 1, 1), (mid, mid, 3, conv_stride, groups), (mid, cout, 1, 1, 1)]
        else:
            shapes = [(cin, cout, 3, conv_stride, groups), (cout, cout, 3, 1, groups)]
        self.down_at = (1 if bottleneck else 0) if pooled else -1  # the conv the pool follows
        self.down = downsampler(downsample) if pooled else None
        bias = norm == "none"
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=bias) for i, o, k, s, g in shapes)
        # Post-activation normalises each conv's output; pre-activation each conv's input.
        self.norms = nn.ModuleList(make_norm(norm, o if not preact else i) for i, o, *_ in shapes)
        self.acts = nn.ModuleList(make_act(act) for _ in shapes)
        self.drop = nn.Dropout(dropout) if dropout else None  # Wide ResNet's dropout between the convs
        self.se = squeeze_excite(cout, max(1, cout // 16)) if se else None
        self.preact, self.skip = preact, skip
        self.project = None
        if skip and (stride != 1 or cin != cout):  # the shape changes: option A (zero-pad) or B (1x1 projection)
            if shortcut == "A":
                self.project = PadShortcut(cin, cout, stride)
            else:
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
                if i == self.down_at:
                    out = self.down(out)
                if i == 0 and self.drop is not None:
                    out = self.drop(out)
        if self.se is not None:
            out = self.se(out)
        if self.skip:
            out = out + (x if self.project is None else self.project(x))
        return self.acts[-1](out)

    def _pre(self, x):
        out = self.acts[0](self.norms[0](x))
        # A projection sees the pre-activated input (He et al., 2016); option A's identity the raw one.
        if self.project is None:
            shortcut = x
        else:
            shortcut = self.project(x if isinstance(self.project, PadShortcut) else out)
        out = self.convs[0](out)
        for i in range(1, len(self.convs)):
            if i - 1 == self.down_at:
                out = self.down(out)
            if i == 1 and self.drop is not None:
                out = self.drop(out)
            out = self.convs[i](self.acts[i](self.norms[i](out)))
        if self.se is not None:
            out = self.se(out)
        return out + shortcut if self.skip else out


class ResNet(nn.Module):
    def __init__(
        self,
        layers,
        bottleneck: bool = False,
        widths=(64, 128, 256, 512),
        stem_width: int = 64,
        groups: int = 1,
        width_per_group: int = 64,
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int = 224,
        stem: str = "auto",
        norm: str = "batch",
        act: str = "relu",
        se: bool = False,
        skip: bool = True,
        preact: bool = False,
        dropout: float = 0.0,
        block_dropout: float = 0.0,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        shortcut: str = "B",
        pool: str = "max",
        downsample: str = "conv",
    ):
        super().__init__()
        check_choice("stem", stem, ("auto", "imagenet", "cifar"))
        check_knobs(
            {
                "norm": norm,
                "act": act,
                "pool": pool,
                "dropout": dropout,
                "block_dropout": block_dropout,
                "width_mult": width_mult,
                "depth_mult": depth_mult,
            }
        )
        check_choice("shortcut", shortcut, ("A", "B"))
        check_choice("downsample", downsample, DOWNSAMPLES)
        for key, v in (("bottleneck", bottleneck), ("se", se), ("skip", skip), ("preact", preact)):
            check_bool(key, v)
        if len(layers) != len(widths):
            raise CnnlabError(f"model.layers ({list(layers)}) and model.widths ({list(widths)}) differ in length")
        scale = lambda c: max(1, round(c * width_mult))  # noqa: E731
        cifar = image_size <= 64 if stem == "auto" else stem == "cifar"
        c = scale(stem_width)
        if cifar:  # 3x3/1 and no pooling: a 32x32 image keeps its resolution into the first stage
            if pool != "max":
                raise CnnlabError(
                    f"model.pool={pool} picks the imagenet stem's pooling, but this {image_size}x"
                    f"{image_size} network has the cifar stem (no pooling): set model.stem=imagenet "
                    f"or model.downsample"
                )
            self.stem = (
                nn.Conv2d(in_channels, c, 3, 1, 1, bias=False)
                if preact
                else conv_norm_act(in_channels, c, 3, norm=norm, act=act)
            )
        else:
            self.stem = nn.Sequential(
                conv_norm_act(in_channels, c, 7, 2, norm=norm, act=act), make_pool(pool, 3, 2, channels=c, padding=1)
            )
        expansion = 4 if bottleneck else 1
        stages = []
        for i, (n, planes) in enumerate(zip(layers, widths)):
            planes = scale(planes)
            mid = int(planes * width_per_group / 64) * groups if bottleneck else planes
            blocks = []
            for j in range(max(1, round(n * depth_mult))):
                blocks.append(
                    ResidualBlock(
                        c,
                        planes * expansion,
                        mid,
                        2 if (j == 0 and i > 0) else 1,
                        bottleneck,
                        groups if bottleneck else 1,
                        norm,
                        act,
                        se,
                        skip,
                        preact,
                        block_dropout,
                        shortcut,
                        downsample,
                    )
                )
                c = planes * expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)  # "layers": the name optim.stage_modules splits into stages
        # Pre-activation blocks end on a conv: normalise and activate once more before pooling.
        self.final = nn.Sequential(make_norm(norm, c), make_act(act)) if preact else nn.Identity()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes))
        init_weights(self)

    def forward(self, x):
        return self.head(self.final(self.layers(self.stem(x))))


# The configs (configs/model/resnet*.yaml) name ResNet itself with its layers; these are the Python shorthands.
@extends(ResNet, "layers")
def resnet18(**kw) -> ResNet:
    return ResNet(layers=[2, 2, 2, 2], **kw)


@extends(ResNet, "layers")
def resnet34(**kw) -> ResNet:
    return ResNet(layers=[3, 4, 6, 3], **kw)


@extends(ResNet, "layers", "bottleneck")
def resnet50(**kw) -> ResNet:
    return ResNet(layers=[3, 4, 6, 3], bottleneck=True, **kw)


@extends(ResNet, "layers", "bottleneck")
def resnet101(**kw) -> ResNet:
    return ResNet(layers=[3, 4, 23, 3], bottleneck=True, **kw)


@extends(ResNet, "layers", "bottleneck")
def resnet152(**kw) -> ResNet:
    return ResNet(layers=[3, 8, 36, 3], bottleneck=True, **kw)


def _depth(depth, rule: str, offset: int, smallest: int, family: str) -> int:
    """Blocks per stage of a depth = 6n + offset family, or a CnnlabError naming model.depth."""
    if isinstance(depth, bool) or not isinstance(depth, int) or (depth - offset) % 6 or depth < smallest:
        raise CnnlabError(f"model.depth must be {rule} for {family}; got {depth!r}")
    return (depth - offset) // 6


@extends(ResNet, "layers", "widths", "stem_width")
def wide_resnet(depth: int = 28, widen: int = 10, **kw) -> ResNet:
    """WRN-depth-k (Zagoruyko & Komodakis, 2016): 16-stem, three stages of (depth-4)/6 pre-activation basic
    blocks with 16k, 32k, 64k channels."""
    n = _depth(depth, "6n+4 (10, 16, 22, 28, 40, ...)", 4, 10, "a Wide ResNet")
    if isinstance(widen, bool) or not isinstance(widen, int) or widen < 1:
        raise CnnlabError(f"model.widen must be an integer >= 1; got {widen!r}")
    return ResNet(layers=[n] * 3, widths=[16 * widen, 32 * widen, 64 * widen], stem_width=16, **{"preact": True, **kw})


@extends(ResNet, "layers", "widths", "stem_width")
def cifar_resnet(depth: int = 20, shortcut: str = "A", **kw) -> ResNet:
    """He et al. (2015), section 4.2: conv3x3(16), three stages of n basic blocks with 16-32-64 channels
    (depth = 6n + 2), global average pooling, FC; option-A shortcuts unless `shortcut=B`, `skip=False` for
    the plain twin. ResNet-20/32/44/56/110/1202 have 0.27 / 0.46 / 0.66 / 0.85 / 1.7 / 19.4 M parameters."""
    n = _depth(depth, "6n+2 (20, 32, 44, 56, 110, 1202, ...)", 2, 8, "a CIFAR ResNet")
    return ResNet(layers=[n] * 3, widths=[16, 32, 64], stem_width=16, shortcut=shortcut, **kw)
