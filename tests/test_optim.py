"""Parameter groups, per-part learning rates and schedules, on small real models (no training needed)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

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
        ("linear", {"min_lr_ratio": 0.0}, lambda lr: lr[10] == pytest.approx(0.075) and lr[30] == pytest.approx(0.025)),
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


# ------------------------------------------------------------------------------------------------ muon
@functools.cache
def _muon_yaml():
    from cnnlab import compose

    return compose(["optimizer=muon"]).optimizer


def muon_cfg(**kw):
    cfg = copy.deepcopy(_muon_yaml())  # composed once: each compose costs ~0.1 s
    for key, value in kw.items():
        cfg[key] = value
    return cfg


def small_convnet():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10, bias=True),
    )


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_filter_muon_updates_a_filter_bank_as_torch_muon_updates_its_matrix(layout):
    from cnnlab.optim_muon import FilterMuon

    torch.manual_seed(0)
    conv = nn.Parameter(torch.randn(8, 4, 3, 3).contiguous(memory_format=layout))
    matrix = nn.Parameter(conv.detach().permute(0, 2, 3, 1).reshape(8, -1).clone())  # columns in memory order
    if layout == torch.contiguous_format:
        matrix = nn.Parameter(conv.detach().reshape(8, -1).clone())
    ours = FilterMuon([conv], lr=0.1, momentum=0.6, nesterov=True, weight_decay=0.01, ns_steps=3)
    ref = torch.optim.Muon([matrix], lr=0.1, momentum=0.6, nesterov=True, weight_decay=0.01, ns_steps=3)
    for _ in range(3):
        grad = torch.randn(8, 4, 3, 3).contiguous(memory_format=layout)
        conv.grad = grad
        matrix.grad = grad.permute(0, 2, 3, 1).reshape(8, -1) if layout == torch.channels_last else grad.reshape(8, -1)
        ours.step()
        ref.step()
    mine = conv.detach().permute(0, 2, 3, 1).reshape(8, -1) if layout == torch.channels_last else conv.reshape(8, -1)
    assert torch.equal(mine, matrix.detach())
    assert conv.is_contiguous(memory_format=layout)


def test_filter_muon_can_normalise_the_weights_first():
    from cnnlab.optim_muon import FilterMuon

    weight = nn.Parameter(torch.randn(16, 8, 3, 3) * 7)
    optimizer = FilterMuon([weight], lr=1e-9, normalize_weights=True)
    weight.grad = torch.randn_like(weight)
    optimizer.step()
    assert weight.norm().item() == pytest.approx(4.0, rel=1e-4)  # sqrt(out channels)


def test_muon_takes_the_filters_and_sgd_the_rest_with_one_scheduler():
    model = small_convnet()
    optimizer = optim.build_optimizer(muon_cfg(lr=0.02, other_lr=0.5), model)
    muon_params = {id(p) for p in optimizer.muon.param_groups[0]["params"]}
    assert muon_params == {id(model[0].weight), id(model[3].weight)}  # the convs; not the 2-D head
    other = {id(p) for g in optimizer.other.param_groups for p in g["params"]}
    assert other == {id(p) for p in model.parameters()} - muon_params
    assert isinstance(optimizer.other, torch.optim.SGD) and isinstance(optimizer.muon, torch.optim.Muon)
    sched = optim.build_scheduler(sched_cfg("cosine"), optimizer, 10, 10)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(10, (4,))
    for _ in range(5):
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sched.step()
    assert optimizer.muon.param_groups[0]["lr"] == pytest.approx(0.01)  # half-way down the cosine
    assert optimizer.other.param_groups[0]["lr"] == pytest.approx(0.25)
    assert all(p.grad is None for p in model.parameters())
    assert optimizer.state  # both children's state, one view (nan_policy=skip_batch reads it)


def test_muon_other_adamw_and_constant_decay():
    model = small_convnet()
    optimizer = optim.build_optimizer(
        muon_cfg(other="adamw", other_lr=0.01, other_weight_decay=0.1, head_lr_mult=10.0, other_constant_decay=True),
        model,
    )
    assert isinstance(optimizer.other, torch.optim.AdamW)
    products = {round(g["lr"] * g["weight_decay"], 12) for g in optimizer.other.param_groups}
    assert products == {0.001}  # the head's 10x lr came with a 10x smaller weight decay


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"other": "rmsprop"}, "optimizer.other must be one of sgd, adamw"),
        ({"other_lr": 0}, "optimizer.other_lr must be"),
        ({"ns_steps": 0}, "optimizer.ns_steps must be"),
        ({"adjust_lr_fn": "fast"}, "optimizer.adjust_lr_fn must be"),
        ({"other_momentum": 0.0}, "cannot build optimizer=muon"),  # nesterov needs momentum (torch's check)
    ],
)
def test_muon_bad_values_are_one_line(kw, message):
    with pytest.raises(CnnlabError, match=message):
        optim.build_optimizer(muon_cfg(**kw), small_convnet())
    with pytest.raises(CnnlabError, match="no >= 2-D weights outside its head"):
        optim.build_optimizer(muon_cfg(), nn.Linear(3, 2))


def test_muon_resume_is_bit_exact(tmp_path):
    from cnnlab.engine import checkpoint

    torch.manual_seed(1)
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(10, (8,))) for _ in range(8)]

    def fresh():
        model = small_convnet().to(memory_format=torch.channels_last)
        optimizer = optim.build_optimizer(muon_cfg(normalize_weights=True, lr=0.05), model)
        return model, optimizer, optim.build_scheduler(sched_cfg("cosine"), optimizer, 8, 8)

    def train(model, optimizer, sched, steps):
        for x, y in steps:
            nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sched.step()

    straight = fresh()
    train(*straight, batches)
    first = fresh()
    train(*first, batches[:4])
    path = tmp_path / "half.pt"
    checkpoint.save(
        path, {"model": first[0].state_dict(), "opt": first[1].state_dict(), "sched": first[2].state_dict()}
    )
    state = checkpoint.load(path)
    resumed = fresh()
    resumed[0].load_state_dict(state["model"])
    resumed[1].load_state_dict(state["opt"])
    resumed[2].load_state_dict(state["sched"])
    train(*resumed, batches[4:])
    for a, b in zip(straight[0].state_dict().values(), resumed[0].state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(KeyError):  # another optimizer's state: the trainer turns this into one line
        resumed[1].load_state_dict(torch.optim.SGD(small_convnet().parameters(), lr=0.1).state_dict())


def test_no_host_sync_with_muon(tmp_path, monkeypatch):
    from test_no_sync import SyncCounter, config, train

    from cnnlab.engine import progress

    monkeypatch.setattr(progress, "_now", lambda: 0.0)  # the progress clock stands still: nothing falls due
    counter = SyncCounter()
    metrics = train(config("optimizer=muon", "optimizer.normalize_weights=true"), tmp_path, counter)
    assert metrics["steps"] == 18
    assert counter.calls == [], counter.calls


def test_each_scheduler_yaml_sets_exactly_the_keys_its_registered_schedule_declares():
    from cnnlab.paths import config_dir

    files = sorted(Path(config_dir(), "scheduler").glob("*.yaml"))
    assert {f.stem for f in files} == set(optim.SCHEDULES)
    for f in files:
        assert tuple(OmegaConf.load(f).keys()) == optim.SCHEDULES[f.stem].keys, f.name


def test_a_new_schedule_is_one_registered_function_and_config_checks_its_keys(monkeypatch):
    from cnnlab.schema.train import _check_scheduler_keys

    monkeypatch.setattr(optim, "SCHEDULES", dict(optim.SCHEDULES))

    @optim.schedule("halving", "every")
    def _halving(cfg, plan):
        return lambda step: 0.5 ** (step // cfg.every)

    _check_scheduler_keys(sched_cfg("halving", every=5))  # declared: accepted without any YAML on disk
    with pytest.raises(CnnlabError, match="scheduler.gamma.*'halving' does not read it"):
        _check_scheduler_keys(sched_cfg("halving", every=5, gamma=0.1))
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = optim.build_scheduler(sched_cfg("halving", every=5), optimizer, steps_per_epoch=10, total_steps=20)
    assert lrs_over(sched, optimizer, 11)[::5] == [1.0, 0.5, 0.25]
