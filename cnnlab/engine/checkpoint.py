"""Checkpoints: one plain dict, written atomically, read with weights_only=True."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cnnlab.errors import CnnlabError

FORMAT_VERSION = 1


def save(path: Path, state: dict) -> None:
    """Write to a temp file beside `path` and os.replace it: a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    os.replace(tmp, path)


def load(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CnnlabError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as ex:  # truncated zip, pickle with foreign objects, not a torch file at all ...
        first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        raise CnnlabError(f"{path} is not a readable cnnlab checkpoint ({first})") from None
    if not isinstance(state, dict) or "format_version" not in state or "model" not in state:
        raise CnnlabError(f"{path} is not a cnnlab checkpoint (no format_version/model entries)")
    if state["format_version"] > FORMAT_VERSION:
        raise CnnlabError(f"{path} has checkpoint format {state['format_version']}; this cnnlab reads up to "
                          f"{FORMAT_VERSION}: upgrade cnnlab")
    return state


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
