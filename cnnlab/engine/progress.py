"""The console: rich progress bars (epoch and batch) on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

log = logging.getLogger("cnnlab")


def make_console() -> Console:
    return Console(highlight=False, soft_wrap=not sys.stdout.isatty())


def say(console: Console, message: str) -> None:
    """Print for the user and keep it in the run's log file."""
    console.print(message)
    log.info(message)


class ProgressDisplay:
    def __init__(self, mode: str, epochs: int, console: Console):
        if mode == "auto":
            mode = "rich" if console.is_terminal else "plain"
        self.mode, self.epochs, self.console = mode, epochs, console
        self._progress = None
        if mode == "rich":
            self._progress = Progress(
                TextColumn("{task.description:>5}"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                console=console, transient=False,
            )
            self._progress.start()
            self._epoch_task = self._progress.add_task("epoch", total=epochs, info="")
            self._batch_task = None

    def start_epoch(self, epoch: int, steps: int) -> None:
        if self._progress is not None:
            self._progress.update(self._epoch_task, completed=epoch)
            if self._batch_task is not None:
                self._progress.remove_task(self._batch_task)
            self._batch_task = self._progress.add_task("batch", total=steps, info="")

    def update(self, step: int, loss: float, acc: float, images_per_sec: float) -> None:
        if self._progress is not None:
            info = f"loss {loss:.3f} acc {acc:.1f}% {images_per_sec:,.0f} img/s"
            self._progress.update(self._batch_task, completed=step, info=info)

    def end_epoch(self, epoch: int, line: str, short: str = "") -> None:
        """`line` is printed (and logged); `short` goes beside the epoch bar."""
        if self.mode == "none":
            log.info(line)
            return
        if self._progress is not None:
            self._progress.update(self._epoch_task, completed=epoch + 1, info=short)
        say(self.console, line)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def metrics_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, value)
    return table
