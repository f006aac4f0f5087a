"""Building blocks shared by the model families: activations, norms, pooling variants, conv-norm-act, SE.

Every knob a config can switch (`model.act`, `model.norm`, `model.pool`, ...) is resolved or checked here, so a
bad value fails the same way in every model: a CnnlabError naming the key (`check_knobs` checks the shared ones
by name before anything is built).
"""

from __future__ import annotations

import inspect
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
}
NORMS = ("batch", "group", "layer", "none")
POOLS = ("max", "avg", "sum", "mixed", "stochastic", "lp", "blur", "conv")
HEADS = ("flatten", "gap", "gmp")  # what turns the last feature map into a vector
PADDINGS = ("valid", "same")


def make_act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise CnnlabError(f"model.act must be one of {', '.join(ACTIVATIONS)}; got {name!r}")
    cls = ACTIVATIONS[name]
    return cls(inplace=True) if cls in (nn.ReLU, nn.SiLU, nn.ReLU6, nn.Hardswish, nn.LeakyReLU) else cls()


def _fraction(key: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise CnnlabError(f"model.{key} must be a number in [0, 1); got {v!r}")


def _positive(key: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise CnnlabError(f"model.{key} must be a number > 0; got {v!r}")


def _positive_int(key: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise CnnlabError(f"model.{key} must be an integer >= 1; got {v!r}")


def _positive_ints(key: str, v) -> None:
    if (
        not isinstance(v, (list, tuple))
        or not v
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)
    ):
        raise CnnlabError(f"model.{key} must be a list of integers >= 1; got {v!r}")


def _compression(key: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
        raise CnnlabError(f"model.{key} must be a number in (0, 1]; got {v!r}")


# Knobs that mean the same in every model, checked by name (a null value means "the model's default").
KNOB_CHECKS = {
    "norm": lambda k, v: check_choice(k, v, NORMS),
    "fc_norm": lambda k, v: check_choice(k, v, NORMS),
    "act": lambda k, v: check_choice(k, v, tuple(ACTIVATIONS)),
    "pool": lambda k, v: check_choice(k, v, POOLS),
    "head": lambda k, v: check_choice(k, v, HEADS),
    "padding": lambda k, v: check_choice(k, v, PADDINGS),
    "dropout": _fraction,
    "dropout2d": _fraction,
    "block_dropout": _fraction,
    "drop_path": _fraction,
    "width_mult": _positive,
    "depth_mult": _positive,
    "pool_p": _positive,
    "kernel_size": _positive_int,
    "dilation": _positive_int,
    "pool_kernel": _positive_int,
    "pool_stride": _positive_int,
    "hidden": _positive_int,
    "growth_rate": _positive_int,
    "bn_size": _positive_int,
    "groups": _positive_int,
    "width_per_group": _positive_int,
    "stem_width": _positive_int,
    "widen": _positive_int,
    "heads": _positive_int,
    "dim": _positive_int,
    "mlp_dim": _positive_int,
    "patch_size": _positive_int,
    "layers": _positive_ints,
    "widths": _positive_ints,
    "block_config": _positive_ints,
    "compression": _compression,
}


def check_knobs(knobs: dict) -> None:
    """Raise a CnnlabError naming the first shared knob (see KNOB_CHECKS) whose value is out of range."""
    for key, value in knobs.items():
        if key in KNOB_CHECKS and value is not None:
            KNOB_CHECKS[key](key, value)


def extends(cls, *fixed: str):
    """Decorator for a factory `f(own..., **kw) -> cls(...)`: its signature lists its own keywords plus those of
    `cls` it passes on (all but `fixed`), so that models.build can check a config's keys against it."""

    def wrap(fn):
        kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        own = [p for p in inspect.signature(fn).parameters.values() if p.kind not in kinds]
        taken = {p.name for p in own} | set(fixed)
        rest = [p for p in inspect.signature(cls).parameters.values() if p.name not in taken and p.kind not in kinds]
        fn.__signature__ = inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own + rest])
        return fn

    return wrap


def check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise CnnlabError(f"model.{key} must be one of {', '.join(map(str, choices))}; got {value!r}")


def check_bool(key: str, value) -> None:
    if not isinstance(value, bool):
        raise CnnlabError(f"model.{key} must be true or false; got {value!r}")


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


class ConvNormAct(nn.Sequential):
    """conv (bias only when there is no norm after it) - norm - activation; `act=None` leaves it linear."""

    def __init__(
        self,
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
    ):
        padding = (kernel_size - 1) // 2 if padding is None else padding
        bias = norm == "none" if bias is None else bias
        layers = [nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=bias)]
        if norm != "none":
            layers.append(make_norm(norm, cout, eps))
        if act is not None:
            layers.append(make_act(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018): global pool -> FC reduce -> act -> FC expand -> gate.

    1x1 convolutions with bias, as torchvision's SqueezeExcitation, so parameter counts match it.
    """

    def __init__(self, channels: int, squeeze: int, act: str = "relu", gate: str = "sigmoid"):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = make_act(act)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid() if gate == "hardsigmoid" else nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples in training, scaling the survivors."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


# ---------------------------------------------------------------- pooling variants (the pooling experiments)
# All of them give the output size of max pooling with the same kernel/stride/padding, so a model's shapes do
# not depend on the choice.


class SumPool(nn.Module):
    def __init__(self, kernel_size: int, stride: int, padding: int = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding) * self.kernel_size**2


class MixedPool(nn.Module):
    """lambda * max + (1 - lambda) * avg.

    `mix="random"` (Yu et al., 2014): in training each pooling region picks max or avg at random; the picks
    are counted, and evaluation uses the one picked more often. `mix="learn"` (Lee et al., 2016): one learned
    lambda per layer (a sigmoid of a parameter). A number in [0, 1]: that fixed lambda.
    """

    def __init__(self, kernel_size: int, stride: int, padding: int = 0, mix="random"):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.mix = kernel_size, stride, padding, mix
        if mix == "learn":
            self.logit = nn.Parameter(torch.zeros(()))
        elif mix == "random":
            # sum over training batches of (fraction of regions that picked max - 1/2): no host sync
            self.register_buffer("max_bias", torch.zeros(()))
        elif isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0 <= mix <= 1:
            raise CnnlabError(f"model.pool_lambda must be random, learn or a number in [0, 1]; got {mix!r}")

    def forward(self, x):
        mx = F.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        av = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)
        if self.mix == "learn":
            lam = torch.sigmoid(self.logit)
        elif self.mix != "random":
            lam = self.mix
        elif self.training:
            pick = torch.rand_like(mx) < 0.5
            self.max_bias += pick.float().mean().detach() - 0.5
            return torch.where(pick, mx, av)
        else:
            return torch.where(self.max_bias >= 0, mx, av)
        return lam * mx + (1 - lam) * av


class StochasticPool(nn.Module):
    """Stochastic pooling (Zeiler & Fergus, 2013) of non-negative activations.

    Training samples one activation per region with probability proportional to its value; evaluation uses
    the probability-weighted average sum(p_i * a_i). Negative inputs are clamped to 0 (the paper pools ReLUs).
    """

    def __init__(self, kernel_size: int, stride: int, padding: int = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        n, c, h, w = x.shape
        k, s, p = self.kernel_size, self.stride, self.padding
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        a = F.unfold(x.clamp(min=0), k, padding=p, stride=s).view(n, c, k * k, oh * ow)
        total = a.sum(2, keepdim=True)
        if self.training:
            # Inverse-CDF sampling: the first index whose cumulative sum passes u * total.
            u = torch.rand_like(total) * total
            idx = (a.cumsum(2) <= u).sum(2, keepdim=True).clamp(max=k * k - 1)
            out = a.gather(2, idx)
        else:
            out = (a * a).sum(2, keepdim=True) / total.clamp(min=1e-12)
        return out.view(n, c, oh, ow)


class LPPool(nn.Module):
    """(mean |x|^p)^(1/p): p=1 is average pooling of magnitudes, p -> inf approaches max pooling."""

    def __init__(self, kernel_size: int, stride: int, padding: int = 0, p: float = 2.0):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or p <= 0:
            raise CnnlabError(f"model.pool_p must be a number > 0; got {p!r}")
        self.kernel_size, self.stride, self.padding, self.p = kernel_size, stride, padding, float(p)

    def forward(self, x):
        m = F.avg_pool2d(x.abs().pow(self.p), self.kernel_size, self.stride, self.padding)
        return m.clamp(min=1e-12).pow(1 / self.p)  # clamp: the gradient of t^(1/p) is infinite at 0


class BlurPool(nn.Module):
    """Anti-aliased downsampling (Zhang, 2019): max with stride 1, then a [1,2,1] binomial low-pass with the stride.

    Replicate padding (the paper uses reflect) so that it also works on 1-pixel-wide maps.
    """

    atomic = True  # one row in `cnnlab summary`

    def __init__(self, kernel_size: int, stride: int, padding: int = 0):
        super().__init__()
        self.max = nn.MaxPool2d(kernel_size, 1, padding)
        self.stride = stride
        f = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (f[:, None] * f[None, :] / 16).view(1, 1, 3, 3), persistent=False)

    def forward(self, x):
        x = F.pad(self.max(x), (1, 1, 1, 1), mode="replicate")
        return F.conv2d(x, self.filt.to(x.dtype).expand(x.shape[1], 1, 3, 3), stride=self.stride, groups=x.shape[1])

    def extra_macs(self, x, out) -> int:
        return out[0].numel() * 9  # the 3x3 depthwise low-pass


def make_pool(
    kind: str,
    kernel_size: int = 2,
    stride: int | None = None,
    channels: int | None = None,
    padding: int = 0,
    p: float = 2.0,
    mix="random",
) -> nn.Module:
    """A downsampling layer chosen by name (the pooling experiments switch it from the config)."""
    check_choice("pool", kind, POOLS)
    stride = kernel_size if stride is None else stride
    if kind == "max":
        return nn.MaxPool2d(kernel_size, stride, padding)
    if kind == "avg":
        return nn.AvgPool2d(kernel_size, stride, padding)
    if kind == "sum":
        return SumPool(kernel_size, stride, padding)
    if kind == "mixed":
        return MixedPool(kernel_size, stride, padding, mix)
    if kind == "stochastic":
        return StochasticPool(kernel_size, stride, padding)
    if kind == "lp":
        return LPPool(kernel_size, stride, padding, p)
    if kind == "blur":
        return BlurPool(kernel_size, stride, padding)
    if channels is None:
        raise ValueError("pool=conv needs the channel count")
    return nn.Conv2d(channels, channels, kernel_size, stride, padding)  # strided conv, learned (All-CNN)


def pool_factory(pool: str, pool_p: float = 2.0, pool_lambda="random"):
    """Validate the pooling knobs once and return make_pool with them bound: `pooler(kernel, stride, channels=c)`."""
    check_choice("pool", pool, POOLS)
    make_pool(pool, 2, channels=1, p=pool_p, mix=pool_lambda)  # fail now, naming the key, not mid-build
    return partial(make_pool, pool, p=pool_p, mix=pool_lambda)


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
            layers.append(ConvNormAct(c, v, 3, norm=norm, act=act, padding=padding, bias=bias))
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
            layers.append(ConvNormAct(cin, expanded, 1, norm=norm, act=act, eps=eps))
        layers.append(
            ConvNormAct(expanded, expanded, kernel_size, stride, groups=expanded, norm=norm, act=act, eps=eps)
        )
        if se_squeeze:
            layers.append(SqueezeExcite(expanded, se_squeeze, se_act, se_gate))
        layers.append(ConvNormAct(expanded, cout, 1, norm=norm, act=None, eps=eps))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        self.drop_path = DropPath(drop_path) if self.residual and drop_path else nn.Identity()

    def forward(self, x):
        out = self.block(x)
        return x + self.drop_path(out) if self.residual else out
