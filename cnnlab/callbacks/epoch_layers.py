"""Epoch-dependent layers: a layer with `set_epoch(epoch)` (from 0) is told the epoch about to be trained, at the
start of the fit (also a resumed one) and after every epoch (the speedrun net's whitening bias trains only in its
first epochs). Data-dependent layers are fitted by the trainer itself (engine/data_init.py)."""

from __future__ import annotations

from torch import nn

from cnnlab.callbacks.base import Callback


def epoch_layers(model: nn.Module) -> list:
    return [m for m in model.modules() if callable(getattr(m, "set_epoch", None))]


class EpochLayers(Callback):
    def on_fit_start(self, trainer, model, data) -> None:
        epoch = trainer.state.progress.epoch if trainer is not None and trainer.state is not None else 0
        for layer in epoch_layers(model):
            layer.set_epoch(epoch)

    def on_epoch_end(self, trainer, model, data, row: dict) -> None:
        for layer in epoch_layers(model):
            layer.set_epoch(row["epoch"])  # epochs are numbered from 1: the next one, from 0, is the same number
