"""`cnnlab predict`: image files preprocessed with the checkpoint's own data spec give the model's own answers,
one JSON entry per file, non-images skipped with a line, and bad inputs one error line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_json
from PIL import Image
from trained_run import compose, loaders_of, one_error_line

from cnnlab.commands import predict
from cnnlab.commands.trained import find_files, load_image, load_trained, normalise
from cnnlab.errors import CnnlabError


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def test_images(run_dir, tmp_path_factory):
    """The first 6 test-split digits as PNG files (what the loaders see: 32x32 grey), plus two odd files."""
    trained = load_trained(run_dir / "checkpoints" / "best.pt", torch.device("cpu"))
    data = loaders_of(trained)
    x, y = next(iter(data.test))
    folder = tmp_path_factory.mktemp("images")
    raw = data.test.images[:6]  # the uint8 images the device loader normalises
    for i in range(6):
        Image.fromarray(raw[i, 0].numpy()).save(folder / f"digit_{i}.png")
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(folder / "wide_colour.jpg")  # RGB, not square
    (folder / "notes.txt").write_text("not an image")
    return trained, folder, x[:6], y[:6]


def test_files_get_the_models_own_answers(test_images, tmp_path):
    trained, folder, x, _ = test_images
    with torch.no_grad():
        expected = trained.model(x).softmax(1)
    out = tmp_path / "p.json"
    report = predict.run(
        compose("predict", f"checkpoint={trained.path}", f"inputs={folder}", "topk=3", f"output={out}")
    )
    assert report == read_json(out)
    entries = {Path(e["file"]).name: e for e in report["predictions"]}
    assert len(report["predictions"]) == 8 and report["count"] == 7 and report["skipped"] == 1
    assert "not a readable image" in entries["notes.txt"]["error"]
    for i in range(6):
        e = entries[f"digit_{i}.png"]
        assert e["index"] == int(expected[i].argmax()) and e["class"] == str(e["index"])
        assert [r["prob"] for r in e["topk"]] == pytest.approx(expected[i].topk(3).values.tolist(), abs=1e-5)
    wide = entries["wide_colour.jpg"]
    assert len(wide["topk"]) == 3 and wide["topk"][0]["prob"] >= wide["topk"][1]["prob"] >= wide["topk"][2]["prob"]
    assert report["input_size"] == [1, 32, 32]


def test_preprocessing_follows_the_data_spec(test_images):
    trained, folder, x, _ = test_images
    image = load_image(folder / "digit_0.png", trained.spec)
    assert image.shape == (1, 32, 32) and image.dtype == torch.uint8
    assert torch.allclose(normalise(image[None], trained.spec), x[:1], atol=1e-6)  # exactly what the loader gives
    wide = load_image(folder / "wide_colour.jpg", trained.spec)
    assert wide.shape == (1, 32, 32)  # grey for a 1-channel model, short side resized and centre-cropped
    assert [p.name for p in find_files(str(folder / "*.png"))] == [f"digit_{i}.png" for i in range(6)]
    assert len(find_files([str(folder / "digit_0.png"), str(folder / "digit_1.png")])) == 2


def test_cli_table_and_json(test_images, run_main, tmp_path):
    trained, folder, _, _ = test_images
    code, err = run_main(
        "predict", f"checkpoint={trained.path}", f"inputs={folder}/digit_*.png", "topk=2", "hydra.run.dir=run"
    )
    assert code == 0, err[-2000:]
    report = read_json(tmp_path / "run" / "predictions.json")
    assert len(report["predictions"]) == 6 and all(len(e["topk"]) == 2 for e in report["predictions"])
    assert "digit_5.png" in run_main.stdout and "predictions for 6 file(s)" in " ".join(run_main.stdout.split())


def test_bad_inputs(test_images, tmp_path, run_main):
    trained, folder, _, _ = test_images
    with pytest.raises(CnnlabError, match="none of the 1 input file"):
        predict.run(
            compose("predict", f"checkpoint={trained.path}", f"inputs={folder / 'notes.txt'}"), run_dir=tmp_path
        )
    with pytest.raises(CnnlabError, match="does not exist"):
        predict.run(compose("predict", f"checkpoint={trained.path}", f"inputs={folder / 'nope.png'}"), run_dir=tmp_path)
    with pytest.raises(CnnlabError, match="no files found"):
        predict.run(compose("predict", f"checkpoint={trained.path}", f"inputs={folder}/*.gif"), run_dir=tmp_path)
    with pytest.raises(CnnlabError, match="topk must be >= 1"):
        predict.run(compose("predict", f"checkpoint={trained.path}", f"inputs={folder}", "topk=0"), run_dir=tmp_path)
    line = one_error_line(run_main("predict", f"checkpoint={tmp_path / 'missing.pt'}", f"inputs={folder}"))
    assert "does not exist" in line
