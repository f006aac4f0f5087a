"""`cnnlab summary`: per-layer shapes/params/MACs against known numbers, receptive fields, collapse warnings."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO
from omegaconf import OmegaConf
from torch import nn
from trained_run import one_error_line

from cnnlab.analysis.receptive_field import receptive_field
from cnnlab.analysis.summary import summarize
from cnnlab.commands.summary import spec_of
from cnnlab.data import DataSpec
from cnnlab.errors import CnnlabError
from cnnlab.models import build, load_yaml
from cnnlab.models.knobs import POOLS
from cnnlab.models.pooling import make_pool


def summary_of(name: str, image_size: int, channels: int = 3, num_classes: int = 1000) -> dict:
    cfg = load_yaml(REPO / "configs" / "model" / f"{name}.yaml")  # with its family base (defaults list)
    model = build(cfg, DataSpec(num_classes=num_classes, channels=channels, image_size=image_size))
    return summarize(model, (channels, image_size, image_size))


@pytest.mark.parametrize(
    "name, gmacs, params, rf", [("resnet18", 1.82, 11_689_512, 435), ("resnet50", 4.11, 25_557_032, 427)]
)
def test_resnet_macs_params_and_receptive_field_at_224(name, gmacs, params, rf):
    s = summary_of(name, 224)
    assert s["macs"] == pytest.approx(gmacs * 1e9, rel=0.02)
    assert s["params"] == s["trainable_params"] == params
    assert sum(row["params"] for row in s["layers"]) == params
    assert s["receptive_field"] == {"size": rf, "jump": 32, "map": [7, 7], "global": False}
    assert s["collapse"] is None


# At 32x32x3, 10 classes, as the hand-written per-layer counting hooks measured them before FlopCounterMode:
# attention matmuls (ViT), SE blocks, depthwise convs and the blur filter count the same. (The speedrun's
# whitening stem, an F.conv2d those hooks missed, is counted now: 2 x 276,768 more than the 235,741,184 then.)
MACS_AT_32 = {
    "vit_tiny": 365_107_584,
    "se_resnet18": 555_509_760,
    "efficientnet_b0": 31_979_392,
    "mobilenet_v3_small": 5_502_720,
    "densenet121": 888_350_720,
    "googlenet": 452_175_872,
    "speedrun": 235_741_184 + 2 * 276_768,
}


@pytest.mark.parametrize("name", MACS_AT_32)
def test_macs_of_the_zoo(name):
    assert summary_of(name, 32, 3, 10)["macs"] == MACS_AT_32[name]


def test_blur_pool_macs_are_its_low_pass():
    s = summarize(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), make_pool("blur")), (3, 8, 8))
    assert [r["macs"] for r in s["layers"]] == [4 * 8 * 8 * 27, 4 * 4 * 4 * 9]


def test_lenet5_rows_by_hand():
    s = summary_of("lenet5", 32, channels=1, num_classes=10)
    rows = {r["name"]: r for r in s["layers"]}
    assert rows["features.0"]["shape"] == [6, 28, 28] and rows["features.0"]["params"] == 156
    assert rows["features.0"]["macs"] == 6 * 28 * 28 * 25
    assert rows["features.5"]["shape"] == [16, 5, 5]
    assert rows["classifier.1"]["macs"] == 400 * 120
    assert s["macs"] == 6 * 28 * 28 * 25 + 16 * 10 * 10 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    assert s["params"] == 61_706
    assert s["activation_bytes"] == 4 * sum(torch.Size(r["shape"]).numel() for r in s["layers"])
    # conv5 -> pool2 -> conv5 -> pool2: 5 + 1 + 4*2 + 1*2 = 16 pixels, 4 apart
    assert s["receptive_field"]["size"] == 16 and s["receptive_field"]["jump"] == 4
    # per layer: every feature map's field and jump; activations keep them; flattened vectors have none
    assert [(r["name"], r["rf"], r["jump"]) for r in s["layers"]] == [
        ("features.0", 5, 1),
        ("features.1", 5, 1),
        ("features.2", 6, 2),
        ("features.3", 14, 2),
        ("features.4", 14, 2),
        ("features.5", 16, 4),
        ("classifier.0", None, None),
        ("classifier.1", None, None),
        ("classifier.2", None, None),
        ("classifier.3", None, None),
        ("classifier.4", None, None),
        ("classifier.5", None, None),
    ]


def test_receptive_fields_of_classic_nets():
    assert summary_of("vgg16", 32, num_classes=10)["receptive_field"]["size"] == 212
    assert summary_of("alexnet", 224)["receptive_field"]["size"] == 195
    vit = summary_of("vit_tiny", 32, num_classes=10)
    assert vit["receptive_field"]["global"] and vit["receptive_field"]["map"] == [8, 8]
    assert vit["layers"][-1]["name"] == "(other parameters)"  # class token and position embeddings
    assert any(r["name"].endswith("(matmuls)") and r["macs"] > 0 for r in vit["layers"])


def test_two_3x3_convs_see_a_5x5_field():
    two = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(), nn.Conv2d(1, 1, 3, padding=1))
    assert receptive_field(two, torch.rand(1, 1, 16, 16))["size"] == 5
    strided = nn.Sequential(nn.Conv2d(1, 1, 3, 2, 1), nn.Conv2d(1, 1, 3, padding=1))
    assert receptive_field(strided, torch.rand(1, 1, 16, 16)) == {"size": 7, "jump": 2, "map": [8, 8], "global": False}


@pytest.mark.parametrize("kind", POOLS)
def test_receptive_field_through_every_pool(kind):
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), make_pool(kind, 2, channels=1))
    field = receptive_field(net.eval(), torch.rand(1, 1, 16, 16))
    # a 3x3 conv, then a 2x2 window with stride 2; blur adds its 3x3 low-pass (at stride 1 before it)
    assert field == {"size": 6 if kind == "blur" else 4, "jump": 2, "map": [8, 8], "global": False}


def test_collapse_names_the_layer():
    net = nn.Sequential(nn.Conv2d(1, 2, 5), nn.MaxPool2d(2), nn.Conv2d(2, 2, 5), nn.Flatten(), nn.Linear(2, 3))
    s = summarize(net, (1, 8, 8))
    assert s["collapse"]["layer"] == "2" and s["collapse"]["type"] == "Conv2d"
    assert s["collapse"]["input"] == [2, 2, 2]
    assert s["receptive_field"] is None
    assert [r["name"] for r in s["layers"]][:2] == ["0", "1"]


def test_spec_from_data_config_without_loading():
    spec = spec_of(OmegaConf.load(REPO / "configs" / "data" / "mnist.yaml"))
    assert (spec.channels, spec.image_size, spec.num_classes) == (1, 28, 10)
    with pytest.raises(CnnlabError, match="data.num_classes"):
        spec_of(OmegaConf.create({"name": "folder", "channels": 3, "image_size": 64, "num_classes": None}))


def test_cli_json(run_main, tmp_path):
    code, err = run_main(
        "summary",
        "model=resnet18",
        "data=synthetic",
        "data.image_size=224",
        "data.num_classes=1000",
        "format=json",
    )
    assert code == 0, err[-2000:]
    report = json.loads(run_main.stdout)
    for key in ("params", "trainable_params", "macs", "activation_bytes", "receptive_field", "layers"):
        assert key in report
    assert report["params"] == 11_689_512
    assert report["macs"] == pytest.approx(1.82e9, rel=0.02)
    assert report["layers"][0] == {
        "name": "stem.0.0",
        "type": "Conv2d",
        "shape": [64, 112, 112],
        "params": 9408,
        "macs": 64 * 112 * 112 * 3 * 49,
        "bytes": 64 * 112 * 112 * 4,
        "rf": 7,
        "jump": 2,
    }
    assert list(tmp_path.iterdir()) == []  # a summary writes nothing


@pytest.mark.slow  # an end-to-end run: CI's make test-all runs it
def test_cli_table_and_collapse_warning(run_cli):
    result = run_cli("summary", "model=vgg16", "data=cifar10")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "features.0.0" in result.stdout and "33,638,218" in result.stdout
    assert "receptive field 212 px, jump 32 px" in result.stdout
    header = next(line for line in result.stdout.splitlines() if "layer" in line and "MACs" in line)
    assert header.split()[-4:] == ["RF", "┃", "jump", "┃"]
    result = run_cli("summary", "model=torchvision", "model.name=alexnet", "data=mnist")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "collapses below 1 at features.5 (MaxPool2d)" in " ".join(result.stdout.split())


def test_cli_bad_format_is_one_line(run_main):
    assert one_error_line(run_main("summary", "format=xml")) == "error: format must be one of table, json; got 'xml'"


def test_sweep_writes_nothing_here(run_main, tmp_path):
    code, err = run_main("summary", "-m", "model=lenet5,mnist_cnn", "format=json")
    assert code == 0, err[-2000:]
    assert [json.loads(line)["model"] for line in run_main.stdout.splitlines() if line.startswith("{")] == [
        "LeNet5",
        "MnistCNN",
    ]
    assert list(tmp_path.iterdir()) == []  # no multirun/ folder (Hydra's multirun.yaml goes to the temp dir)


def test_resnet_rows_follow_the_shortcut():
    rows = {r["name"]: r for r in summary_of("resnet18", 32, num_classes=10)["layers"]}
    # a 3x3 stride-1 stem: 3 px; layers.1.0 halves the map (jump 2); its 1x1 projection sees what its input saw
    assert (rows["stem.0"]["rf"], rows["stem.0"]["jump"]) == (3, 1)
    assert rows["layers.0.1.acts.1"]["rf"] == 11 and rows["layers.1.0.convs.0"]["jump"] == 2
    assert rows["layers.1.0.project.0"]["rf"] == 11  # a 1x1 (stride 2) conv adds nothing to the field
    assert rows["layers.1.0.acts.1"]["rf"] == 17  # the add takes the larger field of its two branches
    assert rows["layers.3.1.convs.1"]["jump"] == 8
    assert rows["head.3"]["rf"] is None
