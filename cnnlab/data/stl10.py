"""STL-10 (labelled part): <root>/stl10_binary/{train,test}_{X,y}.bin + class_names.txt, 96x96 colour images.

X files are raw uint8, each image 3 x 96 x 96 in column-major order; y files hold one byte per label, 1..10.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cnnlab.data.datasets import ArrayDataset, corrupt, ensure_files, read_bytes
from cnnlab.data.safe_archive import download_and_extract
from cnnlab.errors import CnnlabError

SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE


def _split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x_path, y_path = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    x_raw, y_raw = read_bytes(x_path), read_bytes(y_path)
    if len(x_raw) % IMAGE_BYTES:
        raise corrupt(x_path, f"{len(x_raw)} bytes is not a whole number of {IMAGE_BYTES}-byte images")
    n = len(x_raw) // IMAGE_BYTES
    if len(y_raw) != n:
        raise corrupt(y_path, f"{len(y_raw)} labels for {n} images in {x_path.name}")
    labels = torch.frombuffer(bytearray(y_raw), dtype=torch.uint8).long() - 1
    if n and (labels.min() < 0 or labels.max() > 9):
        raise corrupt(y_path, "labels outside 1..10")
    images = torch.frombuffer(bytearray(x_raw), dtype=torch.uint8).reshape(n, 3, SIDE, SIDE).transpose(2, 3)
    return images.contiguous(), labels


def load_stl10(root: Path, download: bool) -> ArrayDataset:
    from torchvision.datasets import STL10

    folder = root / STL10.base_folder
    files = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", STL10.class_names_file]
    ensure_files(
        "STL10",
        root,
        [f"{STL10.base_folder}/{f}" for f in files],
        download,
        lambda: download_and_extract(STL10.url, root, filename=STL10.filename, md5=STL10.tgz_md5),
        url=STL10.url,
    )
    train_x, train_y = _split(folder, "train")
    test_x, test_y = _split(folder, "test")
    classes = read_bytes(folder / STL10.class_names_file).decode("utf-8", "replace").split()
    if len(classes) != 10:
        raise CnnlabError(f"{folder / STL10.class_names_file} should name 10 classes, names {len(classes)}")
    return ArrayDataset(train_x, train_y, test_x, test_y, classes)
