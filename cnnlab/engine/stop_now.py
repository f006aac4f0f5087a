"""Stopping a fit early, and the end of a fit after its last step, where a stop signal cannot wait for a step
boundary.

`stopped_early` says where a stopped fit is and how to continue it (a signal raises `Interrupted`).

`stop_raises()` makes SIGINT/SIGTERM raise `Stopped` at once (e.g. inside the final test evaluation), so that the
trainer can leave last.pt as the state `trainer.resume=auto` finishes and say so; metrics.json, which marks a
run finished, is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnlab.engine.signals import handling_stops


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Stopped(Exception):
    def __init__(self, signum: int):
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def stop_raises():
    """SIGINT/SIGTERM raise Stopped at once inside the block (the test evaluation has no step boundary to stop at)."""
    return handling_stops(_raise_stopped)


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped the run after last.pt was saved; the CLI exits with 128 + signum."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def stopped_early(trainer, after: str = "") -> dict:
    """A fit stopped by trainer.time_limit (returns its outcome) or a signal (raises Interrupted), last.pt saved."""
    p = trainer.state.progress
    where = f"epoch {p.epoch + 1}, batch {p.batch}" if p.batch else f"the end of epoch {p.epoch}{after}"
    hint = trainer.resume_hint or "rerun with trainer.resume=auto (same run dir)"
    if trainer.tb is not None:
        trainer.tb.close()
    if p.stop_reason == "interrupted" or p.finished:
        name = trainer.signals.name
        raise Interrupted(
            trainer.signals.received,
            f"{name}: stopped at {where}; saved {trainer.ckpt_dir / 'last.pt'}. Continue with: {hint}",
        )
    trainer.say(
        f"[yellow]trainer.time_limit={trainer.cfg.time_limit}s reached at {where}; saved "
        f"{trainer.ckpt_dir / 'last.pt'}. Continue with: {hint}[/yellow]"
    )
    return {"finished": False, "stop_reason": p.stop_reason}
