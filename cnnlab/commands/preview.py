"""`cnnlab preview data=... augment=[...]`: a PNG grid of augmented training images, exactly as the training
loader makes them (first batch of epoch 1, same seed), so an augmentation can be judged before training."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.markup import escape

from cnnlab import data as data_lib
from cnnlab.analysis.figures import save
from cnnlab.analysis.grid import denormalise, grid_figure, label_captions
from cnnlab.data.augment import check as check_augment
from cnnlab.engine import outputs
from cnnlab.engine.progress import make_console, say
from cnnlab.schema.common import AugmentConfig
from cnnlab.schema.preview import validate


def mixing(loader) -> bool:
    return getattr(loader, "mixer", None) is not None


def augmented_batch(loader, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` images (still normalised) and labels of the loader's first epoch-1 batches. With
    MixUp/CutMix, which draw one lambda per batch, as few per batch as fill the grid from the whole epoch: one
    batch alone may show no visible mixing (Beta(0.2, 0.2) draws mostly near 0 or 1)."""
    loader.set_epoch(1)
    per = math.ceil(count / max(1, len(loader))) if mixing(loader) else count
    xs, ys, have = [], [], 0
    for x, y in loader:
        xs.append(x[: min(per, count - have)])
        ys.append(y[: min(per, count - have)])
        have += len(xs[-1])
        if have >= count:
            break
    return torch.cat(xs), torch.cat(ys)


def describe(augment: DictConfig) -> str:
    """The augment keys that differ from the schema's defaults, e.g. "crop_padding=4, flip=True"."""
    defaults = OmegaConf.structured(AugmentConfig)
    changed = [f"{k}={v}" for k, v in augment.items() if v != defaults.get(k)]
    return ", ".join(changed) or "no augmentation"


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """`run_dir` defaults to Hydra's output dir (pass one to call this without a live HydraConfig)."""
    validate(cfg)
    check_augment(cfg)
    out = outputs.check(  # checked before anything is read or written
        cfg.output or Path(run_dir or HydraConfig.get().runtime.output_dir) / "augment_preview.png"
    )
    data = data_lib.build(cfg.data, cfg.augment, torch.device("cpu"), seed=cfg.seed)
    x, y = augmented_batch(data.train, cfg.count)
    images = denormalise(x, data.spec.mean, data.spec.std)
    title = f"{cfg.data.name} training images, augmented: {describe(cfg.augment)} (seed {cfg.seed}, epoch 1)"
    if mixing(data.train):
        title += "\nfrom successive batches: each batch draws its own mixing lambda"
    fig = grid_figure(images, label_captions(y, data.spec.classes), title=title, columns=cfg.columns)
    outputs.make_dir(out.parent)
    save(fig, out)
    say(make_console(), f"{len(images)} augmented {cfg.data.name} images -> {escape(str(out))}")
    return {"output": str(out), "count": len(images)}
