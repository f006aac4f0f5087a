"""Non-finite losses and weights (trainer.nan_policy), handled on the device without host syncs.

nan_policy=stop: a non-finite loss ends the run with one line (`check_finite`, read where the trainer syncs
anyway). nan_policy=skip_batch: such a micro-batch contributes no gradient (`drop_gradients_unless`), the step
averages the finite ones (`scale_gradients`), and a step with none is undone (`KeptState`). Non-finite weights
are never saved (`all_finite`).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import CnnlabError


def all_finite(model: nn.Module) -> bool:
    """All parameters and buffers finite: one device reduction and one host sync (per checkpoint save)."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def check_finite(nan_policy: str, epoch: int, bad: float, first_bad: torch.Tensor) -> None:
    """nan_policy=stop: a non-finite loss ends the run with one line; skip_batch: count what was dropped.
    `epoch`: the one in progress (from 1); `first_bad`: the step of the first non-finite loss."""
    if not bad:
        return
    if nan_policy == "skip_batch":
        return  # dropped on the device; counted in progress.skipped_batches at the epoch's end
    raise CnnlabError(
        f"the loss became nan/inf in epoch {epoch} at step {int(first_bad) + 1}: stopped; "
        f"checkpoints hold the last finite weights. Lower optimizer.lr, set trainer.grad_clip, "
        f"use trainer.precision=fp32, or trainer.nan_policy=skip_batch"
    )


def drop_gradients_unless(model: nn.Module, finite: torch.Tensor, before: list) -> None:
    """nan_policy=skip_batch, without a host sync: a micro-batch whose loss is not finite contributes no gradient;
    `before` holds the gradients accumulated by the earlier micro-batches of the step, which are kept."""
    for q, old in zip(model.parameters(), before):
        if q.grad is not None:
            q.grad.copy_(torch.where(finite, q.grad.nan_to_num(0.0, 0.0, 0.0), 0.0 if old is None else old))


def scale_gradients(model: nn.Module, factor: torch.Tensor) -> None:
    for q in model.parameters():
        if q.grad is not None:
            q.grad.mul_(factor.to(q.grad.dtype))


class KeptState:
    """Copies of the weights and the optimizer's state tensors, put back where a step must not count, with
    torch.where on the device bool (no host sync). Not covered: state this very step creates (the first step's)
    and tensors on another device than the weights (Adam's step counters live on the CPU; moving the bool there
    would be a sync)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        params = [q for q in model.parameters() if q.requires_grad]
        device = params[0].device if params else None
        state = [t for st in optimizer.state.values() for t in st.values() if torch.is_tensor(t)]
        self.tensors = params + [t for t in state if t.device == device]
        self.copies = [t.detach().clone() for t in self.tensors]

    @torch.no_grad()
    def restore_unless(self, keep_new: torch.Tensor) -> None:
        for t, old in zip(self.tensors, self.copies):
            t.copy_(torch.where(keep_new, t, old))
