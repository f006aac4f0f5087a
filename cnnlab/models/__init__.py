"""Model zoo: `build(cfg.model, spec)` builds the config's `_target_` as a plain nn.Module.

cnnlab's own models are in REGISTRY (name -> constructor); a config naming one of them by its exact class path is
built by calling that constructor, and `build_registered` builds by registry name alone: what checkpoints use, so
no stored value ever reaches hydra.utils.instantiate. Only a user's own class in a live config (the user's code,
e.g. `model._target_=my.Net`) is instantiated by Hydra.

Models know nothing of configs or data loaders: their constructors take `num_classes`, `in_channels`
and, where it changes the network, `image_size`, plus their own knobs. `build` fills those three from
the dataset's DataSpec unless the config sets them.

The config's keys are checked against the constructor's signature before anything is built (an unknown or
missing key is a CnnlabError listing the keys the model accepts), and the shared knobs' values by name
(knobs.check_knobs, for cnnlab's own models). An exception raised while building is then a bug and keeps
its traceback.

A new model: a class (or a factory decorated with knobs.extends) in the family's file here, its entry in
REGISTRY, and one configs/model/<name>.yaml listing every keyword it takes (a variant: `defaults: [<base>,
_self_]` plus the keys that differ). tests/test_models.py then builds it, trains a step at 28x28x1 and 32x32x3
and checks that its YAML lists every knob.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import (
    alexnet,
    densenet,
    efficientnet,
    googlenet,
    lenet,
    mobilenet,
    resnet,
    small_cnns,
    speedrun,
    tv,
    vgg,
    vit,
)
from cnnlab.models.knobs import check_knobs

FACTS = ("num_classes", "in_channels", "image_size")  # filled from the data, never model knobs

# Every model constructor the configs name (tests/test_untrusted_data.py checks configs/model/ against it), by name.
REGISTRY = {
    f.__name__: f
    for f in (
        alexnet.AlexNet,
        densenet.DenseNet,
        efficientnet.EfficientNet,
        googlenet.GoogLeNet,
        lenet.LeNet5,
        small_cnns.ConvNet,
        small_cnns.MnistCNN,
        small_cnns.SimpleCNN,
        small_cnns.CifarCNN,
        mobilenet.MobileNetV1,
        mobilenet.MobileNetV2,
        mobilenet.MobileNetV3,
        resnet.ResNet,
        resnet.resnet18,
        resnet.resnet34,
        resnet.resnet50,
        resnet.resnet101,
        resnet.resnet152,
        resnet.wide_resnet,
        resnet.cifar_resnet,
        speedrun.SpeedrunNet,
        tv.TorchvisionModel,  # torchvision's own models by name (model.name), through torchvision's registry
        vgg.VGG,
        vit.ViT,
    )
}


def class_path(name: str) -> str:
    """The `_target_` a config writes for a registered model: its module and name."""
    f = REGISTRY[name]
    return f"{f.__module__}.{f.__qualname__}"


def registry_name(target) -> str | None:
    """The registry name of a `_target_` that is exactly a registered model's class path, else None."""
    return next((name for name in REGISTRY if class_path(name) == target), None)


def knobs(target) -> dict[str, inspect.Parameter] | None:
    """The keyword arguments a model constructor accepts, or None when it takes any (**kwargs) or cannot tell."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return {k: p for k, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY)}


def knob_names(target) -> list[str]:
    """The knobs a user can set (the constructor's keywords but the data facts), for messages."""
    return [k for k in knobs(target) or {} if k not in FACTS]


def unknown_knob_message(target_path: str, key: str) -> str:
    """One line for `model.<key>` that the model does not take, naming the keys it accepts."""
    try:
        name = registry_name(target_path)  # ours without importing by name; a user's own class through Hydra
        accepted = knob_names(REGISTRY[name] if name else get_method(target_path))
    except Exception:  # an unimportable target is reported on its own
        accepted = []
    name = target_path.rsplit(".", 1)[-1]
    listing = f"; it accepts: {', '.join(accepted)}" if accepted else ""
    return f"model.{key} is not a knob of {name}{listing}"


def _check_keys(target, target_path: str, keys: list) -> None:
    accepted = knobs(target)
    if accepted is None:
        return
    for key in keys:
        if key not in accepted:
            raise CnnlabError(unknown_knob_message(target_path, str(key)))
    for key, p in accepted.items():
        if p.default is p.empty and key not in keys and key not in FACTS:
            raise CnnlabError(f"model.{key} is required by {target_path.rsplit('.', 1)[-1]}: add model.{key}=...")


def build(model_cfg: DictConfig, spec) -> nn.Module:
    """A live config's model: cnnlab's own by registry, a user's own class through Hydra."""
    if "_target_" not in model_cfg:
        raise CnnlabError("model._target_ is missing: point it at a model class or function")
    name = registry_name(model_cfg._target_)
    if name is not None:
        knobs_ = OmegaConf.to_container(model_cfg, resolve=True)
        knobs_.pop("_target_")
        return build_registered(name, knobs_, spec)
    try:
        target = get_method(model_cfg._target_)
    except Exception as ex:  # Hydra wraps import failures in several types
        raise CnnlabError(f"model._target_ '{model_cfg._target_}' cannot be imported: {ex}") from None
    _check_keys(target, model_cfg._target_, [k for k in model_cfg if k != "_target_"])
    values = OmegaConf.to_container(model_cfg, resolve=True)
    if str(model_cfg._target_).startswith("cnnlab."):  # our knob names; a user's model may mean other things
        check_knobs({k: v for k, v in values.items() if k != "_target_"})
    try:
        model = instantiate(values, **_facts(target, model_cfg, spec))
    except InstantiationException as ex:  # Hydra wraps what the constructor raised: unwrap it
        cause = ex.__cause__
        if isinstance(cause, CnnlabError):
            raise cause from None
        if cause is not None:
            raise cause from None  # a bug in the model code: its own traceback, without Hydra's wrapper
        raise
    return _checked(model, model_cfg._target_)


def build_registered(name: str, values: dict, spec) -> nn.Module:
    """One of cnnlab's models by registry name, with plain knob values: a direct call, nothing imported by name."""
    target = REGISTRY[name]
    _check_keys(target, class_path(name), list(values))
    check_knobs(values)
    return _checked(target(**values, **_facts(target, values, spec)), class_path(name))


def _facts(target, given, spec) -> dict:
    """num_classes, in_channels, image_size from the data, where the constructor takes them and the config is silent."""
    accepted = knobs(target)
    facts = {"num_classes": spec.num_classes, "in_channels": spec.channels, "image_size": spec.image_size}
    return {k: v for k, v in facts.items() if (accepted is None or k in accepted) and k not in given}


def _checked(model, target_path: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise CnnlabError(f"model._target_ '{target_path}' returned {type(model).__name__}, not an nn.Module")
    return model


def load_yaml(path: str | Path) -> DictConfig:
    """A configs/model/<name>.yaml with the family bases its defaults list names merged in, as Hydra composes it
    (for scripts and tests that build a model without composing a whole run config)."""
    path = Path(path)
    cfg = OmegaConf.load(path)
    bases = [load_yaml(path.with_name(f"{b}.yaml")) for b in cfg.pop("defaults", []) if b != "_self_"]
    return OmegaConf.merge(*bases, cfg)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
