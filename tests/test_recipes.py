"""Every recipe composes, passes validation and builds its model and optimizer (in-process, no data, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

import cnnlab
from cnnlab import models, optim
from cnnlab.data import DataSpec
from cnnlab.engine.trainer import planned_steps
from cnnlab.finetune import Finetune, optimizer_config
from cnnlab.paths import config_dir
from cnnlab.schema.train import validate as validate_train

RECIPES = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))


def cfg_uses_downloads(name: str) -> bool:
    return "weights: DEFAULT" in (Path(config_dir()) / "experiment" / f"{name}.yaml").read_text()


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_composes_and_builds(name):
    offline = ["model.weights=null"] if cfg_uses_downloads(name) else []  # no pretrained download in tests
    if "weights_path: outputs/" in (Path(config_dir()) / "experiment" / f"{name}.yaml").read_text():
        offline.append("model.weights_path=null")  # the source run it transfers from is trained first (test_studies)
    cfg = cnnlab.compose([f"experiment={name}", *offline])
    validate_train(cfg)
    spec = DataSpec(cfg.data.num_classes or 10, cfg.data.channels or 3, cfg.data.image_size or 32)
    model = models.build(cfg.model, spec)
    steps_per_epoch, total = planned_steps(cfg.trainer, 100)
    optimizer, _ = optim.build(
        optimizer_config(cfg.finetune, cfg.optimizer), cfg.scheduler, model, steps_per_epoch, total
    )
    Finetune(cfg.finetune, model)
    assert total == 100 * cfg.trainer.epochs
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_the_recipes_the_readme_promises_exist():
    assert {
        "mnist_lenet5",
        "fashion_mnist_cnn",
        "cifar10_simple_cnn",
        "cifar10_cpu",
        "cifar10_resnet18",
        "cifar10_vgg16_bn",
        "cifar100_resnet18",
        "transfer_pets_resnet50",
    } <= set(RECIPES)
