"""Data-dependent initialisation, done once before training instead of checked inside every step.

A layer that wants to be fitted to data (the speedrun net's patch-whitening stem) defines
`init_from_batch(x)`, where x is a batch as the model receives it (on the device, normalised). The trainer
calls `fit_data_dependent_layers` before it makes the EMA copy and the DDP wrapper, so that both start from
the fitted layer. The batch is the first one of the training split in order, without augmentation or mixing
(a property of the data, not of one epoch's random draws), and rank 0's fit is broadcast, so every rank
holds the same layer. The layer decides itself whether it still needs fitting (after a resume it is already
fitted).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from cnnlab.engine import distributed


def data_dependent_layers(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if callable(getattr(m, "init_from_batch", None))]


@contextmanager
def _clean(loader):
    """The training loader switched to evaluation order (no augmentation, no mixing) for one batch; wrappers
    (debug limits, a test's watcher) are looked through to the cnnlab loader they hold."""
    owner = loader
    while owner is not None and not hasattr(type(owner), "evaluation_mode"):
        owner = getattr(owner, "loader", None)
    if owner is None:  # not a cnnlab loader: its batches as they come
        yield loader
        return
    saved = owner.train, owner.augment, owner.mixer
    try:
        yield owner.evaluation_mode()
    finally:
        owner.train, owner.augment, owner.mixer = saved


def fit_data_dependent_layers(model: torch.nn.Module, train_loader) -> None:
    layers = data_dependent_layers(model)
    if not layers:
        return
    with _clean(train_loader) as loader:
        x, _ = next(iter(loader))
    x = x.to(next(model.parameters()).device)
    with torch.no_grad():
        for layer in layers:
            layer.init_from_batch(x)
            distributed.broadcast_module(layer)  # the same on every rank (their first batches differ)
