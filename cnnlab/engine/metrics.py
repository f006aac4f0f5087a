"""Evaluation: loss, top-1/top-5 and per-class accuracy, summed on the device and read once."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.engine import distributed


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    num_classes: int,
    autocast=nullcontext,
    memory_format=torch.contiguous_format,
    on_batch=None,
) -> dict:
    """Run the model in eval mode over `loader`; returns loss, top1, top5 (percent), per-class accuracy and
    the confusion matrix ((true, predicted) counts, a CPU tensor). `on_batch(x, y, logits)`, if given, sees
    every batch (for reports that keep examples; it may sync, the training loop does not pass one)."""
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters())).device if any(True for _ in model.parameters()) else None
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    correct_per_class = torch.zeros(num_classes, device=device, dtype=torch.long)
    count_per_class = torch.zeros(num_classes, device=device, dtype=torch.long)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
    k = min(5, num_classes)
    for x, y in loader:
        with autocast():
            logits = model(x.contiguous(memory_format=memory_format))
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        topk = logits.topk(k, dim=1).indices
        hit1 = topk[:, 0] == y
        top1 += hit1.sum()
        top5 += (topk == y[:, None]).any(dim=1).sum()
        correct_per_class += torch.bincount(y[hit1], minlength=num_classes)
        count_per_class += torch.bincount(y, minlength=num_classes)
        confusion += torch.bincount(y * num_classes + topk[:, 0], minlength=num_classes * num_classes)
        if on_batch is not None:
            on_batch(x, y, logits)
    if distributed.sharded(loader):  # each rank saw a disjoint share, none padded: the sums add up to the split's
        distributed.all_reduce_sum(loss_sum, top1, top5, correct_per_class, count_per_class, confusion)
    model.train(was_training)
    n = int(count_per_class.sum())
    per_class = (100.0 * correct_per_class.double() / count_per_class.clamp_min(1)).tolist()
    return {
        "loss": float(loss_sum) / max(n, 1),
        "top1": 100.0 * int(top1) / max(n, 1),
        "top5": 100.0 * int(top5) / max(n, 1),
        "count": n,
        "per_class": per_class,
        "per_class_count": count_per_class.tolist(),
        "confusion": confusion.view(num_classes, num_classes).cpu(),
    }
