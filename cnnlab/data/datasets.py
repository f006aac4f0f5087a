"""What every source shares: the dataset containers, file checks and downloads, decoding; digits, synthetic.

A source returns an `ArrayDataset`: images as (N, C, H, W) uint8 tensors (datasets that ship as arrays)
or as a `FileList` (one image file each, decoded on demand), labels as int64. Files are read directly
because the fast path wants raw uint8 arrays and the archives may sit on a read-only share. Missing files
are downloaded the way torchvision does (its URLs and md5s) when `download` is true; otherwise, or
offline, the user gets one line naming the root and the files expected. Corrupt or truncated files are
an error, never a silently smaller dataset.
"""

from __future__ import annotations

import gzip
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Union

import torch

from cnnlab.errors import CnnlabError


@dataclass
class FileList:
    """Images kept as files; indexing with a tensor of indices gives the sub-list (like a tensor would)."""

    paths: list[Path]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: torch.Tensor) -> "FileList":
        return FileList([self.paths[i] for i in torch.as_tensor(index).tolist()])


Images = Union[torch.Tensor, FileList]


@dataclass
class ArrayDataset:
    train_x: Images  # (N, C, H, W) uint8, or files
    train_y: torch.Tensor  # (N,) int64
    test_x: Images
    test_y: torch.Tensor
    classes: list[str]


def read_image(path: Path):
    """One image file as an RGB PIL image; unreadable or truncated -> CnnlabError naming it. An image larger
    than PIL's MAX_IMAGE_PIXELS (a decompression bomb: a tiny file that decodes to gigabytes) is refused
    before decoding, where PIL alone would only warn up to twice that size."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PIL's notes on damaged-but-decodable metadata
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.convert("RGB")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as ex:
        raise CnnlabError(
            f"{path}: refused to decode it ({ex}); a real image this large needs PIL.Image.MAX_IMAGE_PIXELS raised"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as ex:  # UnidentifiedImageError is an OSError
        detail = " ".join(f"{type(ex).__name__}: {ex}".split())
        raise CnnlabError(f"{path} is corrupt or truncated ({detail}); remove or replace it") from None


def corrupt(path: Path, detail: str) -> CnnlabError:
    detail = " ".join(detail.split())  # one line, whatever the parser's message looked like
    return CnnlabError(f"{path} is corrupt or truncated ({detail}); delete it and download it again")


def _missing(what: str, root: Path, expected: list[str], url: str | None) -> CnnlabError:
    fetch = f" (it fetches {url})" if url else ""
    return CnnlabError(
        f"{what} not found under {root} (data.download=false); expected {', '.join(expected)}: "
        f"copy them in, point data.root / CNNLAB_DATA_ROOT at them, or set data.download=true{fetch}"
    )


def ensure_files(
    what: str, root: Path, expected: list[str], download: bool, fetch: Callable[[], None], url: str | None = None
) -> None:
    """Check root/<expected> exist; if not, run `fetch()` (md5-checked downloads, safe extraction) when
    `download`, turning offline/HTTP/md5 failures into one clear line that says where the files go and,
    given `url`, where to get them by hand."""
    if all((root / name).exists() for name in expected):
        return
    if not download:
        raise _missing(what, root, expected, url)
    try:
        fetch()
    except CnnlabError:  # a refused or unextractable archive already says what is wrong
        raise
    except Exception as ex:  # URLError, HTTPError, RuntimeError (md5), OSError ...
        get = f"download {url} by hand into it (archives unpacked)" if url else "copy them in"
        detail = " ".join(str(ex).split())
        raise CnnlabError(
            f"{what} not found under {root} and the download failed ({type(ex).__name__}: {detail}); "
            f"expected {', '.join(expected)} there: {get}, or point data.root / CNNLAB_DATA_ROOT at them"
        ) from None
    still = [name for name in expected if not (root / name).exists()]
    if still:
        raise CnnlabError(f"{what}: the download did not produce {', '.join(still)} under {root}")


def ensure_torchvision_files(
    name: str, root: Path, expected: list[str], download: bool, fetch: Callable, url: Callable[[object], str]
) -> None:
    """ensure_files for a dataset torchvision knows how to download: torchvision's class `name` (imported only
    when files are missing: start-up cost) gives `fetch(tv_class)` and `url(tv_class)` their addresses."""
    if all((root / path).is_file() for path in expected):
        return
    import torchvision.datasets

    tv_class = getattr(torchvision.datasets, name)
    ensure_files(name, root, expected, download, lambda: fetch(tv_class), url=url(tv_class))


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as ex:
        raise corrupt(path, str(ex)) from None


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
