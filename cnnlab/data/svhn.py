"""SVHN (cropped digits): <root>/svhn/{train,test}_32x32.mat, X (32, 32, 3, N) uint8 and y (N, 1), digit 0 as 10."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnlab.data.datasets import ArrayDataset, ensure_files
from cnnlab.data.matlab import read_mat
from cnnlab.errors import CnnlabError

FOLDER = "svhn"


def _split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = read_mat(path, ["X", "y"])
    x, y = arrays["X"], arrays["y"].reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise CnnlabError(f"{path} is not an SVHN file: X {x.shape}, {len(y)} labels")
    images = torch.from_numpy(x.astype("uint8")).permute(3, 2, 0, 1).contiguous()  # (N, C, H, W)
    labels = torch.from_numpy(y.astype("int64")) % 10  # SVHN labels the digit 0 as 10
    return images, labels


def _urls(urls: list[str]) -> str:
    """Several files from one place, said once: "https://host/dir/ (a.mat, b.mat)"."""
    base = urls[0].rsplit("/", 1)[0] + "/"
    if not all(u.startswith(base) for u in urls):
        return " and ".join(urls)
    return f"{base} ({', '.join(u.removeprefix(base) for u in urls)})"


def load_svhn(root: Path, download: bool) -> ArrayDataset:
    from torchvision.datasets import SVHN
    from torchvision.datasets.utils import download_url

    splits = {split: SVHN.split_list[split] for split in ("train", "test")}

    def fetch():
        for url, filename, md5 in splits.values():
            if not (root / FOLDER / filename).is_file():
                download_url(url, str(root / FOLDER), filename, md5)

    ensure_files(
        "SVHN",
        root,
        [f"{FOLDER}/{filename}" for _, filename, _ in splits.values()],
        download,
        fetch,
        url=_urls([url for url, _, _ in splits.values()]),
    )
    train_x, train_y = _split(root / FOLDER / splits["train"][1])
    test_x, test_y = _split(root / FOLDER / splits["test"][1])
    return ArrayDataset(train_x, train_y, test_x, test_y, [str(d) for d in range(10)])
