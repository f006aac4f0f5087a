"""`finetune=feature_extract`: run the frozen backbone once, cache its features on the device, train the head.

The head is the model's last nn.Linear (its classifier); its inputs over the whole dataset (train, val, test, no
augmentation, backbone in eval mode) are computed once and kept on the training device. The normal Trainer then
trains `CachedFeatureModel` on `FeatureLoader`s of those vectors: many epochs in seconds, where a linear probe runs
the whole network every epoch. The model it trains saves and loads as the full model (backbone + trained head),
so best.pt is an ordinary checkpoint of the configured model that `cnnlab eval` evaluates on images.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from cnnlab.data.loaders import DeviceLoader
from cnnlab.data.spec import DataBundle
from cnnlab.engine.data_init import fit_data_dependent_layers
from cnnlab.errors import CnnlabError


class CachedFeatureModel(nn.Module):
    """The full model whose forward takes cached features (N, D, 1, 1) and runs only its head.

    Only the head is a registered submodule (so the optimizer, EMA, `.train()` and `.to()` see the head alone and
    the backbone stays frozen in eval mode); `state_dict`/`load_state_dict` are the full model's, so checkpoints
    hold the whole network. `full` is that network, for images.
    """

    def __init__(self, model: nn.Module, head: nn.Linear):
        super().__init__()
        self.head = head
        object.__setattr__(self, "full", model)  # deliberately not a submodule (see above)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.flatten(1))

    def state_dict(self, *args, **kwargs):
        return self.full.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.full.load_state_dict(state_dict, strict=strict, assign=assign)


class FeatureLoader(DeviceLoader):
    """Cached feature vectors (N, D, 1, 1) on the device: DeviceLoader's seeded shuffling and batching, nothing else
    (they are already what the head sees: no normalisation, augmentation or mixing)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool, seed: int):
        super().__init__(features, labels, batch_size, (0.0,), (1.0,), train=train, seed=seed)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x


def classifier_of(model: nn.Module) -> nn.Linear:
    """The model's last registered nn.Linear: the classifier of every cnnlab and torchvision model."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise CnnlabError(
            f"finetune=feature_extract needs a model that ends in an nn.Linear classifier; "
            f"{type(model).__name__} has none (use finetune=linear_probe)"
        )
    return linears[-1]


@torch.no_grad()
def extract(model: nn.Module, head: nn.Linear, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D, 1, 1), labels) of every image of `loader` (in order, no augmentation), in float32."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().float()))
    features, labels = [], []
    try:
        for i, (x, y) in enumerate(loader):
            out = model(x)
            feature = captured[-1]
            captured.clear()
            if feature.dim() != 2:
                raise CnnlabError(
                    f"finetune=feature_extract: the classifier of {type(model).__name__} gets "
                    f"{feature.dim()}-d inputs, not one vector per image (use finetune=linear_probe)"
                )
            if i == 0 and not torch.allclose(head(feature), out.float(), rtol=1e-3, atol=1e-4):
                raise CnnlabError(
                    f"finetune=feature_extract: {type(model).__name__} changes the output of its last "
                    f"nn.Linear, so that layer alone is not its head (use finetune=linear_probe)"
                )
            features.append(feature)
            labels.append(y)
    finally:
        hook.remove()
    return torch.cat(features)[:, :, None, None], torch.cat(labels)


def prepare(model: nn.Module, data: DataBundle, device: torch.device, seed: int) -> tuple[nn.Module, DataBundle, str]:
    """(the model to train, the feature DataBundle, a line for the console). `model` ends up frozen, in eval mode,
    on `device`; `data`'s loaders are switched to evaluation mode (they are not used afterwards)."""
    start = time.perf_counter()
    model.to(device)
    fit_data_dependent_layers(model, data.train)  # as the trainer does before its first step: clean images
    model.eval()
    head = classifier_of(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    batch_size = data.train.batch_size
    splits = {"train": data.train.evaluation_mode(), "test": data.test}
    if not data.val_is_test:  # else val is the test loader itself
        splits["val"] = data.val
    cached = {name: extract(model, head, loader) for name, loader in splits.items()}
    loaders = {
        name: FeatureLoader(
            *cached[name], batch_size if name == "train" else loader.batch_size, train=name == "train", seed=seed
        )
        for name, loader in splits.items()
    }
    loaders.setdefault("val", loaders["test"])
    n, dim = cached["train"][0].shape[:2]
    total = sum(f.numel() * f.element_size() for f, _ in cached.values())
    line = (
        f"finetune=feature_extract: {n:,} x {dim} training features (and val/test) cached on {device} "
        f"({total / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s; only {type(model).__name__}'s "
        f"classifier trains"
    )
    bundle = DataBundle(loaders["train"], loaders["val"], loaders["test"], data.spec, data.val_is_test)
    return CachedFeatureModel(model, head), bundle, line
