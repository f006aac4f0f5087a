"""Progress that talks early: time-based refresh, lines inside long epochs, one long-epoch warning, plain logs."""

from __future__ import annotations

import io
import logging

import pytest
from conftest import read_json
from rich.console import Console

import cnnlab
from cnnlab.engine import progress
from cnnlab.engine.progress import ProgressDisplay, metrics_table, say


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress, "_now", c)
    return c


def console(width: int = 200, terminal: bool = False) -> Console:
    return Console(file=io.StringIO(), width=width, force_terminal=terminal, color_system=None, highlight=False)


def run_epoch(display, clock, num_batches: int, seconds_per_batch: float, epoch: int = 1) -> int:
    """Drive the display as the trainer does; returns how many updates were due."""
    display.start_epoch(epoch, num_batches)
    updates = 0
    for batch in range(1, num_batches + 1):
        clock.t += seconds_per_batch
        if display.due():
            updates += 1
            display.update(batch, 1.0, 50.0, 512 / seconds_per_batch)
    display.end_epoch(epoch, f"epoch {epoch}/3 | done")
    return updates


def test_due_is_time_based_and_early(clock):
    display = ProgressDisplay("plain", 3, console(), device="cpu")
    display.start_epoch(1, 40)
    assert not display.due()
    clock.t += progress.FIRST_LOOK
    assert display.due()  # the first rate and ETA after about a second, whatever log_every is
    display.update(3, 2.0, 10.0, 100.0)
    assert not display.due()
    clock.t += progress.PLAIN_REFRESH - 1
    assert not display.due()
    clock.t += 1
    assert display.due()
    rich = ProgressDisplay("rich", 3, console(terminal=True), device="cpu")
    try:
        assert rich.refresh == progress.RICH_REFRESH and rich.mode == "rich"
    finally:
        rich.close()


def test_plain_mode_prints_lines_inside_long_epochs_only(clock, caplog):
    out = console()
    display = ProgressDisplay("plain", 3, out, device="cpu")
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        assert run_epoch(display, clock, 10, 0.5) == 1  # a 5 s epoch: one look, no line
        short = out.file.getvalue()
        run_epoch(display, clock, 200, 1.0, epoch=2)  # a 200 s epoch: a line early, then every 30 s
    assert "batch" not in short and "epoch 1/3 | done" in short
    lines = [line for line in out.file.getvalue().splitlines() if line.startswith("epoch 2/3 batch")]
    assert 6 <= len(lines) <= 8, lines
    first = lines[0]
    assert "batch 1/200" in first or "batch 2/200" in first  # it talks from the first seconds
    assert "img/s" in first and "eta 3:1" in first  # 199 batches left at 1 s each: 3:19
    assert any("epoch 2/3 batch" in r.getMessage() for r in caplog.records)


def test_long_epoch_warning_once_with_estimate(clock):
    out = console()
    display = ProgressDisplay("plain", 3, out, device="cpu")
    run_epoch(display, clock, 60, 40.0)  # 40 min/epoch
    run_epoch(display, clock, 60, 40.0, epoch=2)
    text = out.file.getvalue()
    assert text.count("about 40 min/epoch on cpu; a GPU or a smaller model is faster") == 1
    quick = console()
    run_epoch(ProgressDisplay("plain", 3, quick, device="cpu"), clock, 50, 1.0)
    assert "min/epoch" not in quick.file.getvalue()
    gpu = console()
    run_epoch(ProgressDisplay("plain", 3, gpu, device="cuda"), clock, 60, 40.0)
    assert "about 40 min/epoch on cuda\n" in gpu.file.getvalue()


def test_none_mode_prints_nothing_but_logs(clock, caplog):
    out = console()
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        run_epoch(ProgressDisplay("none", 3, out, device="cpu"), clock, 60, 40.0)
    assert out.file.getvalue() == ""
    messages = [r.getMessage() for r in caplog.records]
    assert "about 40 min/epoch on cpu; a GPU or a smaller model is faster" in messages
    assert "epoch 1/3 | done" in messages


def test_rich_mode_updates_the_bar(clock):
    out = console(terminal=True)
    display = ProgressDisplay("rich", 2, out, device="cpu")
    try:
        display.start_epoch(1, 20)
        clock.t += progress.FIRST_LOOK
        assert display.due()
        display.update(9, 1.0, 50.0, 100.0)
        task = display._progress.tasks[-1]
        assert task.completed == 9 and "img/s" in task.fields["info"] and "eta" in task.fields["info"]
        display.end_epoch(1, "epoch 1/2 | done")
        assert task.completed == 20 and task.fields["info"] == ""  # the epoch's bar ends full, no stale ETA
    finally:
        display.close()


def test_say_logs_plain_text(caplog):
    out = console()
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        say(out, "[yellow]careful:[/yellow] [bold]x[/bold] [1, 2]")
    assert out.file.getvalue() == "careful: x [1, 2]\n"
    assert caplog.records[-1].getMessage() == "careful: x [1, 2]"


def test_summary_title_keeps_the_run_dir_on_one_line():
    path = "/home/someone/projects/cnnlab/outputs/2026-11-29/22-30-11"
    out = console(width=120, terminal=True)
    out.print(metrics_table(f"cnnlab run: {path}", [("best val acc", "85.00%"), ("test acc", "84.10%")]))
    text = out.file.getvalue()
    assert f"cnnlab run: {path}\n" in text and "best val acc" in text


# ------------------------------------------------------------------------------- through a real run
def test_a_real_run_talks_inside_its_epochs(tmp_path, monkeypatch, capsys):
    """The trainer asks due() after every step: with a clock that runs fast, a plain run prints progress lines
    inside its epochs and the long-epoch estimate once, whatever trainer.log_every is."""
    from cnnlab.commands.train import run

    ticks = iter(range(0, 10**9, 40))
    monkeypatch.setattr(progress, "_now", lambda: float(next(ticks)))  # 40 s between clock reads
    cfg = cnnlab.compose(
        [
            "data=synthetic",
            "data.num_samples=640",
            "data.batch_size=32",
            "trainer.epochs=2",
            "trainer.progress=plain",
            "trainer.log_every=1000",
            "trainer.image_grid=0",
            "trainer.device=cpu",
        ]
    )
    run(cfg, run_dir=tmp_path / "run")
    out = capsys.readouterr().out
    inside = [line for line in out.splitlines() if line.startswith("epoch 1/2 batch")]
    assert len(inside) >= 3 and "img/s" in inside[0] and "eta" in inside[0], out
    assert out.count("min/epoch on cpu; a GPU or a smaller model is faster") == 1, out


def test_train_log_is_plain_text(run_main, tmp_path):
    """A run selected on the test split says so, on the console and in train.log, without rich markup there."""
    code, err = run_main(
        "train",
        "data=synthetic",
        "data.num_samples=128",
        "data.val_split=test",
        "trainer.epochs=1",
        "trainer.image_grid=0",
        "trainer.progress=plain",
        "hydra.run.dir=run",
    )
    assert code == 0, err
    assert "data.val_split=test: the best checkpoint is selected on the test split" in run_main.stdout
    assert read_json(tmp_path / "run" / "metrics.json")["val_is_test"] is True
    log = (tmp_path / "run" / "train.log").read_text()
    assert "data.val_split=test: the best checkpoint is selected on the test split" in log
    assert "[yellow]" not in log and "[/" not in log
