"""The speedrun net's data-dependent whitening stem and its flip test-time augmentation."""

from __future__ import annotations

import pytest
import torch

from cnnlab.models.speedrun import SpeedrunNet, WhiteningStem


def test_whitening_stem_fits_once_and_whitens_patches():  # the fit itself: data_init calls it before training
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.2], [0.0, 0.5, 0.9], [0.3, 0.0, 1.0]])
    x = torch.einsum("ij,bjhw->bihw", mix, torch.randn(64, 3, 16, 16))  # correlated channels
    stem = WhiteningStem(3).train()
    assert not stem.fitted
    assert stem(x).abs().max() == 0  # forward never fits (a per-step check would be a host sync on CUDA)
    stem.init_from_batch(x)
    out = stem(x)
    assert stem.fitted and out.shape == (64, 24, 15, 15)
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)  # the first 12 filters; the rest are their negatives
    cov = torch.cov(half.T)
    assert torch.allclose(cov, torch.eye(12), atol=0.05)
    before = stem.weight.clone()
    stem.init_from_batch(torch.randn(8, 3, 16, 16) * 5)  # fitted already (e.g. restored): no refit
    stem(torch.randn(8, 3, 16, 16) * 5)
    assert torch.equal(stem.weight, before)
    assert "weight" in stem.state_dict() and "fitted" in stem.state_dict()


def test_eval_mode_averages_over_the_mirror_image():
    torch.manual_seed(0)
    model = SpeedrunNet(num_classes=10, widths=(8, 16, 16))
    x = torch.randn(4, 3, 32, 32)
    model.fit(x)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), model(x.flip(3)), atol=1e-5)
        assert not torch.allclose(model.logits(x), model.logits(x.flip(3)), atol=1e-5)


# ------------------------------------------------------------------------------ airbench's ingredients
def test_airbench_knobs_shape_the_net():
    import pytest

    from cnnlab.errors import CnnlabError

    torch.manual_seed(0)
    model = SpeedrunNet(
        widths=(8, 16, 16), bn_momentum=0.3, freeze_bn_weight=True, dirac_init=True, head_std=1.0, scale=None
    )
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all(n.momentum == 0.3 and not n.weight.requires_grad for n in norms)
    assert all(n.bias.requires_grad for n in norms)
    x = torch.randn(2, 16, 8, 8)
    assert torch.allclose(model.groups[1].conv2(x), x, atol=1e-6)  # in == out: the whole conv is the identity
    y = torch.randn(2, 8, 8, 8)
    assert torch.allclose(model.groups[1].conv1(y)[:, :8], y, atol=1e-6)  # in < out: the first `in` filters
    assert model.head.weight.std().item() == pytest.approx(1.0) and model.scale == 1 / 16
    plain = SpeedrunNet(widths=(8, 16, 16))
    assert all(p.requires_grad for p in plain.parameters()) and plain.scale == 1 / 9
    assert not torch.allclose(plain.groups[1].conv2(x), x, atol=1e-3)
    for kw, key in (
        ({"bn_momentum": 2}, "bn_momentum"),
        ({"whiten_images": 0}, "whiten_images"),
        ({"scale": -1}, "scale"),
    ):
        with pytest.raises(CnnlabError, match=f"model.{key} must be"):
            SpeedrunNet(widths=(8, 16, 16), **kw)


def test_whitening_fits_on_n_clean_training_images():
    import pytest
    from omegaconf import OmegaConf

    from cnnlab import data as data_lib
    from cnnlab.engine.data_init import fit_data_dependent_layers
    from cnnlab.errors import CnnlabError
    from cnnlab.schema.common import AugmentConfig, DataConfig

    data_cfg = OmegaConf.merge(
        OmegaConf.structured(DataConfig),
        {"name": "synthetic", "num_samples": 200, "batch_size": 16, "num_workers": 0},
    )
    aug = OmegaConf.merge(OmegaConf.structured(AugmentConfig), {"crop_padding": 4, "flip": True})
    bundle = data_lib.build(data_cfg, aug, torch.device("cpu"))
    model = SpeedrunNet(widths=(8, 8, 8), whiten_images=50)
    fit_data_dependent_layers(model, bundle.train)
    reference = WhiteningStem(3)
    reference.fit(bundle.train.normalise(bundle.train.images[:50]))  # unaugmented, the first 50
    assert torch.equal(model.whiten.weight, reference.weight)
    on_batch = SpeedrunNet(widths=(8, 8, 8))
    fit_data_dependent_layers(on_batch, bundle.train)  # default: the first clean batch (16 images, not 50)
    assert not torch.allclose(on_batch.whiten.weight, reference.weight, atol=1e-3)
    data_cfg.loader = "dataloader"
    with pytest.raises(CnnlabError, match="model.whiten_images needs"):
        fit_data_dependent_layers(
            SpeedrunNet(widths=(8, 8, 8), whiten_images=50), data_lib.build(data_cfg, aug, torch.device("cpu")).train
        )


