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
history = bench.bench_history  # scripts/bench_history.py, as bench.py imports it


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


# ------------------------------------------------------------------- time_to_accuracy: the history and its check
XEON, EPYC = "Intel(R) Xeon(R) Processor", "AMD EPYC 9B14"


def past(seconds: float, quiet: bool = True, recipe: str = "mnist_lenet5", cpu: str = XEON, cores: int = 2) -> dict:
    """A hand-written history line."""
    load = 0.1 if quiet else 4.0
    return {
        "date": "2026-12-01T10:00:00Z",
        "recipe": recipe,
        "seconds": seconds,
        "test_acc": 99.1,
        "cpu": cpu,
        "cores": cores,
        "torch": "2.14.1",
        "commit": f"c{int(seconds)}",
        "load_before": load,
        "load_after": load + 0.5,
        "quiet": quiet,
    }


def test_quiet_means_below_one_runnable_thread_before_and_nobody_else_during_the_run():
    assert history.is_quiet(0.9, 1.6, cores=2)  # the run's own two threads raise the load after it
    assert not history.is_quiet(1.2, 1.6, cores=2)
    assert not history.is_quiet(0.2, 3.4, cores=2)  # someone else started during the run


def test_a_quiet_run_over_15_percent_slower_than_the_last_quiet_one_on_that_cpu_is_one_loud_line():
    records = [past(14.0), past(16.0)]
    assert history.regression(records, past(18.4)) is None  # 15% over 16 s
    line = history.regression(records, past(18.5))
    assert line.startswith("SLOWER: mnist_lenet5 took 18.5 s, 16% more than 16.0 s at c16")
    assert "\n" not in line and XEON in line


def test_loaded_runs_are_recorded_but_never_a_reference_and_never_fail():
    records = [past(16.0), past(9.0, quiet=False)]  # a loaded record, however fast, is not the reference
    assert history.reference(records, past(17.0)) == records[0]
    assert history.regression(records, past(17.0)) is None
    assert history.regression([past(10.0)], past(30.0, quiet=False)) is None  # a loaded run is not judged


def test_the_reference_is_the_same_recipe_on_the_same_cpu_model_and_core_count():
    records = [past(10.0, cpu=EPYC), past(10.0, cores=4), past(10.0, recipe="cifar10_cpu_fast")]
    assert history.reference(records, past(30.0)) is None
    assert history.regression(records, past(30.0)) is None  # nothing to compare with: the first quiet record
    assert history.regression([*records, past(20.0)], past(30.0)).startswith("SLOWER: mnist_lenet5 took 30.0 s, 50%")


def cpuinfo(tmp_path, model: str, flags: str):
    path = tmp_path / f"cpuinfo-{model}"
    path.write_text(
        f"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {model}\n"
        f"model name\t: AMD EPYC\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\nmodel\t\t: 99\n"
    )
    return path


def test_two_epyc_generations_of_one_name_are_two_cpus_to_the_history(tmp_path, monkeypatch):
    """Cloud VMs name a Zen 3 and a Zen 4 host both "AMD EPYC"; the first runs ~1.35x slower, not a regression."""
    monkeypatch.setattr(history, "CPUINFO", cpuinfo(tmp_path, "1", "avx2 fma"))
    zen3 = history.cpu_name()
    monkeypatch.setattr(history, "CPUINFO", cpuinfo(tmp_path, "17", "avx2 avx512f fma"))
    zen4 = history.cpu_name()
    assert (zen3, zen4) == ("AMD EPYC (family 25 model 1, AVX2)", "AMD EPYC (family 25 model 17, AVX-512)")
    assert history.regression([past(10.0, cpu=zen4)], past(13.5, cpu=zen3)) is None
    assert history.regression([past(10.0, cpu=zen3)], past(13.5, cpu=zen3)).startswith("SLOWER: ")
    monkeypatch.setattr(history, "CPUINFO", tmp_path / "missing")  # no /proc (macOS): the platform's name
    assert history.cpu_name()


def test_check_and_append_compares_with_the_history_before_adding_the_new_line(tmp_path):
    path = tmp_path / "benchmarks" / "history.jsonl"
    assert history.check_and_append(path, past(16.0)) is None  # no file yet: created
    assert history.check_and_append(path, past(19.0)).startswith("SLOWER: mnist_lenet5 took 19.0 s, 19%")
    assert [r["seconds"] for r in history.read(path)] == [16.0, 19.0]
    assert history.check_and_append(path, past(21.0)) is None  # the slow run is now the last quiet record


def test_a_record_says_where_and_when_it_was_taken():
    machine = {"cpu": XEON, "cores": 2, "torch": "2.14.1", "torch_threads": 2, "load_average": [0.3, 0.2, 0.1]}
    after = {**machine, "load_average": [1.1, 0.5, 0.2]}
    record = history.record("mnist_lenet5", {"seconds": 14.234, "test_acc": 99.1}, machine, after, "abc1234")
    assert record["quiet"] and record["seconds"] == 14.23 and record["commit"] == "abc1234"
    assert (record["cpu"], record["cores"], record["torch"], record["load_before"], record["load_after"]) == (
        XEON,
        2,
        "2.14.1",
        0.3,
        1.1,
    )


def test_bench_exits_1_with_the_loud_line_last_when_a_recipe_slowed(tmp_path, monkeypatch, capsys):
    """The section's reporting, in process: run_recipe (a real training run elsewhere) and the machine's load are
    patched where bench looks them up; the history is hand-written."""
    (tmp_path / "time_to_accuracy_history.jsonl").write_text(json.dumps(past(16.0)) + "\n")
    quiet = {"cpu": XEON, "cores": 2, "torch": "2.14.1", "torch_threads": 2, "load_average": [0.2, 0.2, 0.2]}
    monkeypatch.setattr(bench, "machine", lambda device=None: dict(quiet))
    monkeypatch.setattr(bench, "run_recipe", lambda experiment: {"seconds": 20.0, "test_acc": 99.1, "epochs": 4})
    argv = ["bench.py", "time_to_accuracy", "--recipes", "mnist_lenet5", "--no-textbook", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(bench, "REGRESSIONS", [])
    with pytest.raises(SystemExit) as exited:
        bench.main()
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("SLOWER: mnist_lenet5 took 20.0 s, 25% more than 16.0 s")
    result = json.loads((tmp_path / "time_to_accuracy.json").read_text())
    assert result["rows"][0]["history"]["slower"] == err[-1] and "textbook" not in result["rows"][0]
    assert len(history.read(tmp_path / "time_to_accuracy_history.jsonl")) == 2


def test_an_unknown_recipe_is_one_usage_error(tmp_path):
    done = run_bench("time_to_accuracy", "--recipes", "mnist_lenet6", "--out", str(tmp_path))
    assert done.returncode == 2 and "unknown recipe(s) mnist_lenet6" in done.stderr
