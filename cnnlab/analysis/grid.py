"""A grid of images captioned with true / predicted labels (TensorBoard, and reports)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw


def denormalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised float images -> uint8 images on the CPU."""
    mean = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8).cpu()


def prediction_grid(images: torch.Tensor, true: list[int], pred: list[int], classes: list[str],
                    columns: int = 8, cell: int = 64) -> torch.Tensor:
    """uint8 (N, C, H, W) images -> one uint8 (3, H', W') picture; captions green when right, red when wrong."""
    n = len(images)
    rows = (n + columns - 1) // columns
    caption = 14
    canvas = Image.new("RGB", (columns * cell, rows * (cell + caption)), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        img = images[i]
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        tile = Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).resize((cell, cell), Image.NEAREST)
        r, c = divmod(i, columns)
        canvas.paste(tile, (c * cell, r * (cell + caption)))
        name = lambda k: classes[k] if k < len(classes) else str(k)  # noqa: E731
        text = name(pred[i]) if pred[i] == true[i] else f"{name(pred[i])}|{name(true[i])}"
        draw.text((c * cell + 2, r * (cell + caption) + cell), text[:12],
                  fill=(0, 128, 0) if pred[i] == true[i] else (200, 0, 0))
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).contiguous()
