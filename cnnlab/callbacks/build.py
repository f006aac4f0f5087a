"""The `callbacks` config (name -> `_target_` + keyword arguments) checked and instantiated by Hydra.

It is the config the user composed for this command (configs/callbacks/, overrides, --config-dir), never one
read from a file: a checkpoint's stored config holds no callbacks (commands/train.py leaves them out), so a
resume instantiates the callbacks of its command line. The user's mistakes (a target that does not import,
is not a Callback, or does not take the given keywords) are checked before anything is instantiated, each as one
line; an error inside a callback's own __init__ is a bug and keeps its traceback.
"""

from __future__ import annotations

import inspect

from omegaconf import DictConfig, OmegaConf

from cnnlab.callbacks.base import Callback
from cnnlab.checks import number
from cnnlab.errors import CnnlabError
from cnnlab.schema.common import HYDRA_KEYS


def _entries(cfg: DictConfig | None):
    """(name, node) for every callback that is on (`callbacks.NAME=null` turns one off, like `~callbacks.NAME`)."""
    if cfg is None:
        return
    if not isinstance(cfg, DictConfig):
        raise CnnlabError(f"callbacks must be a mapping name -> {{_target_: ..., keyword: value}}, got {cfg!r}")
    for name, node in cfg.items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or not isinstance(node.get("_target_"), str):
            raise CnnlabError(f"callbacks.{name} needs a _target_ (a Callback class path), got {node!r}")
        yield name, node


def _check(name: str, node: DictConfig) -> None:
    from hydra.utils import get_object

    target = node._target_
    try:
        cls = get_object(target)
    except Exception as ex:  # noqa: BLE001 - ImportError, AttributeError or Hydra's own: the user's path is wrong
        cause = ex.__cause__ or ex
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise CnnlabError(f"callbacks.{name}._target_={target!r} cannot be imported ({reason})") from None
    if not (isinstance(cls, type) and issubclass(cls, Callback)):
        raise CnnlabError(
            f"callbacks.{name}._target_={target!r} is not a trainer callback (a subclass of "
            "cnnlab.callbacks.base.Callback)"
        )
    kwargs = {k: v for k, v in node.items() if k not in HYDRA_KEYS}
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as ex:
        raise CnnlabError(f"callbacks.{name}: {target} {ex}") from None
    for key, limits in cls.ranges.items():  # a Callback subclass: it has `ranges`
        if key in kwargs:  # checked as callbacks.NAME.KEY, the key the message names
            number(OmegaConf.create({"callbacks": {name: {key: node[key]}}}), f"callbacks.{name}.{key}", **limits)


def check(cfg: DictConfig | None) -> None:
    """Every callback's target imports, is a Callback and takes its keywords (before the run dir is claimed)."""
    for name, node in _entries(cfg):
        _check(name, node)


def build(cfg: DictConfig | None) -> list[Callback]:
    """The callbacks, in the config's order."""
    from hydra.utils import instantiate

    check(cfg)
    return [instantiate(OmegaConf.to_container(node, resolve=True)) for _, node in _entries(cfg)]
