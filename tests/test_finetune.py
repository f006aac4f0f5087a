"""Transfer learning from a locally saved torchvision state dict (no downloads): what trains and at which lr."""

from __future__ import annotations

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from trained_run import one_error_line

import cnnlab
from cnnlab import optim
from cnnlab.finetune import Finetune, optimizer_config

TINY = [
    "data=synthetic",
    "data.image_size=32",
    "data.num_samples=40",
    "data.batch_size=16",
    "trainer.progress=plain",
    "trainer.image_grid=0",
    "optimizer=sgd",
    "scheduler=none",
]


@pytest.fixture
def train(run_main, tmp_path):
    """train(*overrides): `cnnlab train` in this process on TINY into tmp_path/run, which must succeed:
    (its stdout and stderr together, the run dir)."""

    def train(*overrides: str):
        code, err = run_main("train", *overrides, "hydra.run.dir=run", *TINY)
        assert code == 0, err[-2000:]
        return run_main.stdout + err, tmp_path / "run"

    return train


def resnet18(weights) -> list[str]:
    return ["model=torchvision", "model.name=resnet18", f"model.weights_path={weights}"]


def finetune_cfg(name, **kw):
    return OmegaConf.create({"name": name, "freeze_bn": False, "lr_decay": 1.0, "unfreeze_every": 1, **kw})


def test_gradual_unfreezes_one_stage_per_period_from_the_head():
    model = torchvision.models.resnet18(num_classes=10)
    finetune = Finetune(finetune_cfg("gradual", unfreeze_every=2), model)
    stages = finetune.stages  # conv1, bn1, layer1..4, fc
    assert len(stages) == 7 and stages[-1] is model.fc
    for epoch, trainable in ((0, 1), (1, 1), (2, 2), (5, 3), (100, 7)):
        model.train()
        finetune.apply(model, epoch)
        frozen = [False] * (7 - trainable) + [True] * trainable
        assert [all(p.requires_grad for p in s.parameters()) for s in stages] == frozen
        assert [s.training for s in stages] == [False] * (7 - trainable) + [True] * trainable


def test_discriminative_lrs_decay_towards_the_input():
    model = torchvision.models.resnet18(num_classes=10)
    opt = OmegaConf.create(
        {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9, "layer_decay": 1.0, "head_lr_mult": 1.0}
    )
    opt = optimizer_config(finetune_cfg("discriminative", lr_decay=0.5), opt)
    groups = optim.build_optimizer(opt, model).param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.1 * 0.5**k for k in range(6, -1, -1)])


def test_linear_probe_leaves_the_backbone_exactly_as_loaded(resnet18_file, train):
    output, run = train(*resnet18(resnet18_file), "finetune=linear_probe", "trainer.epochs=2")
    loaded = torch.load(resnet18_file, weights_only=True)
    trained = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    backbone = [k for k in loaded if not k.startswith("fc.")]
    assert all(torch.equal(loaded[k], trained[k]) for k in backbone)  # weights and BN statistics
    assert trained["fc.weight"].shape == (10, 512)
    assert "randomly initialised" not in output  # it has pretrained weights


def test_linear_probe_without_pretrained_weights_warns_once(train):
    output, _ = train("model=lenet5", "finetune=linear_probe", "trainer.epochs=1")
    lines = [line for line in output.splitlines() if "randomly initialised" in line]
    assert lines == [
        "finetune=linear_probe freezes a randomly initialised backbone: the model has no pretrained "
        "weights (model=torchvision model.weights=DEFAULT or model.weights_path=FILE)"
    ]


def test_group_learning_rates_are_what_the_config_says(resnet18_file, train):
    _, run = train(
        *resnet18(resnet18_file),
        "finetune=discriminative",
        "finetune.lr_decay=0.5",
        "optimizer.lr=0.01",
        "optimizer.head_lr_mult=10",
        "trainer.epochs=1",
    )
    groups = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == [f"stage{i}" for i in range(6)] + ["head"]
    assert [g["lr"] for g in groups] == pytest.approx([0.01 * 0.5**k for k in range(6, 0, -1)] + [0.1])


def test_missing_weights_file_is_one_clear_line(run_main, tmp_path):
    line = one_error_line(run_main("train", *resnet18(f"{tmp_path}/nope.pth"), *TINY))
    assert line == f"error: model.weights_path: {tmp_path}/nope.pth does not exist"


@pytest.mark.parametrize("mode", ["scratch", "full"])
def test_scratch_ignores_the_pretrained_weights_that_full_starts_from(mode, resnet18_file, tmp_path):
    """The transfer study's baseline: the same model and recipe from random weights. With lr 1e-30 one step leaves
    every weight as it was built."""
    overrides = ["trainer.max_steps=1", "optimizer.lr=1e-30", f"finetune={mode}", *TINY]
    cfg = cnnlab.compose([*resnet18(resnet18_file), *overrides])
    cnnlab.train(cfg, tmp_path / "run")
    loaded = torch.load(resnet18_file, weights_only=True)
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    convs = [k for k in loaded if k.endswith("conv1.weight") or k.endswith("conv2.weight")]
    assert len(convs) == 17 and all(torch.equal(loaded[k], trained[k]) == (mode == "full") for k in convs)
