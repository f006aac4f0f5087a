"""The small things a user sees: the progress bar ends full, the pictures read well (each drawn here for real and
checked through the matplotlib objects that make it)."""

from __future__ import annotations

import io

from rich.console import Console

from cnnlab.engine import progress
from cnnlab.engine.progress import ProgressDisplay


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
