"""Range and choice checks on config values: one CnnlabError line naming the key. Shared by the config
schemas and the parts (augmentation ops, commands) that check their own keys, with no import of either."""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import CnnlabError


def number(
    cfg: DictConfig, key: str, *, low: float, low_open: bool = False, high: float | None = None, integer: bool = False
) -> None:
    """Check cfg.<key> is a number in range; `key` is a dotted path for the message."""
    value = OmegaConf.select(cfg, key)
    if value is None:
        return
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise CnnlabError(f"{key} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise CnnlabError(f"{key} must be a finite number, got {value!r}")
    too_low = value <= low if low_open else value < low
    if too_low or (high is not None and value > high):
        bound = f"> {low}" if low_open else f">= {low}"
        if high is not None:
            bound += f" and <= {high}"
        raise CnnlabError(f"{key} must be {bound}, got {value!r}")


def choice(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in choices:
        raise CnnlabError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
