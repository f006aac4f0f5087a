"""A standalone reimplementation of airbench94_muon.py, the reference cnnlab's speedrun is timed against.

Written from KellerJordan/cifar10-airbench's airbench94_muon.py (commit 096d14d, MIT licence, (c) 2024 Keller
Jordan), whose docstring reports 94.01% mean accuracy in 2.59 s on an A100 (torch 2.4.1). Same recipe: the
whitening conv fitted on 5,000 training images (bias trained for 3 epochs), 3 conv groups 64-256-256 with
dirac-initialised convs and BatchNorm (momentum 0.6 in airbench's convention, eps 1e-12, weights frozen),
head std 1 and logits / 256, fp16 modules (BatchNorm in fp32), channels_last, torch.compile; airbench's own
Muon (weights renormalised, nesterov momentum 0.6, 3 Newton-Schulz steps in bf16, lr 0.24) on the filters
and fused nesterov SGD (momentum 0.85, lr 0.053 biases / 0.67 head, weight decay 2e-6 x batch / lr) on the
rest, a summed label-smoothed (0.2) loss, linear decay to 0 over 8 epochs of batch 2000; alternating flip and
translate 2 (reflect); timed like airbench (whitening fit + training + the final 6-view TTA evaluation, CUDA
events; an untimed warm-up run with random labels compiles first). The only change: CIFAR-10 comes from the
offline pickle batches ($CNNLAB_DATA_ROOT/cifar-10-batches-py, read by cnnlab's safe reader) instead of
torchvision's download.

    python scripts/airbench_reference.py --seeds 0 1 2 3 4 --out $OUT/airbench.json
    python scripts/airbench_reference.py --smoke      # CPU, fp32, 2 steps on a subset: the code path only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MEAN = torch.tensor((0.4914, 0.4822, 0.4465))
STD = torch.tensor((0.2470, 0.2435, 0.2616))


# ------------------------------------------------------------------------------------------------ Muon
def newton_schulz(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """The quintic Newton-Schulz iteration (3.4445, -4.7750, 2.0315) that orthogonalises g, in bf16."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    x = x / (x.norm() + eps)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


class AirbenchMuon(torch.optim.Optimizer):
    """airbench's Muon: SGD-style momentum, each weight rescaled to norm sqrt(out) before the orthogonal step."""

    def __init__(self, params, lr: float, momentum: float, nesterov: bool, orthogonalise=newton_schulz):
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov})
        self.orthogonalise = orthogonalise

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.mul_(len(p) ** 0.5 / p.norm())
                update = self.orthogonalise(g.reshape(len(g), -1)).view(g.shape)
                p.add_(update.to(p.dtype), alpha=-group["lr"])


# ------------------------------------------------------------------------------------------------ data
def load_cifar10(root: Path, device, dtype, train_images: int | None, test_images: int | None):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo: cnnlab's safe pickle reader
    from cnnlab.data.cifar import load_cifar10 as read

    arrays = read(root, download=False)

    def prepare(x, y, n):
        x, y = x[:n], y[:n]
        x = x.to(device).to(dtype).div_(255)
        x = ((x - MEAN.to(device, dtype).view(1, 3, 1, 1)) / STD.to(device, dtype).view(1, 3, 1, 1)).contiguous(
            memory_format=torch.channels_last
        )
        return x, y.to(device)

    return prepare(arrays.train_x, arrays.train_y, train_images), prepare(arrays.test_x, arrays.test_y, test_images)


def crop_batch(padded: torch.Tensor, size: int, generator) -> torch.Tensor:
    """A random size x size crop of each padded image (airbench's batch_crop, by masked slices per shift)."""
    r = (padded.size(-1) - size) // 2
    shifts = torch.randint(-r, r + 1, (len(padded), 2), device=padded.device, generator=generator)
    out = torch.empty((len(padded), padded.size(1), size, size), device=padded.device, dtype=padded.dtype)
    for sy in range(-r, r + 1):
        for sx in range(-r, r + 1):
            mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            out[mask] = padded[mask, :, r + sy : r + sy + size, r + sx : r + sx + size]
    return out


