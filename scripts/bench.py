"""cnnlab's benchmark suite: every row is measured side by side, in one run, on this machine.

    python scripts/bench.py                      # every section
    python scripts/bench.py overhead data        # the named sections
    python scripts/bench.py time_to_accuracy --tta-max-seconds 1200
    python scripts/bench.py time_to_accuracy --recipes mnist_lenet5 --no-textbook   # the regression check only

Sections (each writes outputs/benchmarks/<section>.json and .md, with the machine, the torch version and
the load average before and after, so that a result taken on a busy machine says so):
- overhead: images/s of cnnlab's Trainer (commands.train.run, in process) against a bare PyTorch loop with
  the same model, device-resident data, batch, optimiser, schedule and precision; alternated, warm epochs
  only. Prints "overhead: X%" (target: at most 5%).
- data: the CIFAR-10 training pipeline (crop + flip + normalise) of cnnlab's device loader against torchvision
  + PIL + DataLoader (each the best of 3 timings, one side after the other); each batched policy (AutoAugment,
  RandAugment, TrivialAugment) against torchvision's per-image v2 policy on the same batch (best of 5, alternated).
- time_to_accuracy: from process start, the textbook loops against the recipes: MNIST LeNet-5 to 99.0%,
  CIFAR-10 to 80% (experiment=cifar10_cpu_fast against the chapters' SimpleCNN loop). Long on a CPU. Each recipe
  run is appended to time_to_accuracy_history.jsonl (CPU, load, torch, commit); a quiet one (1-minute load below
  1.0 before) more than 15% slower than the last quiet run of its recipe on the same CPU model prints one
  "SLOWER: ..." line and makes bench.py exit 1 (scripts/bench_history.py).
- startup: wall seconds of `cnnlab --help`, `cnnlab train --help` and, for the default `cnnlab train`, from
  process start to its first finished training step (the CNNLAB_FIRST_BATCH_FILE hook); the median of
  --startup-repeats fresh processes each (targets: help under 1 s, first step within 3 s on 2 quiet cores),
  and the CPU seconds the training process had used by then (what a loaded machine cannot inflate much).
- gpu: on CUDA only (skipped cleanly elsewhere): the overhead section on the GPU in bf16, and ResNet-18
  CIFAR images/s with and without channels_last, bf16 and torch.compile.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # the textbook loops run as `bench.py --textbook X`: their clock starts here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, also when loaded from a file path

import bench_history  # noqa: E402  (scripts/, beside this file)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_history import busy, cpu_name  # noqa: E402, F401  (measure_recipe.py imports them from here)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "outputs" / "benchmarks"


# ----------------------------------------------------------------------------------------------- machine
def machine(device: torch.device | None = None) -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()
    info = {
        "cpu": cpu_name(),
        "cores": cores,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in load],
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cnnlab.schema import register

    register()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return hydra_compose("train", overrides=overrides)


def data_root() -> str:
    return os.environ.get("CNNLAB_DATA_ROOT", str(REPO.parent / "shared" / "datasets"))


# ---------------------------------------------------------------------------------------------- overhead
def overhead_config(device: torch.device, args) -> object:
    precision = "bf16" if device.type == "cuda" else "fp32"
    overrides = [
        "model=speedrun",
        "model.widths=[32,64,128]",
        "data=cifar10",
        f"data.root={data_root()}",
        "data.download=false",
        f"data.subset={args.subset}",
        "data.batch_size=512",
        "data.loader=device",
        "augment=none",
        "optimizer=sgd",
        "optimizer.lr=0.2",
        "scheduler=cosine",
        f"trainer.epochs={args.epochs}",
        f"trainer.device={device}",
        f"trainer.precision={precision}",
        "trainer.progress=none",
        "trainer.image_grid=0",
        "trainer.label_smoothing=0.2",
        "trainer.limit_val_batches=2",
        f"trainer.channels_last={str(device.type == 'cuda').lower()}",
    ]
    return compose(overrides)


def cnnlab_epochs(cfg) -> list[float]:
    """Images/s of each training epoch of `cnnlab train` (in process, into a throwaway run dir)."""
    from cnnlab.commands.train import run

    with tempfile.TemporaryDirectory() as run_dir:
        metrics = run(cfg, run_dir=Path(run_dir) / "run")
    return [h["images_per_sec"] for h in metrics["history"]]


def bare_epochs(cfg, device: torch.device) -> list[float]:
    """The same training as a plain PyTorch loop: device-resident uint8 images, randperm batches, normalise,
    autocast, cross entropy, backward, step, schedule. Images/s of each epoch."""
    from cnnlab import data as data_lib
    from cnnlab import models, optim
    from cnnlab.data.transforms import Normalise
    from cnnlab.engine.device import autocast_for, resolve_precision

    torch.manual_seed(cfg.seed)
    bundle = data_lib.build(cfg.data, cfg.augment, device, seed=cfg.seed)
    images, labels = bundle.train.images, bundle.train.labels
    normalise = Normalise(bundle.spec.mean, bundle.spec.std, device)
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    model = models.build(cfg.model, bundle.spec).to(device, memory_format=memory_format)
    bs = cfg.data.batch_size
    steps = len(labels) // bs
    optimizer, scheduler = optim.build(cfg.optimizer, cfg.scheduler, model, steps, steps * cfg.trainer.epochs)
    autocast = autocast_for(device, resolve_precision(cfg.trainer.precision, device))
    if hasattr(model, "fit"):  # the speedrun stem's data-dependent init, as the trainer's callback does
        model.fit(normalise(images[:bs]))
    rates = []
    for _ in range(cfg.trainer.epochs):
        model.train()
        order = torch.randperm(len(labels), device=device)
        sync(device)
        start = time.perf_counter()
        for i in range(steps):
            index = order[i * bs : (i + 1) * bs]
            x = normalise(images.index_select(0, index)).contiguous(memory_format=memory_format)
            y = labels.index_select(0, index)
            with autocast():
                loss = F.cross_entropy(model(x).float(), y, label_smoothing=cfg.trainer.label_smoothing)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        sync(device)
        rates.append(steps * bs / (time.perf_counter() - start))
    return rates


def overhead_rows(device: torch.device, args) -> dict:
    cfg = overhead_config(device, args)
    ours, bare = [], []
    for repeat in range(args.repeats):  # alternate, so that a change in the machine's load hits both
        ours += cnnlab_epochs(cfg)[1:]  # warm epochs only
        bare += bare_epochs(cfg, device)[1:]
        print(
            f"  repeat {repeat + 1}/{args.repeats}: cnnlab {ours[-1]:,.0f} img/s, bare loop {bare[-1]:,.0f} img/s",
            flush=True,
        )
    a, b = statistics.median(ours), statistics.median(bare)
    overhead = 100.0 * (b - a) / b
    print(f"overhead: {overhead:.1f}% (cnnlab {a:,.0f} img/s vs bare loop {b:,.0f} img/s on {device})")
    return {
        "what": "speedrun 32-64-128, CIFAR-10 subset on the device, batch 512, SGD + cosine, no augmentation, "
        f"{cfg.trainer.precision}, channels_last={cfg.trainer.channels_last}",
        "device": str(device),
        "train_images": round(args.subset * 10 * 0.9),
        "repeats": args.repeats,
        "cnnlab_images_per_s": round(a),
        "bare_images_per_s": round(b),
        "overhead_percent": round(overhead, 2),
        "cnnlab_epochs": [round(v) for v in ours],
        "bare_epochs": [round(v) for v in bare],
        "target_percent": 5,
    }


def section_overhead(args) -> dict:
    return {"rows": [overhead_rows(torch.device("cpu"), args)]}


# -------------------------------------------------------------------------------------------------- data
def timed(batches, warmup: int, count: int, device: torch.device) -> float:
    """Images/s over `count` batches of an endless iterable, after `warmup` batches."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    sync(device)
    start, seen = time.perf_counter(), 0
    for _ in range(count):
        x, _ = next(it)
        seen += len(x)
    sync(device)
    return seen / (time.perf_counter() - start)


