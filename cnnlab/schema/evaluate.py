"""`cnnlab eval`'s schema and checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING, DictConfig

from cnnlab.checks import choice, number
from cnnlab.schema.common import PRECISIONS, check_keys, resolve_all


@dataclass
class EvalSchema:
    checkpoint: str = MISSING
    split: str = "test"  # test | val | train
    data_root: Optional[str] = None  # null: the root stored in the checkpoint
    batch_size: Optional[int] = None
    device: str = "auto"
    output: Optional[str] = None  # eval.json's path (null: in output_dir)
    output_dir: Optional[str] = None  # null: <run>/eval/<split>/ beside the checkpoint's run (or beside `output`)
    tta: str = "none"  # none | flip (image + mirror image) | flip_translate (airbench: flip x 1-pixel shifts, 6 views)
    precision: Optional[str] = None  # null: the run's trainer.precision | auto | bf16_native | fp32 | bf16 | fp16
    grid: int = 32  # misclassified images in the picture (0: none)
    pairs: int = 10  # most-confused class pairs reported


def validate(cfg: DictConfig) -> None:
    resolve_all(cfg)
    check_keys(cfg, EvalSchema)
    choice(cfg, "split", ("test", "val", "train"))
    number(cfg, "batch_size", low=1, integer=True)
    choice(cfg, "tta", ("none", "flip", "flip_translate"))
    if cfg.precision is not None:
        choice(cfg, "precision", PRECISIONS)
    number(cfg, "grid", low=0, integer=True)
    number(cfg, "pairs", low=0, integer=True)
