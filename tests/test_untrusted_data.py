"""Dataset files and archives are untrusted: crafted ones that would do harm are refused, and nothing happens.

Every test writes real hostile files in the official layouts and checks both the one-line error naming the
file and that nothing ran (no marker file) or landed outside the destination.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import random
import struct
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from test_data import jpeg, mat_v5, write_idx

from cnnlab import data
from cnnlab.data.matlab import read_mat
from cnnlab.data.safe_archive import extract
from cnnlab.errors import CnnlabError
from cnnlab.schema.common import AugmentConfig, DataConfig

CPU = torch.device("cpu")


def cfg(**kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("download", False)
    return OmegaConf.merge(OmegaConf.structured(DataConfig), kw)


def one_line(ex: pytest.ExceptionInfo, *names) -> str:
    message = str(ex.value)
    assert "\n" not in message and "Traceback" not in message, message
    for name in names:
        assert str(name) in message, message
    return message


# --------------------------------------------------------------------------------------- CIFAR pickles
class RunsCode:
    """Pickles to a call of `function(*args)`: what a hostile batch file holds."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def write_cifar(root: Path, protocol: int = 2, override: dict | None = None) -> Path:
    """The official CIFAR-10 layout with 4 images per batch; `override` replaces whole files by objects."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {f"data_batch_{i}": None for i in range(1, 6)} | {"test_batch": None}
    for name in files:
        files[name] = {
            "batch_label": "training batch",
            "labels": [int(v) for v in rng.integers(0, 10, 4)],
            "data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png".encode() for i in range(4)],
        }
    files["batches.meta"] = {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": 4}
    files.update(override or {})
    for name, content in files.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else pickle.dumps(content, protocol))
    return folder


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_cifar_batches_load_with_the_restricted_unpickler(tmp_path, protocol):
    write_cifar(tmp_path, protocol)
    arrays = data.load_arrays(cfg(name="cifar10", root=str(tmp_path)))
    assert arrays.train_x.shape == (20, 3, 32, 32) and arrays.classes == [f"c{i}" for i in range(10)]


@pytest.mark.parametrize("payload", ["system", "eval", "object_array"])
def test_cifar_batch_that_would_run_code_is_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    hostile = {
        "system": RunsCode(os.system, command),
        "eval": RunsCode(eval, f"__import__('os').system({command!r})"),
        # hidden inside a numpy object array, where numpy's own reconstruction unpickles the items
        "object_array": {"data": np.array([RunsCode(os.system, command)], dtype=object), "labels": [0]},
    }[payload]
    blob = pickle.dumps(hostile, protocol=2)
    pickle.loads(blob)  # the crafted file really is harmful to plain pickle
    assert marker.exists()
    marker.unlink()

    folder = write_cifar(tmp_path / "root", override={"data_batch_3": blob})
    with pytest.raises(CnnlabError) as ex:
        data.load_arrays(cfg(name="cifar10", root=str(tmp_path / "root")))
    message = one_line(ex, folder / "data_batch_3", "refused to unpickle")
    assert "system" in message or "eval" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "bad, expected",
    [
        ({"data": np.zeros((4, 3072), np.float32), "labels": [0] * 4}, "not a CIFAR batch"),
        ({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}, "not a CIFAR batch"),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 3}, "not a CIFAR batch"),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": ["a"] * 4}, "not a CIFAR batch"),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [-1] * 4}, "negative labels"),
        ({"labels": [0] * 4}, "expected a dict with data, labels"),
        ([1, 2, 3], "expected a dict"),
    ],
)
def test_malformed_cifar_batch_is_one_line(tmp_path, bad, expected):
    folder = write_cifar(tmp_path, override={"test_batch": pickle.dumps(bad, 2)})
    with pytest.raises(CnnlabError, match=expected) as ex:
        data.load_arrays(cfg(name="cifar10", root=str(tmp_path)))
    one_line(ex, folder / "test_batch")


def test_cifar_meta_without_names_is_one_line(tmp_path):
    folder = write_cifar(tmp_path, override={"batches.meta": pickle.dumps({"label_names": "abc"}, 2)})
    with pytest.raises(CnnlabError) as ex:
        data.load_arrays(cfg(name="cifar10", root=str(tmp_path)))
    one_line(ex, folder / "batches.meta")


def test_truncated_or_garbled_cifar_pickles_are_one_line(tmp_path):
    """Every truncation and a few hundred random byte flips: the only outcomes are a dataset or CnnlabError."""
    folder = write_cifar(tmp_path)
    whole = (folder / "data_batch_1").read_bytes()
    rng = random.Random(0)
    cases = [whole[:n] for n in range(0, len(whole), max(1, len(whole) // 97))]
    for _ in range(300):
        garbled = bytearray(whole)
        for _ in range(rng.randint(1, 4)):
            garbled[rng.randrange(200)] = rng.randrange(256)  # the header, where structure lives
        cases.append(bytes(garbled))
    failures = 0
    for blob in cases:
        (folder / "data_batch_1").write_bytes(blob)
        try:
            data.load_arrays(cfg(name="cifar10", root=str(tmp_path)))
        except CnnlabError as ex:
            failures += 1
            assert "\n" not in str(ex) and str(folder / "data_batch_1") in str(ex), str(ex)
    assert failures > len(cases) // 2


# --------------------------------------------------------------------------------------------- archives
def _tar(path: Path, members: list[tarfile.TarInfo], payload: bytes = b"evil\n") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            if m.isfile():
                m.size = len(payload)
                tar.addfile(m, io.BytesIO(payload))
            else:
                tar.addfile(m)
    return path


def _member(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


HOSTILE_TARS = {
    "dotdot": [_member("ok.txt"), _member("../evil.txt")],
    "deep_dotdot": [_member("a/b/../../../evil.txt")],
    "absolute": [_member("{outside}/evil.txt")],
    "symlink_absolute": [_member("link", tarfile.SYMTYPE, "{outside}")],
    "symlink_relative": [_member("sub/link", tarfile.SYMTYPE, "../../outside")],
    "symlink_then_write": [_member("link", tarfile.SYMTYPE, "{outside}"), _member("link/evil.txt")],
    "hardlink": [_member("hard", tarfile.LNKTYPE, "{outside}/secret.txt")],
    "char_device": [_member("dev", tarfile.CHRTYPE)],
    "fifo": [_member("pipe", tarfile.FIFOTYPE)],
    # no '..' in any name: only following the links on disk shows that d/l/l2 is the parent of the destination
    "link_chain": [
        _member("d", tarfile.DIRTYPE),
        _member("d/l", tarfile.SYMTYPE, ".."),
        _member("d/l/l2", tarfile.SYMTYPE, ".."),
        _member("d/l/l2/evil.txt"),
    ],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_extracts_nothing_outside(tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    dest = tmp_path / "box" / "dest"
    dest.mkdir(parents=True)
    members = []
    for m in HOSTILE_TARS[case]:
        m = _member(m.name.format(outside=outside), m.type, m.linkname.format(outside=outside))
        members.append(m)
    archive = _tar(tmp_path / "a.tar.gz", members)
    before = _snapshot(tmp_path)
    with pytest.raises(CnnlabError) as ex:
        extract(archive, dest)
    one_line(ex, archive)
    assert _snapshot(tmp_path) - before <= {str(p.relative_to(tmp_path)) for p in dest.rglob("*")}
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*") if dest not in p.parents)
    assert (outside / "secret.txt").read_text() == "secret" and sorted(os.listdir(outside)) == ["secret.txt"]
    if case != "link_chain":  # refused before anything is written
        assert not any(dest.iterdir())


@pytest.mark.parametrize(
    "name", ["../evil.txt", "{outside}/evil.txt", "a/../../evil.txt", "..\\evil.txt", "C:/evil.txt"]
)
def test_hostile_zip_extracts_nothing(tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "box" / "dest"
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine/ok.txt", "ok")
        zf.writestr(name.format(outside=outside), "evil")
    with pytest.raises(CnnlabError, match="refused to extract") as ex:
        extract(archive, dest)
    one_line(ex, archive)
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))
    assert not any(dest.iterdir())


def test_friendly_archives_extract_with_inner_links(tmp_path):
    archive = _tar(
        tmp_path / "ok.tar.gz", [_member("data/train/a.txt"), _member("data/latest", tarfile.SYMTYPE, "train")]
    )
    extract(archive, tmp_path / "t")
    assert (tmp_path / "t" / "data" / "latest" / "a.txt").read_bytes() == b"evil\n"
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:
        zf.writestr("x/y.txt", "y")
    extract(tmp_path / "ok.zip", tmp_path / "z")
    assert (tmp_path / "z" / "x" / "y.txt").read_text() == "y"
    (tmp_path / "plain.bin").write_bytes(b"not an archive")
    with pytest.raises(CnnlabError, match="not a zip or tar archive"):
        extract(tmp_path / "plain.bin", tmp_path / "p")


def test_cifar_download_of_a_hostile_archive_writes_nothing_outside(tmp_path, monkeypatch):
    """The real download path (torchvision's download_url, patched where it is looked up, stands in for the
    network): the archive is refused and removed, nothing lands outside data.root."""
    import torchvision.datasets.utils as tv_utils

    hostile = _tar(tmp_path / "cifar.tar.gz", [_member("cifar-10-batches-py/data_batch_1"), _member("../evil.txt")])

    def fake_download(url, root, filename=None, md5=None):
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / filename).write_bytes(hostile.read_bytes())

    monkeypatch.setattr(tv_utils, "download_url", fake_download)
    root = tmp_path / "box" / "root"
    with pytest.raises(CnnlabError, match="refused to extract") as ex:
        data.load_arrays(cfg(name="cifar10", root=str(root), download=True))
    one_line(ex, "../evil.txt")
    assert not (tmp_path / "box" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not root.exists() or not any(root.iterdir())  # the refused archive is gone too


def test_imagefolder_download_url_extracts_a_zip(tmp_path):
    """data.download_url (file:// here, http(s) for users) fetches and unpacks an archive into data.root."""
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10), (255, 0, 0)).save(buffer, "PNG")
    with zipfile.ZipFile(tmp_path / "pics.zip", "w") as zf:
        for c in ("cat", "dog"):
            for i in range(3):
                zf.writestr(f"{c}/{i}.png", buffer.getvalue())
    root = tmp_path / "pics"
    arrays = data.load_arrays(
        cfg(
            name="imagefolder",
            root=str(root),
            image_size=8,
            download=True,
            download_url=(tmp_path / "pics.zip").as_uri(),
        )
    )
    assert arrays.classes == ["cat", "dog"] and len(arrays.train_y) + len(arrays.test_y) == 6