def best_of(batches, repeats: int, count: int, device: torch.device) -> float:
    """The best images/s of `repeats` timings of `count` batches each (timed), after 3 warm-up batches."""
    return max(timed(batches, 3 if i == 0 else 0, count, device) for i in range(repeats))


def forever(loader):
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def torchvision_cifar(train: bool, transform, root: str):
    from torchvision import datasets

    class CIFAR10Copy(datasets.CIFAR10):
        """torchvision's CIFAR10 over the offline copy (same pixels, another order, so other md5s)."""

        def _check_integrity(self) -> bool:
            return all(
                (Path(self.root) / self.base_folder / name).is_file() for name, _ in self.train_list + self.test_list
            )

    return CIFAR10Copy(root, train=train, transform=transform, download=False)


def loader_row(device: torch.device, args) -> dict:
    from omegaconf import OmegaConf
    from torchvision import transforms

    from cnnlab import data
    from cnnlab.schema.common import AugmentConfig, DataConfig

    data_cfg = OmegaConf.merge(
        OmegaConf.structured(DataConfig),
        {
            "name": "cifar10",
            "root": data_root(),
            "download": False,
            "batch_size": 512,
            "val_split": "test",
            "loader": "device",
        },
    )
    bundle = data.build(
        data_cfg, OmegaConf.merge(OmegaConf.structured(AugmentConfig), {"crop_padding": 4, "flip": True}), device
    )
    pipeline = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(bundle.spec.mean, bundle.spec.std),
        ]
    )
    baseline = torch.utils.data.DataLoader(
        torchvision_cifar(True, pipeline, data_root()),
        batch_size=512,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=args.workers > 0,
    )
    # the best of a few timings of each, one side after the other (alternating would let the DataLoader's
    # workers prefetch while cnnlab's loader is timed): a busy machine only slows things down
    ours = best_of(forever(bundle.train), args.loader_repeats, args.batches, device)
    theirs = best_of(forever(baseline), args.loader_repeats, args.batches, torch.device("cpu"))
    print(
        f"  loader: cnnlab {ours:,.0f} img/s vs torchvision DataLoader({args.workers} workers) {theirs:,.0f} img/s "
        f"-> {ours / theirs:.1f}x",
        flush=True,
    )
    return {
        "row": "CIFAR-10 train pipeline: crop 32 pad 4 + flip + normalise, batch 512, shuffled",
        "cnnlab": f"device loader ({device})",
        "baseline": f"torchvision CIFAR10 (PIL) + transforms + DataLoader({args.workers} workers)",
        "cnnlab_images_per_s": round(ours),
        "baseline_images_per_s": round(theirs),
        "timing": f"best of {args.loader_repeats} timings of {args.batches} batches each",
        "speedup": round(ours / theirs, 2),
    }


