"""Where a command other than `train` may write: checked before anything is written.

A training run dir belongs to training. No other command writes into its top level or into its own entries
(checkpoints/, metrics.json, tb/, .hydra/, train.log, ...); a subfolder of its own (`<run>/eval/test/`) is fine.
Nothing replaces a checkpoint, a directory is never taken for a file, and a default output dir is new.
"""

from __future__ import annotations

import os
import secrets
import time
import zipfile
from pathlib import Path

from cnnlab.errors import CnnlabError

# What `cnnlab train` writes into a run dir (and a sweep job's failure record): no other command touches them.
RUN_ENTRIES = ("checkpoints", "metrics.json", "tb", ".hydra", "train.log", ".cnnlab.lock", "failed.json")


def is_training_run(path: Path) -> bool:
    """A dir `cnnlab train` wrote: its lock, checkpoints, metrics or log (a predict dir has only .hydra/)."""
    return any((path / name).exists() for name in ("checkpoints", "metrics.json", "train.log", ".cnnlab.lock"))


def is_checkpoint(path: Path) -> bool:
    """A torch.save archive (a TorchScript file, which holds code/ and constants.pkl, is an export)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n.split("/", 1)[-1] for n in archive.namelist()]
    except (OSError, zipfile.BadZipFile):
        return False
    return "data.pkl" in names and "constants.pkl" not in names


def check(path: str | Path, option: str = "output", directory: bool = False) -> Path:
    """`path` as given for `option`, refused in one line if writing it could replace or delete a run's files."""
    path = Path(path).expanduser()
    full = Path(os.path.abspath(path))
    if directory and full.exists() and not full.is_dir():
        raise CnnlabError(f"{option}={path} is a file: give a directory")
    if not directory and full.is_dir():
        raise CnnlabError(f"{option}={path} is a directory: give a file name")
    for parent in full.parents:
        if parent.exists() and not parent.is_dir():
            raise CnnlabError(f"cannot create {option}={path}: {parent} is a file")
    for run in (full, *full.parents) if directory else full.parents:
        if run.is_dir() and is_training_run(run):
            inside = full.relative_to(run).parts
            if not inside or (len(inside) == 1 and not directory) or inside[0] in RUN_ENTRIES:
                raise CnnlabError(
                    f"{option}={path} would write into the training run {run}: "
                    f"choose a path outside it (or a new subfolder such as {run / 'eval' / 'mine'})"
                )
    if not directory and full.is_file() and is_checkpoint(full):
        raise CnnlabError(f"{option}={path} is a checkpoint: choose another file (nothing replaces a checkpoint)")
    return path


def make_dir(path: Path, option: str = "output") -> Path:
    """mkdir -p, with a failure (read-only, no permission, disk full) as one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as ex:
        raise CnnlabError(f"cannot create {option} dir {path}: {ex.strerror or ex}") from None
    return path


def new_dir(parent: str | Path) -> Path:
    """A new dir `<parent>/<date>/<time>-<id>`, created exclusively: two commands started together never share it."""
    base = Path(parent) / time.strftime("%Y-%m-%d")
    make_dir(base)
    while True:
        path = base / f"{time.strftime('%H-%M-%S')}-{secrets.token_hex(2)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as ex:
            raise CnnlabError(f"cannot create {path}: {ex.strerror or ex}") from None
