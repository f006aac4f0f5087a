"""CIFAR-10 / CIFAR-100: the official python pickle batches under <root>/cifar-10-batches-py/ (or -100-python/)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from cnnlab.data.datasets import ArrayDataset, corrupt, ensure_files
from cnnlab.errors import CnnlabError


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as ex:
        raise corrupt(path, f"{type(ex).__name__}: {ex}") from None


def _cifar(root: Path, download: bool, tv_class, train_files, test_files, meta_file, label_key, names_key):
    from torchvision.datasets.utils import download_and_extract_archive

    folder = root / tv_class.base_folder
    needed = [*train_files, *test_files, meta_file]
    ensure_files(tv_class.__name__, root, [f"{tv_class.base_folder}/{f}" for f in needed], download,
                 lambda: download_and_extract_archive(tv_class.url, str(root), filename=tv_class.filename,
                                                      md5=tv_class.tgz_md5))

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
