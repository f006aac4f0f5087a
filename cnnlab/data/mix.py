"""MixUp and CutMix at batch level: one lambda per batch, partners = the batch reversed, soft targets.

Both loaders call the same `Mixer` on normalised float batches (mixing commutes with the affine
normalisation), so the two paths cannot differ. The per-batch draws (apply?, which, lambda, box) come
from a CPU numpy generator reseeded per epoch: no device-to-host sync per step.
"""

from __future__ import annotations

import numpy as np
import torch


class Mixer:
    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
    ):
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob

    @property
    def active(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def _choose(self, rng: np.random.Generator) -> str | None:
        """'mixup', 'cutmix' or None (this batch stays as it is); with both on, cutmix with switch_prob."""
        if rng.random() >= self.prob:
            return None
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            return "cutmix" if rng.random() < self.switch_prob else "mixup"
        return "mixup" if self.mixup_alpha > 0 else "cutmix"

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
        """(x, integer labels) -> (mixed x, (B, num_classes) target probabilities)."""
        # scatter rather than F.one_hot, which checks the label range on the device (a host sync per step)
        target = torch.zeros(len(y), self.num_classes, device=x.device).scatter_(1, y[:, None], 1.0)
        kind = self._choose(rng)
        if kind is None:
            return x, target
        if kind == "mixup":
            lam = float(rng.beta(self.mixup_alpha, self.mixup_alpha))
            x = lam * x + (1 - lam) * x.flip(0)
        else:
            x, lam = self._cutmix(x, float(rng.beta(self.cutmix_alpha, self.cutmix_alpha)), rng)
        return x, lam * target + (1 - lam) * target.flip(0)

    @staticmethod
    def _cutmix(x: torch.Tensor, lam: float, rng: np.random.Generator):
        """Paste a box of area ~(1 - lam) from the partner; lambda is corrected to the box actually pasted."""
        h, w = x.shape[-2:]
        cut = np.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        top, bottom = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
        left, right = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
        x = x.clone()
        x[..., top:bottom, left:right] = x.flip(0)[..., top:bottom, left:right]
        return x, 1.0 - (bottom - top) * (right - left) / (h * w)