def policy_rows(device: torch.device, args) -> list[dict]:
    from cnnlab.data.policies import BatchedPolicy, reference_policy

    images = torch.from_numpy(np.stack(torchvision_cifar(True, None, data_root()).data[:512])).permute(0, 3, 1, 2)
    x = images.contiguous().to(device)
    rows = []
    for name in ("randaugment", "trivialaugment", "autoaugment"):
        reference = reference_policy(name)
        batched = BatchedPolicy(reference)
        rng = np.random.default_rng(0)
        batched(x, rng)  # warm-up
        ours = theirs = 0.0
        for _ in range(args.policy_repeats):  # alternated; the best of each: a busy machine only slows things down
            sync(device)
            start = time.perf_counter()
            for _ in range(args.policy_batches):
                batched(x, rng)
            sync(device)
            ours = max(ours, args.policy_batches * len(x) / (time.perf_counter() - start))
            start = time.perf_counter()
            torch.stack([reference(image) for image in x[:128].cpu()])
            theirs = max(theirs, 128 / (time.perf_counter() - start))
        print(
            f"  {name}: batched {ours:,.0f} img/s vs per-image v2 {theirs:,.0f} img/s -> {ours / theirs:.1f}x",
            flush=True,
        )
        rows.append(
            {
                "row": f"{name} on a CIFAR-10 batch of 512",
                "cnnlab": f"BatchedPolicy ({device})",
                "baseline": "torchvision v2 policy per image (cpu)",
                "timing": f"best of {args.policy_repeats} alternated timings",
                "cnnlab_images_per_s": round(ours),
                "baseline_images_per_s": round(theirs),
                "speedup": round(ours / theirs, 2),
            }
        )
    return rows


