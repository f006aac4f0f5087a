"""Trainer callbacks: what a run logs or draws beyond its metrics, kept out of the training loop.

The Trainer calls every hook of every callback in order; each hook gets the Trainer itself, which exposes
`cfg` (the trainer config), `run_dir`, `device`, `tb` (engine.tensorboard.TensorBoard, rank 0 only: None
elsewhere), `state` (the TrainState: epoch, step, history, ...), `autocast`, `memory_format`, `spec`
(the DataSpec) and `is_main` (rank 0). Epochs are numbered from 1 in every hook, as the user reads them.

Hooks must not synchronise with the device per step: `after_backward` may only queue device work (e.g. add
to a running sum); reading it belongs in `on_log`, which runs where the trainer syncs anyway.
"""

from __future__ import annotations


class Callback:
    # keyword -> the limits of cnnlab.checks.number (low, high, integer, ...): callbacks/build.py checks each
    # configured value against them before the run starts, so a bad one is one error line, not a traceback later
    ranges: dict[str, dict] = {}

    def on_fit_start(self, trainer, model, data) -> None:
        """Once, before the first epoch (also after a resume)."""

    def on_train_batch(self, trainer, x, y, batch: int) -> None:
        """Every training batch, after augmentation, before the forward pass (x is on the device)."""

    def after_backward(self, trainer, model) -> None:
        """After each backward pass, before the optimizer step and before gradient clipping."""

    def on_log(self, trainer, model) -> None:
        """Every trainer.log_every optimizer steps (a host sync happens here anyway)."""

    def on_epoch_end(self, trainer, model, data, row: dict) -> None:
        """After validation. `row` is the epoch's history row (epoch from 1, its last optimizer step, metrics)."""

    def on_fit_end(self, trainer, model, data, metrics: dict) -> None:
        """After the test evaluation of best.pt; `model` holds best.pt's (EMA) weights. `metrics` is mutable
        and is written to metrics.json after every callback ran."""


class Callbacks(Callback):
    """Calls each hook on every callback in turn."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)

    def on_fit_start(self, *args) -> None:
        for cb in self.callbacks:
            cb.on_fit_start(*args)

    def on_train_batch(self, *args) -> None:
        for cb in self.callbacks:
            cb.on_train_batch(*args)

    def after_backward(self, *args) -> None:
        for cb in self.callbacks:
            cb.after_backward(*args)

    def on_log(self, *args) -> None:
        for cb in self.callbacks:
            cb.on_log(*args)

    def on_epoch_end(self, *args) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(*args)

    def on_fit_end(self, *args) -> None:
        for cb in self.callbacks:
            cb.on_fit_end(*args)
