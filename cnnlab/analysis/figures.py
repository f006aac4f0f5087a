"""matplotlib figures without pyplot: a Figure drawn by the Agg canvas, saved as PNG or turned into a tensor.

Using Figure + FigureCanvasAgg directly (not pyplot) leaves the process-wide backend alone, so cnnlab works
inside notebooks and on machines without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """A figure of width x height inches (at DPI pixels per inch) with its own Agg canvas."""
    # matplotlib is imported here, when a picture is drawn: importing it costs start-up time of every command
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def to_tensor(fig: Figure) -> torch.Tensor:
    """The rendered figure as a uint8 (3, H, W) tensor, what TensorBoard's add_image takes."""
    canvas = fig.canvas
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).contiguous()


def save(fig: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def save_and_tensor(fig: Figure, path: str | Path) -> torch.Tensor:
    """Write the figure as a PNG and return it as to_tensor does, from one drawing (savefig would draw it again:
    a confusion matrix's hundreds of texts make that a quarter of a second)."""
    from matplotlib.image import imsave

    fig.set_facecolor("white")  # what save() asks of savefig
    picture = to_tensor(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, np.asarray(fig.canvas.buffer_rgba()), format="png", dpi=DPI)  # savefig's own last step
    return picture


def show_image(ax, image: torch.Tensor) -> None:
    """A uint8 (C, H, W) image on an axis: grey for one channel, pixels kept sharp, no ticks."""
    ax.set_xticks([])
    ax.set_yticks([])
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image[:3].permute(1, 2, 0).numpy(), interpolation="nearest")
