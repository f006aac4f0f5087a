"""The time_to_accuracy history of scripts/bench.py: one JSON line per recipe run, and the regression check.

Every run is recorded (outputs/benchmarks/time_to_accuracy_history.jsonl, committed) with the CPU model, the core
count, the load average before and after it, the torch version and the commit. A run is *quiet* when the 1-minute
load average was below QUIET_LOAD before it and busy() saw nobody else during it; only quiet runs are
references. A quiet run more than 15% slower than the last quiet run of the same recipe on the same CPU model and
core count is a regression: one loud line, and bench.py exits 1. Loaded runs are kept for the record only.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

QUIET_LOAD = 1.0  # 1-minute load average before a run: below one runnable thread, nothing else was running
SLOWER = 1.15  # a quiet run this many times its reference's seconds is a regression
CPUINFO = Path("/proc/cpuinfo")


def cpu_name() -> str:
    """The CPU model, with what tells apart hosts that share a name: cloud VMs call every AMD EPYC generation
    "AMD EPYC", and the same recipe runs ~1.35x slower on a Zen 3 host (no AVX-512) than on a Zen 4 one, so a
    history that compared them would cry SLOWER. Every bench script and measure_recipe.py record this."""
    fields: dict[str, str] = {}
    try:
        for line in CPUINFO.read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            fields.setdefault(key, value)
            if key == "flags":  # the end of the first processor's block
                break
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" not in fields:
        return name
    flags = fields.get("flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name} (family {fields['cpu family']} model {fields.get('model', '?')}, {isa})"


def busy(load_before: float, load_after: float, cores: int) -> bool:
    """Whether other work shared the machine with a measurement, from the 1-minute load averages before and after
    it (they count runnable threads): more of them than cores before, or more than one above the cores after
    (the measurement itself keeps every core busy), means something else was running. Load left by the previous
    measurement decays, and stays below both marks. Every bench section and scripts/measure_recipe.py use it."""
    return load_before > cores or load_after > cores + 1


def is_quiet(load_before: float, load_after: float, cores: int) -> bool:
    return load_before < QUIET_LOAD and not busy(load_before, load_after, cores)


def commit(repo: Path) -> str:
    """The short commit hash, with "+dirty" when tracked files differ from it ("unknown" outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=repo, capture_output=True, text=True)
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def record(recipe: str, run: dict, before: dict, after: dict, commit_id: str) -> dict:
    """One history line: `run` is bench.run_recipe's result, `before`/`after` bench.machine()'s."""
    load_before, load_after = before["load_average"][0], after["load_average"][0]
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "recipe": recipe,
        "seconds": round(run["seconds"], 2),
        "test_acc": run["test_acc"],
        "cpu": before["cpu"],
        "cores": before["cores"],
        "torch": before["torch"],
        "torch_threads": before.get("torch_threads"),
        "commit": commit_id,
        "load_before": load_before,
        "load_after": load_after,
        "quiet": is_quiet(load_before, load_after, before["cores"]),
    }


def read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def reference(history: list[dict], new: dict) -> dict | None:
    """The last quiet record of the same recipe on the same CPU model and core count."""
    same = [
        r
        for r in history
        if r.get("quiet") and r["recipe"] == new["recipe"] and r["cpu"] == new["cpu"] and r["cores"] == new["cores"]
    ]
    return same[-1] if same else None


def regression(history: list[dict], new: dict) -> str | None:
    """The loud line when `new` is quiet and more than 15% slower than its reference; else None."""
    ref = reference(history, new) if new["quiet"] else None
    if ref is None or new["seconds"] <= SLOWER * ref["seconds"]:
        return None
    return (
        f"SLOWER: {new['recipe']} took {new['seconds']:.1f} s, {100 * (new['seconds'] / ref['seconds'] - 1):.0f}% more "
        f"than {ref['seconds']:.1f} s at {ref['commit']} ({ref['date']}) on the same {new['cores']}-core "
        f"{new['cpu']} (quiet: load {new['load_before']} before; torch {ref['torch']} then, {new['torch']} now)"
    )


def check_and_append(path: Path, new: dict) -> str | None:
    """Compare `new` with the history in `path`, then append it; returns the regression line, if any."""
    line = regression(read(path), new)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(new) + "\n")
    return line
