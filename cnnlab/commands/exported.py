"""Exported models carry their preprocessing, as timm's pretrained_cfg does: class names, mean/std, input size
and channels, in ONNX metadata_props and a TorchScript extra file (`preprocessing`), so that a file is usable
without its checkpoint. `cnnlab predict checkpoint=model.onnx` reads an ONNX export back (`load_onnx`).

Only ONNX is accepted as input. An ONNX file is a graph of standard operators that onnxruntime runs, and its
metadata is plain strings, parsed as JSON and type-checked here. A TorchScript file is a program:
torch.jit.load deserialises and runs its TorchScript code (PyTorch's security policy treats model files as
code), so it is refused as input, as anything else that would run code from a file is.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.data import DataSpec
from cnnlab.errors import CnnlabError

EXTRA_FILE = "preprocessing.json"  # TorchScript: torch.jit.load(f, _extra_files={EXTRA_FILE: ""})
INPUT, OUTPUT = "images", "logits"


def preprocessing(spec: DataSpec, model_name: str) -> dict:
    """What a user of the exported file needs to feed it (every value JSON-able)."""
    return {
        "model": model_name,
        "input_size": [spec.channels, spec.image_size, spec.image_size],
        "channels": spec.channels,
        "image_size": spec.image_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "num_classes": spec.num_classes,
        "classes": list(spec.classes),
        "input": f"{INPUT}: float N x C x H x W, pixels / 255 then (x - mean) / std per channel; "
        "image files: short side resized to image_size, centre-cropped",
        "output": f"{OUTPUT}: N x num_classes",
    }


def add_onnx_metadata(path: Path, meta: dict) -> None:
    """Write `meta` into the ONNX file's metadata_props (one entry per key, values as JSON text)."""
    import onnx

    model = onnx.load(str(path))
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, str(path))


def is_onnx(path: str | Path) -> bool:
    return str(path).lower().endswith(".onnx")


def refuse_torchscript(path: Path) -> None:
    """A TorchScript archive given where a checkpoint or an ONNX file is read: one clear line."""
    try:
        names = zipfile.ZipFile(path).namelist() if zipfile.is_zipfile(path) else []
    except (OSError, zipfile.BadZipFile):
        return
    if any("/code/" in n or n.startswith("code/") for n in names):
        raise CnnlabError(
            f"{path} is a TorchScript program; predict runs no code from files: give the checkpoint it was "
            "exported from, or an ONNX export (cnnlab export format=onnx)"
        )


class OnnxModel:
    """An onnxruntime session called like a module: float images -> logits (on the CPU)."""

    def __init__(self, session):
        self.session = session

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: x.detach().float().cpu().numpy()})[0])


@dataclass
class Exported:
    """An exported model as predict uses a checkpoint (path, name, spec, model)."""

    path: Path
    name: str
    spec: DataSpec
    model: OnnxModel


def _read(meta: dict, key: str, path: Path):
    try:
        return json.loads(meta[key])
    except KeyError:
        raise CnnlabError(
            f"{path} has no '{key}' metadata: cnnlab reads ONNX files it exported (cnnlab export format=onnx)"
        ) from None
    except json.JSONDecodeError:
        raise CnnlabError(f"{path}: its '{key}' metadata is not JSON") from None


def spec_from_metadata(meta: dict, path: Path) -> DataSpec:
    """The DataSpec stored by `preprocessing`, type-checked: the file is untrusted input."""
    counts = [_read(meta, k, path) for k in ("num_classes", "channels", "image_size")]
    mean, std, classes = (_read(meta, k, path) for k in ("mean", "std", "classes"))
    numbers = all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 100_000 for v in counts)
    stats_ok = numbers and all(
        isinstance(s, list) and len(s) == counts[1] and all(isinstance(x, (int, float)) for x in s) for s in (mean, std)
    )
    if not stats_ok or any(x <= 0 for x in std) or not isinstance(classes, list):
        raise CnnlabError(f"{path} has damaged preprocessing metadata (sizes, mean or std of the wrong kind)")
    if not all(isinstance(c, str) for c in classes) or len(classes) not in (0, counts[0]):
        raise CnnlabError(f"{path} has damaged class names in its metadata")
    return DataSpec(counts[0], counts[1], counts[2], classes, tuple(mean), tuple(std))


def load_onnx(path: str | Path) -> Exported:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CnnlabError(f"{path} does not exist")
    try:
        import onnxruntime as ort
    except ImportError:
        raise CnnlabError("an ONNX model needs onnxruntime: pip install 'cnnlab[export]'") from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as ex:  # noqa: BLE001 - onnxruntime raises its own types for every kind of bad file
        first = str(ex).strip().splitlines()[0][:200] if str(ex).strip() else type(ex).__name__
        raise CnnlabError(f"{path} is not a model onnxruntime can read ({first})") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    spec = spec_from_metadata(meta, path)
    if [i.name for i in session.get_inputs()] != [INPUT] or OUTPUT not in [o.name for o in session.get_outputs()]:
        raise CnnlabError(f"{path}: expected one input '{INPUT}' and an output '{OUTPUT}' (a cnnlab export)")
    name = _read(meta, "model", path)
    return Exported(path, name if isinstance(name, str) else "model", spec, OnnxModel(session))
