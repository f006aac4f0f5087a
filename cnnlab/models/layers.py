"""Building blocks shared by the model families: activations, pooling, conv-norm-act."""

from __future__ import annotations

from torch import nn

from cnnlab.errors import CnnlabError

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def make_act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise CnnlabError(f"model.act must be one of {', '.join(ACTIVATIONS)}; got {name!r}")
    cls = ACTIVATIONS[name]
    return cls(inplace=True) if cls in (nn.ReLU, nn.SiLU) else cls()


def make_pool(kind: str, kernel_size: int = 2, stride: int | None = None, channels: int | None = None) -> nn.Module:
    """A downsampling layer chosen by name (the pooling experiments switch it from the config)."""
    stride = kernel_size if stride is None else stride
    if kind == "max":
        return nn.MaxPool2d(kernel_size, stride)
    if kind == "avg":
        return nn.AvgPool2d(kernel_size, stride)
    raise CnnlabError(f"model.pool must be one of max, avg; got {kind!r}")
