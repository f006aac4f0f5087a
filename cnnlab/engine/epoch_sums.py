"""An epoch's running sums, kept on the device so that a training step never waits for the host.

They are read (one host sync) only when the progress display or trainer.log_every asks, and once at the
epoch's end; a stop mid-epoch stores them in the checkpoint (progress.partial) to continue from.
"""

from __future__ import annotations

import time

import torch

from cnnlab.engine import distributed


class EpochSums:
    """Loss over finite batches, correct predictions, non-finite batches, images in finite batches (on the
    device); images seen and the step of the first non-finite loss."""

    def __init__(self, partial: dict, device: torch.device):
        values = [
            partial.get("loss_sum", 0.0),
            partial.get("correct", 0),
            0.0,
            partial.get("counted", partial.get("seen", 0)),
        ]
        self.sums = torch.tensor(values, device=device, dtype=torch.float64)
        self.first_bad = torch.full((), -1, device=device, dtype=torch.long)
        self.logged = (values[0], values[3])  # (loss_sum, counted) at the last log: the per-step loss's interval
        self.seen = partial.get("seen", 0)
        self.start = time.perf_counter() - partial.get("seconds", 0.0)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, finite: torch.Tensor, step: int) -> None:
        hard = y.argmax(1) if y.ndim == 2 else y  # mixup/cutmix give soft targets: score the dominant class
        self.sums += torch.stack(
            [
                torch.where(finite, loss.detach().double() * len(y), 0.0),
                (logits.detach().argmax(1) == hard).sum().double(),
                (~finite).double(),
                finite.double() * len(y),
            ]
        )
        self.first_bad = torch.where((self.first_bad < 0) & ~finite, step, self.first_bad)
        self.seen += len(y)

    def read(self) -> tuple[float, float, float, float]:
        """(loss_sum, correct, bad, counted): a host sync."""
        return tuple(self.sums.tolist())

    def loss_since_log(self, loss_sum: float, counted: float) -> float | None:
        """The mean loss of the finite batches since the last call (or the epoch's start), from read()'s values;
        None when there was none. On several ranks: this rank's batches only (the epoch's means are the job's)."""
        (last_sum, last_counted), self.logged = self.logged, (loss_sum, counted)
        return (loss_sum - last_sum) / (counted - last_counted) if counted > last_counted else None

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def all_reduce(self) -> None:
        """Several ranks: the whole job's numbers (every rank trained an equal share)."""
        if distributed.world_size() > 1:
            totals = torch.cat([self.sums, self.sums.new_tensor([self.seen])])
            distributed.all_reduce_sum(totals)
            self.sums, self.seen = totals[:4], int(totals[4])
