"""Datasets of image files (decoded on demand): Flowers-102, Oxford-IIIT Pets and a user's image folder.

Images come in many sizes: `data.image_size` says what the model sees. Every listed file must exist
(checked up front); a file that fails to decode stops the run with its name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from cnnlab.data.datasets import ArrayDataset, FileList, ensure_files, read_bytes
from cnnlab.data.matlab import read_mat
from cnnlab.data.safe_archive import download_and_extract
from cnnlab.errors import CnnlabError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _check_exist(what: str, paths: list[Path]) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise CnnlabError(
            f"{what}: {len(missing)} of {len(paths)} listed images are missing (first: {missing[0]}); "
            "the archive was not fully extracted: delete the folder and download it again"
        )


# --------------------------------------------------------------------------------------------- Flowers-102
def load_flowers102(root: Path, download: bool) -> ArrayDataset:
    """<root>/flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat}; train = trnid + valid, test = tstid."""
    from torchvision.datasets import Flowers102
    from torchvision.datasets.utils import download_url

    folder = root / "flowers-102"
    files = Flowers102._file_dict

    def fetch():
        url = Flowers102._download_url_prefix
        if not (folder / "jpg").is_dir():
            download_and_extract(url + files["image"][0], folder, md5=files["image"][1])
        for key in ("label", "setid"):
            download_url(url + files[key][0], str(folder), md5=files[key][1])

    ensure_files(
        "Flowers102",
        root,
        ["flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"],
        download,
        fetch,
        url=Flowers102._download_url_prefix + files["image"][0],
    )
    labels = torch.from_numpy(read_mat(folder / "imagelabels.mat", ["labels"])["labels"].reshape(-1)).long() - 1
    sets = read_mat(folder / "setid.mat", ["trnid", "valid", "tstid"])

    def split(*keys: str) -> tuple[FileList, torch.Tensor]:
        ids = torch.cat([torch.from_numpy(sets[k].reshape(-1)).long() for k in keys])  # 1-based image numbers
        if len(ids) and (ids.min() < 1 or ids.max() > len(labels)):
            raise CnnlabError(f"{folder / 'setid.mat'} lists images beyond the {len(labels)} in imagelabels.mat")
        paths = [folder / "jpg" / f"image_{i:05d}.jpg" for i in ids.tolist()]
        _check_exist("Flowers102", paths)
        return FileList(paths), labels[ids - 1]

    train_x, train_y = split("trnid", "valid")
    test_x, test_y = split("tstid")
    return ArrayDataset(train_x, train_y, test_x, test_y, list(Flowers102.classes))


# ------------------------------------------------------------------------------------------ Oxford-IIIT Pets
def load_oxford_pets(root: Path, download: bool) -> ArrayDataset:
    """<root>/oxford-iiit-pet/{images/*.jpg, annotations/trainval.txt, annotations/test.txt}: 37 breeds."""
    from torchvision.datasets import OxfordIIITPet

    folder = root / "oxford-iiit-pet"

    def fetch():
        for url, md5 in OxfordIIITPet._RESOURCES:
            download_and_extract(url, folder, md5=md5)

    ensure_files(
        "OxfordIIITPet",
        root,
        ["oxford-iiit-pet/images", "oxford-iiit-pet/annotations/trainval.txt", "oxford-iiit-pet/annotations/test.txt"],
        download,
        fetch,
        url=" and ".join(url for url, _ in OxfordIIITPet._RESOURCES),
    )
    names: dict[int, str] = {}

    def split(name: str) -> tuple[FileList, torch.Tensor]:
        path = folder / "annotations" / name
        paths, labels = [], []
        for n, line in enumerate(read_bytes(path).decode("utf-8", "replace").splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                raise CnnlabError(f"{path}:{n} is not '<image> <class id> ...': {line!r}")
            label = int(parts[1]) - 1
            names[label] = " ".join(w.title() for w in parts[0].rsplit("_", 1)[0].split("_"))  # as torchvision
            paths.append(folder / "images" / f"{parts[0]}.jpg")
            labels.append(label)
        _check_exist("OxfordIIITPet", paths)
        return FileList(paths), torch.tensor(labels, dtype=torch.long)

    train_x, train_y = split("trainval.txt")
    test_x, test_y = split("test.txt")
    classes = [names.get(i, str(i)) for i in range(max(names) + 1 if names else 0)]
    return ArrayDataset(train_x, train_y, test_x, test_y, classes)


# -------------------------------------------------------------------------------------------- image folder
def _visible(path: Path, below: Path) -> bool:
    """Not hidden (.DS_Store, macOS ._name.jpg shadows, .git/): no part of the path below `below` starts with '.'."""
    return not any(part.startswith(".") for part in path.relative_to(below).parts)


def _class_folders(folder: Path, skip: Path | None = None) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p != skip and _visible(p, folder))


def _scan(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Every image file under folder/<class>/ (recursively). A class folder without images is an error naming
    it; other files are skipped with one warning line."""
    paths, labels, others = [], [], []
    for label, name in enumerate(classes):
        files = [p for p in (folder / name).rglob("*") if _visible(p, folder) and p.is_file()]
        found = sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise CnnlabError(
                f"imagefolder: class folder {folder / name} holds no images "
                f"({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder"
            )
        others += [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        paths += found
        labels += [label] * len(found)
    if others:
        print(
            f"warning: imagefolder: skipped {len(others)} file(s) that are not images under {folder} "
            f"(first: {min(others)})",
            file=sys.stderr,
        )
    return paths, labels


def load_imagefolder(
    root: Path, download_url: str | None, val_fraction: float, seed: int, download: bool
) -> ArrayDataset:
    """`root/train/<class>/*` + `root/val/<class>/*` (or test/), or `root/<class>/*` with a seeded,
    per-class `val_fraction` of it held out as the test split."""
    if not root.is_dir() and download and download_url:  # no md5 known: the archive is only checked for safety
        ensure_files(
            "imagefolder", root, ["."], True, lambda: download_and_extract(download_url, root), url=download_url
        )
    if not root.is_dir():
        raise CnnlabError(
            f"imagefolder: {root.resolve()} is not a folder; set data.root=DIR, a folder holding "
            "train/<class>/ and val/<class>/ image folders, or <class>/ folders"
        )
    held_out = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    train_dir = root / "train" if held_out is not None and (root / "train").is_dir() else root
    classes = _class_folders(train_dir, skip=held_out)
    if not classes:
        raise CnnlabError(f"imagefolder: no class folders in {train_dir} (expected {train_dir}/<class>/<image>)")
    paths, labels = _scan(train_dir, classes)
    y = torch.tensor(labels, dtype=torch.long)
    if train_dir != root:
        unknown = sorted(set(_class_folders(held_out)) - set(classes))
        if unknown:
            raise CnnlabError(
                f"imagefolder: {held_out} has class folder(s) {', '.join(unknown)} that {train_dir} "
                f"lacks; the classes are {', '.join(classes)}"
            )
        test_classes = [c for c in classes if (held_out / c).is_dir()]
        if not test_classes:
            raise CnnlabError(f"imagefolder: {held_out} has none of the class folders {', '.join(classes)}")
        test_paths, test_labels = _scan(held_out, test_classes)
        test_labels = [classes.index(test_classes[i]) for i in test_labels]
        return ArrayDataset(FileList(paths), y, FileList(test_paths), torch.tensor(test_labels), classes)
    g = torch.Generator().manual_seed(seed)
    held = [
        idx[torch.randperm(len(idx), generator=g)][: max(1, round(len(idx) * val_fraction))]
        for idx in (torch.nonzero(y == c).flatten() for c in range(len(classes)))
        if len(idx) > 1
    ]
    if not held:
        raise CnnlabError(f"imagefolder: {train_dir} has too few images to hold out data.val_fraction={val_fraction}")
    test = torch.cat(held).sort().values
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[test] = False
    files = FileList(paths)
    return ArrayDataset(files[torch.nonzero(keep).flatten()], y[keep], files[test], y[test], classes)