def section_data(args) -> dict:
    device = torch.device("cpu")
    return {"rows": [loader_row(device, args), *policy_rows(device, args)]}


# ------------------------------------------------------------------------------------- time to accuracy
def textbook_mnist(max_seconds: float, target: float = 99.0) -> list[dict]:
    """The textbook MNIST loop: torchvision MNIST + ToTensor/Normalize + DataLoader(2 workers), LeNet-5, Adam 1e-3,
    batch 256, test accuracy after every epoch."""
    import gzip
    import shutil

    from torchvision import datasets, transforms

    from cnnlab.models.lenet import LeNet5

    cache = Path(tempfile.mkdtemp(prefix="mnist-"))
    raw = cache / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for archive in (Path(data_root()) / "MNIST" / "raw").glob("*.gz"):  # torchvision wants them extracted
        with gzip.open(archive) as src, open(raw / archive.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = torch.utils.data.DataLoader(
        datasets.MNIST(cache, train=True, transform=tf), batch_size=256, shuffle=True, num_workers=2
    )
    test = torch.utils.data.DataLoader(datasets.MNIST(cache, train=False, transform=tf), batch_size=1000, num_workers=2)
    model = LeNet5(10, 1, 28)
    return _textbook_fit(model, torch.optim.Adam(model.parameters(), lr=1e-3), train, test, target, max_seconds)


def textbook_cifar(max_seconds: float, target: float = 80.0) -> list[dict]:
    """The chapters' CIFAR-10 loop: torchvision CIFAR10 (PIL) + RandomCrop(32, 4) + flip + ToTensor/Normalize +
    DataLoader(2 workers), the 3-conv SimpleCNN, Adam 1e-3, batch 128, test accuracy after every epoch."""
    from torchvision import transforms

    from cnnlab.models.small_cnns import SimpleCNN

    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    train_tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    test_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    train = torch.utils.data.DataLoader(
        torchvision_cifar(True, train_tf, data_root()), batch_size=128, shuffle=True, num_workers=2
    )
    test = torch.utils.data.DataLoader(torchvision_cifar(False, test_tf, data_root()), batch_size=1000, num_workers=2)
    model = SimpleCNN(num_classes=10, in_channels=3)
    return _textbook_fit(model, torch.optim.Adam(model.parameters(), lr=1e-3), train, test, target, max_seconds)


def _textbook_fit(model, optimizer, train, test, target: float, max_seconds: float) -> list[dict]:
    torch.manual_seed(0)
    history = []
    while True:
        model.train()
        for x, y in train:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in test:
                correct += (model(x).argmax(1) == y).sum().item()
                total += len(y)
        history.append(
            {"epoch": len(history) + 1, "test_acc": 100.0 * correct / total, "seconds": time.perf_counter() - START}
        )
        print(json.dumps(history[-1]), flush=True)
        if history[-1]["test_acc"] >= target or history[-1]["seconds"] >= max_seconds:
            return history


def run_textbook(which: str, target: float, max_seconds: float) -> dict:
    """`bench.py --textbook WHICH` in a fresh process: its clock starts at that process's start."""
    command = [sys.executable, __file__, "--textbook", which, "--tta-max-seconds", str(max_seconds)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"textbook {which} failed:\n{done.stderr[-3000:]}")
    history = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    hit = next((h for h in history if h["test_acc"] >= target), None)
    return {
        "reached": hit is not None,
        "seconds": (hit or history[-1])["seconds"],
        "epochs": len(history),
        "best_test_acc": max(h["test_acc"] for h in history),
        "history": history,
    }


def run_recipe(experiment: str) -> dict:
    """`cnnlab train experiment=X`, timed from process start to exit (its fixed epochs, the test evaluation)."""
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cnnlab",
                "train",
                f"experiment={experiment}",
                "trainer.progress=none",
                f"hydra.run.dir={run_dir}",
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "CNNLAB_DATA_ROOT": data_root()},
        )
        seconds = time.perf_counter() - start
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    return {"seconds": seconds, "test_acc": metrics["test_acc"], "epochs": metrics["epochs"]}


