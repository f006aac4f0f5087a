"""`cnnlab preview`'s schema and checks (the augmentation ops' keys: data/augment.py, called by the command)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig

from cnnlab.checks import number
from cnnlab.schema.common import AugmentConfig, DataConfig, check_keys


@dataclass
class PreviewSchema:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    count: int = 32  # images in the grid
    columns: int = 8
    output: Optional[str] = None  # null: augment_preview.png in the run directory


def validate(cfg: DictConfig) -> None:
    check_keys(cfg, PreviewSchema)  # a +key=value nothing reads is a mistake, not a silent no-op
    number(cfg, "count", low=1, integer=True)
    number(cfg, "columns", low=1, integer=True)
