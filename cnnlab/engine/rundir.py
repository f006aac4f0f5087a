"""A run directory has one writer, and a finished run is never trained into again unless asked.

`claim(run_dir, resume, overwrite)` takes the directory's lock (an flock, released by the OS even when the
process is killed) and decides, from what the directory already holds, whether to start fresh, resume
from its last.pt, or stop because the run is finished. Nothing is written before that decision.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cnnlab.engine import checkpoint
from cnnlab.errors import CnnlabError

LOCK_NAME = ".cnnlab.lock"


class RunFinished(Exception):
    """resume=auto on a run that already finished: nothing to do (not an error)."""


@dataclass
class Claim:
    run_dir: Path
    resume_from: Path | None  # the checkpoint to continue from, or None: start fresh
    resume_state: dict | None
    fresh: bool  # nothing of an earlier run is in the directory
    _lock_fd: int | None = None

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None


def _lock(run_dir: Path) -> int:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as ex:
        raise CnnlabError(f"cannot use run dir {run_dir}: {ex.strerror or ex}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as ex:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if ex.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise CnnlabError(
                f"another cnnlab process (pid {holder}) is writing to {run_dir}: "
                f"wait for it or choose another hydra.run.dir"
            ) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _state_of(last: Path) -> dict | None:
    return checkpoint.load(last) if last.is_file() else None


def claim(run_dir: Path, resume: str | None, overwrite: bool, accept=None) -> Claim:
    """`accept(path, state, same_run)` vets a checkpoint to resume from (resume_checks.check) before anything
    in the run dir is touched: it raises CnnlabError to refuse."""
    run_dir = Path(run_dir)
    accept = accept or (lambda path, state, same_run: None)
    fd = _lock(run_dir)
    try:
        ckpt_dir = run_dir / "checkpoints"
        checkpoint.remove_stale_temp_files(ckpt_dir)
        last = ckpt_dir / "last.pt"
        finished_marker = (run_dir / "metrics.json").is_file()
        if resume == "auto":  # finished means metrics.json written: a last.pt without it is continued
            if finished_marker:
                raise RunFinished(
                    f"{run_dir} holds a finished run: nothing to resume (trainer.overwrite=true "
                    f"without trainer.resume starts it over)"
                )
            state = _state_of(last)
            if state is not None:
                accept(last, state, True)
                return Claim(run_dir, last, state, fresh=False, _lock_fd=fd)
            return Claim(run_dir, None, None, fresh=True, _lock_fd=fd)
        state = None
        if resume:
            path = Path(resume).expanduser()
            if path.resolve().parent == ckpt_dir.resolve():  # an explicit checkpoint of this very run
                if not finished_marker:  # continue it
                    state = checkpoint.load(path)
                    accept(path, state, True)
                    return Claim(run_dir, path, state, fresh=False, _lock_fd=fd)
                if not overwrite:
                    raise CnnlabError(
                        f"{run_dir} holds a finished run: train it longer from {path} into a new "
                        f"hydra.run.dir, or retrain it in place with trainer.overwrite=true"
                    )
            state = checkpoint.load(path)  # read before an overwrite clears the run dir
            accept(path, state, False)
        earlier = last.is_file() or (ckpt_dir / "best.pt").is_file() or finished_marker
        if earlier and not overwrite:
            what = "a finished run" if finished_marker else "an unfinished run (continue it with trainer.resume=auto)"
            raise CnnlabError(
                f"{run_dir} already holds {what}; trainer.overwrite=true replaces it, or choose another hydra.run.dir"
            )
        if earlier:  # asked for: start over
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            shutil.rmtree(run_dir / "tb", ignore_errors=True)
            (run_dir / "metrics.json").unlink(missing_ok=True)
        if resume:
            return Claim(run_dir, path, state, fresh=True, _lock_fd=fd)
        return Claim(run_dir, None, None, fresh=True, _lock_fd=fd)
    except BaseException:
        os.close(fd)
        raise
