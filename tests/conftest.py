"""Shared fixtures: run the real CLI in a subprocess (or in-process), one torch thread, a tiny trained run, the
offline datasets."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.cli import main

REPO = Path(__file__).resolve().parent.parent


def cli_env(**extra: str) -> dict:
    """The environment of a `cnnlab` subprocess: this source tree first on the path, one OpenMP thread (two busy
    processes with two threads each thrash a 2-core machine), no HYDRA_FULL_ERROR from the caller's shell."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HYDRA_FULL_ERROR", None)
    return {**env, **extra}


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m cnnlab ARGS` in `cwd` (the same interpreter and source tree as the tests)."""
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *args],
        cwd=cwd,
        env=cli_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Batches:
    """In-memory (x, y) batches as a Trainer loader: len, iteration, set_epoch, batch_size."""

    def __init__(self, batches: list):
        self.batches, self.batch_size = batches, len(batches[0][1])

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def set_epoch(self, epoch):
        pass


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture
def run_cli(tmp_path):
    """run_cli(*args) -> CompletedProcess, run in a fresh temporary directory."""

    def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("cwd", tmp_path)
        return cli(*args, **kwargs)

    return run


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread in the test processes too: on a shared 2-core machine, 2 OpenMP threads per process can
    run 100x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def cnnlab_logger_reaches_caplog():
    """An in-process Hydra run (run_main, api) configures logging for its run dir; the next test in the same
    worker must still see the cnnlab logger's records (caplog listens on the root logger)."""
    log = logging.getLogger("cnnlab")
    log.disabled, log.propagate = False, True
    logging.disable(logging.NOTSET)
    yield


@pytest.fixture(scope="session")
def _tiny_run_once(tmp_path_factory) -> Path:
    from trained_run import train_in_process

    return train_in_process(tmp_path_factory.mktemp("tiny_run_once"))


@pytest.fixture(scope="module")
def tiny_run(_tiny_run_once, tmp_path_factory) -> Path:
    """A finished run dir (LeNet-5 on the bundled digits, 2 epochs, trainer.progress=plain), the module's own copy:
    trained once per test process, copied so that what one module writes beside it no other module sees."""
    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    shutil.copytree(_tiny_run_once, run_dir)
    return run_dir


@pytest.fixture(scope="session")
def resnet18_file(tmp_path_factory) -> Path:
    """A 'pretrained' torchvision ResNet-18 (random weights, BN statistics made non-trivial), as a state dict."""
    import torch
    import torchvision

    torch.manual_seed(1)
    model = torchvision.models.resnet18()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path


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
    """run_main(*argv) -> (exit code, stderr) of cnnlab in this process, in a fresh working directory; its stdout
    is left in run_main.stdout."""
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
        captured = capfd.readouterr()
        run.stdout = captured.out
        return code, captured.err

    return run
