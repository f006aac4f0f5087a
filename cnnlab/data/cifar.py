"""CIFAR-10 / CIFAR-100: the official python pickle batches under <root>/cifar-10-batches-py/ (or -100-python/)."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnlab.data.datasets import ArrayDataset, ensure_torchvision_files
from cnnlab.data.safe_archive import download_and_extract
from cnnlab.data.safe_pickle import load_data_pickle
from cnnlab.errors import CnnlabError


def _unpickle(path: Path, *keys: str) -> dict:
    """A batch/meta file: a dict holding `keys` (read without running code from the file)."""
    batch = load_data_pickle(path)
    if not isinstance(batch, dict) or any(key not in batch for key in keys):
        have = sorted(map(str, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise CnnlabError(f"{path} is not a CIFAR batch: expected a dict with {', '.join(keys)}, got {have}")
    return batch


# torchvision's folder per dataset class (test_startup.py checks they match): reading files that are already
# there imports no torchvision, which costs start-up time; it is imported only to download.
FOLDERS = {"CIFAR10": "cifar-10-batches-py", "CIFAR100": "cifar-100-python"}


def _cifar(root: Path, download: bool, name: str, train_files, test_files, meta_file, label_key, names_key):
    """<root>/<torchvision's folder>/...; missing files are downloaded from where torchvision's class `name` says,
    md5-checked."""
    folder = root / FOLDERS[name]
    expected = [f"{FOLDERS[name]}/{f}" for f in (*train_files, *test_files, meta_file)]
    ensure_torchvision_files(
        name,
        root,
        expected,
        download,
        lambda tv: download_and_extract(tv.url, root, filename=tv.filename, md5=tv.tgz_md5),
        url=lambda tv: tv.url,
    )

    def read(files):
        xs, ys = [], []
        for name in files:
            batch = _unpickle(folder / name, "data", label_key)
            try:
                data = torch.as_tensor(batch["data"], dtype=torch.uint8)
                labels = torch.as_tensor(batch[label_key], dtype=torch.long)
            except (TypeError, ValueError, RuntimeError, OverflowError) as ex:  # what the file holds is not numbers
                raise CnnlabError(f"{folder / name} is not a CIFAR batch ({type(ex).__name__}: {ex})") from None
            if (
                getattr(batch["data"], "dtype", None) != "uint8"
                or data.ndim != 2
                or data.shape[1] != 3072
                or labels.ndim != 1
                or len(data) != len(labels)
            ):
                raise CnnlabError(
                    f"{folder / name} is not a CIFAR batch: data {tuple(data.shape)} "
                    f"{getattr(batch['data'], 'dtype', type(batch['data']).__name__)}, "
                    f"{labels.numel()} labels"
                )
            if len(labels) and labels.min() < 0:
                raise CnnlabError(f"{folder / name} is not a CIFAR batch: negative labels")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(labels)
        return torch.cat(xs), torch.cat(ys)

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    classes = _unpickle(folder / meta_file, names_key)[names_key]
    if not isinstance(classes, list) or not all(isinstance(c, (str, bytes)) for c in classes):
        raise CnnlabError(f"{folder / meta_file} is not a CIFAR meta file: {names_key} is not a list of names")
    classes = [c.decode("latin1") if isinstance(c, bytes) else c for c in classes]
    return ArrayDataset(train_x, train_y, test_x, test_y, classes)


def load_cifar10(root: Path, download: bool) -> ArrayDataset:
    return _cifar(
        root,
        download,
        "CIFAR10",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        "labels",
        "label_names",
    )


def load_cifar100(root: Path, download: bool) -> ArrayDataset:
    return _cifar(root, download, "CIFAR100", ["train"], ["test"], "meta", "fine_labels", "fine_label_names")
