"""The chapters' small teaching CNNs, all one `ConvNet` with the course's knobs:

- MnistCNN: a 2-conv MNIST CNN (PyTorch's MNIST example); SimpleCNN: the 3-conv CIFAR "SimpleCNN";
  CifarCNN: the "modern" CIFAR CNN (conv-BN-ReLU, global average pooling); LeNet5 (lenet.py).
- Each is ConvNet with other DEFAULTS; a knob left null (None) takes the model's default. The named
  variants (the padded MNIST CNN, the dropout-MLP-head CNN) are only configs: configs/model/*.yaml.
"""

from __future__ import annotations

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.blocks import init_weights, make_act, make_norm, make_norm1d
from cnnlab.models.knobs import check_bool, check_knobs
from cnnlab.models.pooling import pool_factory


def _same_padding(kernel_size: int, dilation: int):
    """Padding that keeps the size at stride 1: an int when symmetric, else PyTorch's "same" (even kernels)."""
    span = dilation * (kernel_size - 1)
    return span // 2 if span % 2 == 0 else "same"


class ConvNet(nn.Module):
    """A plain CNN from two lists: `convs` (an int: conv-[norm]-act with that many channels; "M": a pool, then
    Dropout2d when `dropout2d` > 0) and `fc` (the hidden fully connected widths: Linear-[norm]-act-[Dropout]).

    Knobs: `kernel_size`, `dilation`, `padding` (valid | same) of every conv; `norm` (batch | group | layer |
    none) after every conv and, unless `fc_norm` says otherwise, every hidden FC layer; `act`; `pool`,
    `pool_kernel`, `pool_stride` (null: = kernel), `pool_p`, `pool_lambda`; `head` (flatten: the whole final map
    into the first FC, so its size depends on the image size; gap / gmp: global average / max pooling, one value
    per channel); `dropout` (after every hidden FC, and before the first FC when `dropout_first`) and `dropout2d`;
    `width_mult` (every conv and hidden FC width). A pool is skipped once the map is smaller than its kernel.
    """

    DEFAULTS = dict(
        convs=[32, "M", 64, "M"],
        fc=[128],
        kernel_size=3,
        dilation=1,
        padding="same",
        norm="none",
        fc_norm=None,
        act="relu",
        pool="max",
        pool_kernel=2,
        pool_stride=None,
        pool_p=2.0,
        pool_lambda="random",
        head="flatten",
        dropout=0.0,
        dropout2d=0.0,
        dropout_first=False,
        width_mult=1.0,
    )
    KAIMING_INIT = False  # True: Kaiming-normal convs (layers.init_weights); False: PyTorch's default init

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        convs=None,
        fc=None,
        kernel_size: int | None = None,
        dilation: int | None = None,
        padding: str | None = None,
        norm: str | None = None,
        fc_norm: str | None = None,
        act: str | None = None,
        pool: str | None = None,
        pool_kernel: int | None = None,
        pool_stride: int | None = None,
        pool_p: float | None = None,
        pool_lambda=None,
        head: str | None = None,
        dropout: float | None = None,
        dropout2d: float | None = None,
        dropout_first: bool | None = None,
        width_mult: float | None = None,
    ):
        super().__init__()
        given = dict(
            convs=convs,
            fc=fc,
            kernel_size=kernel_size,
            dilation=dilation,
            padding=padding,
            norm=norm,
            fc_norm=fc_norm,
            act=act,
            pool=pool,
            pool_kernel=pool_kernel,
            pool_stride=pool_stride,
            pool_p=pool_p,
            pool_lambda=pool_lambda,
            head=head,
            dropout=dropout,
            dropout2d=dropout2d,
            dropout_first=dropout_first,
            width_mult=width_mult,
        )
        k = {key: self.DEFAULTS[key] if value is None else value for key, value in given.items()}
        check_knobs(k)
        fc_norm = k["norm"] if k["fc_norm"] is None else k["fc_norm"]
        check_bool("dropout_first", k["dropout_first"])
        scale = lambda c: max(1, round(c * k["width_mult"]))  # noqa: E731
        for v in list(k["convs"]) + list(k["fc"]):
            if v != "M" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise CnnlabError(
                    f"model.convs holds channel counts (integers >= 1) and M (pool), model.fc integers >= 1; got {v!r}"
                )
        ks, dil = k["kernel_size"], k["dilation"]
        pad = 0 if k["padding"] == "valid" else _same_padding(ks, dil)
        pooler = pool_factory(k["pool"], k["pool_p"], k["pool_lambda"])
        pk = k["pool_kernel"]
        ps = pk if k["pool_stride"] is None else k["pool_stride"]

        layers, c, size = [], in_channels, image_size
        for v in k["convs"]:
            if v == "M":
                if size >= pk:
                    layers.append(pooler(pk, ps, channels=c))
                    size = (size - pk) // ps + 1
                if k["dropout2d"]:
                    layers.append(nn.Dropout2d(k["dropout2d"]))
                continue
            out = scale(v)
            layers.append(nn.Conv2d(c, out, ks, padding=pad, dilation=dil, bias=k["norm"] == "none"))
            if k["norm"] != "none":
                layers.append(make_norm(k["norm"], out))
            layers.append(make_act(k["act"]))
            c = out
            size = size if pad == "same" else size + 2 * pad - dil * (ks - 1)
            if size < 1:
                raise CnnlabError(
                    f"a {image_size}x{image_size} input shrinks below 1 pixel in this network "
                    f"(kernel_size={ks}, dilation={dil}, padding={k['padding']}): use larger images "
                    f"or model.padding=same"
                )
        self.features = nn.Sequential(*layers)

        head = {
            "flatten": [nn.Flatten()],
            "gap": [nn.AdaptiveAvgPool2d(1), nn.Flatten()],
            "gmp": [nn.AdaptiveMaxPool2d(1), nn.Flatten()],
        }[k["head"]]
        width = c * size * size if k["head"] == "flatten" else c
        if k["dropout_first"] and k["dropout"]:
            head.append(nn.Dropout(k["dropout"]))
        for h in k["fc"]:
            h = scale(h)
            head.append(nn.Linear(width, h, bias=fc_norm == "none"))
            if fc_norm != "none":
                head.append(make_norm1d(fc_norm, h, key="fc_norm"))
            head.append(make_act(k["act"]))
            if k["dropout"]:
                head.append(nn.Dropout(k["dropout"]))
            width = h
        head.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*head)
        if self.KAIMING_INIT:
            init_weights(self)

    def forward(self, x):
        return self.classifier(self.features(x))