RECIPES = {"mnist_lenet5": ("mnist", 99.0), "cifar10_cpu_fast": ("cifar", 80.0)}  # recipe -> (textbook loop, target)
REGRESSIONS: list[str] = []  # the loud lines of recipes slower than their last quiet record: bench.py exits 1


def section_time_to_accuracy(args) -> dict:
    rows = []
    history = args.history or args.out / "time_to_accuracy_history.jsonl"
    for experiment in args.recipes:
        which, target = RECIPES[experiment]
        before = machine()
        ours = run_recipe(experiment)
        record = bench_history.record(experiment, ours, before, machine(), bench_history.commit(REPO))
        quiet = "quiet" if record["quiet"] else f"loaded: load {record['load_before']} before, not a reference"
        print(f"  {experiment}: {ours['test_acc']:.2f}% in {ours['seconds']:.1f} s ({quiet})", flush=True)
        slower = bench_history.check_and_append(history, record)
        if slower:
            print(f"  {slower}", file=sys.stderr, flush=True)
            REGRESSIONS.append(slower)
        row = {
            "row": f"{which} to {target}% test",
            "cnnlab": f"experiment={experiment}",
            "cnnlab_run": ours,
            "cnnlab_reached": ours["test_acc"] >= target,
            "history": {"file": str(history), "quiet": record["quiet"], "slower": slower},
        }
        if not args.no_textbook:
            base = run_textbook(which, target, args.tta_max_seconds)
            reached = f"{base['seconds']:.0f} s" if base["reached"] else f"not reached in {base['seconds']:.0f} s"
            print(f"  textbook {which} to {target}%: {reached}", flush=True)
            row.update(textbook=base, speedup=round(base["seconds"] / ours["seconds"], 2) if base["reached"] else None)
        rows.append(row)
    return {"rows": rows}


