"""The small things a user sees: the progress bar ends full, the pictures read well (each drawn here for real and
checked through the matplotlib objects that make it)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from cnnlab.analysis.confusion import confusion_figure
from cnnlab.analysis.grid import prediction_figure
from cnnlab.data import build
from cnnlab.engine import progress
from cnnlab.engine.progress import ProgressDisplay
from cnnlab.experiments import plots
from cnnlab.experiments import report as report_lib
from cnnlab.experiments.report import Report, Run


def test_progress_bar_ends_at_100_percent_without_a_stale_eta(monkeypatch):
    t = [1000.0]
    monkeypatch.setattr(progress, "_now", lambda: t[0])
    out = Console(file=io.StringIO(), width=160, force_terminal=True, color_system=None, highlight=False)
    display = ProgressDisplay("rich", 1, out, device="cpu", refresh=1e9)  # one update only: the bar's last one
    display.start_epoch(1, 40)
    for batch in range(1, 41):
        t[0] += 0.1
        if display.due():
            display.update(batch, 1.0, 50.0, 100.0)
    display.end_epoch(1, "epoch 1/1 | done")
    display.close()
    final = out.file.getvalue().rsplit("\x1b[2K", 1)[-1]  # the bars as last drawn
    assert "40/40" in final and "eta" not in final, final


# --------------------------------------------------------------------------------------------- sweep plots
def _report(sizes: list[int], epochs: int = 3):
    runs, rows = [], []
    for i, size in enumerate(sizes):
        history = [
            {"epoch": e, "val_acc": 50.0 + 10 * e + i, "train_acc": 55.0 + 10 * e, "val_loss": 1.0}
            for e in range(1, epochs + 1)
        ]
        metrics = {"best_val_acc": history[-1]["val_acc"], "test_acc": 60.0 + i, "params": size, "history": history}
        runs.append(Run(Path(f"/runs/{i}"), metrics=metrics, choices={"model": f"a_rather_long_model_name_{i}"}))
        rows.append(report_lib.row_of(runs[-1], ["model"]))
    return Report(runs, ["model"], rows, "val_acc")


def _texts_inside(fig) -> None:
    """Every text of every axis lies inside the figure, and no two x tick labels overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    for ax in fig.axes:
        for text in ax.texts:
            extent = text.get_window_extent(renderer)
            assert box.x0 <= extent.x0 and extent.x1 <= box.x1, text.get_text()
        ax_box = ax.get_window_extent(renderer)
        for text in ax.texts:
            extent = text.get_window_extent(renderer)
            assert ax_box.x0 <= extent.x0 and extent.x1 <= ax_box.x1, f"{text.get_text()} runs off the axes"
        labels = [t for t in ax.get_xticklabels(which="both") if t.get_text() and t.get_visible()]
        extents = sorted((t.get_window_extent(renderer) for t in labels), key=lambda e: e.x0)
        assert all(a.x1 <= b.x0 for a, b in zip(extents, extents[1:])), [t.get_text() for t in labels]


def test_accuracy_vs_params_is_readable_and_skipped_for_one_size(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig) or Path(path))
    assert plots.accuracy_vs_params(_report([61_706] * 3), tmp_path / "same.png") is None  # a vertical strip: no
    assert plots.accuracy_vs_params(_report([61_706, 150_000, 11_200_000, 23_500_000]), tmp_path / "a.png")
    _texts_inside(drawn[-1])
    ticks = [t.get_text() for t in drawn[-1].axes[0].get_xticklabels(which="minor") if t.get_text()]
    assert not ticks  # minor ticks unlabelled (they overlapped)


def test_one_epoch_curves_have_whole_epoch_ticks(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig) or Path(path))
    plots.curves(_report([1, 2], epochs=1), tmp_path / "c.png")
    for ax in drawn[-1].axes[:2]:
        assert ax.get_xlim() == (0.5, 1.5) and list(ax.get_xticks()) == [1]


# ------------------------------------------------------------------------------------------ analysis pictures
def test_row_normalised_cells_are_never_a_rounded_zero():
    cm = torch.tensor([[199, 1, 0], [1, 999, 0], [0, 0, 5]])  # 0.5% and 0.1% off the diagonal, 99.5% and 99.9% on it
    fig = confusion_figure(cm, ["a", "b", "c"])
    share_texts = [t.get_text() for t in fig.axes[1].texts]
    assert share_texts.count("<1") == 2 and share_texts.count(">99") == 2 and "0" not in share_texts


def test_a_picture_saved_and_logged_is_drawn_once_and_both_copies_match(tmp_path, monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    from cnnlab.analysis.figures import save, save_and_tensor

    cm = torch.tensor([[50, 2, 0], [3, 40, 1], [0, 4, 60]])
    save(confusion_figure(cm, ["cat", "dog", "bird"], "title"), tmp_path / "savefig.png")
    draws = []
    draw = FigureCanvasAgg.draw
    monkeypatch.setattr(FigureCanvasAgg, "draw", lambda canvas: draws.append(1) or draw(canvas))
    picture = save_and_tensor(confusion_figure(cm, ["cat", "dog", "bird"], "title"), tmp_path / "once" / "cm.png")
    assert len(draws) == 1
    once = torch.from_numpy(np.array(Image.open(tmp_path / "once" / "cm.png").convert("RGB"))).permute(2, 0, 1)
    twice = torch.from_numpy(np.array(Image.open(tmp_path / "savefig.png").convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(once, picture) and torch.equal(once, twice)


def test_caption_key_names_only_the_colours_shown():
    images = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    wrong_only = prediction_figure(images, [0, 1, 2], [1, 2, 0], ["a", "b", "c"])
    key = " ".join(t.get_text() for t in wrong_only.texts)
    assert "red: wrong" in key and "green" not in key
    mixed = prediction_figure(images, [0, 1, 2], [0, 2, 0], ["a", "b", "c"])
    assert "green: right" in " ".join(t.get_text() for t in mixed.texts)


def test_mixup_preview_shows_mixed_images_at_seed_0(tmp_path):
    from trained_run import compose

    from cnnlab.commands import preview

    cfg = compose("preview", "augment=mixup", f"output={tmp_path / 'p.png'}")
    data = build(cfg.data, cfg.augment, torch.device("cpu"), seed=0)
    _, y = preview.augmented_batch(data.train, 32)
    assert len(y) == 32
    mixed = (y.max(1).values < 0.8).sum().item()  # images at most 80% one class: visibly two
    assert mixed >= 3
