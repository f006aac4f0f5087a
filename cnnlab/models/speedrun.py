"""A CIFAR speedrun-style network (after Keller Jordan's airbench): a small VGG-like net that trains fast.

Ideas kept: a 2x2 patch-whitening stem whose filters are the eigenvectors of the data's patch covariance
(fitted before training starts, then frozen), conv-pool-BN-GELU blocks, a max-pooled head with a
temperature, and flip test-time augmentation in eval mode. airbench94's other ingredients are knobs
(defaults: off): the stem fitted on the first `whiten_images` clean training images with its bias trained
for the first `whiten_bias_epochs` epochs only, frozen BatchNorm weights, `bn_momentum`, identity (dirac)
initialised convs, a head rescaled to `head_std` and logits scaled by `scale` (null: 1 / the head's width).

The fit happens once, outside the training step: `init_from_batch(x)` is the data-dependent initialisation
hook (the trainer calls it, through cnnlab.engine.data_init, on a clean training batch before training). A
per-step "fitted yet?" check of a device buffer would be a host sync on every CUDA step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.blocks import make_act


class WhiteningStem(nn.Module):
    """2x2 convolution whose 2 * c * k * k filters whiten image patches (and their negatives).

    Data-dependent initialisation: `init_from_batch(x)` fits the filters to a batch once (before training);
    they are buffers afterwards, saved in the state dict, never trained. Until then the filters are zero.
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int = 2,
        eps: float = 5e-4,
        fit_images: int | None = None,
        bias_epochs: int | None = None,
    ):
        super().__init__()
        self.kernel_size, self.eps = kernel_size, eps
        self.fit_images = fit_images  # data_init: fit on the first n clean training images (None: the first batch)
        self.bias_epochs = bias_epochs
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

    def set_epoch(self, epoch: int) -> None:
        """data_init calls this before each epoch (from 0): the bias trains only in the first bias_epochs."""
        if self.bias_epochs is not None:
            self.bias.requires_grad_(epoch < self.bias_epochs)  # no grad: the optimizer leaves it alone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class ConvGroup(nn.Module):
    """conv3x3 - maxpool2 - BN - act - conv3x3 - BN - act (act: GELU as in airbench).

    bn_momentum is torch's (the weight of each new batch's statistics): 0.4 is airbench's "momentum=0.6".
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        act: str = "gelu",
        bn_momentum: float = 0.4,
        freeze_bn_weight: bool = False,
        dirac_init: bool = False,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(cout, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding="same", bias=False)
        self.norm2 = nn.BatchNorm2d(cout, momentum=bn_momentum)
        self.act = make_act(act)
        for norm in (self.norm1, self.norm2):
            norm.weight.requires_grad_(not freeze_bn_weight)  # frozen at 1: only the bias (shift) trains
        if dirac_init:  # airbench: the first `in` filters of each conv start as the identity
            with torch.no_grad():
                for conv in (self.conv1, self.conv2):
                    nn.init.dirac_(conv.weight[: conv.in_channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class SpeedrunNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (64, 256, 256),
        scale: float | None = 1 / 9,
        tta_flip: bool = True,
        act: str = "gelu",
        bn_momentum: float = 0.4,
        freeze_bn_weight: bool = False,
        dirac_init: bool = False,
        head_std: float | None = None,
        whiten_images: int | None = None,
        whiten_bias_epochs: int | None = None,
    ):
        super().__init__()
        _check_knobs(bn_momentum, head_std, scale, whiten_images, whiten_bias_epochs)
        self.whiten = WhiteningStem(in_channels, fit_images=whiten_images, bias_epochs=whiten_bias_epochs)
        self.stem_act = make_act(act)
        groups, cin = [], self.whiten.out_channels
        for width in widths:
            groups.append(ConvGroup(cin, width, act, bn_momentum, freeze_bn_weight, dirac_init))
            cin = width
        self.groups = nn.Sequential(*groups)
        self.head = nn.Linear(cin, num_classes, bias=False)
        if head_std is not None:  # airbench: head weights rescaled to std 1 (then logits / width)
            with torch.no_grad():
                self.head.weight.mul_(head_std / self.head.weight.std())
        self.scale = 1.0 / cin if scale is None else scale
        self.tta_flip = tta_flip

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


def _check_knobs(bn_momentum, head_std, scale, whiten_images, whiten_bias_epochs) -> None:
    """The model's own ranges, one line each (a model YAML value is user input)."""
    from cnnlab.errors import CnnlabError

    def bad(key, value, rule):
        raise CnnlabError(f"model.{key} must be {rule}, got {value!r}")

    if isinstance(bn_momentum, bool) or not isinstance(bn_momentum, (int, float)) or not 0 <= bn_momentum <= 1:
        bad("bn_momentum", bn_momentum, "a number in [0, 1] (torch's: the weight of each new batch)")
    for key, value in (("head_std", head_std), ("scale", scale)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            bad(key, value, "null or a number > 0")
    for key, value in (("whiten_images", whiten_images), ("whiten_bias_epochs", whiten_bias_epochs)):
        low = 1 if key == "whiten_images" else 0
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            bad(key, value, f"null or an integer >= {low}")