# --------------------------------------------------------------------------------------------------- gpu
def resnet18_images_per_s(device: torch.device, channels_last: bool, bf16: bool, compiled: bool, steps: int) -> float:
    from cnnlab.models.resnet import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10, in_channels=3, image_size=32).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(512, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (512,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(step_model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5 if compiled else 3):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * len(x) / (time.perf_counter() - start)


def section_gpu(args) -> dict:
    if not torch.cuda.is_available():
        print("  skipped: no CUDA device here")
        return {"skipped": "no CUDA device", "rows": []}
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    rows = [overhead_rows(device, args)]
    for channels_last in (False, True):
        for bf16 in (False, True):
            for compiled in (False, True):
                rate = resnet18_images_per_s(device, channels_last, bf16, compiled, args.gpu_steps)
                print(
                    f"  resnet18 channels_last={channels_last} bf16={bf16} compile={compiled}: {rate:,.0f} img/s",
                    flush=True,
                )
                rows.append(
                    {
                        "row": "ResNet-18 CIFAR training step, batch 512",
                        "channels_last": channels_last,
                        "bf16": bf16,
                        "compile": compiled,
                        "images_per_s": round(rate),
                    }
                )
    return {"rows": rows}


# ----------------------------------------------------------------------------------------------- startup
def cnnlab_process(args: list[str], cwd: str, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CNNLAB_DATA_ROOT": data_root(), **(env or {})}
    command = [sys.executable, "-m", "cnnlab", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def help_seconds(args: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        proc = cnnlab_process(args, tmp)
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"cnnlab {' '.join(args)} failed: {err.decode()[-500:]}")
        return time.time() - start


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc; None elsewhere): on a loaded machine
    this is close to what the wall time would be on a quiet one, for a process that mostly uses one core."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


FIRST_STEP_CPU: list[float] = []  # the CPU seconds of each first_step_seconds() process, for the report


def first_step_seconds() -> float:
    """From starting `cnnlab train` (its defaults) to the end of its first training step; then it is stopped."""
    with tempfile.TemporaryDirectory() as tmp:
        stamp = Path(tmp) / "first_step"
        start = time.time()
        proc = cnnlab_process(["train", f"hydra.run.dir={tmp}/run"], tmp, {"CNNLAB_FIRST_BATCH_FILE": str(stamp)})
        while not stamp.is_file() or not stamp.read_text():
            if proc.poll() is not None or time.time() - start > 300:
                proc.kill()
                raise RuntimeError(f"cnnlab train ended before its first step: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.01)
        seconds = float(stamp.read_text()) - start
        cpu = cpu_seconds(proc.pid)
        if cpu is not None:
            FIRST_STEP_CPU.append(round(cpu, 2))
        proc.terminate()  # a clean stop (last.pt is written into the temporary run dir)
        proc.wait(timeout=120)
        return seconds


FLOOR = "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])"


def floor_seconds() -> float:
    """What any PyTorch training script pays before its first step: importing torch and making an optimiser
    (which imports torch._dynamo); its CPU seconds go to FLOOR_CPU."""
    import resource

    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    subprocess.run([sys.executable, "-c", FLOOR], check=True, timeout=300)
    seconds, after = time.time() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    FLOOR_CPU.append(round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2))
    return seconds


FLOOR_CPU: list[float] = []


def section_startup(args) -> dict:
    rows = []
    for name, measure, target in (
        ("cnnlab --help", lambda: help_seconds(["--help"]), 1.0),
        ("cnnlab train --help", lambda: help_seconds(["train", "--help"]), 1.0),
        ("cnnlab train: process start to first step", first_step_seconds, 3.0),
        (f"floor, python -c '{FLOOR}'", floor_seconds, None),
    ):
        times = [measure() for _ in range(args.startup_repeats)]
        row = {"row": name, "median_s": round(statistics.median(times), 2), "min_s": round(min(times), 2)}
        row.update(target_s=target, times_s=[round(t, 2) for t in times])
        print(f"  {name}: median {row['median_s']} s, min {row['min_s']} s (target {target} s)", flush=True)
        rows.append(row)
    for row, cpu in ((rows[2], FIRST_STEP_CPU), (rows[3], FLOOR_CPU)):
        if cpu:  # first step: read a moment after the step ended, an upper bound of the CPU time it took
            row.update(cpu_s_median=round(statistics.median(cpu), 2), cpu_s=list(cpu))
    return {"rows": rows, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


# ---------------------------------------------------------------------------------------------- reports
SECTIONS = {
    "overhead": section_overhead,
    "data": section_data,
    "time_to_accuracy": section_time_to_accuracy,
    "gpu": section_gpu,
    "startup": section_startup,
}


def markdown(name: str, result: dict) -> str:
    m = result["machine_before"]
    lines = [
        f"# bench: {name}",
        "",
        f"{m['cpu']} ({m['cores']} cores), torch {m['torch']}"
        + (f", {m['gpu']}" if "gpu" in m else "")
        + f"; load average {m['load_average']} before, "
        f"{result['machine_after']['load_average']} after"
        + (" (loaded: other work was running)" if result["loaded"] else "")
        + "; "
        + f"{result['seconds']:.0f} s; command `{result['command']}`",
        "",
    ]
    if result.get("skipped"):
        return "\n".join(lines + [f"skipped: {result['skipped']}", ""])
    for row in result["rows"]:
        fields = ", ".join(f"{k}={v}" for k, v in row.items() if not isinstance(v, (list, dict)))
        lines.append(f"- {fields}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", help=f"sections to run: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--repeats", type=int, default=3, help="overhead: alternations of cnnlab and bare loop")
    parser.add_argument("--epochs", type=int, default=3, help="overhead: epochs per run (the first is warm-up)")
    parser.add_argument("--subset", type=int, default=1000, help="overhead: CIFAR-10 images per class")
    parser.add_argument("--batches", type=int, default=40, help="data: batches per timing of a loader")
    parser.add_argument("--loader-repeats", type=int, default=3, help="data: timings per loader (best)")
    parser.add_argument("--workers", type=int, default=2, help="data: baseline DataLoader workers")
    parser.add_argument("--policy-batches", type=int, default=3, help="data: batches per timing of a batched policy")
    parser.add_argument("--policy-repeats", type=int, default=5, help="data: alternated timings per policy (best)")
    parser.add_argument("--tta-max-seconds", type=float, default=1800, help="time_to_accuracy: textbook loop limit")
    parser.add_argument(
        "--recipes",
        type=lambda text: text.split(","),
        default=list(RECIPES),
        help=f"time_to_accuracy: comma-separated, of {', '.join(RECIPES)} (default: both)",
    )
    parser.add_argument(
        "--no-textbook", action="store_true", help="time_to_accuracy: the recipes and their history check only"
    )
    parser.add_argument(
        "--history",
        type=Path,
        help="time_to_accuracy: the history file (default: time_to_accuracy_history.jsonl in --out)",
    )
    parser.add_argument("--startup-repeats", type=int, default=5, help="startup: fresh processes per row")
    parser.add_argument("--gpu-steps", type=int, default=50, help="gpu: timed ResNet-18 steps per variant")
    parser.add_argument("--textbook", choices=["mnist", "cifar"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    strange = [name for name in args.recipes if name not in RECIPES]
    if strange:
        parser.error(f"unknown recipe(s) {', '.join(strange)}; choose from {', '.join(RECIPES)}")
    if args.textbook:
        (textbook_mnist if args.textbook == "mnist" else textbook_cifar)(args.tta_max_seconds)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sections or list(SECTIONS):
        print(f"[{name}]", flush=True)
        before, start = (
            machine(torch.device("cuda") if name == "gpu" and torch.cuda.is_available() else None),
            time.perf_counter(),
        )
        result = SECTIONS[name](args)
        after = machine()
        result.update(
            machine_before=before,
            machine_after=after,
            loaded=busy(before["load_average"][0], after["load_average"][0], before["cores"]),
            seconds=time.perf_counter() - start,
            command=" ".join(["python", "scripts/bench.py", *sys.argv[1:]]),
        )
        if result["loaded"]:
            print(
                f"  note: load average {before['load_average']} before, {after['load_average']} after, on "
                f"{before['cores']} cores: other work was running, timings are pessimistic",
                flush=True,
            )
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
        (args.out / f"{name}.md").write_text(markdown(name, result))
        print(f"  -> {args.out / name}.json, .md", flush=True)
    if REGRESSIONS:  # said where they were found; again last, where a CI log ends
        print("\n".join(REGRESSIONS), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
