"""Scaling of `cnnlab train` over processes: images/s with 1 process and with torchrun over N processes.

Each configuration trains the same model on the same data at the same per-rank batch; images/s is the
whole job's (metrics.json `images_per_sec` of the last epoch, after a warm-up epoch). On a CPU the
processes share the cores: N processes get cores / N threads each, and 1 process runs both with all cores'
threads and with one thread (on a busy machine, several threads per process can be far slower than one), so
the speed-up is taken over the faster 1-process setting. Runs are interleaved (repeats) so that a shared
machine's load hits every configuration alike; the load average is recorded before and after.

    python scripts/bench_distributed.py --out outputs/benchmarks/distributed_cpu.json
    python scripts/bench_distributed.py --device cuda --procs 1 2 4 8 --model resnet18 --batch 256 --out ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_history, beside this file
from bench_history import cpu_name  # noqa: E402


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def train_once(procs: int, args, threads: int) -> dict:
    """One `cnnlab train` (procs == 1) or torchrun run; returns its metrics.json."""
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"data={args.data}",
            f"model={args.model}",
            f"data.batch_size={args.batch}",
            f"trainer.epochs={args.epochs}",
            f"trainer.device={args.device}",
            "trainer.progress=none",
            "trainer.image_grid=0",
            "scheduler=none",
            f"hydra.run.dir={tmp}/run",
            *args.overrides,
        ]
        launch = [sys.executable, "-m", "cnnlab"]
        if procs > 1:
            launch = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={procs}",
                "-m",
                "cnnlab",
            ]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        started = time.perf_counter()
        result = subprocess.run([*launch, "train", *overrides], env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{procs} process(es) failed:\n{result.stderr[-3000:]}")
        metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
        metrics["wall_seconds"] = time.perf_counter() - started
        return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--model", default="simple_cnn")
    parser.add_argument("--batch", type=int, default=64, help="per-rank batch")
    parser.add_argument("--epochs", type=int, default=2, help="the last epoch is timed, the first warms up")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--overrides",
        nargs="*",
        default=["data.subset=200"],
        help="more cnnlab overrides (default: 200 CIFAR-10 images per class)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "distributed.json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    settings = [(p, max(1, cores // p) if args.device == "cpu" else 1) for p in args.procs]
    if args.device == "cpu" and cores > 1 and 1 in args.procs:
        settings.insert(1, (1, 1))
    rows = {s: [] for s in settings}
    load_before = load_average()
    for _ in range(args.repeats):
        for p, threads in settings:
            m = train_once(p, args, threads)
            rows[p, threads].append(
                {
                    "images_per_sec": m["history"][-1]["images_per_sec"],
                    "world_size": m["world_size"],
                    "global_batch": m["global_batch"],
                    "wall_seconds": round(m["wall_seconds"], 1),
                }
            )
            print(
                f"{p} process(es) x {threads} thread(s): {rows[p, threads][-1]['images_per_sec']:,.0f} img/s",
                flush=True,
            )
    import torch

    medians = {s: statistics.median(r["images_per_sec"] for r in runs) for s, runs in rows.items()}
    base = max(v for (p, _), v in medians.items() if p == 1) if any(p == 1 for p, _ in medians) else None
    results = [
        {
            "processes": p,
            "threads_per_process": t,
            "median_images_per_sec": medians[p, t],
            "speedup": medians[p, t] / base if base else None,
            "runs": rows[p, t],
        }
        for p, t in settings
    ]
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"{cores}-core {cpu_name()}"
    report = {
        "device": device,
        "torch": torch.__version__,
        "backend": "nccl" if args.device != "cpu" else "gloo",
        "data": args.data,
        "model": args.model,
        "per_rank_batch": args.batch,
        "overrides": args.overrides,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for r in results:
        print(
            f"{r['processes']} process(es) x {r['threads_per_process']} thread(s): "
            f"{r['median_images_per_sec']:,.0f} img/s ({r['speedup'] or 0:.2f}x over the faster 1-process run)"
        )
    print(f"load average {report['load_average_before']} -> {report['load_average_after']}; wrote {args.out}")


if __name__ == "__main__":
    main()
