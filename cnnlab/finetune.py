"""Transfer learning: which stages of a (pretrained) model train, and when.

- linear_probe: only the head trains; the backbone is frozen and kept in eval mode (its BatchNorm
  statistics and dropout frozen too), so its weights and buffers stay exactly as loaded.
- full: everything trains.
- discriminative: everything trains, each earlier stage with lr x finetune.lr_decay of the next one.
- gradual: the head first, then one more stage from the top every finetune.unfreeze_every epochs.
`finetune.freeze_bn` additionally keeps every BatchNorm layer as loaded (statistics and affine weights).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.optim import stage_modules


class Finetune:
    def __init__(self, cfg: DictConfig, model: nn.Module):
        self.name, self.freeze_bn, self.unfreeze_every = cfg.name, cfg.freeze_bn, cfg.unfreeze_every
        self.stages = stage_modules(model)

    @property
    def active(self) -> bool:
        return self.name not in ("none", "full") or self.freeze_bn

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


def optimizer_config(cfg: DictConfig, opt_cfg: DictConfig) -> DictConfig:
    """Discriminative fine-tuning is layer-wise lr decay; an explicit optimizer.layer_decay wins."""
    if cfg.name == "discriminative" and opt_cfg.get("layer_decay", 1.0) == 1.0:
        return OmegaConf.merge(opt_cfg, {"layer_decay": cfg.lr_decay})
    return opt_cfg
