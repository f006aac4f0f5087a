"""Dataset sources: read the official file layouts (the ones torchvision downloads into) as uint8 tensors.

Each loader returns an `ArrayDataset` with images as (N, C, H, W) uint8 and labels as int64. Files are
read directly (gzip/idx, pickle) because the fast path wants raw uint8 arrays, and because the archives
may sit on a read-only share. Missing files are downloaded the way torchvision does (md5-checked) when
`download` is true; otherwise, or offline, the user gets one line naming the root and the files expected.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from cnnlab.errors import CnnlabError


@dataclass
class ArrayDataset:
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]


def _download(what: str, root: Path, expected: list[str], fetch) -> None:
    """Run `fetch()` (a torchvision download helper); turn offline/HTTP/md5 failures into one clear line."""
    try:
        fetch()
    except Exception as ex:  # URLError, HTTPError, RuntimeError (md5), OSError ...
        raise CnnlabError(
            f"{what} not found under {root} and the download failed ({type(ex).__name__}: {ex}); "
            f"expected {', '.join(expected)} there: copy them in, or point data.root / CNNLAB_DATA_ROOT at them"
        ) from None


def _missing(what: str, root: Path, expected: list[str]) -> CnnlabError:
    return CnnlabError(
        f"{what} not found under {root} (data.download=false); expected {', '.join(expected)}: "
        f"copy them in, point data.root / CNNLAB_DATA_ROOT at them, or set data.download=true"
    )


# ----------------------------------------------------------------------------------------------- idx (MNIST)
def _read_idx(path: Path, expect_dims: int) -> torch.Tensor:
    """Read an idx file (optionally gzipped): magic 0x0000 08 <ndim>, big-endian dims, then uint8 data."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as ex:  # gzip.BadGzipFile is an OSError; truncation raises EOFError
        raise CnnlabError(f"{path} is corrupt or truncated ({ex}); delete it and download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != expect_dims:
        raise CnnlabError(f"{path} is not an idx file of {expect_dims} dimension(s) of uint8")
    dims = struct.unpack(f">{expect_dims}I", raw[4 : 4 + 4 * expect_dims])
    offset = 4 + 4 * expect_dims
    count = 1
    for d in dims:
        count *= d
    if len(raw) - offset != count:
        raise CnnlabError(f"{path} is corrupt or truncated: header says {count} bytes of data, file has {len(raw) - offset}")
    return torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8).reshape(dims)


