"""Receptive field and jump (cumulative stride) of every tensor in a forward pass, read off the ops themselves.

A TorchFunctionMode sees each torch call once: convolutions, pooling and padding update the field
(rf_out = rf + (k_eff - 1) * jump, jump_out = jump * stride); every other op (activations, norms, adds,
concatenations, reshapes) passes on the largest field among its inputs, so residual and inception branches
are followed without knowing the architecture. Global/adaptive pooling ends the trace (SE gates and heads do
not widen the field), and attention makes it global.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class Field:
    size: float = 1  # receptive field of one unit, in input pixels
    jump: float = 1  # input pixels between neighbouring units
    start: float = 0.5  # centre of the first unit's field


def _first(v) -> int:
    return int(v[0] if isinstance(v, (tuple, list)) else v)


def _arg(args, kwargs, index: int, name: str, default):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _window(field: Field, kernel: int, stride: int, padding: int, dilation: int = 1) -> Field:
    k = dilation * (kernel - 1) + 1
    return Field(
        field.size + (k - 1) * field.jump, field.jump * stride, field.start + ((k - 1) / 2 - padding) * field.jump
    )


class ReceptiveFieldTracker(TorchFunctionMode):
    """Use as a context manager around one forward pass of an input tagged with `track(x)`."""

    def __init__(self):
        super().__init__()
        self.fields: dict[int, Field] = {}
        self.keep: list = []  # holds the traced tensors so that their ids stay unique
        self.last: tuple[Field, tuple[int, int]] | None = None  # the latest (N, C, H, W) map
        self.attention = False

    def track(self, x: torch.Tensor) -> torch.Tensor:
        self._tag(x, Field())
        return x

    def _tag(self, out, field: Field, from_map: bool = True) -> None:
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.fields[id(t)] = field
                self.keep.append(t)
                # A feature map comes from a map (not from reshaped tokens), and none exist after attention.
                if t.dim() == 4 and from_map and not self.attention:
                    self.last = (field, tuple(t.shape[2:]))

    def _source(self, args, kwargs) -> Field | None:
        found = []
        for a in (*args, *kwargs.values()):
            for t in a if isinstance(a, (tuple, list)) else (a,):
                if isinstance(t, torch.Tensor) and id(t) in self.fields:
                    found.append(self.fields[id(t)])
        return max(found, key=lambda f: f.size) if found else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        src = (
            self._source(args[:1], {k: v for k, v in kwargs.items() if k == "input"})
            if func in _WINDOWED
            else self._source(args, kwargs)
        )
        if src is None:
            return out
        if func in (F.conv2d, torch.conv2d):
            w = _arg(args, kwargs, 1, "weight", None)
            k, dil = w.shape[-1], _first(_arg(args, kwargs, 5, "dilation", 1))
            pad = _arg(args, kwargs, 4, "padding", 0)
            pad = (dil * (k - 1)) // 2 if pad == "same" else 0 if pad == "valid" else _first(pad)
            self._tag(out, _window(src, k, _first(_arg(args, kwargs, 3, "stride", 1)), pad, dil))
        elif func in (F.max_pool2d, F.max_pool2d_with_indices, F.avg_pool2d, torch.max_pool2d):
            k = _first(_arg(args, kwargs, 1, "kernel_size", None))
            stride = _arg(args, kwargs, 2, "stride", None)
            dil = _first(_arg(args, kwargs, 4, "dilation", 1)) if func is not F.avg_pool2d else 1
            self._tag(
                out, _window(src, k, _first(stride) if stride else k, _first(_arg(args, kwargs, 3, "padding", 0)), dil)
            )
        elif func is F.lp_pool2d:
            k = _first(_arg(args, kwargs, 2, "kernel_size", None))
            stride = _arg(args, kwargs, 3, "stride", None)
            self._tag(out, _window(src, k, _first(stride) if stride else k, 0))
        elif func is F.unfold:
            self._tag(
                out,
                _window(
                    src,
                    _first(_arg(args, kwargs, 1, "kernel_size", None)),
                    _first(_arg(args, kwargs, 4, "stride", 1)),
                    _first(_arg(args, kwargs, 3, "padding", 0)),
                    _first(_arg(args, kwargs, 2, "dilation", 1)),
                ),
            )
        elif func is F.pad:
            pad = _arg(args, kwargs, 1, "pad", (0,))
            self._tag(out, Field(src.size, src.jump, src.start - pad[0] * src.jump))
        elif func in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.adaptive_max_pool2d_with_indices):
            first = out[0] if isinstance(out, tuple) else out
            if first.shape[2:] == args[0].shape[2:]:  # an identity at this size
                self._tag(out, src)
        elif func is F.scaled_dot_product_attention:
            self.attention = True
            self._tag(out, src)
        else:
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            self._tag(out, src, from_map=first is not None and first.dim() == 4)
        return out


# Ops whose field comes from their input only (not from their weights or other arguments).
_WINDOWED = {
    F.conv2d,
    torch.conv2d,
    F.max_pool2d,
    F.max_pool2d_with_indices,
    F.avg_pool2d,
    torch.max_pool2d,
    F.lp_pool2d,
    F.unfold,
    F.pad,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool2d_with_indices,
}


def receptive_field(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """{"size", "jump", "map": [H, W], "global"} of the model's last 4-D feature map for input x.

    "global": attention came after that map (a ViT's patch grid), so every output unit sees the whole image.
    """
    tracker = ReceptiveFieldTracker()
    with torch.no_grad(), tracker:
        model(tracker.track(x))
    return report(tracker)


def report(tracker: ReceptiveFieldTracker) -> dict | None:
    if tracker.last is None:
        return None
    field, size = tracker.last
    return {"size": field.size, "jump": field.jump, "map": list(size), "global": tracker.attention}