def test_offline_download_says_where_the_files_go(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    root = tmp_path / "root"
    with pytest.raises(CnnlabError) as ex:
        data.load_arrays(cfg(name="cifar10", root=str(root), download=True))
    message = one_line(
        ex,
        "Network is unreachable",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        f"{root}",
        "cifar-10-batches-py/data_batch_1",
    )
    assert "by hand" in message
    assert not root.exists() or not any(root.rglob("*.tar.gz"))  # no partial archive left behind
    with pytest.raises(CnnlabError, match="data.download=true .it fetches https://") as ex:
        data.load_arrays(cfg(name="cifar10", root=str(root), download=False))


# ------------------------------------------------------------------------------------- idx, MAT, STL
def _kmnist(root: Path) -> Path:
    raw = root / "KMNIST" / "raw"
    for stem, shape in (
        ("train-images-idx3-ubyte", (5, 28, 28)),
        ("train-labels-idx1-ubyte", (5,)),
        ("t10k-images-idx3-ubyte", (5, 28, 28)),
        ("t10k-labels-idx1-ubyte", (5,)),
    ):
        write_idx(raw / f"{stem}.gz", np.zeros(shape))
    return raw / "train-images-idx3-ubyte.gz"


def _corrupt_deflate(path: Path) -> None:
    whole = bytearray(path.read_bytes())
    whole[12:40] = bytes(range(28))  # inside the deflate stream, past the gzip header
    path.write_bytes(bytes(whole))


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda p: p.write_bytes(gzip.compress(bytes([0, 0, 8, 3, 0, 0]))), "shorter than the 16-byte idx header"),
        (_corrupt_deflate, "corrupt or truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:30]), "corrupt or truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "corrupt or truncated"),  # cut in half
        (lambda p: p.write_bytes(gzip.compress(b"\x08\x08\x08\x08" + bytes(100))), "wrong magic number"),
        (lambda p: p.write_bytes(b"plain bytes, not gzip"), "corrupt or truncated"),
        (lambda p: p.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 0, 28, 28))), "holds no data"),
        (  # a small gzip that inflates far beyond its header's 5 images: reading stops after 5 images + 1 byte
            lambda p: p.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 5, 28, 28) + bytes(2**25))),
            "header says 3920 bytes of data, file has more",
        ),
        (
            lambda p: p.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 2**31, 9))),
            "header says",
        ),
    ],
)
def test_hostile_idx_files_are_one_line(tmp_path, damage, expected):
    path = _kmnist(tmp_path)
    damage(path)
    with pytest.raises(CnnlabError, match=expected) as ex:
        data.load_arrays(cfg(name="kmnist", root=str(tmp_path)))
    one_line(ex, path)


