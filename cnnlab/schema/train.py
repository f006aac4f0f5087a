"""`cnnlab train`'s schema (registered in Hydra's ConfigStore as train_schema) and the range checks a type system
cannot express. `model`, `optimizer`, `scheduler` and `callbacks` stay open (`Any`) because users point their
`_target_` at classes with their own keyword arguments; the optimizer's and the schedule's keys are checked here,
the callbacks' by cnnlab/callbacks/build.py, the augmentation ops' by data/augment.py (called by the command).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from cnnlab.checks import choice, number
from cnnlab.errors import CnnlabError
from cnnlab.schema.common import HYDRA_KEYS, PRECISIONS, AugmentConfig, DataConfig, check_keys, resolve_all, unknown


@dataclass
class TrainerConfig:
    epochs: int = 15
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: Optional[int] = None  # torch's CPU threads (null: torch's choice, which follows OMP_NUM_THREADS)
    precision: str = "auto"  # auto | bf16_native | fp32 | bf16 | fp16 (autocast; see engine/device.py)
    resume: Optional[str] = None  # PATH to a checkpoint, or auto
    label_smoothing: float = 0.0
    channels_last: Optional[bool] = None  # null: on for CUDA
    compile: bool = False
    cudnn_benchmark: bool = True
    log_every: int = 50  # steps between progress updates (the only host syncs in an epoch)
    monitor: str = "val_acc"  # the metric that picks best.pt
    image_grid: int = 32  # validation images in the TensorBoard prediction grid (0: none)
    image_every: int = 5  # epochs between prediction grids in TensorBoard (the last epoch always gets one; 0: none)
    progress: str = "auto"  # auto | rich | plain | none
    grad_clip: Optional[float] = None  # clip the global gradient norm to this value
    accumulate: int = 1  # micro-batches per optimizer step (effective batch = accumulate x batch_size)
    ema_decay: Optional[float] = None  # keep an EMA of the weights (e.g. 0.999); it is what gets evaluated and saved
    early_stopping_patience: Optional[int] = None  # stop after this many epochs without a better monitored metric
    deterministic: bool = False  # deterministic kernels (slower on GPU); CPU runs are reproducible anyway
    max_steps: Optional[int] = None  # stop after this many optimizer steps (the schedule ends there too)
    time_limit: Optional[float] = None  # seconds: stop cleanly, checkpointing; resume=auto continues later
    limit_train_batches: Optional[int] = None  # debug: train on at most this many batches per epoch
    limit_val_batches: Optional[int] = None  # debug: validate/test on at most this many batches
    overfit_batches: Optional[int] = None  # debug: train and validate on these first batches, repeated
    profile: bool = False  # debug: torch.profiler trace of a few steps into <run>/tb/profile
    log_grad_norms: bool = False  # per-stage gradient norms every log_every steps (callbacks/gradient_flow.py)
    log_histograms: Optional[int] = None  # weight and gradient histograms every N epochs (null: none)
    train_eval_samples: int = 1000  # eval-mode accuracy on this many fixed train images per epoch (0: off)
    overwrite: bool = False  # train into a run dir that already holds a run (its checkpoints, tb/ and metrics go)
    nan_policy: str = "stop"  # stop | skip_batch: what a non-finite loss does (checked at the log interval)
    sync_bn: bool = False  # several ranks (torchrun): BatchNorm statistics over the global batch (CUDA only)
    tta: str = "none"  # none | flip | flip_translate: test-time augmentation of the final test evaluation


@dataclass
class FinetuneConfig:
    name: str = "none"  # none | linear_probe | full | discriminative | gradual | feature_extract | scratch
    freeze_bn: bool = False  # keep BatchNorm running statistics and affine parameters as loaded
    lr_decay: float = 1.0  # discriminative: each earlier stage gets lr x lr_decay of the next one
    unfreeze_every: int = 1  # gradual: epochs between unfreezing the next stage (head first)


@dataclass
class TrainSchema:
    seed: int = 0
    model: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    callbacks: Any = None  # name -> {_target_, keywords} (configs/callbacks/); open: users add their own
    study: Any = None  # a chapter study's claim (configs/experiment/study_*.yaml), read by the sweep report


def _check_optimizer_keys(opt_cfg: DictConfig) -> None:
    """optimizer.*: cnnlab's own keys plus the keyword arguments of the `_target_` class (when it takes no
    **kwargs and can be imported; an unimportable target is the optimizer builder's error to report)."""
    import inspect

    from hydra.utils import get_object

    from cnnlab.optim import OWN_KEYS

    try:
        target = get_object(str(opt_cfg.get("_target_")))
        params = inspect.signature(target).parameters.values()
    except Exception:  # noqa: BLE001 - optim.build reports a bad _target_ with its own line
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    known = [*OWN_KEYS, *HYDRA_KEYS, *(p.name for p in params if p.name != "params")]
    for key in opt_cfg:
        if key not in known:
            raise unknown(f"optimizer.{key}", known, f"neither an argument of {opt_cfg._target_} nor a cnnlab key")


