"""LeNet-5 (LeCun et al., 1998): conv5x5(6) - pool - conv5x5(16) - pool - FC120 - FC84 - FC."""

from __future__ import annotations

from cnnlab.models.small_cnns import ConvNet


class LeNet5(ConvNet):
    """Unpadded convolutions, so the FC input depends on the image size: 16x4x4 at 28x28 (44,426 parameters),
    16x5x5 at 32x32 (61,706). Every ConvNet knob applies (norm, dropout, head=gap, kernel_size, ...)."""

    DEFAULTS = {
        **ConvNet.DEFAULTS,
        "convs": [6, "M", 16, "M"],
        "fc": [120, 84],
        "kernel_size": 5,
        "padding": "valid",
        "pool": "avg",
    }
