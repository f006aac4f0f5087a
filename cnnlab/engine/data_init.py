"""Data- and epoch-dependent layers, set up outside the training step instead of checked inside it.

A layer that wants to be fitted to data (the speedrun net's patch-whitening stem) defines
`init_from_batch(x)`, where x is a batch as the model receives it (on the device, normalised). The trainer
calls `fit_data_dependent_layers` before it makes the EMA copy and the DDP wrapper, so that both start from
the fitted layer. The batch is the first one of the training split in order, without augmentation or mixing
(a property of the data, not of one epoch's random draws), or, when the layer sets `fit_images = n`, the
first n training images; rank 0's fit is broadcast, so every rank holds the same layer. The layer decides
itself whether it still needs fitting (after a resume it is already fitted). Epoch-dependent layers
(`set_epoch`) are told the epoch by the EpochLayers callback (cnnlab/callbacks/epoch_layers.py).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from cnnlab.engine import distributed
from cnnlab.errors import CnnlabError


def data_dependent_layers(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if callable(getattr(m, "init_from_batch", None))]


def _owner(loader):
    """The cnnlab loader inside wrappers (debug limits, a test's watcher), or None for a foreign loader."""
    while loader is not None and not hasattr(type(loader), "evaluation_mode"):
        loader = getattr(loader, "loader", None)
    return loader


@contextmanager
def _clean(loader):
    """The training loader switched to evaluation order (no augmentation, no mixing) for one batch."""
    owner = _owner(loader)
    if owner is None:  # not a cnnlab loader: its batches as they come
        yield loader
        return
    saved = owner.train, owner.augment, owner.mixer
    try:
        yield owner.evaluation_mode()
    finally:
        owner.train, owner.augment, owner.mixer = saved


def clean_images(loader, n: int, device) -> torch.Tensor:
    """The first n training images, normalised, not augmented (the device loader holds them all in memory)."""
    owner = _owner(loader)
    images = getattr(owner, "images", None)
    if not isinstance(images, torch.Tensor):
        raise CnnlabError("model.whiten_images needs the training images in memory (data.loader=device)")
    return owner.normalise(images[:n].to(device))


def fit_data_dependent_layers(model: torch.nn.Module, train_loader) -> None:
    layers = data_dependent_layers(model)
    if not layers:
        return
    device = next(model.parameters()).device
    batch = None
    with torch.no_grad():
        for layer in layers:
            n = getattr(layer, "fit_images", None)
            if n:
                x = clean_images(train_loader, n, device)
            else:
                if batch is None:
                    with _clean(train_loader) as loader:
                        batch = next(iter(loader))[0].to(device)
                x = batch
            layer.init_from_batch(x)
            distributed.broadcast_module(layer)  # the same on every rank (their first batches differ)
