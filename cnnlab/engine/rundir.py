"""A run directory has one writer, and a finished run is never trained into again unless asked.

`claim(run_dir, resume, overwrite)` takes the directory's lock (an flock, released by the OS even when the
process is killed) and decides, from what the directory already holds, whether to start fresh, resume
from its last.pt, or stop because the run is finished. Nothing is written before that decision.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shlex
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
            again = shlex.quote(f"hydra.run.dir={run_dir}")  # pasteable, also with spaces in the path
            what = (
                "a finished run"
                if finished_marker
                else f"an unfinished run (continue it with {again} trainer.resume=auto)"
            )
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


@dataclass
class JobDir:
    """The dir Hydra made for this job (None outside a Hydra job) and whether this start made it: a refused start
    removes a dir it made, and writes its error line into the log of a dir that was there before."""

    path: Path | None
    made_now: bool
    new_log: Path | None = None  # the job's log file when Hydra just opened it empty (e.g. features.log in a run)

    @classmethod
    def of_this_job(cls) -> JobDir:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized() or os.environ.get("RANK", "0") != "0":
            return cls(None, False)
        hydra = HydraConfig.get()
        path = Path(hydra.runtime.output_dir)
        log = f"{hydra.job.name}.log"
        try:  # Hydra made the dir and opened its (empty) log just before this job: nothing else is in it
            cwd = Path.cwd().resolve()  # eval and export run in `.`: never the working dir or above it
            made_now = path.resolve() not in (cwd, *cwd.parents) and all(
                e.name == log and e.is_file() and e.stat().st_size == 0 for e in os.scandir(path)
            )
        except OSError:
            made_now = False
        new_log = path / log if (path / log).is_file() and (path / log).stat().st_size == 0 else None
        return cls(path, made_now, new_log)

    def refused(self, message: str) -> None:
        if self.path is None:
            return
        if self.discard_if_unused():
            return
        if self.new_log is not None and self.new_log.name != "train.log":  # not a run's log: remove it
            self._close_logs()
            self.new_log.unlink(missing_ok=True)
            return
        self.log_error(message)

    def log_error(self, message: str) -> None:
        """The `error:` line into the job's own log file only (the console already has it)."""
        record = logging.LogRecord("cnnlab", logging.ERROR, __file__, 0, "error: %s", (message,), None)
        for handler in self._log_handlers() if self.path is not None else ():
            handler.handle(record)

    def discard_if_unused(self) -> bool:
        """Remove the dir when this start made it and nothing of a run is in it; True when removed."""
        if self.path is None or not self.made_now or not self.path.is_dir():
            return False
        if (self.path / "checkpoints").exists() or (self.path / "metrics.json").exists():
            return False
        self._close_logs()  # Hydra's log file in it
        shutil.rmtree(self.path, ignore_errors=True)
        for parent in self.path.parents:  # outputs/[<command>/]<date>/ of the default layout, when now empty
            if not (parent.name in _DEFAULT_LAYOUT or re.fullmatch(r"\d{4}-\d{2}-\d{2}", parent.name)):
                break
            if any(parent.iterdir()):
                break
            parent.rmdir()
        return True

    def _close_logs(self) -> None:
        for handler in self._log_handlers():
            handler.close()
            logging.root.removeHandler(handler)

    def _log_handlers(self) -> list[logging.FileHandler]:
        return [
            h
            for h in logging.root.handlers
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == self.path.absolute()
        ]


_DEFAULT_LAYOUT = ("outputs", "multirun", "predict", "features", "preview")  # folders of the default dirs
