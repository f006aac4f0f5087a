"""Confusion matrices: per-class precision / recall / F1, the most-confused pairs, and the picture.

Rows are true classes, columns predicted classes (the convention of scikit-learn and most textbooks).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cnnlab.analysis.figures import new_figure
from cnnlab.analysis.grid import class_name


def class_scores(cm: torch.Tensor) -> dict:
    """Per-class precision, recall, F1 and support, and their macro averages, from a confusion matrix.

    A class nobody predicted has precision 0 (as scikit-learn's zero_division=0). Macro averages run over
    the classes that occur in the split or in the predictions, so a split without some class is not
    penalised for it.
    """
    cm = cm.detach().double().cpu()
    hits = cm.diagonal()
    support, predicted = cm.sum(1), cm.sum(0)
    precision = torch.where(predicted > 0, hits / predicted.clamp_min(1), torch.zeros_like(hits))
    recall = torch.where(support > 0, hits / support.clamp_min(1), torch.zeros_like(hits))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-12), torch.zeros_like(hits))
    present = (support > 0) | (predicted > 0)
    macro = {
        name: float(v[present].mean()) if present.any() else 0.0
        for name, v in (("precision", precision), ("recall", recall), ("f1", f1))
    }
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": [int(s) for s in support],
        "macro": macro,
    }


def most_confused(cm: torch.Tensor, classes: Sequence[str], k: int = 10) -> list[dict]:
    """The k largest off-diagonal cells: {"true", "pred", "count", "share" (of the true class, percent)}."""
    cm = cm.detach().cpu().long()
    off = cm.clone()
    off.fill_diagonal_(0)
    support = cm.sum(1)
    order = torch.argsort(off.flatten(), descending=True, stable=True)[:k]
    pairs = []
    for flat in order.tolist():
        t, p = divmod(flat, cm.shape[1])
        if off[t, p] == 0:
            break
        pairs.append(
            {
                "true": class_name(classes, t),
                "pred": class_name(classes, p),
                "count": int(off[t, p]),
                "share": 100.0 * int(off[t, p]) / max(1, int(support[t])),
            }
        )
    return pairs


def _share_text(v: float) -> str:
    """A percentage in a cell: whole numbers, but never "0" or "100" for a share that is neither."""
    if 0 < v < 1:
        return "<1"
    if 99 < v < 100:
        return ">99"
    return f"{v:.0f}"


def confusion_figure(cm: torch.Tensor, classes: Sequence[str], title: str = ""):
    """Two panels, counts and row-normalised (each true class sums to 100%), with full class names."""
    cm = cm.detach().cpu().long()
    k = cm.shape[0]
    names = [class_name(classes, i) for i in range(k)]
    rows = cm.sum(1, keepdim=True).clamp_min(1)
    share = (100.0 * cm.double() / rows).numpy()
    longest = max((len(n) for n in names), default=1)
    side = min(18.0, max(4.2, 0.5 * k + 0.07 * longest + 1.2))  # inches per panel
    fig = new_figure(2 * side + 1.6, 0.8 * side + 1.2)
    axes = fig.subplots(1, 2)
    label_size = 9 if k <= 20 else max(4, 9 - k // 20)
    annotate = k <= 25
    for ax, values, what, fmt, cmap in (
        (axes[0], cm.numpy(), "counts", "d", "Blues"),
        (axes[1], share, "row-normalised (% of each true class)", ".0f", "Oranges"),
    ):
        vmax = 100 if values is share else max(1, int(values.max()))
        image = ax.imshow(values, cmap=cmap, vmin=0, vmax=vmax)
        ax.set_title(what, fontsize=11)
        ax.set_xlabel("predicted class", fontsize=10)
        ax.set_ylabel("true class", fontsize=10)
        ax.set_xticks(
            range(k),
            names,
            rotation=45 if longest > 3 else 0,
            ha="right" if longest > 3 else "center",
            rotation_mode="anchor",
            fontsize=label_size,
        )
        ax.set_yticks(range(k), names, fontsize=label_size)
        fig.colorbar(image, ax=ax, shrink=0.8, label="images" if values is not share else "% of true class")
        if annotate:
            high = 0.6 * vmax  # white text on the dark end of the colour map
            for (t, p), v in np.ndenumerate(values):
                if v > 0 or values is not share:
                    text = _share_text(v) if values is share else format(v, fmt)
                    ax.text(
                        p,
                        t,
                        text,
                        ha="center",
                        va="center",
                        fontsize=max(5, label_size - 1),
                        color="white" if v > high else "black",
                        in_layout=False,  # inside the axes: constrained layout need not measure 2 x k x k texts
                    )
    total, hits = int(cm.sum()), int(cm.diagonal().sum())
    heading = f"confusion matrix: {total:,} images, {100.0 * hits / max(1, total):.2f}% on the diagonal"
    fig.suptitle(f"{title}\n{heading}" if title else heading, fontsize=12)
    return fig
