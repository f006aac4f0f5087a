"""Training throughput of the model zoo: forward + backward images/s and peak memory at 32x32, batch 128.

    python scripts/bench_models.py --device cuda --out bench.json            # every model
    python scripts/bench_models.py --device cpu --models lenet5 resnet18 --steps 3

Each model is built from its configs/model/<name>.yaml for 3-channel 32x32 images and 10 classes, trained with
SGD on random data for --warmup untimed steps then --steps timed ones (synchronised on CUDA). Peak memory is
torch.cuda.max_memory_allocated on CUDA and the process's peak RSS on CPU (which only grows, so a model's
figure is at least the previous one's); null elsewhere. Writes JSON (--out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_history, beside this file

from bench_history import cpu_name  # noqa: E402  (scripts/, beside this file)

from cnnlab.data import DataSpec  # noqa: E402
from cnnlab.models import build, count_params, load_yaml  # noqa: E402

CONFIGS = REPO / "configs" / "model"
SKIP = {"torchvision"}  # needs model.name; the zoo's own configs cover the architectures


def zoo() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem not in SKIP)


def peak_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    if device.type == "cpu" and sys.platform != "win32":
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, device: torch.device, batch: int, size: int, steps: int, warmup: int, amp: bool) -> dict:
    model = build(load_yaml(CONFIGS / f"{name}.yaml"), DataSpec(num_classes=10, channels=3, image_size=size))
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    def step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "model": name,
        "params": count_params(model),
        "images_per_s": round(batch * steps / seconds, 1),
        "ms_per_step": round(1000 * seconds / steps, 2),
        "peak_memory_bytes": peak_memory(device),
    }


def markdown(rows: list[dict], device: str) -> str:
    lines = [f"| model ({device}) | params | images/s | ms/step | peak memory (MiB) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | failed: {r['error']} | | |")
            continue
        mem = "n/a" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:,.0f}"
        lines.append(f"| {r['model']} | {r['params']:,} | {r['images_per_s']:,.1f} | {r['ms_per_step']:,.2f} | {mem} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=None, help=f"subset of: {' '.join(zoo())}")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    names = args.models or zoo()
    unknown = sorted(set(names) - set(zoo()))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from: {' '.join(zoo())}")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    for name in names:
        try:
            rows.append(bench(name, device, args.batch_size, args.image_size, args.steps, args.warmup, args.amp))
        except torch.OutOfMemoryError:
            rows.append({"model": name, "error": "out of memory"})
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    env = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "amp": args.amp,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"environment": env, "results": rows}, indent=2))
    print(markdown(rows, env["device_name"] if device.type == "cuda" else str(device)))


if __name__ == "__main__":
    main()
