"""No hidden host syncs inside an epoch: a CPU stand-in for CUDA's sync debug mode.

A TorchFunctionMode counts the tensor calls that wait for the device on CUDA (`.item()`, `bool()`,
`float()`, `int()`, `.tolist()`, data-dependent shapes such as nonzero/unique/masked_select). A real
Trainer trains a few steps of the speedrun net with most features on; the count is taken only while
the training loader is being iterated (the epoch loop) and with the progress clock frozen, so that
no log interval falls due: it must be zero.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import cnnlab
from cnnlab import data as data_lib
from cnnlab import models, optim
from cnnlab.engine import progress
from cnnlab.engine.data_init import fit_data_dependent_layers
from cnnlab.engine.trainer import Trainer, planned_steps

SYNCING = {
    "item",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "tolist",
    "numpy",
    "nonzero",
    "argwhere",
    "unique",
    "unique_consecutive",
    "masked_select",
    "cpu",
}


class SyncCounter(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.active, self.calls = False, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if self.active and (name in SYNCING or (name == "__getitem__" and _bool_index(args))):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def _bool_index(args) -> bool:
    index = args[1] if len(args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class Watched:
    """The training loader, counting syncs while the trainer iterates it (armed by set_epoch, which only
    the trainer calls: the one batch a callback draws before training is not counted)."""

    def __init__(self, loader, counter: SyncCounter):
        self.loader, self.counter, self.armed = loader, counter, False

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.armed = True
        self.loader.set_epoch(epoch)

    def __iter__(self):
        self.counter.active = self.armed
        try:
            yield from self.loader
        finally:
            self.counter.active = False


def config(*overrides: str):
    return cnnlab.compose(
        [
            "model=speedrun",
            "model.widths=[8,16,16]",
            "data=synthetic",
            "data.num_samples=320",
            "data.batch_size=32",
            "augment=[basic,colorjitter,randaugment,erasing,cutout,mixup,cutmix]",
            "optimizer=sgd",
            "trainer.epochs=2",
            "trainer.device=cpu",
            "trainer.progress=plain",
            "trainer.label_smoothing=0.1",
            "trainer.grad_clip=5.0",
            "trainer.image_grid=0",
            *overrides,
        ]
    )


def train(cfg, run_dir: Path, counter: SyncCounter) -> dict:
    device = torch.device("cpu")
    torch.manual_seed(cfg.seed)
    bundle = data_lib.build(cfg.data, cfg.augment, device, seed=cfg.seed)
    next(iter(bundle.train))  # fills the policies' magnitude tables (CPU tensors, once per run: no device sync)
    bundle.train = Watched(bundle.train, counter)
    model = models.build(cfg.model, bundle.spec)
    per_epoch, total = planned_steps(cfg.trainer, len(bundle.train))
    optimizer, scheduler = optim.build(cfg.optimizer, cfg.scheduler, model, per_epoch, total)
    trainer = Trainer(cfg.trainer, run_dir, device, seed=cfg.seed, config={})
    with counter:
        return trainer.fit(model, bundle, optimizer, scheduler)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_host_sync_inside_an_epoch(tmp_path, monkeypatch, precision):
    monkeypatch.setattr(progress, "_now", lambda: 0.0)  # the progress clock stands still: nothing falls due
    counter = SyncCounter()
    metrics = train(config(f"trainer.precision={precision}"), tmp_path, counter)
    assert metrics["epochs"] == 2 and metrics["steps"] == 18  # 288 training images, 9 batches an epoch
    assert counter.calls == [], counter.calls
    stem = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)["model"]["whiten.weight"]
    assert stem.abs().sum() > 0  # the whitening stem was fitted (before training, by the trainer)


def test_no_host_sync_with_ema(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "_now", lambda: 0.0)
    counter = SyncCounter()
    train(config("trainer.ema_decay=0.9"), tmp_path, counter)
    assert counter.calls == [], counter.calls


@pytest.mark.parametrize(
    "overrides", [["trainer.accumulate=2"], ["trainer.nan_policy=skip_batch", "trainer.accumulate=2"]]
)
def test_no_host_sync_with_accumulation_or_skip_batch(tmp_path, monkeypatch, overrides):
    monkeypatch.setattr(progress, "_now", lambda: 0.0)
    counter = SyncCounter()
    train(config(*overrides), tmp_path, counter)
    assert counter.calls == [], counter.calls


def test_the_counter_sees_a_per_step_check():
    counter = SyncCounter()
    flag = torch.zeros((), dtype=torch.bool)
    with counter:
        counter.active = True
        if not flag:  # what the speedrun stem used to do in every forward pass
            pass
        torch.arange(4)[torch.arange(4) > 1]
        float(torch.ones(()))
    assert counter.calls == ["__bool__", "__getitem__", "__float__"]


def test_whitening_stem_is_fitted_once_before_training():
    from cnnlab.models.speedrun import SpeedrunNet

    class Batches:
        def __init__(self, x):
            self.x, self.drawn = x, 0

        def __iter__(self):
            self.drawn += 1
            yield self.x, torch.zeros(len(self.x), dtype=torch.long)

    class Data:
        train = Batches(torch.randn(16, 3, 16, 16))

    model = SpeedrunNet(widths=(8, 8, 8))
    assert not model.whiten.fitted and model.whiten.weight.abs().sum() == 0
    fit_data_dependent_layers(model, Data.train)
    fitted = model.whiten.weight.clone()
    assert model.whiten.fitted and fitted.abs().sum() > 0
    Data.train.x = torch.randn(16, 3, 16, 16) * 5
    fit_data_dependent_layers(model, Data.train)  # a resumed run: already fitted, left alone
    assert torch.equal(model.whiten.weight, fitted)


def test_per_step_scalars_are_read_at_the_log_interval_sync_only(tmp_path, monkeypatch):
    """train/loss_step, train/lr and train/epoch every log_every steps: one read of the running sums per log step
    (the one the interval always had), none per step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setattr(progress, "_now", lambda: 0.0)
    counter = SyncCounter()
    metrics = train(config("trainer.log_every=3"), tmp_path, counter)
    assert metrics["steps"] == 18
    assert counter.calls == ["tolist"] * 6, counter.calls  # steps 3, 6, ... 18: the sums read once each
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    for tag in ("train/loss_step", "train/lr", "train/epoch"):
        assert [e.step for e in events.Scalars(tag)] == [3, 6, 9, 12, 15, 18], tag
    assert [e.value for e in events.Scalars("train/epoch")] == [1, 1, 1, 2, 2, 2]  # the epoch in progress, from 1
    # each point is the mean of its interval's batches (3 of 32 images): an epoch's three average to its train/loss
    steps = [e.value for e in events.Scalars("train/loss_step")]
    epoch_losses = [e.value for e in events.Scalars("train/loss")]
    assert [e.step for e in events.Scalars("train/loss")] == [9, 18]  # at the step that ends the epoch
    assert epoch_losses == pytest.approx([sum(steps[:3]) / 3, sum(steps[3:]) / 3], rel=1e-5)
    assert len(set(steps)) == 6
