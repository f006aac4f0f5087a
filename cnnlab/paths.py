"""Where cnnlab's own files are (kept apart from cli.py so that nothing in cnnlab imports the CLI)."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> str:
    """The configs/ tree: inside the package when installed from a wheel, else beside it (a checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"cnnlab's configs/ tree is missing (looked in {here} and {here.parent})")
