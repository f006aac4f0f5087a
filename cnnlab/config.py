"""Config schemas (registered in Hydra's ConfigStore) and the range checks a type system cannot express.

The schemas give every fixed-shape group its keys and types, so a misspelt key or a wrong type fails at
composition. `model`, `optimizer` and `scheduler` stay open (`Any`) because users point their `_target_`
at classes with their own keyword arguments; their shared keys are checked in `validate`.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from cnnlab.checks import choice, number
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
    eval_subset: Optional[int] = None  # evaluate val and test on their first n images only (cheap small runs)
    classes: Optional[list[Any]] = None  # keep only these classes (names or indices), relabelled 0..k-1 in this order
    loader: str = "auto"  # auto | device | dataloader (auto: device, but dataloader for large image files)
    val_fraction: float = 0.1  # imagefolder without a val/ folder: held out per class as the test split
    download_url: Optional[str] = None  # imagefolder: an archive to fetch into data.root when it is missing


@dataclass
class AugmentConfig:
    """Train-time augmentation; presets in configs/augment/ set a few keys each and compose in order
    (augment=[basic,cutout,mixup]). Applied: resized crop, padded crop, flip, jitter, policy, erasing,
    cutout, then mixup/cutmix on the batch. Evaluation never augments."""

    resized_crop: bool = False  # random resized crop back to the image size (the large-image standard)
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # area fraction range
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 4 / 3])  # aspect ratio range (w / h)
    crop_padding: int = 0  # random crop with this padding (CIFAR standard: 4): a translation by up to this many pixels
    crop_pad_mode: str = "zeros"  # zeros | reflect (airbench: translate 2 with reflect padding)
    flip: bool = False  # horizontal flip
    flip_mode: str = "random"  # random (each image, p 0.5) | alternate (airbench: random in epoch 1, then each
    # image mirrored every other epoch; device loader only, the DataLoader path flips at random)
    color_jitter: float = 0.0  # brightness, contrast, saturation factors drawn from [1 - x, 1 + x]
    hue: float = 0.0  # hue shift drawn from [-hue, hue] (<= 0.5)
    policy: Optional[str] = None  # autoaugment | randaugment | trivialaugment
    autoaugment_policy: str = "imagenet"  # imagenet | cifar10 | svhn
    randaugment_n: int = 2  # RandAugment: ops per image
    randaugment_m: int = 9  # RandAugment: magnitude 0..30
    erasing: float = 0.0  # random erasing probability
    erasing_scale: list[float] = field(default_factory=lambda: [0.02, 0.33])
    erasing_ratio: list[float] = field(default_factory=lambda: [0.3, 3.3])
    cutout: int = 0  # side of the cutout square in pixels (0: off)
    mixup_alpha: float = 0.0  # MixUp: lambda ~ Beta(alpha, alpha) (0: off)
    cutmix_alpha: float = 0.0  # CutMix: lambda ~ Beta(alpha, alpha) (0: off)
    mix_prob: float = 1.0  # probability that a batch is mixed at all
    mix_switch_prob: float = 0.5  # with both on: probability of CutMix rather than MixUp


@dataclass
class TrainerConfig:
    epochs: int = 15
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: Optional[int] = None  # torch's CPU threads (null: torch's choice, which follows OMP_NUM_THREADS)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast; only on CUDA)
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
    name: str = "none"  # none | linear_probe | full | discriminative | gradual | feature_extract
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
    precision: Optional[str] = None  # null: the run's trainer.precision | auto | fp32 | bf16 | fp16
    grid: int = 32  # misclassified images in the picture (0: none)
    pairs: int = 10  # most-confused class pairs reported


@dataclass
class PredictSchema:
    checkpoint: str = MISSING
    inputs: Any = MISSING  # an image file, a directory, a glob, or a list of them
    topk: int = 5
    batch_size: int = 64
    device: str = "auto"
    output: Optional[str] = None  # null: predictions.json in the run directory


@dataclass
class FeaturesSchema:
    checkpoint: str = MISSING
    input: str = MISSING  # one image file
    layers: Optional[list[str]] = None  # module names (as in the summary); null: the output of every stage
    max_maps: int = 64  # feature maps (channels) shown per layer
    device: str = "auto"


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


@dataclass
class PreviewSchema:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    count: int = 32  # images in the grid
    columns: int = 8
    output: Optional[str] = None  # null: augment_preview.png in the run directory


RUN_ID = secrets.token_hex(2)  # one per process: default run dirs end in it, so two runs never share one


def register() -> None:
    """Put the schemas into Hydra's ConfigStore and the `${cnnlab.run_id:}` resolver into OmegaConf."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver(
        "cnnlab.run_id", lambda: RUN_ID, replace=True, use_cache=True
    )  # cached: launchers' jobs in other processes reuse it
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainSchema)
    cs.store(name="eval_schema", node=EvalSchema)
    cs.store(name="predict_schema", node=PredictSchema)
    cs.store(name="features_schema", node=FeaturesSchema)
    cs.store(name="export_schema", node=ExportSchema)
    cs.store(name="preview_schema", node=PreviewSchema)