def _check_scheduler_keys(sched_cfg: DictConfig) -> None:
    """scheduler.*: the keys the named schedule declares in optim.SCHEDULES (its YAML sets the same)."""
    from cnnlab.optim import SCHEDULES

    name = sched_cfg.get("name", "none")
    kind = SCHEDULES.get(name) if isinstance(name, str) else None
    if kind is None:
        return  # an unknown name: optim.build names the choices
    known = list(kind.keys)
    for key in sched_cfg:
        if key not in known:
            raise unknown(f"scheduler.{key}", known, f"scheduler {name!r} does not read it")


def validate(cfg: DictConfig) -> None:
    """Range checks for `cnnlab train`; raises CnnlabError naming the key."""
    resolve_all(cfg)
    check_keys(cfg, TrainSchema)
    _check_optimizer_keys(cfg.optimizer)
    _check_scheduler_keys(cfg.scheduler)
    number(cfg, "seed", low=0, integer=True)
    number(cfg, "trainer.epochs", low=1, integer=True)
    number(cfg, "trainer.log_every", low=1, integer=True)
    number(cfg, "trainer.log_histograms", low=1, integer=True)
    number(cfg, "trainer.label_smoothing", low=0, high=0.99)
    number(cfg, "trainer.image_grid", low=0, integer=True)
    number(cfg, "trainer.train_eval_samples", low=0, integer=True)
    number(cfg, "trainer.image_every", low=0, integer=True)
    choice(cfg, "trainer.precision", PRECISIONS)
    choice(cfg, "trainer.progress", ("auto", "rich", "plain", "none"))
    choice(cfg, "trainer.monitor", ("val_acc", "val_loss"))
    choice(cfg, "trainer.nan_policy", ("stop", "skip_batch"))
    choice(cfg, "trainer.tta", ("none", "flip", "flip_translate"))
    number(cfg, "trainer.grad_clip", low=0, low_open=True)
    number(cfg, "trainer.threads", low=1, integer=True)
    number(cfg, "trainer.accumulate", low=1, integer=True)
    number(cfg, "trainer.ema_decay", low=0, low_open=True, high=0.999999)
    number(cfg, "trainer.early_stopping_patience", low=1, integer=True)
    number(cfg, "trainer.max_steps", low=1, integer=True)
    number(cfg, "trainer.time_limit", low=0, low_open=True)
    for key in ("limit_train_batches", "limit_val_batches", "overfit_batches"):
        number(cfg, f"trainer.{key}", low=1, integer=True)
    modes = ("none", "linear_probe", "full", "discriminative", "gradual", "feature_extract", "scratch")
    choice(cfg, "finetune.name", modes)
    number(cfg, "finetune.lr_decay", low=0, low_open=True, high=1)
    number(cfg, "finetune.unfreeze_every", low=1, integer=True)
    for key in ("head_lr_mult", "backbone_lr_mult", "layer_decay"):
        number(cfg, f"optimizer.{key}", low=0, low_open=True)
    number(cfg, "data.batch_size", low=1, integer=True)
    number(cfg, "data.eval_batch_size", low=1, integer=True)
    number(cfg, "data.num_workers", low=0, integer=True)
    number(cfg, "data.image_size", low=1, integer=True)
    number(cfg, "data.subset", low=1, integer=True)
    number(cfg, "data.eval_subset", low=1, integer=True)
    number(cfg, "data.num_samples", low=1, integer=True)
    number(cfg, "data.channels", low=1, integer=True)  # null, not 0, means "the dataset's own"
    number(cfg, "data.num_classes", low=1, integer=True)
    if not str(cfg.data.root).strip():
        raise CnnlabError("data.root is empty: give a folder (an empty path would silently mean the current one)")
    if cfg.data.get("download_url") and cfg.data.name != "imagefolder":
        raise CnnlabError(
            f"data.download_url is read by data=imagefolder only; data={cfg.data.name} downloads "
            "from its official URL (data.download=true)"
        )
    choice(cfg, "data.loader", ("auto", "device", "dataloader"))
    split = cfg.data.val_split
    if split != "test":
        number(cfg, "data.val_split", low=0, low_open=True, high=0.9)
    number(cfg, "data.val_fraction", low=0, low_open=True, high=0.9)
    number(cfg, "optimizer.lr", low=0, low_open=True)
    number(cfg, "optimizer.weight_decay", low=0)
    number(cfg, "optimizer.momentum", low=0, high=1)
    _optimizer_and_schedule_ranges(cfg)