class TrainBatches:
    """airbench's CifarLoader for training: random flip once, then every image mirrored every other epoch;
    translate 2 from images reflect-padded once; a new permutation each epoch; the last partial batch dropped."""

    def __init__(self, images, labels, batch_size: int, generator):
        self.images, self.labels, self.batch_size, self.g = images, labels, batch_size, generator
        flip = torch.rand(len(images), device=images.device, generator=generator) < 0.5
        flipped = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        self.padded = F.pad(flipped, (2, 2, 2, 2), mode="reflect")
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def __iter__(self):
        images = crop_batch(self.padded, self.images.shape[-1], self.g)
        if self.epoch % 2 == 1:
            images = images.flip(-1)
        self.epoch += 1
        order = torch.randperm(len(images), device=images.device, generator=self.g)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield images[idx], self.labels[idx]


# ------------------------------------------------------------------------------------------------ net
class BatchNorm(nn.BatchNorm2d):
    def __init__(self, n: int):
        super().__init__(n, eps=1e-12, momentum=1 - 0.6)  # airbench's momentum 0.6 = torch's 0.4
        self.weight.requires_grad_(False)


class Conv(nn.Conv2d):
    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding="same", bias=False)

    def reset_parameters(self):
        super().reset_parameters()
        nn.init.dirac_(self.weight.data[: self.weight.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.pool, self.norm1 = Conv(cin, cout), nn.MaxPool2d(2), BatchNorm(cout)
        self.conv2, self.norm2, self.act = Conv(cout, cout), BatchNorm(cout), nn.GELU()

    def forward(self, x):
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class CifarNet(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.layers = nn.Sequential(
            nn.GELU(), ConvGroup(24, 64), ConvGroup(64, 256), ConvGroup(256, 256), nn.MaxPool2d(3)
        )
        self.head = nn.Linear(256, 10, bias=False)
        for m in self.modules():
            if not isinstance(m, BatchNorm):
                m.to(dtype)

    def reset(self):
        for m in self.modules():
            if type(m) in (nn.Conv2d, Conv, BatchNorm, nn.Linear):
                m.reset_parameters()
        with torch.no_grad():
            self.head.weight.mul_(1 / self.head.weight.std())

    @torch.no_grad()
    def init_whiten(self, images, eps: float = 5e-4):
        c, (h, w) = images.shape[1], self.whiten.weight.shape[2:]
        patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()
        flat = patches.view(len(patches), -1)
        eigenvalues, eigenvectors = torch.linalg.eigh(flat.T @ flat / len(flat), UPLO="U")
        scaled = eigenvectors.T.reshape(-1, c, h, w) / torch.sqrt(eigenvalues.view(-1, 1, 1, 1) + eps)
        self.whiten.weight.copy_(torch.cat((scaled, -scaled)).to(self.whiten.weight.dtype))

    def forward(self, x, whiten_bias_grad: bool = True):
        b = self.whiten.bias
        x = self.layers(F.conv2d(x, self.whiten.weight, b if whiten_bias_grad else b.detach()))
        x = x.view(len(x), -1)
        return self.head(x) / x.size(-1)


# ------------------------------------------------------------------------------------------------ eval
@torch.no_grad()
def evaluate(model, images, labels, tta: int) -> float:
    model.eval()

    def mirror(x):
        return 0.5 * model(x) + 0.5 * model(x.flip(-1))

    def mirror_translate(x):
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [mirror(padded[:, :, :32, :32]), mirror(padded[:, :, 2:34, 2:34])]
        return 0.5 * mirror(x) + 0.5 * torch.stack(shifted).mean(0)

    infer = [model, mirror, mirror_translate][tta]
    logits = torch.cat([infer(x).clone() for x in images.split(2000)])
    return (logits.argmax(1) == labels).float().mean().item()


# ------------------------------------------------------------------------------------------------ train
class Timer:
    """Seconds of device work between start() and stop(), summed (CUDA events on a GPU)."""

    def __init__(self, device):
        self.cuda, self.total = device.type == "cuda", 0.0
        if self.cuda:
            self.begin, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def start(self):
        if self.cuda:
            self.begin.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self):
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.total += 1e-3 * self.begin.elapsed_time(self.end)
        else:
            self.total += time.perf_counter() - self.t0


def train_once(model, train, test, args, device, seed: int, random_labels: bool = False) -> dict:
    torch.manual_seed(seed)
    g = torch.Generator(device=device).manual_seed(seed)
    images, labels = train
    if random_labels:  # the warm-up run compiles on dummy labels
        labels = torch.randint(0, 10, labels.shape, device=device, generator=g)
    batches = TrainBatches(images, labels, args.batch_size, g)
    total_steps = math.ceil(args.epochs * len(batches))
    whiten_steps = math.ceil(3 * len(batches))
    bias_lr, head_lr, wd = 0.053, 0.67, 2e-6 * args.batch_size
    filters = [p for p in model.parameters() if p.ndim == 4 and p.requires_grad]
    norm_biases = [p for n, p in model.named_parameters() if "norm" in n and p.requires_grad]
    sgd = torch.optim.SGD(
        [
            {"params": [model.whiten.bias], "lr": bias_lr, "weight_decay": wd / bias_lr},
            {"params": norm_biases, "lr": bias_lr, "weight_decay": wd / bias_lr},
            {"params": [model.head.weight], "lr": head_lr, "weight_decay": wd / head_lr},
        ],
        momentum=0.85,
        nesterov=True,
        fused=device.type == "cuda",
    )
    muon = AirbenchMuon(filters, lr=0.24, momentum=0.6, nesterov=True, orthogonalise=args.orthogonalise)
    for opt in (sgd, muon):
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    timer = Timer(device)
    model.reset()
    timer.start()
    model.init_whiten(images[: args.whiten_images])
    timer.stop()
    step, history = 0, []
    for epoch in range(math.ceil(total_steps / len(batches))):
        model.train()
        timer.start()
        for x, y in batches:
            out = model(x, whiten_bias_grad=step < whiten_steps)
            F.cross_entropy(out, y, label_smoothing=0.2, reduction="sum").backward()
            for group in sgd.param_groups[:1]:
                group["lr"] = group["initial_lr"] * (1 - step / whiten_steps)
            for group in sgd.param_groups[1:] + muon.param_groups:
                group["lr"] = group["initial_lr"] * (1 - step / total_steps)
            sgd.step()
            muon.step()
            model.zero_grad(set_to_none=True)
            step += 1
            if step >= total_steps:
                break
        timer.stop()
        history.append({"epoch": epoch + 1, "test_acc": 100 * evaluate(model, *test, tta=0)})  # untimed, as airbench
    timer.start()
    tta_acc = evaluate(model, *test, tta=2)
    timer.stop()
    return {"seed": seed, "tta_test_acc": 100 * tta_acc, "seconds": timer.total, "steps": step, "history": history}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: $OUT/airbench.json)")
    parser.add_argument(
        "--data-root", type=Path, default=Path(os.environ.get("CNNLAB_DATA_ROOT", "../shared/datasets"))
    )
    parser.add_argument("--compile-mode", default="max-autotune", help="torch.compile mode on CUDA ('none': eager)")
    parser.add_argument("--deadline", type=float, default=None, help="time.time() after which no new seed starts")
    parser.add_argument("--smoke", action="store_true", help="CPU, fp32, 1 seed, 2 steps on 400 images")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    args.batch_size, args.epochs, args.whiten_images = 2000, 8, 5000
    n_train = n_test = None
    if args.smoke:
        args.seeds, args.batch_size, args.epochs, args.whiten_images, n_train, n_test = [0], 200, 1, 400, 400, 200
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train, test = load_cifar10(args.data_root, device, dtype, n_train, n_test)
    model = CifarNet(dtype).to(device).to(memory_format=torch.channels_last)
    args.orthogonalise = newton_schulz
    compiled = device.type == "cuda" and args.compile_mode != "none"
    if compiled:
        args.orthogonalise = torch.compile(newton_schulz)
        model.compile(mode=args.compile_mode)
    out = args.out or Path(os.environ.get("OUT", "outputs/benchmarks")) / "airbench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "what": "standalone reimplementation of airbench94_muon.py (scripts/airbench_reference.py)",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "compile_mode": args.compile_mode if compiled else "none",
        "smoke": args.smoke,
        "runs": [],
    }
    if compiled:
        t0 = time.perf_counter()
        train_once(model, train, test, args, device, seed=12345, random_labels=True)
        result["warmup_seconds"] = time.perf_counter() - t0
    for seed in args.seeds:
        if args.deadline and time.time() > args.deadline:
            result["stopped"] = f"deadline reached before seed {seed}"
            break
        run = train_once(model, train, test, args, device, seed)
        result["runs"].append(run)
        accs = [r["tta_test_acc"] for r in result["runs"]]
        secs = [r["seconds"] for r in result["runs"]]
        result["mean_tta_test_acc"], result["mean_seconds"] = sum(accs) / len(accs), sum(secs) / len(secs)
        out.write_text(json.dumps(result, indent=2))  # after every seed: a cut-short session keeps what ran
        print(f"airbench seed {seed}: {run['tta_test_acc']:.2f}% in {run['seconds']:.2f} s", flush=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
