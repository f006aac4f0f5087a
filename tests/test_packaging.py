"""The installed command works from any directory, also from a non-editable install (configs ship in the wheel)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO


def test_console_script_runs_from_any_directory(tmp_path):
    script = Path(sys.executable).parent / "cnnlab"
    if not script.exists():
        pytest.skip("cnnlab is not installed into this interpreter's environment (pip install -e .)")
    result = subprocess.run([str(script), "train", "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "name: digits" in result.stdout


@pytest.mark.slow  # builds a wheel, installs it into a target dir and trains from there
def test_wheel_ships_configs_and_data_and_runs_outside_the_repo(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("cnnlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "cnnlab/configs/train.yaml",
        "cnnlab/configs/eval.yaml",
        "cnnlab/configs/model/lenet5.yaml",
        "cnnlab/configs/data/cifar10.yaml",
        "cnnlab/configs/hydra/job_logging/cnnlab.yaml",
        "cnnlab/assets/digits.csv.gz",
        "cnnlab/engine/trainer.py",
    ):
        assert required in names, required

    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import cnnlab.cli as c; print(c.config_dir())"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip() == str(site / "cnnlab" / "configs"), where.stderr
    run = subprocess.run(
        [sys.executable, "-m", "cnnlab", "train", "trainer.epochs=1", "trainer.image_grid=0", "hydra.run.dir=run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()
