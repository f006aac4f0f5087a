"""Start-up stays fast by structure, not by a timed test: torchvision, matplotlib and onnx are imported only where
they are used, and `cnnlab <command> --help` imports no torch at all. (scripts/bench.py's startup section times it.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, cli

HEAVY = ("torchvision", "matplotlib", "onnx", "onnxruntime")


def _modules_after(code: str, tmp_path) -> set[str]:
    """The heavy modules loaded after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} + ('torch',) if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO)}
    )
    assert done.returncode == 0, done.stderr
    return set(eval(done.stdout.strip().splitlines()[-1]))


def test_importing_the_train_command_imports_no_torchvision_or_matplotlib(tmp_path):
    assert not _modules_after("import cnnlab.commands.train", tmp_path) & set(HEAVY)


def test_command_help_imports_no_torch(tmp_path):
    loaded = _modules_after("from cnnlab.cli import main\nmain(['train', '--help'])", tmp_path)
    assert "torch" not in loaded
    result = cli("train", "--help", "model=resnet18", cwd=tmp_path)
    assert result.returncode == 0 and "_target_: cnnlab.models.resnet.ResNet\n" in result.stdout
    assert "== Configuration groups ==" in result.stdout and "model: alexnet," in result.stdout
    bad = cli("eval", "--help", "model=nope", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


def test_a_small_digits_run_needs_no_torchvision_and_reports_its_first_step(tmp_path):
    stamp = tmp_path / "first_step"
    code = (
        "import os, cnnlab\n"
        f"os.environ['CNNLAB_FIRST_BATCH_FILE'] = {str(stamp)!r}\n"
        "cnnlab.train(cnnlab.compose(['trainer.max_steps=2', 'trainer.image_grid=0', 'data.subset=10',"
        " 'data.eval_subset=20', 'trainer.progress=none']), 'run')"
    )
    assert not _modules_after(code, tmp_path) & {"torchvision", "onnx"}
    assert float(stamp.read_text()) > 0  # the wall time of the first finished step, for bench.py


def test_reading_mnist_and_cifar10_files_imports_no_torchvision(tmp_path, data_root):
    code = (
        "from pathlib import Path\n"
        "from cnnlab.data.idx import load_mnist\n"
        "from cnnlab.data.cifar import load_cifar10\n"
        f"mnist, cifar = load_mnist(Path({str(data_root)!r}), False), load_cifar10(Path({str(data_root)!r}), False)\n"
        "assert mnist.classes[:2] == ['0', '1'] and cifar.classes[:2] == ['airplane', 'automobile']\n"
    )
    assert not _modules_after(code, tmp_path) & set(HEAVY)


def test_the_class_names_and_folders_kept_without_torchvision_are_torchvisions():
    from torchvision import datasets

    from cnnlab.data import cifar, idx

    for name, classes in idx.CLASSES.items():
        assert classes == [c.split(" - ")[0] for c in getattr(datasets, name).classes]
    for name, folder in cifar.FOLDERS.items():
        assert folder == getattr(datasets, name).base_folder


@pytest.mark.slow
def test_bench_startup_section_writes_its_rows(tmp_path):
    bench = [sys.executable, str(REPO / "scripts" / "bench.py")]
    done = subprocess.run(
        [*bench, "startup", "--startup-repeats", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "startup.json").read_text())
    rows = {r["row"]: r for r in result["rows"]}
    assert {"cnnlab --help", "cnnlab train --help", "cnnlab train: process start to first step"} <= set(rows)
    first = rows["cnnlab train: process start to first step"]
    assert 0 < first["cpu_s_median"] and 0 < first["median_s"] < 300
    assert "load_average" in result["machine_before"] and isinstance(result["loaded"], bool)
