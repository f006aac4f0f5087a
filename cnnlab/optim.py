"""Optimizers (any torch.optim class via `_target_`) and learning-rate schedules stepped per batch."""

from __future__ import annotations

import math

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.errors import CnnlabError

def param_groups(model: nn.Module, weight_decay: float, decay_norm_bias: bool) -> list[dict]:
    """Split parameters so that norm weights and biases (1-d tensors) can skip weight decay."""
    if decay_norm_bias or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(opt_cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    cfg = OmegaConf.to_container(opt_cfg, resolve=True)
    # cnnlab's own keys are popped; everything else goes to the optimizer class.
    decay_norm_bias = cfg.pop("decay_norm_bias", True)
    groups = param_groups(model, cfg.get("weight_decay", 0.0), decay_norm_bias)
    try:
        return instantiate(cfg, _partial_=True)(groups)
    except (InstantiationException, TypeError, ValueError) as ex:
        raise CnnlabError(f"cannot build optimizer {cfg.get('_target_')}: {ex.__cause__ or ex}") from None


def schedule_factor(sched_cfg: DictConfig, steps_per_epoch: int, epochs: int):
    """A function step -> lr multiplier: linear warmup, then the named schedule."""
    name = sched_cfg.get("name", "none")
    total = max(1, steps_per_epoch * epochs)
    warmup = round(sched_cfg.get("warmup_epochs", 0) * steps_per_epoch)
    if name == "none":
        def base(step):
            return 1.0
    elif name == "cosine":
        floor = sched_cfg.get("min_lr_ratio", 0.0)

        def base(step):
            progress = min(1.0, max(0, step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    elif name == "step":
        size, gamma = sched_cfg.step_size, sched_cfg.gamma
        if size < 1:
            raise CnnlabError(f"scheduler.step_size must be >= 1 epoch, got {size}")

        def base(step):
            return gamma ** ((step // steps_per_epoch) // size)
    else:
        raise CnnlabError(f"scheduler.name '{name}' is unknown; choose from: none, cosine, step")

    def factor(step: int) -> float:
        ramp = (step + 1) / warmup if step < warmup else 1.0
        return ramp * base(step)

    return factor


def build_scheduler(sched_cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int):
    """A LambdaLR stepped once per optimizer step."""
    warm = sched_cfg.get("warmup_epochs", 0)
    if not isinstance(warm, (int, float)) or warm < 0:
        raise CnnlabError(f"scheduler.warmup_epochs must be a number >= 0, got {warm!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(sched_cfg, steps_per_epoch, epochs))


def build(opt_cfg: DictConfig, sched_cfg: DictConfig, model: nn.Module, steps_per_epoch: int, epochs: int):
    optimizer = build_optimizer(opt_cfg, model)
    return optimizer, build_scheduler(sched_cfg, optimizer, steps_per_epoch, epochs)
