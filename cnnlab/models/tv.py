"""`model=torchvision`: any torchvision classification model by name, optionally with pretrained weights.

The classification head is replaced for `num_classes`, and the first convolution for `in_channels` (summing
pretrained RGB filters for 1-channel input), so transfer learning works on any dataset.
"""

from __future__ import annotations

import urllib.error

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.untrusted import load_error, regular_file

AUX_HEADS = ("googlenet", "inception_v3")  # their auxiliary classifiers change what forward returns


def _layers_of_type(model: nn.Module, kind) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, layer) for every module of a type, in registration (depth-first) order."""
    found = []
    for path, layer in model.named_modules():
        if path and isinstance(layer, kind):
            parent_path, _, name = path.rpartition(".")
            found.append((model.get_submodule(parent_path), name, layer))
    return found


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """The last registered Linear (or 1x1 Conv2d) is the classifier in every torchvision classification model."""
    parent, name, layer = _layers_of_type(model, (nn.Linear, nn.Conv2d))[-1]
    if isinstance(layer, nn.Linear):
        new = nn.Linear(layer.in_features, num_classes)
    else:  # SqueezeNet classifies with a 1x1 convolution
        new = nn.Conv2d(layer.in_channels, num_classes, layer.kernel_size)
    setattr(parent, name, new)


def _replace_stem(model: nn.Module, in_channels: int, pretrained: bool) -> None:
    parent, name, conv = _layers_of_type(model, nn.Conv2d)[0]
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
    )
    if pretrained:
        with torch.no_grad():  # keep the pretrained filters: their mean over RGB, repeated per input channel
            new.weight.copy_(conv.weight.mean(1, keepdim=True).expand_as(new.weight) * 3 / in_channels)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    setattr(parent, name, new)


def TorchvisionModel(
    name: str,
    num_classes: int = 1000,
    in_channels: int = 3,
    weights: str | None = None,
    weights_path: str | None = None,
) -> nn.Module:
    import torchvision  # here, not at the top: a LeNet run never pays torchvision's import (start-up time)

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise CnnlabError(
            f"model.name '{name}' is not a torchvision classification model; choose from: {', '.join(available)}"
        )
    extra = {"aux_logits": False, "init_weights": False} if name in AUX_HEADS else {}
    if weights is not None and weights_path is not None:
        raise CnnlabError("set model.weights or model.weights_path, not both")
    if weights is None and weights_path is None:
        model = torchvision.models.get_model(name, num_classes=num_classes, **extra)
        if in_channels != 3:
            _replace_stem(model, in_channels, pretrained=False)
        return model
    if weights is not None:
        try:
            model = torchvision.models.get_model(name, weights=weights, **extra)
        except (ValueError, KeyError) as ex:
            raise CnnlabError(f"model.weights={weights!r} for {name}: {ex}") from None
        except (urllib.error.URLError, OSError, RuntimeError) as ex:
            raise CnnlabError(
                f"cannot download the {weights} weights of {name} ({ex}); offline? download them "
                f"elsewhere and pass model.weights_path=FILE, or set model.weights=null"
            ) from None
    new_head = False
    if weights is None:
        model = torchvision.models.get_model(name, **extra)
        path = regular_file(weights_path, "model.weights_path:")  # a FIFO would block the read for ever
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("model"), dict) and "fit" in state:
                # a cnnlab checkpoint of this torchvision model (best.pt): its weights, under its own head
                state = state["model"]
                head = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) in (2, 4)]
                _replace_head(model, head[-1].shape[0])
                new_head = True  # for the task at hand, whatever its size
            model.load_state_dict(state)
        except FileNotFoundError:
            raise CnnlabError(f"model.weights_path: {path} does not exist") from None
        except Exception as ex:  # pickle, zip and shape errors all mean the same thing to the user
            raise CnnlabError(
                f"model.weights_path: {path} is not a state dict of torchvision's {name} ({load_error(ex)})"
            ) from None
    if num_classes != 1000 or new_head:
        _replace_head(model, num_classes)
    if in_channels != 3:
        _replace_stem(model, in_channels, pretrained=True)
    return model