def test_mat_files_truncated_or_garbled_anywhere_are_one_line(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "a.mat"
    rng = random.Random(1)
    for compress in (False, True):
        whole = mat_v5({"X": x, "y": np.array([[1.0, 2.0]])}, compress=compress)
        cases = [whole[:n] for n in range(len(whole))]
        for _ in range(400):
            garbled = bytearray(whole)
            for _ in range(rng.randint(1, 3)):
                garbled[rng.randrange(128, len(whole))] = rng.randrange(256)
            cases.append(bytes(garbled))
        for blob in cases:
            path.write_bytes(blob)
            try:
                read_mat(path, ["X", "y"])
            except CnnlabError as ex:
                assert "\n" not in str(ex) and str(path) in str(ex), str(ex)


def test_stl10_hostile_files_are_one_line(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}_X.bin").write_bytes(bytes(3 * 96 * 96 * 2))
        (folder / f"{split}_y.bin").write_bytes(bytes([1, 2]))
    (folder / "class_names.txt").write_bytes(b"\xff\xfe" + b"\n".join(b"c%d" % i for i in range(10)))
    data.load_arrays(cfg(name="stl10", root=str(tmp_path)))  # odd bytes in a name are no crash
    for file, content, expected in (
        ("train_y.bin", bytes([1, 11]), "labels outside 1..10"),
        ("train_y.bin", bytes([1]), "1 labels for 2 images"),
        ("train_X.bin", bytes(3 * 96 * 96 + 5), "not a whole number"),
    ):
        (folder / file).write_bytes(content)
        with pytest.raises(CnnlabError, match=expected) as ex:
            data.load_arrays(cfg(name="stl10", root=str(tmp_path)))
        one_line(ex, folder / file)
        (folder / "train_X.bin").write_bytes(bytes(3 * 96 * 96 * 2))
        (folder / "train_y.bin").write_bytes(bytes([1, 2]))


# ---------------------------------------------------------------------------------------- image files
def png_header_only(width: int, height: int) -> bytes:
    """A 100-byte PNG that claims width x height pixels: what a decompression bomb looks like to a reader."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [10_000, 20_000])  # 100 Mpx: PIL would only warn, then decode; 400 Mpx: PIL errors
def test_decompression_bomb_png_is_refused_not_decoded(tmp_path, side):
    for c in ("a", "b"):
        for i in range(2):
            jpeg(tmp_path / "pics" / c / f"{i}.jpg", (9, 9, 9))
    bomb = tmp_path / "pics" / "b" / "bomb.png"
    bomb.write_bytes(png_header_only(side, side))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CnnlabError, match="refused to decode") as ex:
            data.build(
                cfg(name="imagefolder", root=str(tmp_path / "pics"), image_size=8, val_fraction=0.3, batch_size=2),
                OmegaConf.structured(AugmentConfig),
                CPU,
            )
    one_line(ex, bomb)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_imagefolder_files_that_are_not_images(tmp_path, capfd):
    for c in ("cat", "dog"):
        for i in range(3):
            jpeg(tmp_path / "pics" / c / f"{i}.jpg", (9, 9, 9))
    (tmp_path / "pics" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "pics" / "dog" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "pics" / "dog" / "._0.jpg").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS shadow file
    arrays = data.load_arrays(cfg(name="imagefolder", root=str(tmp_path / "pics"), image_size=8))
    assert len(arrays.train_y) + len(arrays.test_y) == 6
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "skipped 1 file(s) that are not images" in err and "notes.txt" in err

    fake = tmp_path / "pics" / "dog" / "2.jpg"
    fake.write_text("a text file named like a jpeg")
    with pytest.raises(CnnlabError, match="corrupt or truncated") as ex:
        data.build(
            cfg(name="imagefolder", root=str(tmp_path / "pics"), image_size=8, batch_size=2),
            OmegaConf.structured(AugmentConfig),
            CPU,
        )
    one_line(ex, fake)


def test_imagefolder_empty_or_unknown_class_folders_are_errors(tmp_path):
    for c in ("cat", "dog"):
        for split, n in (("train", 2), ("val", 1)):
            jpeg(tmp_path / "pics" / split / c / f"{c}{n}.jpg", (9, 9, 9))
    (tmp_path / "pics" / "train" / "emu").mkdir()
    (tmp_path / "pics" / "train" / "emu" / "readme.txt").write_text("images to come")
    with pytest.raises(CnnlabError, match="holds no images") as ex:
        data.load_arrays(cfg(name="imagefolder", root=str(tmp_path / "pics"), image_size=8))
    one_line(ex, tmp_path / "pics" / "train" / "emu")
    (tmp_path / "pics" / "train" / "emu" / "readme.txt").unlink()
    (tmp_path / "pics" / "train" / "emu").rmdir()
    (tmp_path / "pics" / "val" / "owl").mkdir()
    with pytest.raises(CnnlabError, match="owl that .* lacks") as ex:
        data.load_arrays(cfg(name="imagefolder", root=str(tmp_path / "pics"), image_size=8))
    one_line(ex)


def test_truncated_or_garbled_images_are_one_line(tmp_path, recwarn):
    """Every format PIL reads here, truncated and byte-flipped: a decoded image or one line naming the file,
    never another exception and never PIL's multi-line warnings."""
    from cnnlab.data.datasets import read_image

    rng = random.Random(2)
    path = tmp_path / "x.img"
    for fmt in ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM"):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 12), (10, 200, 30)).save(buffer, fmt)
        whole = buffer.getvalue()
        cases = [whole[:n] for n in range(0, len(whole), max(1, len(whole) // 20))]
        for _ in range(60):
            garbled = bytearray(whole)
            for _ in range(rng.randint(1, 4)):
                garbled[rng.randrange(min(len(garbled), 120))] = rng.randrange(256)
            cases.append(bytes(garbled))
        for blob in cases:
            path.write_bytes(blob)
            try:
                read_image(path)
            except CnnlabError as ex:
                assert "\n" not in str(ex) and str(path) in str(ex), str(ex)
    assert not [w for w in recwarn if "PIL" in w.filename]


# ------------------------------------------------------------------------------ checkpoints: code, network
# A crafted checkpoint is the real trained one with a hostile stored config. eval, predict, features and export
# must refuse it with one line (exit 2) before anything from it runs: no marker file, no connection attempt.
COMMANDS = ("eval", "predict", "features", "export")


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_run) -> Path:
    return tiny_run / "checkpoints" / "best.pt"


def command_line(command: str, checkpoint: Path, where: Path) -> list[str]:
    image = where / "digit.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(image)
    extra = {
        "eval": [f"output_dir={where / 'eval'}", "data_root=/nonexistent"],
        "predict": [f"inputs={image}", f"output={where / 'predictions.json'}"],
        "features": [f"input={image}"],
        "export": [f"output={where / 'model.onnx'}", f"inputs={image}"],
    }[command]
    return [command, f"checkpoint={checkpoint}", *extra]


def refused(command: str, checkpoint: Path, where: Path, monkeypatch, capsys) -> str:
    """Run `cnnlab COMMAND checkpoint=...` in-process; it must exit 2 with one `error:` line, which is returned."""
    from cnnlab.cli import main

    monkeypatch.chdir(where)
    with pytest.raises(SystemExit) as exit_info:
        main(command_line(command, checkpoint, where))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), (exit_info.value.code, err)
    return err[0]


def crafted(trained: Path, where: Path, change) -> Path:
    """The trained checkpoint with `change(state)` applied, saved as where/crafted.pt."""
    state = torch.load(trained, map_location="cpu", weights_only=True)
    change(state)
    path = where / "crafted.pt"
    torch.save(state, path)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt is recorded and fails (the tests run offline anyway: this makes it visible)."""
    import socket

    attempts = []

    def connect(self, address, *args):
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    return attempts


def _hostile_model(kind: str, where: Path, marker: Path) -> dict:
    """A stored model config that, instantiated by Hydra, runs code or reaches the network."""
    lenet = {"_target_": "cnnlab.models.lenet.LeNet5"}
    if kind == "pickle_payload":  # Hydra walks attributes: cnnlab.models.pooling.torch.load is torch.load
        payload = where / "payload.pt"
        torch.save(RunsCode(os.system, f"touch {marker}"), payload)
        loader = {"_target_": "cnnlab.models.pooling.torch.load", "f": str(payload), "weights_only": False}
        return {**lenet, "pool_lambda": loader}  # a knob no value check looks at before Hydra builds it
    if kind == "hub_local":  # torch.hub.load(source=local) imports the directory's hubconf.py
        hub = where / "hub"
        hub.mkdir()
        (hub / "hubconf.py").write_text(
            f"import pathlib\npathlib.Path({str(marker)!r}).touch()\ndef m(**kw):\n    pass\n"
        )
        return {
            "_target_": "cnnlab.models.pooling.torch.hub.load",
            "repo_or_dir": str(hub),
            "model": "m",
            "source": "local",
        }
    if kind == "url":
        url = "http://127.0.0.1:9/w.pt"
        return {
            **lenet,
            "pool_lambda": {"_target_": "cnnlab.models.pooling.torch.hub.load_state_dict_from_url", "url": url},
        }
    raise AssertionError(kind)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", ["pickle_payload", "hub_local", "url"])
def test_checkpoint_config_that_would_run_code_or_fetch_is_refused(
    trained_checkpoint, tmp_path, monkeypatch, capsys, no_network, command, kind
):
    marker = tmp_path / "pwned"
    model = _hostile_model(kind, tmp_path, marker)
    if kind == "pickle_payload":  # the payload really is harmful to a plain unpickler
        torch.load(tmp_path / "payload.pt", weights_only=False)
        assert marker.exists()
        marker.unlink()

    def change(state):
        state["config"]["model"] = {**state["config"]["model"], **model}
        state["config"].pop("model_class", None)  # an older checkpoint: only its _target_ names the model

    try:
        line = refused(command, crafted(trained_checkpoint, tmp_path, change), tmp_path, monkeypatch, capsys)
    finally:  # checked first: what must not have happened, whatever the command did
        assert not marker.exists() and no_network == []
    assert "not one of cnnlab's models" in line and "crafted.pt" in line, line


@pytest.mark.parametrize("command", COMMANDS)
def test_checkpoint_of_a_torchvision_model_with_weights_downloads_nothing(
    trained_checkpoint, tmp_path, monkeypatch, capsys, no_network, command
):
    """A stored `weights: DEFAULT` would start a download of ImageNet weights: refused before any model is built."""
    import torchvision

    calls = []
    monkeypatch.setattr(torchvision.models, "get_model", lambda *a, **kw: calls.append((a, kw)))

    def change(state):
        tv = {"_target_": "cnnlab.models.tv.TorchvisionModel", "name": "resnet18", "weights": "DEFAULT"}
        state["config"]["model"] = {**tv, "weights_path": None}
        state["config"]["model_class"] = "TorchvisionModel"

    try:
        line = refused(command, crafted(trained_checkpoint, tmp_path, change), tmp_path, monkeypatch, capsys)
    finally:
        assert calls == [] and no_network == []
    assert "model.weights='DEFAULT'" in line and "may not download" in line, line


@pytest.mark.parametrize(
    "model, message",
    [
        ({"weights_path": "/etc/passwd"}, "model.weights_path='/etc/passwd'"),
        ({"pretrained": True}, "model.pretrained=True"),
        ({"fc": [{"_target_": "builtins.print"}, 84]}, "model.fc[0]._target_='builtins.print'"),
        ({"_target_": "cnnlab.models.lenet.LeNet5.__init__"}, "not one of cnnlab's models"),
        ({"_target_": "cnnlab.models.resnet.ResNet"}, "names two models"),
    ],
)
def test_stored_config_refusals_name_the_key(trained_checkpoint, tmp_path, monkeypatch, capsys, model, message):
    def change(state):
        state["config"]["model"].update(model)

    line = refused("eval", crafted(trained_checkpoint, tmp_path, change), tmp_path, monkeypatch, capsys)
    assert message in line, line


def test_a_target_anywhere_in_the_stored_config_is_refused(trained_checkpoint, tmp_path, monkeypatch, capsys):
    def change(state):
        state["config"]["data"]["root"] = {"_target_": "os.getcwd"}

    line = refused("predict", crafted(trained_checkpoint, tmp_path, change), tmp_path, monkeypatch, capsys)
    assert "data.root._target_='os.getcwd'" in line, line


def test_new_checkpoints_name_the_model_by_registry_name(trained_checkpoint):
    from cnnlab import models

    config = torch.load(trained_checkpoint, weights_only=True)["config"]
    assert config["model_class"] == "LeNet5" and models.REGISTRY["LeNet5"] is models.lenet.LeNet5
    assert config["model"]["_target_"] == "cnnlab.models.lenet.LeNet5"  # the record resume compares


def test_training_stores_weight_sources_as_null():
    """The weights are in the checkpoint, so what eval reads downloads nothing; googlenet and inception_v3 are the
    exception: torchvision builds them differently with weights, so their checkpoints are refused, not rebuilt."""
    from cnnlab.engine.checkpoint import stored_model

    tv = {
        "_target_": "cnnlab.models.tv.TorchvisionModel",
        "name": "resnet18",
        "weights": "DEFAULT",
        "weights_path": None,
    }
    assert stored_model(tv) == ("TorchvisionModel", {**tv, "weights": None})
    assert stored_model({**tv, "weights": None, "weights_path": "r.pth"}) == (
        "TorchvisionModel",
        {**tv, "weights": None},
    )
    assert stored_model({**tv, "name": "googlenet"}) == ("TorchvisionModel", {**tv, "name": "googlenet"})
    assert stored_model({"_target_": "my.Net", "weights": "x"}) == (None, {"_target_": "my.Net", "weights": "x"})


def test_every_configured_model_is_in_the_registry():
    from cnnlab import models

    for path in sorted((Path(__file__).parent.parent / "configs" / "model").glob("*.yaml")):
        assert models.registry_name(models.load_yaml(path)._target_) is not None, path.name


@pytest.mark.parametrize("command", COMMANDS)
def test_a_pickle_checkpoint_is_refused_without_advising_weights_only_false(tmp_path, monkeypatch, capsys, command):
    marker = tmp_path / "pwned"
    torch.save({"format_version": 2, "model": RunsCode(os.system, f"touch {marker}")}, tmp_path / "evil.pt")
    line = refused(command, tmp_path / "evil.pt", tmp_path, monkeypatch, capsys)
    assert "GLOBAL posix.system" in line and "never unpickles" in line and "weights_only" not in line, line
    assert not marker.exists()


# ------------------------------------------------------------------------ checkpoints: wrong results
def _set_spec(key, value):
    def change(state):
        state["config"]["data_spec"][key] = value

    return change


def _poison_weight(value):
    def change(state):
        for entry in ("model", "ema"):
            if state.get(entry):
                next(iter(state[entry].values())).view(-1)[0] = value

    return change


WRONG_RESULTS = {
    "nan_weight": (_poison_weight(float("nan")), "NaN or inf"),
    "inf_weight": (_poison_weight(float("inf")), "NaN or inf"),
    "nan_mean": (_set_spec("mean", [float("nan")]), "mean must be 1 finite numbers"),
    "inf_std": (_set_spec("std", [float("inf")]), "std must be 1 positive numbers"),
    "zero_std": (_set_spec("std", [0.0]), "std must be 1 positive numbers"),
    "negative_std": (_set_spec("std", [-0.3]), "std must be 1 positive numbers"),
    "fewer_classes": (_set_spec("classes", [str(i) for i in range(9)]), "9 class names for a model with 10 outputs"),
    "more_classes": (_set_spec("classes", [str(i) for i in range(11)]), "11 class names for a model with 10 outputs"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", sorted(WRONG_RESULTS))
def test_checkpoint_that_would_give_wrong_results_is_one_line(
    trained_checkpoint, tmp_path, monkeypatch, capsys, command, case
):
    change, message = WRONG_RESULTS[case]
    line = refused(command, crafted(trained_checkpoint, tmp_path, change), tmp_path, monkeypatch, capsys)
    assert message in line and "crafted.pt" in line, line


# ---------------------------------------------------------------------- paths that are not regular files
def test_weights_path_fifo_is_refused_not_read(tmp_path):
    """Reading a FIFO blocks until someone writes to it: `model.weights_path=<fifo>` hung for ever."""
    import signal

    from cnnlab.models.tv import TorchvisionModel

    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)

    def hung(*_):
        raise TimeoutError("TorchvisionModel blocked reading the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with pytest.raises(CnnlabError) as ex:
            TorchvisionModel("resnet18", num_classes=10, weights_path=str(fifo))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert one_line(ex, fifo) == f"model.weights_path: {fifo} is not a regular file (a FIFO, socket or device)"


def test_weights_path_pickle_is_refused_without_advising_weights_only_false(tmp_path):
    from cnnlab.models.tv import TorchvisionModel

    marker = tmp_path / "pwned"
    torch.save({"conv1.weight": RunsCode(os.system, f"touch {marker}")}, tmp_path / "resnet18.pth")
    with pytest.raises(CnnlabError) as ex:
        TorchvisionModel("resnet18", num_classes=10, weights_path=str(tmp_path / "resnet18.pth"))
    message = one_line(ex, tmp_path / "resnet18.pth", "GLOBAL posix.system", "never unpickles")
    assert "weights_only" not in message and not marker.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_checkpoint_that_is_a_fifo_or_directory_is_one_line(tmp_path, monkeypatch, capsys, command):
    os.mkfifo(tmp_path / "best.pt")
    assert "is not a regular file" in refused(command, tmp_path / "best.pt", tmp_path, monkeypatch, capsys)
    (tmp_path / "dir.pt").mkdir()
    assert "is not a file (it is a directory)" in refused(command, tmp_path / "dir.pt", tmp_path, monkeypatch, capsys)


def test_predict_input_fifo_is_refused(trained_checkpoint, tmp_path, monkeypatch, capsys):
    from cnnlab.cli import main

    os.mkfifo(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", f"checkpoint={trained_checkpoint}", f"inputs={tmp_path / 'photo.png'}", "output=p.json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err == [
        f"error: input {tmp_path / 'photo.png'} is not a regular file (a FIFO, socket or device)"
    ]
