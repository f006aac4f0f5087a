"""Config schemas (registered in Hydra's ConfigStore) and the range checks a type system cannot express.

The schemas give every fixed-shape group its keys and types, so a misspelt key or a wrong type fails at
composition. `model`, `optimizer` and `scheduler` stay open (`Any`) because users point their `_target_`
at classes with their own keyword arguments; their shared keys are checked in `validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from cnnlab.errors import CnnlabError


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = "${oc.env:CNNLAB_DATA_ROOT,./data}"
    download: bool = True
    batch_size: int = 128
    eval_batch_size: Optional[int] = None  # null: 2 x batch_size
    num_workers: int = 2
    val_split: Any = 0.1  # a fraction of the training set, or "test" (select on the test split)
    image_size: Optional[int] = None  # null: the dataset's native size
    channels: Optional[int] = None
    num_classes: Optional[int] = None
    num_samples: int = 1024  # synthetic only
    subset: Optional[int] = None  # keep at most n training images per class
    loader: str = "auto"  # auto | device | dataloader
    val_fraction: float = 0.1  # imagefolder without a val/ folder
    download_url: Optional[str] = None


@dataclass
class AugmentConfig:
    name: str = "none"
    crop_padding: int = 0  # random crop with this zero padding (CIFAR standard: 4)
    flip: bool = False  # random horizontal flip


@dataclass
class TrainerConfig:
    epochs: int = 15
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast; only on CUDA)
    resume: Optional[str] = None  # PATH to a checkpoint, or auto
    label_smoothing: float = 0.0
    channels_last: Optional[bool] = None  # null: on for CUDA
    compile: bool = False
    cudnn_benchmark: bool = True
    log_every: int = 50  # steps between progress updates (the only host syncs in an epoch)
    monitor: str = "val_acc"  # the metric that picks best.pt
    image_grid: int = 32  # validation images in the TensorBoard prediction grid (0: none)
    progress: str = "auto"  # auto | rich | plain | none


@dataclass
class TrainSchema:
    seed: int = 0
    model: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class EvalSchema:
    checkpoint: str = MISSING
    split: str = "test"  # test | val | train
    data_root: Optional[str] = None  # null: the root stored in the checkpoint
    batch_size: Optional[int] = None
    device: str = "auto"
    output: Optional[str] = None  # null: eval.json in the run directory


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainSchema)
    cs.store(name="eval_schema", node=EvalSchema)


def _number(cfg: DictConfig, key: str, *, low: float, low_open: bool = False, high: float | None = None,
            integer: bool = False) -> None:
    """Check cfg.<key> is a number in range; `key` is a dotted path for the message."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key)
    if value is None:
        return
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise CnnlabError(f"{key} must be {kind}, got {value!r}")
    too_low = value <= low if low_open else value < low
    if too_low or (high is not None and value > high):
        bound = f"> {low}" if low_open else f">= {low}"
        if high is not None:
            bound += f" and <= {high}"
        raise CnnlabError(f"{key} must be {bound}, got {value!r}")


def _choice(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key)
    if value not in choices:
        raise CnnlabError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def validate_train(cfg: DictConfig) -> None:
    """Range checks for `cnnlab train`; raises CnnlabError naming the key."""
    _number(cfg, "seed", low=0, integer=True)
    _number(cfg, "trainer.epochs", low=1, integer=True)
    _number(cfg, "trainer.log_every", low=1, integer=True)
    _number(cfg, "trainer.label_smoothing", low=0, high=0.99)
    _number(cfg, "trainer.image_grid", low=0, integer=True)
    _choice(cfg, "trainer.precision", ("auto", "fp32", "bf16", "fp16"))
    _choice(cfg, "trainer.progress", ("auto", "rich", "plain", "none"))
    _choice(cfg, "trainer.monitor", ("val_acc", "val_loss"))
    _number(cfg, "data.batch_size", low=1, integer=True)
    _number(cfg, "data.eval_batch_size", low=1, integer=True)
    _number(cfg, "data.num_workers", low=0, integer=True)
    _number(cfg, "data.image_size", low=1, integer=True)
    _number(cfg, "data.subset", low=1, integer=True)
    _number(cfg, "data.num_samples", low=1, integer=True)
    _choice(cfg, "data.loader", ("auto", "device", "dataloader"))
    split = cfg.data.val_split
    if split != "test":
        _number(cfg, "data.val_split", low=0, low_open=True, high=0.9)
    _number(cfg, "augment.crop_padding", low=0, integer=True)
    _number(cfg, "optimizer.lr", low=0, low_open=True)
    _number(cfg, "optimizer.weight_decay", low=0)
    _number(cfg, "optimizer.momentum", low=0, high=1)


def validate_eval(cfg: DictConfig) -> None:
    _choice(cfg, "split", ("test", "val", "train"))
    _number(cfg, "batch_size", low=1, integer=True)
