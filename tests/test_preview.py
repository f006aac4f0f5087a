"""`cnnlab preview`: the augmented grid shows exactly what the training loader makes; bad values one line."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from trained_run import compose, one_error_line

from cnnlab.commands import preview
from cnnlab.data import build
from cnnlab.errors import CnnlabError


def test_the_batch_is_the_training_loaders(tmp_path):
    cfg = compose("preview", "augment=[basic,cutout]", "augment.cutout=8", "count=12")
    x, y = preview.augmented_batch(build(cfg.data, cfg.augment, torch.device("cpu"), seed=0).train, 12)
    fresh = build(cfg.data, cfg.augment, torch.device("cpu"), seed=0).train
    fresh.set_epoch(1)
    x1, y1 = next(iter(fresh))
    assert torch.equal(x, x1[:12]) and torch.equal(y, y1[:12])
    plain = build(cfg.data, None, torch.device("cpu"), seed=0).train
    plain.set_epoch(1)
    assert not torch.equal(x, next(iter(plain))[0][:12])  # the augmentation did something
    report = preview.run(cfg, run_dir=tmp_path)
    with Image.open(report["output"]) as picture:
        assert picture.format == "PNG" and picture.width >= 8 * 100  # 8 columns of > 1 inch at 100 dpi
    assert report["count"] == 12 and report["output"] == str(tmp_path / "augment_preview.png")


def test_more_images_than_one_batch_and_mixup_captions(tmp_path):
    cfg = compose("preview", "augment=mixup", "augment.mixup_alpha=1.0", "data.batch_size=8", "count=20")
    x, y = preview.augmented_batch(build(cfg.data, cfg.augment, torch.device("cpu"), seed=0).train, 20)
    assert x.shape == (20, 1, 32, 32) and y.shape == (20, 10)  # soft labels from mixup
    assert torch.allclose(y.sum(1), torch.ones(20))


def test_cli_writes_the_png(run_main, tmp_path):
    out = tmp_path / "aug.png"
    code, err = run_main("preview", "augment=[basic]", "count=8", f"output={out}", "hydra.run.dir=run")
    assert code == 0, err[-2000:]
    assert out.read_bytes()[:4] == b"\x89PNG" and "8 augmented digits images" in run_main.stdout


def test_bad_values(tmp_path, run_main):
    with pytest.raises(CnnlabError, match="count must be >= 1"):
        preview.run(compose("preview", "count=0"), run_dir=tmp_path)
    line = one_error_line(run_main("preview", "augment.cutout=-3"))
    assert "augment.cutout" in line
