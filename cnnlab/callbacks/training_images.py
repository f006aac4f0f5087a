"""Pictures during training (a trainer Callback): the first augmented batch, the validation predictions every
`trainer.image_every` epochs (TensorBoard's step slider then shows them improve), and the validation confusion
matrix of the best epoch at the end (also saved as val_confusion_matrix.png in the run dir)."""

from __future__ import annotations

import torch

from cnnlab.analysis.confusion import confusion_figure
from cnnlab.analysis.figures import save_and_tensor, to_tensor
from cnnlab.analysis.grid import denormalise, grid_figure, label_captions, prediction_figure
from cnnlab.callbacks.base import Callback
from cnnlab.engine.metrics import evaluate


class TrainingImages(Callback):
    ranges = {"grid": {"low": 0, "integer": True}, "every": {"low": 0, "integer": True}}  # 0: off

    def __init__(self, grid: int, every: int):
        self.grid, self.every = grid, every  # images per grid (0: no grids); epochs between prediction grids
        self.configured_grid = grid
        self.batch_logged = False
        self.first_batch = None  # (images, captions, epoch) kept at the first step, drawn at the epoch's end

    def on_fit_start(self, trainer, model, data) -> None:
        self.batch_logged = False
        finetune = getattr(trainer.finetune, "name", None)
        self.grid = 0 if finetune == "feature_extract" else self.configured_grid  # it trains on features, not images

    def on_train_batch(self, trainer, x, y, batch: int) -> None:
        if self.batch_logged or trainer.tb is None or not self.grid:
            return
        self.batch_logged = True  # once per fit: one host copy of a few images; drawn later, off the first step
        spec, epoch = trainer.spec, trainer.state.progress.epoch + 1
        images = denormalise(x[: self.grid].detach(), spec.mean, spec.std)
        self.first_batch = images, label_captions(y[: self.grid].detach().cpu(), spec.classes), epoch

    def _draw_first_batch(self, trainer) -> None:
        images, captions, epoch = self.first_batch
        self.first_batch, step = None, trainer.state.progress.step
        title = f"first training batch of epoch {epoch}, as the model sees it (augmented)"
        trainer.tb.image("visuals/augmented_batch", to_tensor(grid_figure(images, captions, title=title)), step)

    @torch.no_grad()
    def on_epoch_end(self, trainer, model, data, row: dict) -> None:
        epoch = row["epoch"]
        if self.first_batch is not None and trainer.tb is not None:
            self._draw_first_batch(trainer)
        if (
            trainer.tb is None
            or not self.grid
            or not self.every
            or (epoch % self.every and epoch != trainer.cfg.epochs)
        ):
            return
        x, y = next(iter(data.val))
        x, y = x[: self.grid], y[: self.grid]
        was_training = model.training
        model.eval()
        with trainer.autocast():
            logits = model(x.contiguous(memory_format=trainer.memory_format))
        model.train(was_training)
        prob, pred = logits.float().softmax(1).max(1)
        spec = trainer.spec
        figure = prediction_figure(
            denormalise(x, spec.mean, spec.std),
            y.tolist(),
            pred.tolist(),
            spec.classes,
            prob.tolist(),
            title=f"validation predictions after epoch {epoch} (val acc {row['val_acc']:.2f}%)",
        )
        trainer.tb.image("visuals/val_predictions", to_tensor(figure), row["step"])

    def on_fit_end(self, trainer, model, data, metrics: dict) -> None:
        result = trainer.best_val  # the best epoch's validation, from this process: no second pass over val
        if result is None:  # best.pt is from before a resume: every rank evaluates it (the sums are all-reduced)
            result = evaluate(
                model, trainer.val_loader, trainer.spec.num_classes, trainer.autocast, trainer.memory_format
            )
        if trainer.tb is None:
            return
        best = metrics["best_epoch"]
        fig = confusion_figure(
            result["confusion"], trainer.spec.classes, f"validation split, best epoch {best} (best.pt)"
        )
        image = save_and_tensor(fig, trainer.run_dir / "val_confusion_matrix.png")
        trainer.tb.image("visuals/val_confusion_matrix", image, trainer.state.progress.step)
