"""MNIST-style sources (idx files): MNIST, FashionMNIST, KMNIST in torchvision's layout <root>/<Name>/raw/."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import torch

from cnnlab.data.datasets import ArrayDataset, corrupt, ensure_torchvision_files
from cnnlab.errors import CnnlabError

CHUNK = 1 << 24  # bytes read at a time
STEMS = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path, expect_dims: int) -> torch.Tensor:
    """Read an idx file (optionally gzipped): magic 0x0000 08 <ndim>, big-endian dims, then uint8 data.

    The data is read up to the size the header declares (plus one byte to notice extra data), so a small
    gzip that inflates without end (a decompression bomb) costs no more memory than its header admits.
    """
    offset = 4 + 4 * expect_dims
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            header = f.read(offset)
            if len(header) < 4 or header[:3] != b"\0\0\x08" or header[3] != expect_dims:
                raise CnnlabError(
                    f"{path} is not an idx file of {expect_dims} dimension(s) of uint8 (wrong magic number)"
                )
            if len(header) < offset:
                raise corrupt(path, f"{len(header)} bytes, shorter than the {offset}-byte idx header")
            dims = struct.unpack(f">{expect_dims}I", header[4:])
            count = math.prod(dims)
            if count == 0:
                raise CnnlabError(f"{path} holds no data (dimensions {dims})")
            raw = bytearray()
            while len(raw) <= count:  # in chunks: a header may declare far more than the file holds
                chunk = f.read(min(CHUNK, count + 1 - len(raw)))
                if not chunk:
                    break
                raw += chunk
    except (OSError, EOFError, zlib.error) as ex:  # BadGzipFile is an OSError; truncation EOFError; bad deflate
        raise corrupt(path, f"{type(ex).__name__}: {ex}") from None
    if len(raw) != count:
        found = "more" if len(raw) > count else len(raw)
        raise corrupt(path, f"header says {count} bytes of data, file has {found}")
    return torch.frombuffer(raw, dtype=torch.uint8).reshape(dims)


# The class names as torchvision's datasets define them (MNIST's "0 - zero" kept to its digit; test_startup.py
# checks they match): reading files that are already there imports no torchvision, which costs start-up time.
CLASSES = {
    "MNIST": [str(digit) for digit in range(10)],
    "FashionMNIST": "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot".split(","),
    "KMNIST": "o ki su tsu na ha ma ya re wo".split(),
}


def _idx_dataset(root: Path, download: bool, name: str) -> ArrayDataset:
    """<root>/<name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]; missing files are downloaded from the
    mirrors of torchvision's dataset class `name`, with its md5s (torchvision is imported only then)."""
    raw = root / name / "raw"

    def find(stem: str) -> Path:
        extracted = raw / stem
        return extracted if extracted.is_file() and not (raw / f"{stem}.gz").is_file() else raw / f"{stem}.gz"

    def fetch(tv_class):
        from torchvision.datasets.utils import download_url

        for filename, md5 in tv_class.resources:
            if find(filename.removesuffix(".gz")).is_file():
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

    expected = [str(find(stem).relative_to(root)) for stem in STEMS.values()]
    ensure_torchvision_files(
        name,
        root,
        expected,
        download,
        fetch,
        url=lambda tv: f"{tv.mirrors[0]}{{{','.join(f for f, _ in tv.resources)}}}",
    )
    arrays = {key: read_idx(find(stem), 3 if key.endswith("x") else 1) for key, stem in STEMS.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise CnnlabError(f"{name} {split} images and labels differ in count under {raw}")
    return ArrayDataset(
        arrays["train_x"].unsqueeze(1),
        arrays["train_y"].long(),
        arrays["test_x"].unsqueeze(1),
        arrays["test_y"].long(),
        list(CLASSES[name]),
    )


def load_mnist(root: Path, download: bool) -> ArrayDataset:
    return _idx_dataset(root, download, "MNIST")


def load_fashion_mnist(root: Path, download: bool) -> ArrayDataset:
    return _idx_dataset(root, download, "FashionMNIST")


def load_kmnist(root: Path, download: bool) -> ArrayDataset:
    return _idx_dataset(root, download, "KMNIST")
