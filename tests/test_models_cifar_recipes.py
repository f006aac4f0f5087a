"""He et al.'s CIFAR ResNet recipes: what they compose to, the lr they follow step by step, one real tiny run."""

from __future__ import annotations

import pytest
import torch
from conftest import read_json
from omegaconf import OmegaConf
from torch import nn

import cnnlab
from cnnlab import optim
from cnnlab.commands.train import validate
from cnnlab.data.build import split_train_val
from cnnlab.engine.trainer import planned_steps
from cnnlab.errors import CnnlabError


def recipe(name: str, *overrides: str):
    cfg = cnnlab.compose([f"experiment={name}", *overrides])
    validate(cfg)
    return cfg


@pytest.mark.parametrize(
    "name, depth",
    [
        ("cifar10_resnet20", 20),
        pytest.param("cifar10_resnet56", 56, marks=pytest.mark.slow),
        pytest.param("cifar10_resnet110", 110, marks=pytest.mark.slow),
    ],
)
def test_recipes_follow_the_paper(name, depth):
    cfg = recipe(name)
    assert cfg.model.depth == depth and cfg.model.shortcut == "A" and cfg.model.skip
    assert cfg.data.name == "cifar10" and cfg.data.batch_size == 128 and cfg.data.val_split == 0.1
    assert cfg.augment.crop_padding == 4 and cfg.augment.flip and not cfg.augment.resized_crop  # pad-4 crop + flip
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.momentum == 0.9
    assert cfg.optimizer.weight_decay == 1e-4 and cfg.optimizer.lr == 0.1 and not cfg.optimizer.nesterov
    train, val = split_train_val(50_000, cfg.data.val_split, cfg.seed)
    assert (len(train), len(val)) == (45_000, 5_000)
    per_epoch, total = planned_steps(cfg.trainer, 45_000 // 128)  # the loader drops the last partial batch
    assert (per_epoch, total) == (351, 64_000)
    factor = optim.schedule_factor(cfg.scheduler, per_epoch, total)
    lr = {step: 0.1 * factor(step) for step in (0, 399, 400, 31_999, 32_000, 47_999, 48_000, 63_999)}
    warm = 0.01 if depth == 110 else 0.1  # ResNet-110 warms up at 0.01 for 400 iterations
    assert lr == pytest.approx(
        {0: warm, 399: warm, 400: 0.1, 31_999: 0.1, 32_000: 0.01, 47_999: 0.01, 48_000: 0.001, 63_999: 0.001}
    )


def test_step_milestones_and_a_held_warmup_drive_the_optimizer():
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    cfg = OmegaConf.create(
        {
            "name": "multistep",
            "warmup_epochs": 0,
            "warmup_steps": 2,
            "warmup_factor": 0.1,
            "milestones": [3, 5],
            "unit": "steps",
            "gamma": 0.1,
        }
    )
    sched = optim.build_scheduler(cfg, optimizer, steps_per_epoch=100, total_steps=8)
    seen = []
    for _ in range(7):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    assert seen == pytest.approx([0.01, 0.01, 0.1, 0.01, 0.01, 0.001, 0.001])
    epochs = OmegaConf.merge(cfg, {"unit": "epochs", "warmup_steps": None, "milestones": [1]})
    factor = optim.schedule_factor(epochs, 10, 40)  # milestones in epochs of 10 steps; no warmup
    assert (factor(9), factor(10)) == pytest.approx((1.0, 0.1))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("unit", "iterations", "scheduler.unit"),
        ("warmup_factor", 2, "scheduler.warmup_factor"),
        ("warmup_steps", -1, "scheduler.warmup_steps"),
    ],
)
def test_bad_schedule_keys_name_the_key(key, value, message):
    cfg = OmegaConf.create(
        {
            "name": "multistep",
            "warmup_epochs": 0,
            "warmup_steps": None,
            "warmup_factor": None,
            "milestones": [3],
            "unit": "steps",
            "gamma": 0.1,
            key: value,
        }
    )
    with pytest.raises(CnnlabError, match=message):
        optim.schedule_factor(cfg, 10, 40)


@pytest.mark.slow  # ~6 s; the recipe's schedule and knobs are checked above without training
def test_resnet20_recipe_trains_end_to_end_on_synthetic_images(run_cli, tmp_path):
    run = tmp_path / "run"
    result = run_cli(
        "train",
        "experiment=cifar10_resnet20",
        "data=synthetic",
        "data.num_samples=96",
        "data.batch_size=16",
        "trainer.max_steps=6",
        "trainer.device=cpu",
        "trainer.image_grid=0",
        "model.width_mult=0.5",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = read_json(run / "metrics.json")
    assert metrics["steps"] == 6 and metrics["stop_reason"] == "max_steps"
