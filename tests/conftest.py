"""Shared fixtures: run the real CLI in a subprocess, find the offline datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.cli import main

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m cnnlab ARGS` in `cwd` (the same interpreter and source tree as the tests)."""
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "HYDRA_FULL_ERROR": "",
        "COLUMNS": "200",
    }
    full_env.pop("HYDRA_FULL_ERROR")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture
def run_cli(tmp_path):
    """run_cli(*args) -> CompletedProcess, run in a fresh temporary directory."""

    def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("cwd", tmp_path)
        return cli(*args, **kwargs)

    return run


@pytest.fixture(scope="session")
def data_root() -> Path:
    """../shared/datasets via CNNLAB_DATA_ROOT; skips when unset unless CNNLAB_REQUIRE_DATA=1 (CI), then fails."""
    root = os.environ.get("CNNLAB_DATA_ROOT")
    if not root or not Path(root).is_dir():
        message = f"CNNLAB_DATA_ROOT is unset or missing ({root!r}): the offline datasets are needed"
        if os.environ.get("CNNLAB_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Path(root)


@pytest.fixture
def run_main(tmp_path, monkeypatch, capfd):
    """run_main(*argv) -> (exit code, stderr) of cnnlab in this process, in a fresh working directory."""
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main sets it for Hydra
    monkeypatch.setenv("HYDRA_FULL_ERROR", os.environ.get("HYDRA_FULL_ERROR", ""))  # restored afterwards

    def run(*argv: str) -> tuple[int, str]:
        capfd.readouterr()
        try:
            main(list(argv))
            code = 0
        except SystemExit as ex:
            code = ex.code if isinstance(ex.code, int) else 1
        finally:
            GlobalHydra.instance().clear()
        return code, capfd.readouterr().err

    return run