def _unknown(key: str, known: list[str], where: str) -> CnnlabError:
    """One line naming the key and the nearest valid one (or, with none near, the valid ones)."""
    import difflib

    known = [k for k in known if k not in _HYDRA_KEYS]
    guess = difflib.get_close_matches(key.rpartition(".")[2], known, n=1, cutoff=0.6)
    hint = (
        f"did you mean {key.rpartition('.')[0] + '.' if '.' in key else ''}{guess[0]}?"
        if guess
        else f"the keys there: {', '.join(sorted(known))}"
    )
    return CnnlabError(f"unknown key {key} ({where}; {hint})")


SCHEMAS = {
    "train": TrainSchema,
    "eval": EvalSchema,
    "predict": PredictSchema,
    "features": FeaturesSchema,
    "export": ExportSchema,
    "preview": PreviewSchema,
}


def unknown_key_message(command: str, key: str) -> str | None:
    """Hydra's "Key 'epoch' not in 'TrainerConfig'" for `trainer.epoch=2` as one line with the nearest key of the
    command's schema (None where the schema does not close that part of the config)."""
    import dataclasses
    import typing

    schema = SCHEMAS.get(command)
    *path, name = key.split(".")
    if command == "train" and len(path) == 1 and path[0] == "callbacks":
        return f"no callback {name} in this config (add one with +callbacks.{name}._target_=CLASS)"
    for part in path:
        if schema is None or not dataclasses.is_dataclass(schema):
            return None
        schema = typing.get_type_hints(schema).get(part)
    if schema is None or not dataclasses.is_dataclass(schema):
        return None
    known = [f.name for f in dataclasses.fields(schema)]
    return None if name in known else str(_unknown(key, known, "not in the config schema"))


def check_keys(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Every key of `cfg` must be a field of the dataclass `schema` (recursively for dataclass fields).

    Hydra's `+key=value` adds keys even where the schema is closed, and a key nothing reads would be
    silently ignored: `+trainer.epochz=3` would train 15 epochs. Open (Any) fields are not walked here.
    """
    import dataclasses
    import typing

    from omegaconf import OmegaConf

    hints = typing.get_type_hints(schema)
    known = [f.name for f in dataclasses.fields(schema)]
    for key in OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else ():
        if key not in known:
            raise _unknown(f"{prefix}{key}", known, "not in the config schema")
        if dataclasses.is_dataclass(hints[key]) and isinstance(cfg._get_node(key), DictConfig):
            check_keys(cfg._get_node(key), hints[key], f"{prefix}{key}.")


# Keys Hydra's instantiate reads itself.
_HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


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
    known = [*OWN_KEYS, *_HYDRA_KEYS, *(p.name for p in params if p.name != "params")]
    for key in opt_cfg:
        if key not in known:
            raise _unknown(f"optimizer.{key}", known, f"neither an argument of {opt_cfg._target_} nor a cnnlab key")


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
            raise _unknown(f"scheduler.{key}", known, f"scheduler {name!r} does not read it")


def _resolve_all(cfg: DictConfig) -> None:
    """Resolve every interpolation once, up front: an unset `${oc.env:X}` or a dangling `${a.b}` is the
    user's config, so one line naming the key, not a traceback wherever the value is first read."""
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as ex:
        detail = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        detail = detail.removeprefix("KeyError raised while resolving interpolation: ").strip('"')
        raise CnnlabError(f"cannot resolve {ex.full_key}: {detail}") from None


def validate_train(cfg: DictConfig) -> None:
    """Range checks for `cnnlab train`; raises CnnlabError naming the key."""
    _resolve_all(cfg)
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
    choice(cfg, "trainer.precision", ("auto", "fp32", "bf16", "fp16"))
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
    choice(cfg, "finetune.name", ("none", "linear_probe", "full", "discriminative", "gradual", "feature_extract"))
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
    from omegaconf import OmegaConf

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


def validate_eval(cfg: DictConfig) -> None:
    _resolve_all(cfg)
    check_keys(cfg, EvalSchema)
    choice(cfg, "split", ("test", "val", "train"))
    number(cfg, "batch_size", low=1, integer=True)
    choice(cfg, "tta", ("none", "flip", "flip_translate"))
    if cfg.precision is not None:
        choice(cfg, "precision", ("auto", "fp32", "bf16", "fp16"))
    number(cfg, "grid", low=0, integer=True)
    number(cfg, "pairs", low=0, integer=True)
