"""Time-to-99% on MNIST: the textbook PyTorch loop against `cnnlab train experiment=mnist_lenet5`, in one run.

The textbook loop: torchvision's MNIST dataset + ToTensor/Normalize + DataLoader (2 workers), the same
LeNet-5, Adam 1e-3, batch 256, test accuracy after every epoch until it reaches the target. Both clocks
start at their process's start (imports included), so the comparison is end to end.

    CNNLAB_DATA_ROOT=../shared/datasets python scripts/bench_mnist_textbook.py --out outputs/bench_mnist_textbook.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()

import torch  # noqa: E402  (imported after the clock starts: import time is part of the textbook loop's cost)
import torch.nn.functional as F  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

from cnnlab.models.lenet import LeNet5  # noqa: E402


def extracted_copy(root: Path, cache: Path) -> Path:
    """torchvision's MNIST class wants the extracted idx files; the offline copy has only the .gz archives."""
    raw = cache / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for archive in (root / "MNIST" / "raw").glob("*.gz"):
        with gzip.open(archive) as src, open(raw / archive.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return cache


def textbook(root: Path, target: float, max_epochs: int) -> dict:
    torch.manual_seed(0)
    root = extracted_copy(root, Path(tempfile.mkdtemp(prefix="mnist-")))
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = datasets.MNIST(root, train=True, transform=tf, download=False)
    test = datasets.MNIST(root, train=False, transform=tf, download=False)
    train_loader = torch.utils.data.DataLoader(train, batch_size=256, shuffle=True, num_workers=2)
    test_loader = torch.utils.data.DataLoader(test, batch_size=1000, num_workers=2)
    model = LeNet5(10, 1, 28)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for epoch in range(max_epochs):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        acc = 100.0 * correct / len(test)
        history.append({"epoch": epoch + 1, "test_acc": acc, "seconds": time.perf_counter() - START})
        print(f"textbook epoch {epoch + 1}: test {acc:.2f}% at {history[-1]['seconds']:.0f} s", flush=True)
        if acc >= target:
            break
    reached = history[-1]["test_acc"] >= target
    return {"reached": reached, "seconds": history[-1]["seconds"], "epochs": len(history),
            "test_acc": history[-1]["test_acc"], "history": history}


def cnnlab_recipe() -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cnnlab", "train", "experiment=mnist_lenet5", "trainer.progress=none",
                        f"hydra.run.dir={run_dir}"], check=True, capture_output=True)
        seconds = time.perf_counter() - start
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    return {"seconds": seconds, "test_acc": metrics["test_acc"], "epochs": metrics["epochs"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("CNNLAB_DATA_ROOT", "data")))
    parser.add_argument("--target", type=float, default=99.0)
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_mnist_textbook.json"))
    args = parser.parse_args()
    base = textbook(args.root, args.target, args.max_epochs)
    ours = cnnlab_recipe()
    result = {"target_test_acc": args.target, "textbook": base, "cnnlab_mnist_lenet5": ours,
              "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "speedup": base["seconds"] / ours["seconds"] if base["reached"] else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    reached = f"{base['seconds']:.0f} s" if base["reached"] else f"not reached in {base['epochs']} epochs"
    print(f"textbook loop to {args.target}%: {reached}; cnnlab mnist_lenet5: {ours['seconds']:.0f} s "
          f"({ours['test_acc']:.2f}%) -> {args.out}; speed-up: "
          + (f"{result['speedup']:.1f}x" if result["speedup"] else "n/a"))


if __name__ == "__main__":
    main()
