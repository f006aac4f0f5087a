"""`cnnlab train`: wire data, model, optimizer and scheduler into the Trainer. No logic of its own."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cnnlab import data as data_lib
from cnnlab import models, optim
from cnnlab.config import validate_train
from cnnlab.finetune import Finetune, optimizer_config
from cnnlab.engine.device import resolve_device
from cnnlab.engine.progress import make_console, say
from cnnlab.engine.trainer import Trainer, planned_steps


def hparams_of(cfg: DictConfig) -> dict:
    """The hyper-parameters shown in TensorBoard's HParams tab: the run's choices and the sweep's overrides."""
    choices = HydraConfig.get().runtime.choices
    params = {f"choice/{group}": str(choice) for group, choice in choices.items()
              if not group.startswith("hydra") and group != "train_schema"}
    params.update({
        "seed": cfg.seed, "optimizer.lr": cfg.optimizer.get("lr"), "optimizer.weight_decay":
        cfg.optimizer.get("weight_decay"), "data.batch_size": cfg.data.batch_size, "trainer.epochs": cfg.trainer.epochs,
    })
    for override in HydraConfig.get().overrides.task:
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    return {k: v for k, v in params.items() if v is not None}


def run(cfg: DictConfig) -> dict:
    validate_train(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    data = data_lib.build(cfg.data, cfg.augment, device, seed=cfg.seed)
    model = models.build(cfg.model, data.spec)
    finetune = Finetune(cfg.finetune, model)
    opt_cfg = optimizer_config(cfg.finetune, cfg.optimizer)
    steps_per_epoch, total_steps = planned_steps(cfg.trainer, len(data.train))
    optimizer, scheduler = optim.build(opt_cfg, cfg.scheduler, model, steps_per_epoch, total_steps)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["data_spec"] = data.spec.as_dict()
    say(make_console(), f"cnnlab train: {cfg.model._target_.rsplit('.', 1)[-1]} on {cfg.data.name} "
        f"({len(data.train.labels):,} train / {len(data.val.labels):,} val / {len(data.test.labels):,} test) "
        f"on {device}; run dir {run_dir}")
    trainer = Trainer(cfg.trainer, run_dir, device, seed=cfg.seed, config=config, hparams=hparams_of(cfg),
                      finetune=finetune)
    return trainer.fit(model, data, optimizer, scheduler)
