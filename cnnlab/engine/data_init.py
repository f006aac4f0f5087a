"""Data- and epoch-dependent layers, set up outside the training step instead of checked inside it.

A layer that wants to be fitted to data (the speedrun net's patch-whitening stem) defines
`init_from_batch(x)`, where x is a training batch as the model receives it (on the device, normalised,
augmented), or, when the layer sets `fit_images = n`, the first n training images normalised but not
augmented. The `DataDependentInit` callback calls it in `on_fit_start`; the layer decides itself whether
it still needs fitting (after a resume it is already fitted). A layer with `set_epoch(epoch)` (from 0) is
told the epoch about to be trained: at the start of the fit (also a resumed one) and after every epoch.
"""

from __future__ import annotations

import torch

from cnnlab.engine.callbacks import Callback
from cnnlab.errors import CnnlabError


def data_dependent_layers(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if callable(getattr(m, "init_from_batch", None))]


def epoch_layers(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if callable(getattr(m, "set_epoch", None))]


def clean_images(loader, n: int, device) -> torch.Tensor:
    """The first n training images, normalised, not augmented."""
    images = getattr(loader, "images", None)
    if not isinstance(images, torch.Tensor):
        raise CnnlabError("model.whiten_images needs the training images in memory (data.loader=device)")
    return loader.normalise(images[:n].to(device))


class DataDependentInit(Callback):
    def on_fit_start(self, trainer, model, data) -> None:
        epoch = trainer.state.progress.epoch if trainer is not None and trainer.state is not None else 0
        for layer in epoch_layers(model):
            layer.set_epoch(epoch)
        layers = data_dependent_layers(model)
        if not layers:
            return
        device = next(model.parameters()).device
        batch = None
        with torch.no_grad():
            for layer in layers:
                n = getattr(layer, "fit_images", None)
                if n:
                    layer.init_from_batch(clean_images(data.train, n, device))
                    continue
                if batch is None:
                    batch = next(iter(data.train))[0].to(device)
                layer.init_from_batch(batch)

    def on_epoch_end(self, trainer, model, data, row: dict) -> None:
        for layer in epoch_layers(model):
            layer.set_epoch(row["epoch"])  # epochs are numbered from 1: the next one, from 0, is the same number
