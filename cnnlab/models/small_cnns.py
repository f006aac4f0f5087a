"""The chapters' small teaching CNNs: a 2-conv MNIST CNN, a 3-conv CIFAR "SimpleCNN", a "modern" CIFAR CNN."""

from __future__ import annotations

from torch import nn

from cnnlab.models.layers import conv_stack, init_weights, make_act, pool_factory


class MnistCNN(nn.Module):
    """conv3x3(32) - conv3x3(64) - pool - Dropout2d - FC128 - Dropout - FC (PyTorch's MNIST example).

    Unpadded convs as in the example: 1,199,882 parameters at 28x28 with 10 classes. `norm=batch` adds BN
    after each conv (the BN-on/off experiment).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, norm: str = "none",
                 act: str = "relu", pool: str = "max", pool_p: float = 2.0, pool_lambda="random",
                 dropout2d: float = 0.25, dropout: float = 0.5, width_mult: float = 1.0):
        super().__init__()
        widths = [max(1, round(32 * width_mult)), max(1, round(64 * width_mult))]
        self.features, c, size = conv_stack([*widths, "M"], in_channels, image_size,
                                            pool_factory(pool, pool_p, pool_lambda), norm, act, padding=0,
                                            dropout2d=dropout2d)
        hidden = max(1, round(128 * width_mult))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c * size * size, hidden), make_act(act),
                                        nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class SimpleCNN(nn.Module):
    """3 x (conv3x3 - act - pool) with 32-64-128 channels, then Dropout - FC512 - act - Dropout - FC."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, norm: str = "none",
                 act: str = "relu", pool: str = "max", pool_p: float = 2.0, pool_lambda="random",
                 dropout: float = 0.5, width_mult: float = 1.0):
        super().__init__()
        w = [max(1, round(c * width_mult)) for c in (32, 64, 128)]
        self.features, c, size = conv_stack([w[0], "M", w[1], "M", w[2], "M"], in_channels, image_size,
                                            pool_factory(pool, pool_p, pool_lambda), norm, act)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * size * size, 512),
                                        make_act(act), nn.Dropout(dropout), nn.Linear(512, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class CifarCNN(nn.Module):
    """The "modern" CIFAR CNN: conv-BN-ReLU 64 - 128 - 256x2 - 512x2 with pooling, then GAP - Dropout - FC.

    The global-average-pooling head keeps the classifier at 512 x classes weights whatever the image size.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, norm: str = "batch",
                 act: str = "relu", pool: str = "max", pool_p: float = 2.0, pool_lambda="random",
                 dropout: float = 0.3, width_mult: float = 1.0):
        super().__init__()
        w = [max(1, round(c * width_mult)) for c in (64, 128, 256, 512)]
        cfg = [w[0], "M", w[1], "M", w[2], w[2], "M", w[3], w[3], "M"]
        self.features, c, _ = conv_stack(cfg, in_channels, image_size, pool_factory(pool, pool_p, pool_lambda),
                                         norm, act)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(c, num_classes))
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.features(x))
