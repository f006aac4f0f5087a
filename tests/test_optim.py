"""Parameter groups, per-part learning rates and schedules, on small real models (no training needed)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cnnlab import optim
from cnnlab.errors import CnnlabError
from cnnlab.models.lenet import LeNet5


def opt_cfg(**kw):
    return OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, **kw})


def sched_cfg(name, **kw):
    return OmegaConf.create({"name": name, "warmup_epochs": 0, **kw})


def lrs_over(sched, optimizer, steps, per_epoch_metric=None, steps_per_epoch=10):
    out = []
    for step in range(steps):
        out.append(optimizer.param_groups[-1]["lr"])
        optimizer.step()
        sched.step()
        if per_epoch_metric is not None and (step + 1) % steps_per_epoch == 0:
            sched.epoch_end(per_epoch_metric)
    return out


def test_stages_split_features_and_end_with_the_head():
    stages = optim.stage_modules(LeNet5(10, 1, 28))
    assert [type(s).__name__ for s in stages] == ["Conv2d", "Conv2d", "Sequential"]  # conv, conv, classifier


def test_no_decay_on_norm_and_bias_parameters():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 3, 8, 8))
    optimizer = optim.build_optimizer(opt_cfg(decay_norm_bias=False), model)
    by_decay = {g["weight_decay"]: g["params"] for g in optimizer.param_groups}
    assert all(p.ndim > 1 for p in by_decay[5e-4]) and all(p.ndim == 1 for p in by_decay[0.0])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    default = optim.build_optimizer(opt_cfg(), model)
    assert len(default.param_groups) == 1 and default.param_groups[0]["weight_decay"] == 5e-4


def test_head_backbone_multipliers_and_layer_decay():
    model = LeNet5(10, 1, 28)
    groups = optim.build_optimizer(opt_cfg(head_lr_mult=10.0, backbone_lr_mult=0.5), model).param_groups
    assert [g["name"] for g in groups] == ["stage0", "stage1", "head"]
    assert [g["lr"] for g in groups] == pytest.approx([0.05, 0.05, 1.0])
    groups = optim.build_optimizer(opt_cfg(layer_decay=0.5), model).param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.025, 0.05, 0.1])


@pytest.mark.parametrize(
    "name, kw, check",
    [
        ("none", {}, lambda lr: all(v == pytest.approx(0.1) for v in lr)),
        (
            "step",
            {"step_size": 2, "gamma": 0.5},
            lambda lr: lr[19] == pytest.approx(0.1) and lr[20] == pytest.approx(0.05),
        ),
        (
            "multistep",
            {"milestones": [1, 3], "gamma": 0.1},
            lambda lr: lr[9] == pytest.approx(0.1) and lr[10] == pytest.approx(0.01) and lr[30] == pytest.approx(0.001),
        ),
        ("exponential", {"gamma": 0.9}, lambda lr: lr[25] == pytest.approx(0.1 * 0.81)),
        ("cosine", {"min_lr_ratio": 0.0}, lambda lr: lr[0] == pytest.approx(0.1) and lr[-1] < 0.001),
    ],
)
def test_schedules_step_per_batch(name, kw, check):
    model = nn.Linear(2, 2)
    optimizer = optim.build_optimizer(opt_cfg(), model)
    sched = optim.build_scheduler(sched_cfg(name, **kw), optimizer, steps_per_epoch=10, total_steps=40)
    assert check(lrs_over(sched, optimizer, 40))


def test_warmup_ramps_linearly_in_front_of_any_schedule():
    optimizer = optim.build_optimizer(opt_cfg(), nn.Linear(2, 2))
    sched = optim.build_scheduler(sched_cfg("step", warmup_epochs=1, step_size=10, gamma=0.1), optimizer, 10, 40)
    lr = lrs_over(sched, optimizer, 12)
    assert lr[:10] == pytest.approx([0.01 * (i + 1) for i in range(10)]) and lr[11] == pytest.approx(0.1)


def test_onecycle_peaks_at_lr_and_cycles_momentum():
    optimizer = optim.build_optimizer(opt_cfg(), nn.Linear(2, 2))
    sched = optim.build_scheduler(sched_cfg("onecycle", pct_start=0.25), optimizer, 10, 40)
    lr, momentum = [], []
    for _ in range(40):
        lr.append(optimizer.param_groups[0]["lr"])
        momentum.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        sched.step()
    assert lr[0] == pytest.approx(0.1 / 25) and max(lr) == pytest.approx(0.1, rel=1e-3) and lr[-1] < 1e-4
    assert min(momentum) < 0.9 and momentum[lr.index(max(lr))] == min(momentum)
    with pytest.raises(CnnlabError, match="own warm-up"):
        optim.build_scheduler(sched_cfg("onecycle", warmup_epochs=1), optimizer, 10, 40)


def test_plateau_cuts_lr_after_patience_and_survives_a_state_round_trip():
    optimizer = optim.build_optimizer(opt_cfg(), nn.Linear(2, 2))
    sched = optim.build_scheduler(sched_cfg("plateau", factor=0.1, patience=1, warmup_epochs=1), optimizer, 10, 100)
    lr = lrs_over(sched, optimizer, 50, per_epoch_metric=50.0)  # the metric never improves
    assert lr[5] == pytest.approx(0.06)  # still warming up
    assert lr[15] == pytest.approx(0.1) and lr[-1] < 0.1
    again = optim.build_scheduler(sched_cfg("plateau", factor=0.1, patience=1, warmup_epochs=1), optimizer, 10, 100)
    again.load_state_dict(sched.state_dict())
    assert again.plateau.num_bad_epochs == sched.plateau.num_bad_epochs and again.steps == 50


def test_unknown_schedule_is_a_clear_error():
    optimizer = optim.build_optimizer(opt_cfg(), nn.Linear(2, 2))
    with pytest.raises(CnnlabError, match="scheduler.name 'cyclic' is unknown"):
        optim.build_scheduler(sched_cfg("cyclic"), optimizer, 10, 40)


def test_any_torch_optimizer_through_target():
    optimizer = optim.build_optimizer(
        OmegaConf.create({"_target_": "torch.optim.RMSprop", "lr": 0.01}), nn.Linear(2, 2)
    )
    assert isinstance(optimizer, torch.optim.RMSprop)
    with pytest.raises(CnnlabError, match="cannot build optimizer"):
        optim.build_optimizer(
            OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.01, "nonsense": 1}), nn.Linear(2, 2)
        )
