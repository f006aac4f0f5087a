"""Measure an experiment recipe the honest way: N seeds, each a fresh `cnnlab train` process, timed from
process start to exit; accuracy selected on the validation split and reported on the test split.

    python scripts/measure_recipe.py mnist_lenet5 --seeds 0 1 2 --out outputs/recipes/mnist_lenet5.json
    python scripts/measure_recipe.py cifar10_cpu trainer.epochs=12 --seeds 0   # extra Hydra overrides

Writes JSON (per-seed metrics, mean and std of test accuracy, wall seconds, the machine, and the load
average before and after each seed: a time taken on a busy machine says so) and prints a markdown row
for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import busy, cpu_name  # scripts/bench.py, beside this file: one rule for "other work was running"


def machine() -> str:
    cpu = cpu_name()
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    except ImportError:
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), torch {__import__('torch').__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (key=value)")
    args = parser.parse_intermixed_args()
    out = args.out or Path("outputs/recipes") / f"{args.experiment}.json"
    runs = []
    for seed in args.seeds:
        run_dir = out.parent / f"{args.experiment}-seed{seed}"
        command = [
            sys.executable,
            "-m",
            "cnnlab",
            "train",
            f"experiment={args.experiment}",
            f"seed={seed}",
            "trainer.progress=plain",
            f"hydra.run.dir={run_dir}",
            "trainer.overwrite=true",  # a re-measurement replaces this script's own earlier run of the seed
            *args.overrides,
        ]
        load_before = os.getloadavg()
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
        if result.returncode != 0:
            sys.exit(f"seed {seed} failed:\n{result.stderr[-3000:]}")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        metrics.pop("history", None)
        runs.append(
            {
                "seed": seed,
                "wall_seconds": wall,
                "load_average_before": [round(v, 2) for v in load_before],
                "load_average_after": [round(v, 2) for v in load_after],
                **metrics,
            }
        )
        print(
            f"seed {seed}: test {metrics['test_acc']:.2f}%  best val {metrics['best_val_acc']:.2f}%  wall {wall:.1f}s",
            flush=True,
        )
    tests = [r["test_acc"] for r in runs]
    walls = [r["wall_seconds"] for r in runs]
    summary = {
        "experiment": args.experiment,
        "overrides": args.overrides,
        "machine": machine(),
        "test_acc_mean": statistics.mean(tests),
        "test_acc_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
        "wall_seconds_mean": statistics.mean(walls),
        "wall_seconds_max": max(walls),
        "loaded": any(busy(r["load_average_before"][0], r["load_average_after"][0], os.cpu_count() or 1) for r in runs),
        "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(
        f"| {args.experiment} | {summary['test_acc_mean']:.2f} ± {summary['test_acc_std']:.2f}% "
        f"({len(runs)} seeds) | {summary['wall_seconds_mean']:.0f} s (max {summary['wall_seconds_max']:.0f} s) "
        f"| {summary['machine']} |"
    )


if __name__ == "__main__":
    main()
