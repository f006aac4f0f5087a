"""Model zoo: `build(cfg.model, spec)` instantiates the config's `_target_` as a plain nn.Module.

Models know nothing of configs or data loaders: their constructors take `num_classes`, `in_channels`
and, where it changes the network, `image_size`, plus their own knobs. `build` fills those three from
the dataset's DataSpec unless the config sets them.
"""

from __future__ import annotations

import inspect

from hydra.errors import InstantiationException
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.errors import CnnlabError


def _accepted(target, names: dict) -> dict:
    """Keep the keyword arguments that the constructor accepts (all of them if it takes **kwargs)."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return names
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return names
    return {k: v for k, v in names.items() if k in params}


def build(model_cfg: DictConfig, spec) -> nn.Module:
    if "_target_" not in model_cfg:
        raise CnnlabError("model._target_ is missing: point it at a model class or function")
    try:
        target = get_method(model_cfg._target_)
    except Exception as ex:  # Hydra wraps import failures in several types
        raise CnnlabError(f"model._target_ '{model_cfg._target_}' cannot be imported: {ex}") from None
    facts = {"num_classes": spec.num_classes, "in_channels": spec.channels, "image_size": spec.image_size}
    facts = {k: v for k, v in _accepted(target, facts).items() if k not in model_cfg}
    try:
        model = instantiate(OmegaConf.to_container(model_cfg, resolve=True), **facts)
    except InstantiationException as ex:
        cause = ex.__cause__ or ex
        raise CnnlabError(f"cannot build model {model_cfg._target_}: {cause}") from None
    except (ValueError, TypeError) as ex:
        raise CnnlabError(f"cannot build model {model_cfg._target_}: {ex}") from None
    if not isinstance(model, nn.Module):
        raise CnnlabError(f"model._target_ '{model_cfg._target_}' returned {type(model).__name__}, not an nn.Module")
    return model


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
