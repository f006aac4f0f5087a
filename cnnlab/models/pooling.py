"""The pooling zoo of the pooling experiments (`model.pool`): max, avg, sum, mixed, stochastic, Lp, blur, conv.

All of them give the output size of max pooling with the same kernel/stride/padding, so a model's shapes do
not depend on the choice.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.knobs import POOLS, check_choice


class SumPool(nn.Module):
    """Sum over each window. nn.LPPool2d(1, k) computes the same (negative inputs included) but takes no padding,
    which the ResNet stem's 3x3 stride-2 pool needs."""

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
