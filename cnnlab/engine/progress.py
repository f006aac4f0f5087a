"""The console: rich progress bars on a terminal, plain lines otherwise; the run's log file gets plain text.

Progress is refreshed by time, not by step count: the training loop asks `display.due()` after every step
(a clock comparison on the host, no device sync) and only when it says yes reads its device running sums
and calls `display.update(...)`. So the first images/s and ETA show after about a second, a 40-batch epoch
moves, and a run without a terminal prints a line inside long epochs instead of staying silent.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import torch
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

log = logging.getLogger("cnnlab")

RICH_REFRESH = 2.0  # seconds between progress updates on a terminal
PLAIN_REFRESH = 30.0  # seconds between progress lines without a terminal (and in train.log)
FIRST_LOOK = 1.0  # seconds into an epoch before the first update: the first rate and ETA
LONG_EPOCH = 300.0  # an epoch estimated longer than this gets one warning with the estimate
FIRST_BATCH_FILE = "CNNLAB_FIRST_BATCH_FILE"  # env: a file that gets the wall time of the first step (bench.py)


def _now() -> float:
    """The progress clock (a function of its own so that tests can drive it)."""
    return time.monotonic()


def make_console() -> Console:
    return Console(highlight=False, soft_wrap=not sys.stdout.isatty())


def plain(message: str) -> str:
    """`message` without rich markup ("[yellow]x[/yellow]" -> "x"), for the log file."""
    return Text.from_markup(message).plain


def say(console: Console, message: str) -> None:
    """Print for the user (rich markup allowed) and keep it, as plain text, in the run's log file."""
    console.print(message)
    log.info(plain(message))


def clock(seconds: float) -> str:
    """h:mm:ss (or m:ss under an hour)."""
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def duration(seconds: float) -> str:
    """A rough human duration: '40 s', '12 min', '1.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressDisplay:
    """Progress of a fit. The trainer calls start_epoch(epoch, num_batches) (epoch from 1), due() after every
    step, update(batch, loss, acc, images_per_sec) when due() said yes, and end_epoch(epoch, line, short)."""

    def __init__(
        self,
        mode: str,
        epochs: int,
        console: Console,
        *,
        device: str | torch.device | None = None,
        refresh: float | None = None,
        log_refresh: float = PLAIN_REFRESH,
    ):
        if mode == "auto":
            mode = "rich" if console.is_terminal else "plain"
        self.mode, self.epochs, self.console = mode, epochs, console
        self.refresh = refresh if refresh is not None else (RICH_REFRESH if mode == "rich" else PLAIN_REFRESH)
        self.log_refresh = log_refresh
        # Where the run trains, for the long-epoch hint; without it, "cpu" when no accelerator is present.
        self.device_type = (
            torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.epoch, self.num_batches = 0, 0
        self._epoch_start = self._next = self._next_line = self._next_log = 0.0
        self._warned = False
        self._first_step = os.environ.get(FIRST_BATCH_FILE)  # start-up time: the bench reads when training began
        self._progress = None
        if mode == "rich":
            self._progress = Progress(
                TextColumn("{task.description:>5}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
            )
            self._progress.start()
            self._epoch_task = self._progress.add_task("epoch", total=epochs, info="")
            self._batch_task = None

    # ------------------------------------------------------------------------------------- the contract
    def start_epoch(self, epoch: int, num_batches: int) -> None:
        """Epoch `epoch` (from 1) of `num_batches` batches begins."""
        self.epoch, self.num_batches = epoch, num_batches
        now = _now()
        self._epoch_start = now
        self._next = now + FIRST_LOOK
        self._next_line = now + FIRST_LOOK  # plain: the first line as soon as the epoch is known to be long
        self._next_log = now + self.log_refresh
        if self._progress is not None:
            self._progress.update(self._epoch_task, completed=epoch - 1)
            if self._batch_task is not None:
                self._progress.remove_task(self._batch_task)
            self._batch_task = self._progress.add_task("batch", total=num_batches, info="")

    def due(self) -> bool:
        """Whether an update is wanted now: one clock comparison, cheap enough for every step."""
        if self._first_step:
            with open(self._first_step, "w") as f:
                f.write(repr(time.time()))
            self._first_step = None
        return _now() >= self._next

    def update(self, batch: int, loss: float, acc: float, images_per_sec: float) -> None:
        """`batch` batches of the epoch are done; loss/acc are the epoch's running means so far."""
        now = _now()
        elapsed = now - self._epoch_start
        self._next = now + self.refresh
        remaining = self._remaining(batch, elapsed)
        eta = clock(remaining) if remaining is not None else "-:--"
        info = f"loss {loss:.3f} acc {acc:.1f}% {images_per_sec:,.0f} img/s eta {eta}"
        self._warn_if_long(batch, elapsed, remaining)
        if self._progress is not None:
            self._progress.update(self._batch_task, completed=batch, info=info)
        line = f"epoch {self.epoch}/{self.epochs} batch {batch}/{self.num_batches} | {info}"
        if self.mode == "plain" and now >= self._next_line and remaining is not None and remaining > self.refresh:
            self._next_line = now + self.refresh
            self._next_log = now + self.log_refresh
            say(self.console, line)  # a line inside a long epoch; short epochs only print their end line
        elif now >= self._next_log:
            self._next_log = now + self.log_refresh
            log.info(line)

    def end_epoch(self, epoch: int, line: str, short: str = "") -> None:
        """`line` is printed (and logged); `short` goes beside the epoch bar."""
        if self.mode == "none":
            log.info(plain(line))
            return
        if self._progress is not None:
            self._progress.update(self._epoch_task, completed=epoch, info=short)
            if self._batch_task is not None:  # the epoch is over: its bar ends full, with no stale ETA
                self._progress.update(self._batch_task, completed=self.num_batches, info="")
        say(self.console, line)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # ------------------------------------------------------------------------------------------ helpers
    def _remaining(self, batch: int, elapsed: float) -> float | None:
        """Seconds left in this epoch at the rate so far (None before the first batch is done)."""
        if batch <= 0 or elapsed <= 0:
            return None
        return (self.num_batches - batch) * elapsed / batch

    def _warn_if_long(self, batch: int, elapsed: float, remaining: float | None) -> None:
        """Once per run: say how long an epoch will take when that is long (the user may want to change course)."""
        if self._warned or remaining is None:
            return
        self._warned = True  # the first estimate decides; later epochs run at about the same speed
        total = elapsed + remaining
        if total < LONG_EPOCH:
            return
        hint = "; a GPU or a smaller model is faster" if self.device_type == "cpu" else ""
        message = f"[yellow]about {duration(total)}/epoch on {self.device_type}{hint}[/yellow]"
        if self.mode == "none":
            log.info(plain(message))
        elif self._progress is not None:
            self._progress.console.print(message)
            log.info(plain(message))
        else:
            say(self.console, message)


def metrics_table(title: str, rows: list[tuple[str, str]]) -> Group:
    """The final summary: `title` (e.g. the run dir) on a line of its own above the table, so that a path is
    never wrapped to the table's width (it folds only where the terminal itself is narrower)."""
    table = Table(show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, value)
    return Group(Text(title, style="bold", overflow="fold"), table)
