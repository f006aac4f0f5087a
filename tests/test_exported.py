"""Exported models carry their preprocessing (class names, mean/std, input size, channels): ONNX metadata_props and a
TorchScript extra file; `cnnlab predict` runs an ONNX export with it and gives the checkpoint's answers; TorchScript
files (programs) and ONNX files with damaged metadata are refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from trained_run import compose

from cnnlab.commands import export, predict
from cnnlab.commands.exported import EXTRA_FILE
from cnnlab.commands.trained import load_trained
from cnnlab.errors import CnnlabError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """A tiny trained run, its ONNX and TorchScript exports and six digit PNGs."""
    where = tmp_path_factory.mktemp("exported")
    best = tiny_run / "checkpoints" / "best.pt"
    files = {}
    for fmt in ("onnx", "torchscript"):
        files[fmt] = export.run(compose("export", f"checkpoint={best}", f"format={fmt}", "batch_size=8"))["output"]
    folder = where / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(folder / f"img_{i}.png")
    return load_trained(best, torch.device("cpu")), files, folder


def _expected(spec):
    return {
        "input_size": [1, 32, 32],
        "channels": 1,
        "image_size": 32,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "num_classes": 10,
        "classes": list(spec.classes),
    }


def test_onnx_and_torchscript_carry_the_preprocessing(exported):
    trained, files, _ = exported
    props = {p.key: json.loads(p.value) for p in onnx.load(files["onnx"]).metadata_props}
    assert props["model"] == "LeNet5" and len(props["classes"]) == 10
    assert {k: props[k] for k in _expected(trained.spec)} == _expected(trained.spec)
    extra = {EXTRA_FILE: ""}
    with pytest.warns(FutureWarning):  # torch.jit.load is deprecated, still what TorchScript users call
        torch.jit.load(files["torchscript"], _extra_files=extra)
    stored = json.loads(extra[EXTRA_FILE])
    assert {k: stored[k] for k in _expected(trained.spec)} == _expected(trained.spec)


def test_predict_from_onnx_gives_the_checkpoints_answers(exported, tmp_path):
    trained, files, folder = exported
    got = predict.run(compose("predict", f"checkpoint={files['onnx']}", f"inputs={folder}", "topk=3"), tmp_path)
    want = predict.run(compose("predict", f"checkpoint={trained.path}", f"inputs={folder}", "topk=3"), tmp_path)
    assert got["model"] == "LeNet5" and got["input_size"] == [1, 32, 32] and got["count"] == 6
    for a, b in zip(got["predictions"], want["predictions"]):
        assert a["class"] == b["class"] and a["prob"] == pytest.approx(b["prob"], abs=1e-4)


def test_predict_refuses_torchscript_without_loading_it(exported, tmp_path, monkeypatch):
    _, files, folder = exported
    loaded = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loaded.append(a))
    monkeypatch.setattr(torch, "load", lambda *a, **k: loaded.append(a))
    with pytest.raises(CnnlabError, match="is a TorchScript program; predict runs no code from files"):
        predict.run(compose("predict", f"checkpoint={files['torchscript']}", f"inputs={folder}"), tmp_path)
    assert loaded == []


@pytest.mark.parametrize(
    "damage, message",
    [
        ({"std": "[0.3, -1]"}, "damaged preprocessing metadata"),
        ({"classes": '{"__class__": "os.system"}'}, "damaged"),
        ({"num_classes": "not json"}, "is not JSON"),
        ({"mean": None}, "has no 'mean' metadata"),
    ],
)
def test_onnx_with_damaged_metadata_is_one_clear_error(exported, tmp_path, damage, message):
    _, files, folder = exported
    model = onnx.load(files["onnx"])
    kept = [(p.key, p.value) for p in model.metadata_props]
    del model.metadata_props[:]
    for key, value in kept:
        value = damage.get(key, value)
        if value is not None:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    crafted = tmp_path / "crafted.onnx"
    onnx.save(model, str(crafted))
    with pytest.raises(CnnlabError, match=message):
        predict.run(compose("predict", f"checkpoint={crafted}", f"inputs={folder}"), tmp_path)
    not_onnx = tmp_path / "junk.onnx"
    not_onnx.write_bytes(b"\x00junk")
    with pytest.raises(CnnlabError, match="is not a model onnxruntime can read"):
        predict.run(compose("predict", f"checkpoint={not_onnx}", f"inputs={folder}"), tmp_path)


def test_predict_table_shows_whole_file_names_at_80_columns(exported, tmp_path, monkeypatch, capsys):
    _, files, folder = exported
    deep = tmp_path / "a" / "rather" / "long" / "folder" / "of" / "images" / "from" / "a" / "camera"
    deep.mkdir(parents=True)
    for i in range(3):
        (deep / f"a_long_image_file_name_{i}.png").write_bytes((folder / f"img_{i}.png").read_bytes())
    monkeypatch.setenv("COLUMNS", "80")
    predict.run(compose("predict", f"checkpoint={files['onnx']}", f"inputs={tmp_path / 'a'}"), tmp_path)
    out = capsys.readouterr().out
    assert f"3 image(s) in {deep}" in " ".join(out.split()) or str(deep) in out.replace("\n", "")
    for i in range(3):
        assert f"a_long_image_file_name_{i}.png" in out  # one line each, not cut with an ellipsis