def test_whitening_bias_trains_only_in_its_window(tmp_path):
    from test_no_sync import config

    from cnnlab import data as data_lib
    from cnnlab import models, optim
    from cnnlab.callbacks.base import Callback
    from cnnlab.callbacks.epoch_layers import EpochLayers
    from cnnlab.engine.trainer import Trainer, planned_steps

    class Record(Callback):
        def __init__(self):
            self.biases = []

        def on_epoch_end(self, trainer, model, data, row):
            self.biases.append(model.whiten.bias.detach().clone())

    cfg = config("trainer.epochs=3", "model.whiten_bias_epochs=1", "augment=basic")
    torch.manual_seed(0)
    bundle = data_lib.build(cfg.data, cfg.augment, torch.device("cpu"), seed=0)
    model = models.build(cfg.model, bundle.spec)
    per_epoch, total = planned_steps(cfg.trainer, len(bundle.train))
    optimizer, scheduler = optim.build(cfg.optimizer, cfg.scheduler, model, per_epoch, total)
    record = Record()
    trainer = Trainer(cfg.trainer, tmp_path, torch.device("cpu"), callbacks=[EpochLayers(), record])
    trainer.fit(model, bundle, optimizer, scheduler)
    b1, b2, b3 = record.biases
    assert b1.abs().sum() > 0  # trained in epoch 1
    assert torch.equal(b1, b2) and torch.equal(b2, b3)  # then left alone (no grad: no momentum, no decay)
    assert not model.whiten.bias.requires_grad
    model.whiten.set_epoch(0)  # a run resumed inside the window trains it again
    assert model.whiten.bias.requires_grad


def test_flip_translate_tta_is_airbenchs_six_view_average():
    from cnnlab.analysis.tta import FlipAverage, with_tta

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    x = torch.randn(4, 3, 8, 8)

    def mirror(v):
        return 0.5 * model(v) + 0.5 * model(v.flip(-1))

    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    expected = 0.5 * mirror(x) + 0.5 * torch.stack([mirror(padded[..., :8, :8]), mirror(padded[..., 2:, 2:])]).mean(0)
    with torch.no_grad():
        assert torch.allclose(with_tta(model, "flip_translate")(x), expected, atol=1e-6)
        assert torch.allclose(with_tta(model, "flip")(x), mirror(x), atol=1e-6)
        assert with_tta(model, "none") is model and isinstance(with_tta(model, "flip"), FlipAverage)


@pytest.mark.slow
def test_trainer_tta_is_what_eval_reports(tmp_path):
    import pytest
    from conftest import read_json
    from trained_run import compose

    from cnnlab.commands import evaluate, train

    run_dir = tmp_path / "run"
    common = ["model=speedrun", "model.widths=[8,16,16]", "model.tta_flip=false", "data=synthetic"]
    train.run(
        compose(
            "train",
            *common,
            "data.num_samples=200",
            "data.batch_size=16",
            "trainer.epochs=2",
            "trainer.tta=flip_translate",
            "trainer.progress=none",
            "trainer.image_grid=0",
        ),
        run_dir=run_dir,
    )
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["test_tta"] == "flip_translate"
    ckpt = run_dir / "checkpoints" / "best.pt"
    report = evaluate.run(compose("eval", f"checkpoint={ckpt}", "tta=flip_translate"))
    assert (run_dir / "eval" / "test-tta_flip_translate" / "eval.json").is_file()
    assert report["top1"] == pytest.approx(metrics["test_acc"]) and report["loss"] == pytest.approx(
        metrics["test_loss"]
    )
    plain = evaluate.run(compose("eval", f"checkpoint={ckpt}", f"output_dir={tmp_path / 'plain'}"))
    assert plain["loss"] != pytest.approx(metrics["test_loss"])  # the views changed the logits


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["cifar10_cpu_94", "cifar10_cpu_90"])
def test_airbench_recipes_compose_and_train_a_few_steps(recipe, tmp_path, data_root):
    """The recipes as written (Muon, whitening on clean images, bias window, alternating flip, 6-view TTA) on a
    CIFAR-10 subset for 2 steps: everything is wired; their accuracy and time are measured by measure_recipe.py."""
    from conftest import read_json
    from trained_run import compose

    from cnnlab.commands import train

    cfg = compose(
        "train",
        f"experiment={recipe}",
        "data.subset=20",
        "data.batch_size=64",
        "data.eval_batch_size=50",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "trainer.progress=none",
    )
    assert cfg.optimizer._target_ == "cnnlab.optim_muon.muon_with_other" and cfg.trainer.tta == "flip_translate"
    assert cfg.augment.flip_mode == "alternate" and cfg.augment.crop_pad_mode == "reflect"
    metrics = train.run(cfg, run_dir=tmp_path / "run")
    assert metrics["steps"] == 2 and metrics["test_tta"] == "flip_translate"
    assert read_json(tmp_path / "run" / "metrics.json")["stop_reason"] == "max_steps"
