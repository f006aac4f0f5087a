"""Gradient flow: per-stage gradient norms (trainer.log_grad_norms) and weight/gradient histograms
(trainer.log_histograms=N), both off by default, the evidence for the skip-connection and BatchNorm experiments.

A stage is one of the model's stages as cnnlab.optim.stage_modules sees them (input to output, the head last),
with a normalisation layer counted in the stage of the layer it normalises, and a layer that sits at a numbered
position of a Sequential named by its kind (conv1, conv2, fc1): the stages of a net with BatchNorm and of the
same net without it then carry the same names (features.4 would be the second conv in one, a ReLU in the other).
The mean norm of every stage over the whole run goes into metrics.json as `grad_norms` (the sweep table).
The norm of a stage is the L2 norm of all its parameters' gradients after a backward pass. Norms are summed
on the device in `after_backward` (queued work, no host sync) and their mean over the interval is read once in
`on_log`, every trainer.log_every optimizer steps and at the end of each epoch, as `weights/grad_norm/<stage>` at
the optimizer step.
Under fp16 autocast the gradients carry the GradScaler's scale; the mean is divided by the scale read at `on_log`.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.callbacks.base import Callback

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_KINDS = {nn.Conv2d: "conv", nn.Linear: "fc"}


def stage_names(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) for each stage: `<index>_<name>`, so TensorBoard sorts them input to output; the name is
    the stage's path in the model, or its kind and count (conv2) where the path is a position in a Sequential."""
    from cnnlab.optim import stage_modules

    groups: list[list[nn.Module]] = []
    for m in stage_modules(model):
        if groups and isinstance(m, _NORMS):  # a norm layer goes with the layer it normalises
            groups[-1].append(m)
        else:
            groups.append([m])
    paths = {id(m): name for name, m in model.named_modules()}
    width, counts, named = len(str(len(groups))), {}, []
    for i, group in enumerate(groups):
        first = group[0]
        path = paths.get(id(first)) or type(first).__name__
        if path.rsplit(".", 1)[-1].isdigit():
            kind = _KINDS.get(type(first), type(first).__name__.lower())
            counts[kind] = counts.get(kind, 0) + 1
            path = f"{kind}{counts[kind]}"
        named.append((f"{i + 1:0{width}d}_{path}", first if len(group) == 1 else nn.ModuleList(group)))
    return named


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    if hasattr(nn.utils, "get_total_norm"):  # torch >= 2.6: fused per-device kernels
        return nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class GradientFlow(Callback):
    ranges = {"histogram_every": {"low": 0, "integer": True}}  # null or 0: no histograms

    def __init__(self, log_norms: bool = False, histogram_every: int | None = None):
        self.log_norms = log_norms
        self.histogram_every = histogram_every or 0
        self.stages: list[tuple[str, list[nn.Parameter]]] = []
        self.sums: torch.Tensor | None = None
        self.count = 0
        self.run_sums: torch.Tensor | None = None  # the whole run's sums, for metrics.json
        self.run_count = 0
        self.last_grads: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer, model, data) -> None:
        if not self.log_norms and not self.histogram_every:  # both off (the default): no per-step work at all
            self.stages = []
            return
        self.stages = [(name, list(m.parameters())) for name, m in stage_names(model)]
        self.sums = torch.zeros(len(self.stages), device=trainer.device)
        self.run_sums = torch.zeros(len(self.stages), dtype=torch.float64)
        self.count = self.run_count = 0

    def _histogram_epoch(self, trainer) -> bool:
        epoch = trainer.state.progress.epoch + 1  # the epoch in progress, numbered from 1
        return self.histogram_every > 0 and epoch % self.histogram_every == 0

    def after_backward(self, trainer, model) -> None:
        if not self.stages:
            return
        keep = self._histogram_epoch(trainer)
        for i, (name, params) in enumerate(self.stages):
            grads = [p.grad.detach() for p in params if p.grad is not None]
            if not grads:
                continue
            if self.log_norms:
                self.sums[i] += _total_norm(grads)
            if keep:  # the epoch's last gradients, for its histogram (the optimizer step clears .grad)
                self.last_grads[name] = torch.cat([g.flatten() for g in grads])
        self.count += 1

    def on_log(self, trainer, model) -> None:
        """Every log_every steps, and at the end of each epoch: short runs get their points too."""
        if not self.log_norms or self.count == 0:
            return
        scaler = trainer.state.scaler
        scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
        means = (self.sums / (self.count * scale)).tolist()  # the one host sync, where the trainer syncs anyway
        self.run_sums += torch.tensor(means, dtype=torch.float64) * self.count
        self.run_count += self.count
        self.sums.zero_()
        self.count = 0
        if trainer.tb is not None:  # at the optimizer step, like every curve
            for (name, _), value in zip(self.stages, means):
                trainer.tb.writer.add_scalar(f"weights/grad_norm/{name}", value, trainer.state.progress.step)

    def on_epoch_end(self, trainer, model, data, row: dict) -> None:
        self.on_log(trainer, model)  # the steps since the last log interval (the epoch end syncs anyway)
        if not self.histogram_every or row["epoch"] % self.histogram_every or trainer.tb is None:
            return
        for name, params in self.stages:
            trainer.tb.histogram(f"weights/{name}", torch.cat([p.detach().flatten() for p in params]), row["step"])
            if name in self.last_grads:
                trainer.tb.histogram(f"weights/{name}/grad", self.last_grads.pop(name), row["step"])

    def on_fit_end(self, trainer, model, data, metrics: dict) -> None:
        if self.log_norms and self.run_count:
            means = (self.run_sums / self.run_count).tolist()
            metrics["grad_norms"] = {name: value for (name, _), value in zip(self.stages, means)}
