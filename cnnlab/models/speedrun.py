"""A CIFAR speedrun-style network (after Keller Jordan's airbench): a small VGG-like net that trains fast.

Ideas kept: a 2x2 patch-whitening stem whose filters are the eigenvectors of the data's patch covariance
(fitted to one training batch before training starts, then frozen), conv-pool-BN-GELU blocks, a
max-pooled head with a temperature, and flip test-time augmentation in eval mode.

The fit happens once, outside the training step: `init_from_batch(x)` is the data-dependent initialisation
hook (the trainer calls it, through cnnlab.engine.data_init, on a clean training batch before training). A
per-step "fitted yet?" check of a device buffer would be a host sync on every CUDA step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.layers import make_act


class WhiteningStem(nn.Module):
    """2x2 convolution whose 2 * c * k * k filters whiten image patches (and their negatives).

    Data-dependent initialisation: `init_from_batch(x)` fits the filters to a batch once (before training);
    they are buffers afterwards, saved in the state dict, never trained. Until then the filters are zero.
    """

    def __init__(self, in_channels: int, kernel_size: int = 2, eps: float = 5e-4):
        super().__init__()
        self.kernel_size, self.eps = kernel_size, eps
        n = in_channels * kernel_size * kernel_size
        self.out_channels = 2 * n
        self.register_buffer("weight", torch.zeros(self.out_channels, in_channels, kernel_size, kernel_size))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.bias = nn.Parameter(torch.zeros(self.out_channels))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        c, k = x.shape[1], self.kernel_size
        patches = x.float().unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + self.eps)[:, None]).reshape(-1, c, k, k)
        self.weight.copy_(torch.cat([filters, -filters]))
        self.fitted.fill_(True)

    def init_from_batch(self, x: torch.Tensor) -> None:
        """Fit to `x` (the model's input batch) unless fitted already, e.g. restored from a checkpoint.
        Reading `fitted` is one host sync, once per run, before the first step."""
        if not bool(self.fitted):
            self.fit(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class ConvGroup(nn.Module):
    """conv3x3 - maxpool2 - BN - act - conv3x3 - BN - act (act: GELU as in airbench)."""

    def __init__(self, cin: int, cout: int, act: str = "gelu"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(cout, momentum=0.4)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding="same", bias=False)
        self.norm2 = nn.BatchNorm2d(cout, momentum=0.4)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class SpeedrunNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (64, 256, 256),
        scale: float = 1 / 9,
        tta_flip: bool = True,
        act: str = "gelu",
    ):
        super().__init__()
        self.whiten = WhiteningStem(in_channels)
        self.stem_act = make_act(act)
        groups, cin = [], self.whiten.out_channels
        for width in widths:
            groups.append(ConvGroup(cin, width, act))
            cin = width
        self.groups = nn.Sequential(*groups)
        self.head = nn.Linear(cin, num_classes, bias=False)
        self.scale, self.tta_flip = scale, tta_flip

    def fit(self, x: torch.Tensor) -> None:
        """Fit the whitening stem to a batch of (normalised) training images: do this once before training."""
        self.whiten.fit(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.stem_act(self.whiten(x)))
        return self.head(torch.amax(x, dim=(2, 3))) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.tta_flip:
            return self.logits(x)
        return 0.5 * (self.logits(x) + self.logits(x.flip(3)))  # test-time augmentation: image + its mirror
