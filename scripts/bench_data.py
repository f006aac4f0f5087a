"""Images/s of the CIFAR-10 training pipeline: cnnlab's loader vs the usual torchvision one, in one run.

Both run the same pipeline over the same 50,000 training images: random crop 32 with 4 px zero padding,
random horizontal flip, normalise, batches of 512, shuffled. The baseline is what most PyTorch code does:
a torchvision CIFAR10 Dataset returning PIL images + torchvision transforms per image + a DataLoader with
2 workers. cnnlab's is `cnnlab.data.build` (data=cifar10 augment=basic): the device-resident loader.
Each is timed over `--batches` batches after `--warmup` (worker start-up and first-touch costs excluded).

    CNNLAB_DATA_ROOT=../shared/datasets python scripts/bench_data.py --out outputs/bench_data.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torchvision import datasets, transforms

from cnnlab import data
from cnnlab.config import AugmentConfig, DataConfig

BATCH = 512


class CIFAR10Copy(datasets.CIFAR10):
    """torchvision's CIFAR10 over a copy whose file md5s differ (same pixels, another image order)."""

    def _check_integrity(self) -> bool:
        return all((Path(self.root) / self.base_folder / name).is_file()
                   for name, _ in self.train_list + self.test_list)


def timed(batches, warmup: int, count: int, sync) -> float:
    """Images/s over `count` batches of the iterable, after `warmup` batches."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    sync()
    start, seen = time.perf_counter(), 0
    for _ in range(count):
        x, _ = next(it)
        seen += len(x)
    sync()
    return seen / (time.perf_counter() - start)


def baseline(root: Path, mean, std, workers: int):
    pipeline = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    dataset = CIFAR10Copy(str(root), train=True, transform=pipeline, download=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    return _forever(loader)


def _forever(loader):
    """Batches from epoch after epoch (the timed window may cross an epoch boundary)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def machine(device: torch.device) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "load_average": os.getloadavg()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_data.json"))
    parser.add_argument("--root", default=os.environ.get("CNNLAB_DATA_ROOT", "./data"))
    parser.add_argument("--device", default="cpu", help="where cnnlab's loader keeps the data (cpu, cuda)")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="baseline DataLoader workers")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    data_cfg = OmegaConf.merge(OmegaConf.structured(DataConfig),
                               {"name": "cifar10", "root": args.root, "download": False, "batch_size": BATCH,
                                "val_split": "test", "loader": "device"})
    augment_cfg = OmegaConf.merge(OmegaConf.structured(AugmentConfig), {"crop_padding": 4, "flip": True})
    bundle = data.build(data_cfg, augment_cfg, device, seed=0)
    ours = timed(_forever(bundle.train), args.warmup, args.batches, sync)
    theirs = timed(baseline(Path(args.root), bundle.spec.mean, bundle.spec.std, args.workers), args.warmup,
                   args.batches, lambda: None)
    result = {
        "pipeline": "CIFAR-10 train: random crop 32 pad 4 + horizontal flip + normalise, batch 512, shuffled",
        "images": len(bundle.train.labels), "batches_timed": args.batches, "batch_size": BATCH,
        "cnnlab_images_per_s": round(ours), "baseline_images_per_s": round(theirs),
        "baseline": f"torchvision CIFAR10 (PIL) + transforms + DataLoader({args.workers} workers)",
        "speedup": round(ours / theirs, 2), "machine": machine(device),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"cnnlab {ours:,.0f} img/s ({device}) vs torchvision DataLoader({args.workers} workers) {theirs:,.0f} img/s "
          f"-> {args.out}; speed-up: {ours / theirs:.1f}x")


if __name__ == "__main__":
    main()
