"""VGG (Simonyan & Zisserman, 2014): stacks of 3x3 convs and five 2x2 pools, then FC4096-FC4096-FC."""

from __future__ import annotations

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.blocks import conv_stack, init_weights, make_act
from cnnlab.models.knobs import check_choice
from cnnlab.models.pooling import pool_factory

CONFIGS = {  # depth -> channels per conv, "M" = pool
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """The classifier is sized for the final feature map: 512x7x7 at 224 (torchvision's layout and parameter
    count), 512x1x1 at 32 (no adaptive upsampling of a 1x1 map to 7x7). Convs keep their bias even with BN,
    as torchvision's vgg*_bn do.
    """

    def __init__(
        self,
        depth: int = 16,
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int = 224,
        norm: str = "none",
        act: str = "relu",
        pool: str = "max",
        pool_p: float = 2.0,
        pool_lambda="random",
        dropout: float = 0.5,
        hidden: int = 4096,
        width_mult: float = 1.0,
    ):
        super().__init__()
        check_choice("depth", depth, tuple(CONFIGS))
        if width_mult <= 0:
            raise CnnlabError(f"model.width_mult must be > 0; got {width_mult}")
        cfg = [v if v == "M" else max(1, round(v * width_mult)) for v in CONFIGS[depth]]
        self.features, c, size = conv_stack(
            cfg, in_channels, image_size, pool_factory(pool, pool_p, pool_lambda), norm, act, bias=True
        )
        self.avgpool = nn.AdaptiveAvgPool2d(size)  # identity at the configured size
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * size * size, hidden),
            make_act(act),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            make_act(act),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self, linear_std=0.01)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))
