"""An exponential moving average of a model's weights, updated on the device without a host sync.

torch's AveragedModel reads `n_averaged == 0` on the host at every update (a sync per step on CUDA); here
the first update's "copy instead of average" is a weight of 1 chosen on the device.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
        self.register_buffer("n_averaged", torch.zeros((), dtype=torch.long, device=device))

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """ema = decay * ema + (1 - decay) * model; the first update copies (weight 1)."""
        weight = torch.where(self.n_averaged == 0, 1.0, 1.0 - self.decay)
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*model.parameters(), *model.buffers()]
        for e, m in zip(mine, theirs, strict=True):
            if e.is_floating_point():
                e.lerp_(m.detach(), weight.to(e.dtype))
            else:
                e.copy_(m)
        self.n_averaged += 1