class MnistCNN(ConvNet):
    """conv3x3(32) - conv3x3(64) - pool - Dropout2d - FC128 - Dropout - FC (PyTorch's MNIST example).

    Unpadded convs as in the example: 1,199,882 parameters at 28x28 with 10 classes.
    """

    DEFAULTS = {
        **ConvNet.DEFAULTS,
        "convs": [32, 64, "M"],
        "fc": [128],
        "padding": "valid",
        "dropout": 0.5,
        "dropout2d": 0.25,
    }


class SimpleCNN(ConvNet):
    """3 x (conv3x3 - act - pool) with 32-64-128 channels, then Dropout - FC512 - act - Dropout - FC."""

    DEFAULTS = {
        **ConvNet.DEFAULTS,
        "convs": [32, "M", 64, "M", 128, "M"],
        "fc": [512],
        "dropout": 0.5,
        "dropout_first": True,
    }


class CifarCNN(ConvNet):
    """The "modern" CIFAR CNN: conv-BN-ReLU 64 - 128 - 256x2 - 512x2 with pooling, then GAP - Dropout - FC.

    The global-average-pooling head keeps the classifier at 512 x classes weights whatever the image size.
    """

    DEFAULTS = {
        **ConvNet.DEFAULTS,
        "convs": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M"],
        "fc": [],
        "norm": "batch",
        "head": "gap",
        "dropout": 0.3,
        "dropout_first": True,
    }

    KAIMING_INIT = True
