"""The model knobs a config can switch (`model.act`, `model.norm`, `model.pool`, ...) and their checks.

A bad value fails the same way in every model: a CnnlabError naming the key (`check_knobs` checks the shared
ones by name before anything is built; `extends` lets models.build check a factory's keys).
"""

from __future__ import annotations

import inspect

from torch import nn

from cnnlab.errors import CnnlabError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
}
NORMS = ("batch", "group", "layer", "none")
POOLS = ("max", "avg", "sum", "mixed", "stochastic", "lp", "blur", "conv")
HEADS = ("flatten", "gap", "gmp")  # what turns the last feature map into a vector
PADDINGS = ("valid", "same")


def _fraction(key: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise CnnlabError(f"model.{key} must be a number in [0, 1); got {v!r}")


def _positive(key: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise CnnlabError(f"model.{key} must be a number > 0; got {v!r}")


def _positive_int(key: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise CnnlabError(f"model.{key} must be an integer >= 1; got {v!r}")


def _positive_ints(key: str, v) -> None:
    if (
        not isinstance(v, (list, tuple))
        or not v
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)
    ):
        raise CnnlabError(f"model.{key} must be a list of integers >= 1; got {v!r}")


def _compression(key: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
        raise CnnlabError(f"model.{key} must be a number in (0, 1]; got {v!r}")


# Knobs that mean the same in every model, checked by name (a null value means "the model's default").
KNOB_CHECKS = {
    "norm": lambda k, v: check_choice(k, v, NORMS),
    "fc_norm": lambda k, v: check_choice(k, v, NORMS),
    "act": lambda k, v: check_choice(k, v, tuple(ACTIVATIONS)),
    "pool": lambda k, v: check_choice(k, v, POOLS),
    "head": lambda k, v: check_choice(k, v, HEADS),
    "padding": lambda k, v: check_choice(k, v, PADDINGS),
    "dropout": _fraction,
    "dropout2d": _fraction,
    "block_dropout": _fraction,
    "drop_path": _fraction,
    "width_mult": _positive,
    "depth_mult": _positive,
    "pool_p": _positive,
    "kernel_size": _positive_int,
    "dilation": _positive_int,
    "pool_kernel": _positive_int,
    "pool_stride": _positive_int,
    "hidden": _positive_int,
    "growth_rate": _positive_int,
    "bn_size": _positive_int,
    "groups": _positive_int,
    "width_per_group": _positive_int,
    "stem_width": _positive_int,
    "widen": _positive_int,
    "heads": _positive_int,
    "dim": _positive_int,
    "mlp_dim": _positive_int,
    "patch_size": _positive_int,
    "layers": _positive_ints,
    "widths": _positive_ints,
    "block_config": _positive_ints,
    "compression": _compression,
}


def check_knobs(knobs: dict) -> None:
    """Raise a CnnlabError naming the first shared knob (see KNOB_CHECKS) whose value is out of range."""
    for key, value in knobs.items():
        if key in KNOB_CHECKS and value is not None:
            KNOB_CHECKS[key](key, value)


def extends(cls, *fixed: str):
    """Decorator for a factory `f(own..., **kw) -> cls(...)`: its signature lists its own keywords plus those of
    `cls` it passes on (all but `fixed`), so that models.build can check a config's keys against it."""

    def wrap(fn):
        kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        own = [p for p in inspect.signature(fn).parameters.values() if p.kind not in kinds]
        taken = {p.name for p in own} | set(fixed)
        rest = [p for p in inspect.signature(cls).parameters.values() if p.name not in taken and p.kind not in kinds]
        fn.__signature__ = inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own + rest])
        return fn

    return wrap


def check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise CnnlabError(f"model.{key} must be one of {', '.join(map(str, choices))}; got {value!r}")


def check_bool(key: str, value) -> None:
    if not isinstance(value, bool):
        raise CnnlabError(f"model.{key} must be true or false; got {value!r}")
