"""Train accuracy as the model really stands: eval mode (no dropout, BatchNorm's running statistics) on a fixed
sample of the training split without augmentation, at the end of every epoch. The running train-mode accuracy
the loop reports is measured with dropout and augmentation on, and while the weights still move; the
train-val gap of the dropout and augmentation chapters is only readable against this one.

The sample is drawn once at the start (trainer.train_eval_samples images, seeded by the run's seed) and stays
the same for the whole run, so its accuracy is a curve over epochs. Logged as `train_eval_acc` in every
metrics.json history row and as `train/eval_acc` in TensorBoard. Also records the machine's load average at
the end of the run (`load_avg`, 1/5/15 minutes) beside the seconds per epoch it explains.
"""

from __future__ import annotations

import copy
import logging
import os

import torch

from cnnlab.callbacks.base import Callback
from cnnlab.data.loaders import DeviceLoader
from cnnlab.data.sharding import Shard
from cnnlab.engine.metrics import evaluate

log = logging.getLogger("cnnlab")


def fixed_sample(n_total: int, n: int, seed: int) -> torch.Tensor:
    """`n` distinct indices out of `n_total` (all of them when n >= n_total), sorted, from the run's seed."""
    if n >= n_total:
        return torch.arange(n_total)
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed + 7_919))
    return order[:n].sort().values


class TrainAccuracy(Callback):
    ranges = {"samples": {"low": 0, "integer": True}}  # 0: off

    def __init__(self, samples: int = 1000):
        self.samples = samples
        self.loader = None

    def on_fit_start(self, trainer, model, data) -> None:
        train = data.train
        if not self.samples:
            return
        if not isinstance(train, DeviceLoader):  # image files streamed by workers: no cheap fixed sample
            log.info("train accuracy in eval mode: only on the device data path (data.loader=device); skipped")
            return
        keep = fixed_sample(len(train.labels), self.samples, trainer.seed).to(train.labels.device)
        sample = copy.copy(train)  # the train loader's own kind and normalisation (cached features stay features)
        sample.images, sample.labels = train.images.index_select(0, keep), train.labels.index_select(0, keep)
        sample.shard, sample.batch_size = Shard(), data.val.batch_size  # every rank: the whole sample
        self.loader = sample.evaluation_mode()

    def on_epoch_end(self, trainer, model, data, row: dict) -> None:
        if self.loader is None:
            return
        result = evaluate(model, self.loader, data.spec.num_classes, trainer.autocast, trainer.memory_format)
        row["train_eval_acc"] = result["top1"]
        if trainer.tb is not None:
            trainer.tb.scalars({"train/eval_acc": result["top1"]}, row["step"])

    def on_fit_end(self, trainer, model, data, metrics: dict) -> None:
        if hasattr(os, "getloadavg"):  # not on Windows
            metrics["load_avg"] = [round(x, 2) for x in os.getloadavg()]
