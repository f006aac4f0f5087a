"""`cnnlab export`'s schema and checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

from cnnlab.checks import choice, number
from cnnlab.schema.common import check_keys

FORMATS = ("onnx", "torchscript")


@dataclass
class ExportSchema:
    checkpoint: str = MISSING
    format: str = "onnx"  # onnx | torchscript
    output: Optional[str] = None  # null: beside the checkpoint, <name>.onnx / <name>.torchscript.pt
    tolerance: float = 1e-4  # largest allowed |exported - PyTorch| over the parity batch's logits
    inputs: Any = None  # image files for the parity check; null: a batch of the checkpoint's test split
    data_root: Optional[str] = None  # null: the root stored in the checkpoint
    batch_size: int = 16  # images in the parity batch
    opset: Optional[int] = None  # ONNX opset (null: torch.onnx's default)


def validate(cfg: DictConfig) -> None:
    check_keys(cfg, ExportSchema)  # a +key=value nothing reads is a mistake, not a silent no-op
    choice(cfg, "format", FORMATS)
    number(cfg, "tolerance", low=0)
    number(cfg, "batch_size", low=1, integer=True)
    number(cfg, "opset", low=7, integer=True)
