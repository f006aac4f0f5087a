"""`cnnlab predict`'s schema and checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

from cnnlab.checks import number
from cnnlab.schema.common import check_keys


@dataclass
class PredictSchema:
    checkpoint: str = MISSING
    inputs: Any = MISSING  # an image file, a directory, a glob, or a list of them
    topk: int = 5
    batch_size: int = 64
    device: str = "auto"
    output: Optional[str] = None  # null: predictions.json in the run directory


def validate(cfg: DictConfig) -> None:
    check_keys(cfg, PredictSchema)  # a +key=value nothing reads is a mistake, not a silent no-op
    number(cfg, "topk", low=1, integer=True)
    number(cfg, "batch_size", low=1, integer=True)
