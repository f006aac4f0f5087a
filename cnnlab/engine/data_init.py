"""Data-dependent initialisation, done once before training instead of checked inside every step.

A layer that wants to be fitted to data (the speedrun net's patch-whitening stem) defines
`init_from_batch(x)`, where x is a training batch as the model receives it (on the device, normalised,
augmented). The `DataDependentInit` callback calls it on the first training batch in `on_fit_start`;
the layer decides itself whether it still needs fitting (after a resume it is already fitted).
"""

from __future__ import annotations

import torch

from cnnlab.engine.callbacks import Callback


def data_dependent_layers(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if callable(getattr(m, "init_from_batch", None))]


class DataDependentInit(Callback):
    def on_fit_start(self, trainer, model, data) -> None:
        layers = data_dependent_layers(model)
        if not layers:
            return
        x, _ = next(iter(data.train))
        x = x.to(next(model.parameters()).device)
        with torch.no_grad():
            for layer in layers:
                layer.init_from_batch(x)
