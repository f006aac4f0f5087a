"""AlexNet (Krizhevsky et al., 2012) in torchvision's single-GPU variant (64-192-384-256-256 channels)."""

from __future__ import annotations

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.blocks import make_act
from cnnlab.models.knobs import check_bool, check_knobs
from cnnlab.models.pooling import pool_factory


class AlexNet(nn.Module):
    """conv11x11/4 - pool - conv5x5 - pool - conv3x3 x3 - pool - Dropout - FC4096 - Dropout - FC4096 - FC.

    Images <= 64 px get a conv3x3/1 first layer (an 11x11/4 stem would leave nothing of a 32x32 image).
    The classifier is sized for the final feature map: 256x6x6 at 224 (torchvision's 61,100,840 params).
    `lrn`: the paper's Local Response Normalisation (size 5, alpha 1e-4, beta 0.75, k 2) after the first two
    conv-ReLUs, before their pooling (torchvision's variant has none; it adds no parameters).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int = 224,
        act: str = "relu",
        pool: str = "max",
        pool_p: float = 2.0,
        pool_lambda="random",
        dropout: float = 0.5,
        hidden: int = 4096,
        small_stem: bool | None = None,
        lrn: bool = False,
    ):
        super().__init__()
        check_knobs({"act": act, "dropout": dropout, "hidden": hidden})
        check_bool("lrn", lrn)
        if small_stem is not None:
            check_bool("small_stem", small_stem)
        small = image_size <= 64 if small_stem is None else small_stem
        k, s, p = (3, 1, 1) if small else (11, 4, 2)
        pooler = pool_factory(pool, pool_p, pool_lambda)
        norm = (lambda: [nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)]) if lrn else list  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, k, s, p),
            make_act(act),
            *norm(),
            pooler(3, 2, channels=64),
            nn.Conv2d(64, 192, 5, padding=2),
            make_act(act),
            *norm(),
            pooler(3, 2, channels=192),
            nn.Conv2d(192, 384, 3, padding=1),
            make_act(act),
            nn.Conv2d(384, 256, 3, padding=1),
            make_act(act),
            nn.Conv2d(256, 256, 3, padding=1),
            make_act(act),
            pooler(3, 2, channels=256),
        )
        size = (image_size + 2 * p - k) // s + 1
        for _ in range(3):
            size = (size - 3) // 2 + 1
        if size < 1:
            raise CnnlabError(f"AlexNet: a {image_size}x{image_size} input shrinks below 1 pixel")
        # Identity at the configured size; lets other input sizes through with the same classifier.
        self.avgpool = nn.AdaptiveAvgPool2d(size)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(256 * size * size, hidden),
            make_act(act),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            make_act(act),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))
