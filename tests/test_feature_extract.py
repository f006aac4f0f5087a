"""finetune=feature_extract: the backbone runs once, its features are cached, the head trains on them, and the
run's best.pt is the whole model (evaluable on images by `cnnlab eval`)."""

from __future__ import annotations

import pytest
import torch
from conftest import cli, read_json
from omegaconf import OmegaConf
from torch import nn

from cnnlab.analysis.summary import summarize
from cnnlab.callbacks.model_cost import ModelCost
from cnnlab.data import DataSpec
from cnnlab.data.loaders import DeviceLoader
from cnnlab.data.spec import DataBundle
from cnnlab.errors import CnnlabError
from cnnlab.feature_extract import CachedFeatureModel, FeatureLoader, classifier_of, prepare
from cnnlab.models import build

TINY = [
    "data=synthetic",
    "data.image_size=32",
    "data.num_samples=80",
    "data.batch_size=16",
    "trainer.device=cpu",
    "trainer.progress=plain",
    "optimizer=sgd",
    "optimizer.lr=0.01",
    "scheduler=none",
]


def bundle(n: int = 40, size: int = 16, batch: int = 8) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 4
    mean, std = (0.5,) * 3, (0.25,) * 3

    def loader(train):
        return DeviceLoader(images, labels, batch, mean, std, train=train, seed=0)

    return DataBundle(loader(True), loader(False), loader(False), DataSpec(4, 3, size, list("abcd"), mean, std))


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    return build(
        OmegaConf.create(
            {"_target_": "cnnlab.models.resnet.ResNet", "layers": [1, 1], "widths": [8, 16], "stem_width": 8}
        ),
        DataSpec(4, 3, 16),
    )


def test_features_are_the_classifier_inputs_and_the_backbone_runs_once():
    model, data = small_resnet(), bundle()
    calls = []
    model.stem.register_forward_hook(lambda *args: calls.append(1))
    trained, features, _ = prepare(model, data, torch.device("cpu"), seed=0)
    assert isinstance(trained, CachedFeatureModel) and isinstance(features.train, FeatureLoader)
    assert len(calls) == 3 * 5  # train, val and test: 40 images in batches of 8, each once
    x_all = torch.cat([x for x, _ in data.test])
    with torch.no_grad():
        pooled = model.head[:-1](model.final(model.layers(model.stem(x_all))))  # GAP + flatten + dropout (eval)
    cached = torch.cat([x for x, _ in features.test])
    assert cached.shape == (40, 16, 1, 1) and torch.allclose(cached.flatten(1), pooled, atol=1e-6)
    assert len(features.train) == 5 and features.train.train  # shuffled, all 40 training images (no val split here)
    assert sorted(torch.cat([y for _, y in features.train]).tolist()) == sorted(data.test.labels.tolist())
    calls.clear()
    out = trained(cached[:8])  # the head alone
    assert not calls and torch.allclose(out, model(x_all[:8]), atol=1e-5)
    assert [n for n, _ in trained.named_parameters()] == ["head.weight", "head.bias"]
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("head.3"))
    assert trained.state_dict().keys() == model.state_dict().keys()  # checkpoints hold the whole model
    metrics = {}
    ModelCost().on_fit_end(None, trained, features, metrics)  # the MACs of the whole network on one image
    assert metrics["macs"] == summarize(model, (3, 16, 16))["macs"] > 100 * 16 * 4  # not the head's 16 x 4


def test_training_the_head_changes_only_the_head_in_the_full_state_dict():
    model, data = small_resnet(), bundle()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained, features, _ = prepare(model, data, torch.device("cpu"), seed=0)
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.5)
    for _ in range(3):
        trained.train()
        for x, y in features.train:
            nn.functional.cross_entropy(trained(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    after = trained.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.3.weight", "head.3.bias"}  # BN statistics too stayed as they were
    fresh = small_resnet()
    fresh.load_state_dict(after)
    fresh.eval()
    x, _ = next(iter(data.test))
    assert torch.allclose(fresh(x), trained(torch.cat([f for f, _ in features.test])[:8]), atol=1e-5)


def test_val_split_test_extracts_the_test_split_once():
    model, data = small_resnet(), bundle()
    data = DataBundle(data.train, data.test, data.test, data.spec, val_is_test=True)
    calls = []
    model.stem.register_forward_hook(lambda *args: calls.append(1))
    _, features, _ = prepare(model, data, torch.device("cpu"), seed=0)
    assert features.val is features.test and features.val_is_test and len(calls) == 2 * 5


class Scaled(nn.Module):
    """A model that changes its last Linear's output (so that Linear alone is not its head)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.body(x)) * 2


def test_models_it_cannot_split_are_one_clear_error():
    with pytest.raises(CnnlabError, match="changes the output of its last nn.Linear"):
        prepare(Scaled(), bundle(), torch.device("cpu"), seed=0)
    with pytest.raises(CnnlabError, match="no.*use finetune=linear_probe|has none"):
        classifier_of(nn.Sequential(nn.Conv2d(3, 4, 3)))


@pytest.mark.slow
def test_cli_run_dir_checkpoint_holds_backbone_and_head_and_evaluates_on_images(resnet18_file, tmp_path):
    run = tmp_path / "fx"
    result = cli(
        "train",
        "model=torchvision",
        "model.name=resnet18",
        f"model.weights_path={resnet18_file}",
        "finetune=feature_extract",
        "trainer.epochs=30",
        f"hydra.run.dir={run}",
        *TINY,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "72 x 512 training features" in output and "randomly initialised" not in output
    metrics = read_json(run / "metrics.json")
    assert metrics["epochs"] == 30 and metrics["trainable_params"] == 512 * 10 + 10
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]
    loaded = torch.load(resnet18_file, weights_only=True)
    assert set(best) == set(loaded)  # the whole torchvision ResNet-18 ...
    assert all(torch.equal(best[k], loaded[k]) for k in loaded if not k.startswith("fc."))  # ... its backbone as loaded
    assert best["fc.weight"].shape == (10, 512)
    result = cli(
        "eval",
        f"checkpoint={run / 'checkpoints' / 'best.pt'}",
        f"output={tmp_path / 'eval.json'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = read_json(tmp_path / "eval.json")  # the full model on the test images
    assert report["top1"] == pytest.approx(metrics["test_acc"]) and report["loss"] == pytest.approx(
        metrics["test_loss"], rel=1e-4
    )
