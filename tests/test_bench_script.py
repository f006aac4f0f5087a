"""scripts/bench.py as a user runs it: sections by name, JSON + markdown out, and an honest "busy" flag."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO

spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), *args], capture_output=True, text=True, timeout=120
    )


def test_busy_allows_a_sections_own_load_and_the_tail_of_the_last_one():
    assert not bench.busy(1.5, 2.0, cores=2)  # what the previous section left, then our own 2 threads
    assert bench.busy(2.6, 2.0, cores=2)  # more runnable threads than cores before we began
    assert bench.busy(0.2, 3.4, cores=2)  # someone else shared the cores during the section


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip path is for machines without CUDA")
def test_the_gpu_section_skips_cleanly_and_still_writes_its_report(tmp_path):
    done = run_bench("gpu", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["skipped"] == "no CUDA device" and report["rows"] == []
    assert report["machine_before"]["cores"] >= 1 and isinstance(report["loaded"], bool)
    assert "skipped: no CUDA device" in (tmp_path / "gpu.md").read_text()


def test_an_unknown_section_is_one_usage_error(tmp_path):
    done = run_bench("speed", "--out", str(tmp_path))
    assert done.returncode == 2 and "unknown section(s) speed" in done.stderr