def _optimizer_and_schedule_ranges(cfg: DictConfig) -> None:
    """The torch optimizer arguments and cnnlab schedule keys the configs set (torch would raise ValueError
    mid-build, or train on with a nan lr)."""
    number(cfg, "optimizer.eps", low=0, low_open=True)
    number(cfg, "optimizer.alpha", low=0)
    betas = OmegaConf.select(cfg, "optimizer.betas")
    if betas is not None:
        values = list(betas) if OmegaConf.is_list(betas) else [betas]
        if len(values) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and 0 <= b < 1 for b in values
        ):
            raise CnnlabError(f"optimizer.betas must be [beta1, beta2] with 0 <= beta < 1, got {values}")
    number(cfg, "scheduler.warmup_epochs", low=0)
    number(cfg, "scheduler.gamma", low=0, low_open=True)
    number(cfg, "scheduler.min_lr_ratio", low=0, high=1)
    number(cfg, "scheduler.pct_start", low=0, low_open=True, high=1)
    number(cfg, "scheduler.div_factor", low=0, low_open=True)
    number(cfg, "scheduler.final_div_factor", low=0, low_open=True)
    number(cfg, "scheduler.factor", low=0, low_open=True, high=0.999999)
    number(cfg, "scheduler.patience", low=0, integer=True)
    number(cfg, "scheduler.min_lr", low=0)
    if OmegaConf.select(cfg, "scheduler.anneal_strategy") is not None:
        choice(cfg, "scheduler.anneal_strategy", ("cos", "linear"))
    for key in ("scheduler.cycle_momentum", "optimizer.nesterov", "optimizer.amsgrad", "optimizer.decay_norm_bias"):
        value = OmegaConf.select(cfg, key)
        if value is not None and not isinstance(value, bool):
            raise CnnlabError(f"{key} must be true or false, got {value!r}")
    milestones = OmegaConf.select(cfg, "scheduler.milestones")
    if milestones is not None and (
        not OmegaConf.is_list(milestones)
        or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in milestones)
    ):
        raise CnnlabError(f"scheduler.milestones must be a list of epochs (integers >= 0), got {milestones}")
