"""`cnnlab features`: feature maps of every stage, the first layer's filters and Grad-CAM for one image, as PNGs
in the run dir and TensorBoard images; chosen layers; bad inputs one error line."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from trained_run import compose, one_error_line

from cnnlab.commands import features
from cnnlab.errors import CnnlabError


@pytest.fixture(scope="module")
def setup(tiny_run, tmp_path_factory):
    image = tmp_path_factory.mktemp("features") / "digit.png"
    digit = torch.zeros(32, 32, dtype=torch.uint8)
    digit[6:26, 14:18] = 255  # a "1"
    Image.fromarray(digit.numpy()).save(image)
    return tiny_run / "checkpoints" / "best.pt", image


def test_every_stage_filters_and_gradcam(setup, run_main, tmp_path):
    ckpt, image = setup
    code, err = run_main("features", f"checkpoint={ckpt}", f"input={image}", "hydra.run.dir=run")
    assert code == 0, err[-2000:]
    run = tmp_path / "run"
    report = json.loads((run / "features.json").read_text())
    # LeNet-5's stages: conv1 (6x28x28), conv2 (16x10x10), the classifier (10 logits: not a map)
    assert [(r["layer"], r["shape"]) for r in report["layers"]] == [
        ("features.0", [6, 28, 28]),
        ("features.3", [16, 10, 10]),
        ("classifier", [10]),
    ]
    assert sorted(p.name for p in (run / "feature_maps").iterdir()) == ["00_features.0.png", "01_features.3.png"]
    assert report["filters"]["layer"] == "features.0" and report["filters"]["shape"] == [6, 1, 5, 5]
    # Grad-CAM at the last spatial map: after conv2's activation and pooling, before the classifier flattens it
    assert report["gradcam"]["layer"] == "features.5" and report["gradcam"]["map"] == [5, 5]
    assert report["gradcam"]["class"] == report["prediction"]["class"]
    for name in ("filters.png", "gradcam.png", "feature_maps/00_features.0.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"
    assert not (run / "tb").exists()  # PNGs only: TensorBoard over outputs/ lists training runs only
    assert "not a feature map" in run_main.stdout


def test_chosen_layers(setup, tmp_path):
    ckpt, image = setup
    report = features.run(
        compose("features", f"checkpoint={ckpt}", f"input={image}", "layers=[features.1,features.2]", "max_maps=4"),
        run_dir=tmp_path,
    )
    assert [(r["layer"], r["type"], r["shape"]) for r in report["layers"]] == [
        ("features.1", "ReLU", [6, 28, 28]),
        ("features.2", "AvgPool2d", [6, 14, 14]),
    ]
    assert report["gradcam"]["layer"] == "features.2" and report["gradcam"]["map"] == [14, 14]
    assert sorted(p.name for p in (tmp_path / "feature_maps").iterdir()) == ["00_features.1.png", "01_features.2.png"]


def test_bad_inputs(setup, tmp_path, run_main):
    ckpt, image = setup
    with pytest.raises(
        CnnlabError,
        match=r"unknown layer 'features\.9' in LeNet5; its layers: features, "
        r"features\.0, features\.1",
    ):
        features.run(
            compose("features", f"checkpoint={ckpt}", f"input={image}", "layers=[features.9]"), run_dir=tmp_path
        )
    text = tmp_path / "notes.png"
    text.write_text("not really a png")
    with pytest.raises(CnnlabError, match="is not a readable image"):
        features.run(compose("features", f"checkpoint={ckpt}", f"input={text}"), run_dir=tmp_path)
    with pytest.raises(CnnlabError, match="does not exist"):
        features.run(compose("features", f"checkpoint={ckpt}", f"input={tmp_path / 'none.png'}"), run_dir=tmp_path)
    line = one_error_line(run_main("features", f"checkpoint={ckpt}", f"input={image}", "layers=[nope]"))
    assert "unknown layer 'nope'" in line
