"""Looking inside a network: the outputs of chosen layers for one image, and the first layer's filters."""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnlab.analysis.figures import new_figure


@torch.no_grad()
def capture(model: nn.Module, x: torch.Tensor, layers: dict[str, nn.Module]) -> tuple[dict, torch.Tensor]:
    """Run x through the model; returns ({name: that layer's output, detached on the CPU}, logits)."""
    outputs, handles = {}, []
    for name, module in layers.items():

        def hook(_module, _inputs, out, name=name):
            first = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(first, torch.Tensor):
                # a copy: an in-place op after this layer (ReLU(inplace=True)) would change it, and on the CPU
                # .float().cpu() is the same tensor
                outputs[name] = first.detach().to("cpu", torch.float32, copy=True)

        handles.append(module.register_forward_hook(hook))
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return outputs, logits


@torch.no_grad()
def last_feature_map(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module] | None:
    """The last layer (a module without children, in execution order) whose output is a spatial map larger
    than 1x1: where Grad-CAM looks, after the last convolution's activation and before global pooling."""
    found, handles = [], []
    for name, module in model.named_modules():
        if name and not list(module.children()):

            def hook(_module, _inputs, out, name=name, module=module):
                first = out[0] if isinstance(out, (tuple, list)) else out
                if isinstance(first, torch.Tensor) and first.dim() == 4 and first.shape[2] * first.shape[3] > 1:
                    found.append((name, module))

            handles.append(module.register_forward_hook(hook))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return found[-1] if found else None


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first 2-D convolution the model defines (its input layer, in every model of the zoo)."""
    return next(((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _square(n: int, max_columns: int = 16) -> tuple[int, int]:
    columns = min(max_columns, max(1, math.ceil(math.sqrt(n))))
    return math.ceil(n / columns), columns


def _tiles(fig, shown: int, rows: int, columns: int):
    """The first `shown` axes of a rows x columns grid, ticks off; the rest of the grid hidden."""
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[shown:]:
        ax.set_axis_off()
    return axes[:shown]


def feature_map_figure(fmap: torch.Tensor, title: str, max_maps: int = 64):
    """One image's (C, H, W) feature maps, a tile per channel, each scaled to its own range (viridis)."""
    shown = min(max_maps, fmap.shape[0])
    rows, columns = _square(shown)
    tile = max(0.75, min(1.6, 10 / columns))
    fig = new_figure(max(6.0, columns * tile), rows * (tile + 0.18) + 0.75)
    for i, ax in enumerate(_tiles(fig, shown, rows, columns)):
        ax.imshow(fmap[i].numpy(), cmap="viridis", interpolation="nearest")
        ax.set_title(f"ch {i}", fontsize=7, pad=2)
    c, h, w = fmap.shape
    fig.suptitle(
        f"{title}\n{c} x {h} x {w}: {shown} of {c} channels, each scaled to its own range (yellow: high)", fontsize=10
    )
    return fig


def filter_figure(weight: torch.Tensor, title: str, max_filters: int = 64):
    """A conv layer's (O, I, k, k) filters: colour for RGB input (each filter stretched to [0, 1]), otherwise
    the mean over input channels on a red/blue scale centred at 0 (red: positive weights)."""
    weight = weight.detach().float().cpu()[:max_filters]
    shown = len(weight)
    rows, columns = _square(shown)
    tile = max(0.6, min(1.2, 9 / columns))
    fig = new_figure(max(5.6, columns * tile), rows * (tile + 0.16) + 0.8)
    rgb = weight.shape[1] == 3
    for i, ax in enumerate(_tiles(fig, shown, rows, columns)):
        w = weight[i]
        if rgb:
            w = (w - w.min()) / (w.max() - w.min()).clamp_min(1e-12)
            ax.imshow(w.permute(1, 2, 0).numpy(), interpolation="nearest")
        else:
            w = w.mean(0)
            limit = float(w.abs().max()) or 1.0
            ax.imshow(w.numpy(), cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"{i}", fontsize=7, pad=2)
    o, i_ch, kh, kw = weight.shape
    how = (
        "RGB, each filter stretched to [0, 1]"
        if rgb
        else ("red: positive, blue: negative weights" + (f" (mean over {i_ch} input channels)" if i_ch > 1 else ""))
    )
    fig.suptitle(f"{title}\n{o} filters of {i_ch} x {kh} x {kw}: {how}", fontsize=10)
    return fig
