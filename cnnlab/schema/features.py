"""`cnnlab features`'s schema and checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING, DictConfig

from cnnlab.checks import number
from cnnlab.schema.common import check_keys


@dataclass
class FeaturesSchema:
    checkpoint: str = MISSING
    input: str = MISSING  # one image file
    layers: Optional[list[str]] = None  # module names (as in the summary); null: the output of every stage
    max_maps: int = 64  # feature maps (channels) shown per layer
    device: str = "auto"


def validate(cfg: DictConfig) -> None:
    check_keys(cfg, FeaturesSchema)  # a +key=value nothing reads is a mistake, not a silent no-op
    number(cfg, "max_maps", low=1, integer=True)
