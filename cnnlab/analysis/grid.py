"""Grids of images with full captions: predictions ("true -> pred (p)"), misclassified examples, augmented batches."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from cnnlab.analysis.figures import DPI, new_figure

RIGHT, WRONG, NEUTRAL = "#1a7f37", "#c62828", "#222222"


def legend(colours: Sequence[str]) -> str:
    """The caption key, naming only the colours the grid shows (a grid of mistakes has no green)."""
    keys = ((WRONG, "red: wrong"), (RIGHT, "green: right (the class once)"))
    shown = [text for colour, text in keys if colour in colours]
    return "; ".join(["caption: true class -> predicted class (probability)", *shown])


def denormalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised float images -> uint8 images on the CPU."""
    mean = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8).cpu()


def class_name(classes: Sequence[str], k: int) -> str:
    return str(classes[k]) if k < len(classes) else str(k)


def caption(true: int, pred: int, classes: Sequence[str], prob: float | None = None) -> str:
    """ "true -> pred (p)" in full; a right prediction names its class once."""
    text = class_name(classes, true) if true == pred else f"{class_name(classes, true)} -> {class_name(classes, pred)}"
    return text if prob is None else f"{text} ({prob:.2f})"


def label_captions(y: torch.Tensor, classes) -> list[str]:
    """Class names; mixed (soft) labels name the two largest shares: "cat 0.62 + dog 0.38"."""
    if y.ndim == 1:
        return [class_name(classes, int(k)) for k in y]
    captions = []
    for row in y.float():
        share, k = row.topk(min(2, len(row)))
        if len(k) < 2 or share[1] < 0.005:  # a mix too faint to print
            captions.append(class_name(classes, int(k[0])))
        else:
            captions.append(
                f"{class_name(classes, int(k[0]))} {share[0]:.2f} + {class_name(classes, int(k[1]))} {share[1]:.2f}"
            )
    return captions


def _wrap(text: str, width: int) -> str:
    """Break a long caption after its arrow or plus (class names are never cut)."""
    for joint in (" -> ", " + "):
        if len(text) > width and joint in text:
            head, tail = text.split(joint, 1)
            return f"{head}{joint.rstrip()}\n{tail}"
    return text


def grid_figure(
    images: torch.Tensor,
    captions: Sequence[str],
    colours: Sequence[str] | None = None,
    title: str = "",
    columns: int = 8,
    tile: float = 1.45,
):
    """uint8 (N, C, H, W) images in a grid of about `tile`-inch cells, each with its caption below; a Figure.

    One mosaic drawn by one imshow (not an axis per image: 5-10x faster, which matters for a grid drawn
    every few epochs); each image is enlarged by a whole factor, so its pixels stay sharp squares."""
    n = len(images)
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    _, h, w = images.shape[1:]
    scale = max(1, round(tile * DPI / max(h, w)))
    th, tw = h * scale, w * scale
    gap, below = 10, 30  # pixels between tiles; pixels for two caption lines of 8-pt text
    cell_w, cell_h = tw + gap, th + below
    mosaic = np.full((rows * cell_h, columns * cell_w, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        img = images[i].repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        img = img.expand(3, -1, -1) if img.shape[0] == 1 else img[:3]
        y, x = r * cell_h, c * cell_w + gap // 2
        mosaic[y : y + th, x : x + tw] = img.permute(1, 2, 0).numpy()
    head = 48 if title else 6  # pixels above the mosaic for the title
    from matplotlib.patches import Rectangle

    fig = new_figure(mosaic.shape[1] / DPI, (mosaic.shape[0] + head) / DPI, layout=None)
    ax = fig.add_axes((0, 0, 1, mosaic.shape[0] / (mosaic.shape[0] + head)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    chars = max(8, tw // 6)  # characters of 8-pt text that fit under one tile
    for i in range(n):
        r, c = divmod(i, columns)
        x, y = c * cell_w + gap // 2, r * cell_h
        colour = colours[i] if colours is not None else NEUTRAL
        ax.add_patch(
            Rectangle(
                (x - 0.5, y - 0.5),
                tw,
                th,
                fill=False,
                edgecolor=colour if colours else "#cccccc",
                linewidth=2 if colour == WRONG else 1,
            )
        )
        ax.text(
            x + tw / 2,
            y + th + 2,
            _wrap(captions[i], chars),
            ha="center",
            va="top",
            fontsize=8,
            color=colour,
            linespacing=1.0,
        )
    if title:
        fig.text(0.5, 1 - 4 / (mosaic.shape[0] + head), title, ha="center", va="top", fontsize=10)
    return fig


def prediction_figure(
    images: torch.Tensor,
    true: Sequence[int],
    pred: Sequence[int],
    classes: Sequence[str],
    probs: Sequence[float] | None = None,
    title: str = "",
    columns: int = 8,
):
    """Images captioned "true -> pred (p)" (green when right, red when wrong); returns a Figure."""
    captions = [caption(t, p, classes, None if probs is None else probs[i]) for i, (t, p) in enumerate(zip(true, pred))]
    colours = [RIGHT if t == p else WRONG for t, p in zip(true, pred)]
    title = f"{title}\n{legend(colours)}" if title else legend(colours)
    return grid_figure(images, captions, colours, title, columns)