def _idx_dataset(root: Path, download: bool, tv_class) -> ArrayDataset:
    """MNIST-style datasets: <root>/<ClassName>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."""
    from torchvision.datasets.utils import download_url

    name = tv_class.__name__
    raw = root / name / "raw"
    stems = {
        "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
    }

    def find(stem: str) -> Path | None:
        for candidate in (raw / f"{stem}.gz", raw / stem):
            if candidate.is_file():
                return candidate
        return None

    expected = [f"{name}/raw/{stem}.gz" for stem in stems.values()]
    if any(find(stem) is None for stem in stems.values()):
        if not download:
            raise _missing(name, root, expected)

        def fetch():
            for filename, md5 in tv_class.resources:
                if find(filename.removesuffix(".gz")) is not None:
                    continue
                errors = []
                for mirror in tv_class.mirrors:
                    try:
                        download_url(f"{mirror}{filename}", str(raw), filename, md5)
                        break
                    except Exception as ex:
                        errors.append(ex)
                else:
                    raise errors[-1]

        _download(name, root, expected, fetch)
    arrays = {key: _read_idx(find(stem), 3 if key.endswith("x") else 1) for key, stem in stems.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise CnnlabError(f"{name} {split} images and labels differ in count under {raw}")
    return ArrayDataset(
        arrays["train_x"].unsqueeze(1), arrays["train_y"].long(),
        arrays["test_x"].unsqueeze(1), arrays["test_y"].long(),
        [c.split(" - ")[0] for c in tv_class.classes],
    )


def load_mnist(root: Path, download: bool) -> ArrayDataset:
    from torchvision.datasets import MNIST

    return _idx_dataset(root, download, MNIST)


def load_fashion_mnist(root: Path, download: bool) -> ArrayDataset:
    from torchvision.datasets import FashionMNIST

    return _idx_dataset(root, download, FashionMNIST)


# ----------------------------------------------------------------------------------------- pickle (CIFAR)
def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as ex:
        raise CnnlabError(f"{path} is corrupt or truncated ({type(ex).__name__}: {ex}); delete it and download it again") from None


def _cifar(root: Path, download: bool, tv_class, train_files, test_files, meta_file, label_key, names_key):
    from torchvision.datasets.utils import download_and_extract_archive

    folder = root / tv_class.base_folder
    needed = [*train_files, *test_files, meta_file]
    if any(not (folder / f).is_file() for f in needed):
        expected = [f"{tv_class.base_folder}/{f}" for f in needed]
        if not download:
            raise _missing(tv_class.__name__, root, expected)
        _download(tv_class.__name__, root, expected, lambda: download_and_extract_archive(
            tv_class.url, str(root), filename=tv_class.filename, md5=tv_class.tgz_md5))

    def read(files):
        xs, ys = [], []
        for name in files:
            batch = _unpickle(folder / name)
            try:
                data = torch.as_tensor(batch["data"], dtype=torch.uint8)
                labels = torch.as_tensor(batch[label_key], dtype=torch.long)
            except (KeyError, TypeError, ValueError) as ex:
                raise CnnlabError(f"{folder / name} is not a CIFAR batch ({type(ex).__name__}: {ex})") from None
            if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
                raise CnnlabError(f"{folder / name} is not a CIFAR batch: data {tuple(data.shape)}, {len(labels)} labels")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(labels)
        return torch.cat(xs), torch.cat(ys)

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    classes = list(_unpickle(folder / meta_file)[names_key])
    return ArrayDataset(train_x, train_y, test_x, test_y, classes)


def load_cifar10(root: Path, download: bool) -> ArrayDataset:
    from torchvision.datasets import CIFAR10

    return _cifar(root, download, CIFAR10, [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                  "batches.meta", "labels", "label_names")


def load_cifar100(root: Path, download: bool) -> ArrayDataset:
    from torchvision.datasets import CIFAR100

    return _cifar(root, download, CIFAR100, ["train"], ["test"], "meta", "fine_labels", "fine_label_names")


# ------------------------------------------------------------------------------------------ bundled / made
def load_digits(root: Path, download: bool) -> ArrayDataset:
    """The 1,797 UCI 8x8 digits (pixel values 0..16) bundled as package data; a fixed 20% test split."""
    with resources.files("cnnlab").joinpath("assets/digits.csv.gz").open("rb") as f:
        rows = gzip.decompress(f.read()).decode().split()
    table = torch.tensor([[int(v) for v in row.split(",")] for row in rows], dtype=torch.int64)
    images = (table[:, :64] * 255 // 16).to(torch.uint8).reshape(-1, 1, 8, 8)
    labels = table[:, 64]
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_test = len(labels) // 5
    test, train = order[:n_test], order[n_test:]
    return ArrayDataset(images[train], labels[train], images[test], labels[test], [str(d) for d in range(10)])


def make_synthetic(channels: int, image_size: int, num_classes: int, num_samples: int, seed: int = 0) -> ArrayDataset:
    """Random images: a fixed noisy template per class, so that a model can learn something."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(num_classes, channels, image_size, image_size, generator=g) * 255
    n_test = max(num_classes, num_samples // 5)

    def draw(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        noise = torch.rand(n, channels, image_size, image_size, generator=g) * 255
        return (0.5 * templates[y] + 0.5 * noise).to(torch.uint8), y

    train_x, train_y = draw(num_samples)
    test_x, test_y = draw(n_test)
    return ArrayDataset(train_x, train_y, test_x, test_y, [f"class_{i}" for i in range(num_classes)])


SOURCES = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
}
