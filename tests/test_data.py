"""Dataset sources on tiny files written in the official layouts, splits, stats and the loader choice."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from cnnlab import data
from cnnlab.data.loaders import DeviceLoader, WorkerLoader
from cnnlab.data.matlab import read_mat
from cnnlab.errors import CnnlabError
from cnnlab.schema.common import AugmentConfig, DataConfig

CPU = torch.device("cpu")


def cfg(**kw):
    kw.setdefault("num_workers", 0)
    return OmegaConf.merge(OmegaConf.structured(DataConfig), kw)


def augment(**kw):
    return OmegaConf.merge(OmegaConf.structured(AugmentConfig), kw)


# ------------------------------------------------------------------------------------------ file writers
def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


MI = {np.dtype("uint8"): (2, 9), np.dtype("float64"): (9, 6), np.dtype("int32"): (5, 12)}


def _element(kind: int, payload: bytes) -> bytes:
    if len(payload) <= 4:  # small element format
        return struct.pack("<HH", kind, len(payload)) + payload.ljust(4, b"\0")
    return struct.pack("<II", kind, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def mat_v5(variables: dict, compress: bool = False, stored_as: np.dtype | None = None) -> bytes:
    """A MATLAB v5 file as MATLAB writes it: column-major data, optionally zlib-compressed, optionally a
    double class stored in a smaller integer type (as MATLAB does to save space)."""
    out = b"MATLAB 5.0 MAT-file, written by cnnlab tests".ljust(116) + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    for name, array in variables.items():
        array = np.asarray(array)
        mi, mx = MI[array.dtype]
        stored = array.astype(stored_as) if stored_as is not None else array
        parts = (
            struct.pack("<II", 6, 8)
            + struct.pack("<II", mx, 0)
            + _element(5, struct.pack(f"<{array.ndim}i", *array.shape))
            + _element(1, name.encode())
            + _element(MI[stored.dtype][0], stored.tobytes(order="F"))
        )
        matrix = struct.pack("<II", 14, len(parts)) + parts
        out += struct.pack("<II", 15, len(z := zlib.compress(matrix))) + z if compress else matrix
    return out


def jpeg(path: Path, colour, size=(20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")


# ---------------------------------------------------------------------------------------------- sources
def test_kmnist_idx_and_stats(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "KMNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (30, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(30) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    bundle = data.build(cfg(name="kmnist", root=str(tmp_path), download=False, batch_size=8), augment(), CPU)
    assert bundle.spec.classes[:3] == ["o", "ki", "su"] and bundle.spec.channels == 1 and bundle.spec.image_size == 28
    assert len(bundle.train.labels) + len(bundle.val.labels) == 30 and len(bundle.test.labels) == 10
    assert isinstance(bundle.train, DeviceLoader)
    images = bundle.train.images.float() / 255
    assert bundle.spec.mean[0] == pytest.approx(images.mean().item(), abs=1e-6)
    assert bundle.spec.std[0] == pytest.approx(images.std(unbiased=False).item(), abs=1e-6)


def test_missing_offline_and_failed_download(tmp_path, monkeypatch):
    with pytest.raises(CnnlabError, match=r"KMNIST not found under .*KMNIST/raw/train-images-idx3-ubyte.gz"):
        data.load_arrays(cfg(name="kmnist", root=str(tmp_path), download=False))

    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    for name, expected in (
        ("svhn", "svhn/train_32x32.mat"),
        ("stl10", "stl10_binary/train_X.bin"),
        ("flowers102", "flowers-102/setid.mat"),
        ("oxford_pets", "annotations/trainval.txt"),
    ):
        with pytest.raises(CnnlabError, match=f"download failed .*network is unreachable.*{expected}"):
            data.load_arrays(cfg(name=name, root=str(tmp_path), download=True, image_size=32))


@pytest.mark.parametrize("compress", [False, True])
def test_mat_v5_reader(tmp_path, compress):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([[1.0, 2.0, 10.0]])
    path = tmp_path / "a.mat"
    path.write_bytes(mat_v5({"X": x, "labels": labels}, compress=compress))
    got = read_mat(path, ["X", "labels"])
    assert np.array_equal(got["X"], x) and np.array_equal(got["labels"], labels)
    path.write_bytes(mat_v5({"labels": labels}, stored_as=np.dtype("uint8")))  # a double kept as uint8
    assert read_mat(path, ["labels"])["labels"].dtype == np.float64
    with pytest.raises(CnnlabError, match="no numeric variable"):
        read_mat(path, ["y"])
    path.write_bytes(mat_v5({"X": x}, compress=compress)[:-9])
    with pytest.raises(CnnlabError, match="corrupt or truncated"):
        read_mat(path, ["X"])


def test_svhn(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)  # N, C, H, W
    as_matlab = images.transpose(2, 3, 1, 0)  # SVHN's X is (H, W, C, N)
    for split in ("train", "test"):
        (tmp_path / "svhn").mkdir(exist_ok=True)
        (tmp_path / "svhn" / f"{split}_32x32.mat").write_bytes(
            mat_v5({"X": as_matlab, "y": np.array([[10.0], [1.0], [2.0], [3.0], [9.0], [10.0]])}, compress=True)
        )
    arrays = data.load_arrays(cfg(name="svhn", root=str(tmp_path), download=False))
    assert torch.equal(arrays.train_x, torch.from_numpy(images))
    assert arrays.test_y.tolist() == [0, 1, 2, 3, 9, 0]


def test_stl10_layout_and_truncation(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = np.random.default_rng(2).integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    for split in ("train", "test"):
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())  # column-major per image
        (folder / f"{split}_y.bin").write_bytes(bytes([1, 5, 10]))
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    arrays = data.load_arrays(cfg(name="stl10", root=str(tmp_path), download=False))
    assert torch.equal(arrays.train_x, torch.from_numpy(images)) and arrays.train_y.tolist() == [0, 4, 9]
    (folder / "test_X.bin").write_bytes(images.tobytes()[:-100])
    with pytest.raises(CnnlabError, match="test_X.bin is corrupt or truncated"):
        data.load_arrays(cfg(name="stl10", root=str(tmp_path), download=False))


def test_flowers102(tmp_path):
    folder = tmp_path / "flowers-102"
    for i in range(1, 9):
        jpeg(folder / "jpg" / f"image_{i:05d}.jpg", (30 * i, 0, 0))
    (folder / "imagelabels.mat").write_bytes(mat_v5({"labels": np.array([[1, 2, 1, 2, 3, 3, 1, 2]], dtype=float)}))
    (folder / "setid.mat").write_bytes(
        mat_v5(
            {
                "trnid": np.array([[1, 2]], dtype=float),
                "valid": np.array([[3, 4]], dtype=float),
                "tstid": np.array([[5, 6, 7, 8]], dtype=float),
            }
        )
    )
    bundle = data.build(
        cfg(name="flowers102", root=str(tmp_path), download=False, image_size=16, val_split="test", batch_size=2),
        augment(),
        CPU,
    )
    assert len(bundle.spec.classes) == 102 and bundle.spec.image_size == 16
    assert bundle.train.labels.tolist() == [0, 1, 0, 1] and bundle.test.labels.tolist() == [2, 2, 0, 1]
    assert isinstance(bundle.train, DeviceLoader)  # small images: decoded once, kept on the device
    (folder / "jpg" / "image_00007.jpg").unlink()
    with pytest.raises(CnnlabError, match="1 of 4 listed images are missing"):
        data.load_arrays(cfg(name="flowers102", root=str(tmp_path), download=False, image_size=16))


def test_oxford_pets(tmp_path):
    folder = tmp_path / "oxford-iiit-pet"
    names = {"trainval.txt": ["Abyssinian_1 1 1 1", "great_pyrenees_3 2 2 1"], "test.txt": ["Abyssinian_2 1 1 1"]}
    for file, lines in names.items():
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        (folder / "annotations" / file).write_text("\n".join(lines) + "\n")
        for line in lines:
            jpeg(folder / "images" / f"{line.split()[0]}.jpg", (0, 200, 0))
    arrays = data.load_arrays(cfg(name="oxford_pets", root=str(tmp_path), download=False, image_size=24))
    assert arrays.classes == ["Abyssinian", "Great Pyrenees"] and arrays.train_y.tolist() == [0, 1]


def _folder(root: Path, classes=("cat", "dog"), n=4):
    for c, name in enumerate(classes):
        for i in range(n):
            jpeg(root / name / f"{i}.jpg", (200 * c, 50 * i, 0), size=(40 + 8 * i, 30))


def test_imagefolder_layouts_and_loader_choice(tmp_path):
    _folder(tmp_path / "split" / "train")
    _folder(tmp_path / "split" / "val", n=2)
    bundle = data.build(
        cfg(name="imagefolder", root=str(tmp_path / "split"), image_size=96, val_split="test", batch_size=4),
        augment(resized_crop=True, flip=True),
        CPU,
    )
    assert isinstance(bundle.train, WorkerLoader)  # auto: large image files stay files
    assert bundle.spec.classes == ["cat", "dog"] and len(bundle.test.labels) == 4
    x, y = next(iter(bundle.train))
    assert x.shape == (4, 3, 96, 96) and x.dtype == torch.float32 and y.shape == (4,)

    _folder(tmp_path / "flat", n=5)
    arrays = data.load_arrays(cfg(name="imagefolder", root=str(tmp_path / "flat"), image_size=8, val_fraction=0.2))
    assert len(arrays.train_y) == 8 and arrays.test_y.tolist() == [0, 1]
    small = data.build(cfg(name="imagefolder", root=str(tmp_path / "flat"), image_size=8, batch_size=4), augment(), CPU)
    assert isinstance(small.train, DeviceLoader) and small.train.images.shape[1:] == (3, 8, 8)

    with pytest.raises(CnnlabError, match="is not a folder; set data.root=DIR"):
        data.load_arrays(cfg(name="imagefolder", root=str(tmp_path / "nowhere")))
    with pytest.raises(CnnlabError, match="no class folders"):
        data.load_arrays(cfg(name="imagefolder", root=str(tmp_path / "flat" / "cat"), image_size=8))


def test_corrupt_image_is_one_clear_line_from_a_worker(tmp_path):
    _folder(tmp_path / "d" / "train", n=2)
    _folder(tmp_path / "d" / "val", n=1)
    (tmp_path / "d" / "train" / "dog" / "1.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    bundle = data.build(
        cfg(name="imagefolder", root=str(tmp_path / "d"), image_size=96, val_split="test", batch_size=4, num_workers=1),
        augment(),
        CPU,
        stats=((0.5,) * 3, (0.25,) * 3),
    )
    with pytest.raises(CnnlabError) as info:
        list(bundle.train)
    message = str(info.value)
    assert "\n" not in message and "1.jpg is corrupt or truncated" in message


def test_subset_and_loader_override(tmp_path):
    bundle = data.build(
        cfg(name="synthetic", num_samples=200, subset=5, val_split=0.2, loader="dataloader", batch_size=4),
        augment(crop_padding=2, flip=True),
        CPU,
    )
    assert isinstance(bundle.train, WorkerLoader) and len(bundle.train.labels) == 40
    assert torch.bincount(torch.cat([bundle.train.labels, bundle.val.labels])).tolist() == [5] * 10


def test_cifar10_stats(data_root):
    arrays = data.load_arrays(cfg(name="cifar10", root=str(data_root), download=False))
    mean, std = data.channel_stats(arrays.train_x)
    assert mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=1e-4)
    assert std == pytest.approx((0.2470, 0.2435, 0.2616), abs=1e-4)
