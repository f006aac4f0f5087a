"""Transfer learning: which stages of a (pretrained) model train, and when.

- linear_probe: only the head trains; the backbone is frozen and kept in eval mode (its BatchNorm
  statistics and dropout frozen too), so its weights and buffers stay exactly as loaded.
- full: everything trains.
- discriminative: everything trains, each earlier stage with lr x finetune.lr_decay of the next one.
- gradual: the head first, then one more stage from the top every finetune.unfreeze_every epochs.
- feature_extract: the frozen backbone runs once; its features are cached on the device and only the
  classifier trains on them (cnnlab/feature_extract.py), many epochs in seconds.
- scratch: the same model from random weights (its pretrained weights are not loaded): the baseline that
  shows what the pretraining was worth, in the same sweep as the transfer modes.
`finetune.freeze_bn` additionally keeps every BatchNorm layer as loaded (statistics and affine weights).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.engine import distributed
from cnnlab.engine.progress import make_console, say
from cnnlab.optim import stage_modules


class Finetune:
    def __init__(self, cfg: DictConfig, model: nn.Module):
        self.name, self.freeze_bn, self.unfreeze_every = cfg.name, cfg.freeze_bn, cfg.unfreeze_every
        self.stages = stage_modules(model)

    @property
    def active(self) -> bool:
        return self.name not in ("none", "full", "scratch") or self.freeze_bn

    def trainable_stages(self, epoch: int) -> int:
        """How many stages, counted from the head, train in this epoch."""
        if self.name == "linear_probe":
            return 1
        if self.name == "gradual":
            return min(len(self.stages), 1 + epoch // self.unfreeze_every)
        return len(self.stages)

    def apply(self, model: nn.Module, epoch: int) -> None:
        """Call after model.train() at the start of every training epoch."""
        first_trainable = len(self.stages) - self.trainable_stages(epoch)
        trainable_ids = {id(p) for stage in self.stages[first_trainable:] for p in stage.parameters()}
        for p in model.parameters():  # parameters outside every stage go with the first stage
            p.requires_grad_(first_trainable == 0 or id(p) in trainable_ids)
        for stage in self.stages[:first_trainable]:
            stage.eval()
        if self.freeze_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
                    for p in m.parameters():
                        p.requires_grad_(False)


FROZEN_BACKBONE = ("linear_probe", "feature_extract")
WEIGHT_KEYS = ("weights", "weights_path")  # the model config keys that load pretrained weights


def model_config(cfg: DictConfig) -> DictConfig:
    """The model config to build: finetune=scratch drops the pretrained weights the model config names."""
    if cfg.finetune.name != "scratch":
        return cfg.model
    return OmegaConf.merge(cfg.model, {k: None for k in WEIGHT_KEYS if k in cfg.model})


def pretrained(model_cfg: DictConfig) -> bool:
    """Whether the model config loads pretrained weights (model=torchvision's weights / weights_path)."""
    return any(model_cfg.get(k) for k in WEIGHT_KEYS)


def prepare(cfg: DictConfig, model: nn.Module, data, device, console=None):
    """Before the optimizer is built: warn when a frozen-backbone mode has no pretrained weights (it would train
    a head on random features); feature_extract swaps in the cached-feature model and data. Returns (model, data)."""
    name = cfg.finetune.name
    console = console if console is not None else make_console()
    if name in FROZEN_BACKBONE and not pretrained(cfg.model) and distributed.is_main():
        say(
            console,
            f"[yellow]finetune={name} freezes a randomly initialised backbone: the model has no pretrained "
            f"weights (model=torchvision model.weights=DEFAULT or model.weights_path=FILE)[/yellow]",
        )
    if name != "feature_extract":
        return model, data
    from cnnlab.feature_extract import prepare as cache_features

    model, data, line = cache_features(model, data, device, cfg.seed)
    if distributed.is_main():
        say(console, line)
    return model, data


def optimizer_config(cfg: DictConfig, opt_cfg: DictConfig) -> DictConfig:
    """Discriminative fine-tuning is layer-wise lr decay; an explicit optimizer.layer_decay wins."""
    if cfg.name == "discriminative" and opt_cfg.get("layer_decay", 1.0) == 1.0:
        return OmegaConf.merge(opt_cfg, {"layer_decay": cfg.lr_decay})
    return opt_cfg
