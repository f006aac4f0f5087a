"""Deliver 6 of issue 22, prepared for one sitting on a GPU: cnnlab's CIFAR-10 speedrun against airbench94_muon.

    OUT=/tmp/out CNNLAB_DATA_ROOT=../shared/datasets python scripts/gpu_speedrun_check.py --budget-s 480
    python scripts/gpu_speedrun_check.py --smoke     # CPU: 1 seed, 2 steps each, to check the code path

In order, each seed a fresh process, each stopping at the budget (what ran is kept: the JSON is rewritten
after every run):
1. `cnnlab train experiment=cifar10_speedrun seed=S` for the seeds (SGD recipe, bf16 on CUDA);
2. scripts/airbench_reference.py, a standalone reimplementation of airbench94_muon.py (its own Muon; compiled,
   an untimed warm-up run first; timed as airbench times itself) for the same seeds;
3. `cnnlab train experiment=cifar10_cpu_94 seed=S trainer.epochs=8`: airbench's recipe through the CLI, at
   airbench's 8 epochs (the CPU recipe runs 12) (optimizer=muon needs torch.optim.Muon: skipped, with the
   reason in the JSON, when the installed torch lacks it).
cnnlab runs report the process's wall time (imports, data, training, validation, test with TTA, pictures) and
the trainer's training seconds (metrics.json total_seconds, epochs without validation). Writes
$OUT/gpu_speedrun_check.json (or --out) with the GPU, torch version, commands, per-seed accuracy and times,
means and the time ratios against airbench. Needs hydra-core and omegaconf (cnnlab's own dependencies).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOKE = [
    "data.subset=20",
    "data.batch_size=64",
    "data.eval_batch_size=50",
    "trainer.max_steps=2",
    "trainer.limit_val_batches=1",
    "trainer.device=cpu",
    "trainer.precision=fp32",
]


def environment() -> dict:
    import torch

    info = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.cuda.is_available()}
    info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    info["torch_optim_muon"] = hasattr(torch.optim, "Muon")  # added in torch 2.9; optimizer=muon needs it
    if info["torch_optim_muon"]:  # cnnlab's FilterMuon leans on torch's Muon internals: one real step checks them
        try:
            sys.path.insert(0, str(REPO))
            from cnnlab.optim_muon import FilterMuon

            weight = torch.nn.Parameter(torch.randn(8, 4, 3, 3))
            weight.grad = torch.randn_like(weight)
            before = weight.detach().clone()
            FilterMuon([weight], lr=0.1, normalize_weights=True).step()
            info["filter_muon_step"] = "ok" if not torch.equal(before, weight.detach()) else "did not move the weight"
        except Exception as ex:  # noqa: BLE001 - recorded for the lead, the rest of the check still runs
            info["filter_muon_step"] = f"{type(ex).__name__}: {ex}"
            info["torch_optim_muon"] = False
    try:
        import hydra  # noqa: F401 - cnnlab's CLI needs it

        info["hydra"] = True
    except ImportError:
        info["hydra"] = False
    return info


# Overrides that make a recipe the same run as airbench's: cifar10_cpu_94 trains 12 epochs to reach 94% on a CPU.
AS_AIRBENCH = {"cifar10_cpu_94": ["trainer.epochs=8"]}


def cnnlab_run(experiment: str, seed: int, out: Path, smoke: bool) -> dict:
    run_dir = out / "runs" / f"{experiment}-seed{seed}"
    command = [
        sys.executable,
        "-m",
        "cnnlab",
        "train",
        f"experiment={experiment}",
        f"seed={seed}",
        f"hydra.run.dir={run_dir}",
        "trainer.overwrite=true",
        "trainer.progress=plain",
        *AS_AIRBENCH.get(experiment, []),
        *(SMOKE if smoke else []),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    row = {"experiment": experiment, "seed": seed, "command": " ".join(command[1:]), "wall_seconds": wall}
    metrics = run_dir / "metrics.json"
    if done.returncode != 0 or not metrics.is_file():
        return {**row, "error": (done.stderr or done.stdout).strip().splitlines()[-5:]}
    m = json.loads(metrics.read_text())
    keys = ("test_acc", "test_tta", "best_val_acc", "epochs", "steps", "total_seconds", "images_per_sec", "device")
    return {**row, **{k: m.get(k) for k in keys}}


def summary(rows: list[dict], acc: str, seconds: str) -> dict:
    ok = [r for r in rows if acc in r and r[acc] is not None]
    if not ok:
        return {"runs": 0}
    accs, secs = [r[acc] for r in ok], [r[seconds] for r in ok]
    out = {"runs": len(ok), "mean_acc": statistics.mean(accs), "mean_seconds": statistics.mean(secs)}
    if len(ok) > 1:
        out["std_acc"] = statistics.stdev(accs)
    if "wall_seconds" in ok[0]:
        out["mean_wall_seconds"] = statistics.mean(r["wall_seconds"] for r in ok)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--budget-s", type=float, default=480, help="no new run starts after this many seconds")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON and run dirs (default: $OUT)")
    parser.add_argument("--compile-mode", default="max-autotune", help="airbench's torch.compile mode ('none')")
    parser.add_argument("--smoke", action="store_true", help="CPU, 1 seed, 2 steps each: the code path only")
    args = parser.parse_args()
    out = args.out or Path(os.environ.get("OUT", "outputs/benchmarks/gpu_speedrun"))
    out.mkdir(parents=True, exist_ok=True)
    seeds = [args.seeds[0]] if args.smoke else args.seeds
    deadline = time.time() + args.budget_s
    result = {"environment": environment(), "smoke": args.smoke, "budget_s": args.budget_s, "skipped": []}
    report = out / "gpu_speedrun_check.json"

    def save():
        report.write_text(json.dumps(result, indent=2))

    def cnnlab_part(experiment: str) -> None:
        rows = result.setdefault(experiment, {"runs": []})["runs"]
        for seed in seeds:
            if time.time() > deadline:
                result["skipped"].append(f"{experiment} seed {seed}: budget spent")
                continue
            rows.append(cnnlab_run(experiment, seed, out, args.smoke))
            result[experiment]["summary"] = summary(rows, "test_acc", "total_seconds")
            save()
            print(json.dumps(rows[-1]), flush=True)

    cnnlab_part("cifar10_speedrun")
    command = [
        sys.executable,
        str(REPO / "scripts" / "airbench_reference.py"),
        "--seeds",
        *map(str, seeds),
        "--out",
        str(out / "airbench.json"),
        "--deadline",
        str(deadline),
        "--compile-mode",
        args.compile_mode,
        *(["--smoke"] if args.smoke else []),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    airbench = json.loads((out / "airbench.json").read_text()) if (out / "airbench.json").is_file() else {}
    result["airbench"] = {"command": " ".join(command[1:]), **airbench}
    if done.returncode != 0:
        result["airbench"]["error"] = (done.stderr or done.stdout).strip().splitlines()[-5:]
    result["airbench"]["summary"] = summary(airbench.get("runs", []), "tta_test_acc", "seconds")
    save()
    if result["environment"]["torch_optim_muon"]:
        cnnlab_part("cifar10_cpu_94")
    else:
        env = result["environment"]
        why = env.get("filter_muon_step") or "no torch.optim.Muon"
        result["skipped"].append(f"cifar10_cpu_94: optimizer=muon does not work on torch {env['torch']} ({why})")
    ref = result["airbench"]["summary"].get("mean_seconds")
    for experiment in ("cifar10_speedrun", "cifar10_cpu_94"):
        s = result.get(experiment, {}).get("summary", {})
        if ref and s.get("runs"):
            s["train_seconds_vs_airbench"] = s["mean_seconds"] / ref
            s["wall_seconds_vs_airbench"] = s["mean_wall_seconds"] / ref
    save()
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
