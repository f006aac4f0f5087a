"""TensorBoard: scalars per epoch, the run's hyper-parameters, histograms and images, all in the run's own writer.

Tag layout. TensorBoard's Time Series groups cards by a tag's first path segment, sorts the groups by name and
opens the first two; so the curves a user looks at first are `train/...` and `val/...`, and everything else
sorts after them (`weights/...`: gradient norms and histograms). The learning rate and the epoch timings are
training curves (`train/lr`, `train/epoch_seconds`, `train/images_per_sec`); the final numbers (best val acc,
test acc and loss of best.pt) are written once, at the last epoch, under `val/`.

HParams. Only the session's hyper-parameters are written (typed: numbers stay numbers), no experiment summary:
TensorBoard then derives the experiment from all runs in the log dir, with every hyper-parameter that differs
between runs listed first and every scalar tag registered as a metric, so "Show Metrics" draws the curves.
(torch's `add_hparams` would open a separate run per call, pytorch #32651, and register only its own metrics.)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

# The trainer's names for a few scalars -> where they belong in the layout above.
TAGS = {
    "lr": "train/lr",
    "time/epoch_seconds": "train/epoch_seconds",
    "time/images_per_sec": "train/images_per_sec",
    "hparam/best_val_acc": "val/best_acc",
    "hparam/test_acc": "val/test_acc",
    "hparam/test_loss": "val/test_loss",
}


def tag_of(name: str) -> str:
    return TAGS.get(name, name)


class TensorBoard:
    def __init__(self, log_dir: Path, purge_step: int | None = None):
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)
        self.last_step = 0

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag_of(tag), value, step)
        self.last_step = max(self.last_step, step)

    def hparams(self, params: dict, metrics: dict[str, float]) -> None:
        """The run's hyper-parameters (bool/int/float/str; anything else as text) for the HParams tab, and its
        final `metrics`, written at the last epoch's step."""
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        typed = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items() if v is not None}
        self.writer.file_writer.add_summary(hparams_pb(typed))
        for tag, value in metrics.items():
            self.writer.add_scalar(tag_of(tag), value, self.last_step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def image(self, tag: str, picture: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, picture, step)

    def close(self) -> None:
        self.writer.close()
