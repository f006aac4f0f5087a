"""Files from outside (checkpoints, weight files, images): only regular files are read, and torch.load's failures
are told without its advice to retry with weights_only=False (that would run the file's code)."""

from __future__ import annotations

from pathlib import Path

from cnnlab.errors import CnnlabError


def regular_file(path: str | Path, what: str) -> Path:
    """`path` if it is a regular file (a FIFO would block the read forever, a device never ends), else one line."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CnnlabError(f"{what} {path} does not exist")
    if not path.is_file():
        kind = "not a file (it is a directory)" if path.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise CnnlabError(f"{what} {path} is {kind}")
    return path


def load_error(ex: Exception) -> str:
    """What torch.load(weights_only=True) said, in a few words: the reason, never the advice."""
    lines = [line.strip() for line in str(ex).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        lines = [line for line in lines[1:] if not line.startswith(("Please file an issue", "Check the documentation"))]
        detail = lines[0].split(". ")[0].rstrip(".") if lines else "not plain tensors and data"
        if "GLOBAL" in detail:
            return f"{detail}: it names Python code to run, which cnnlab never unpickles"
        return detail if "weights_only" not in detail else "not plain tensors and data"
    return lines[0][:200] if lines else type(ex).__name__
