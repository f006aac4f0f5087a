"""TensorBoard: scalars per epoch, the run's hyper-parameters with its final metrics, a prediction grid."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


class TensorBoard:
    def __init__(self, log_dir: Path, purge_step: int | None = None):
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def hparams(self, params: dict, metrics: dict[str, float]) -> None:
        """Write the HParams summary into this run's own event file, so that a sweep lines up side by side."""
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        exp, ssi, sei = hparams(clean, metrics)
        w = self.writer.file_writer
        for summary in (exp, ssi, sei):
            w.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value)

    def image(self, tag: str, picture: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, picture, step)

    def close(self) -> None:
        self.writer.close()
