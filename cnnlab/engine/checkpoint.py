"""Checkpoints: one plain dict, written atomically, read with weights_only=True and checked before use.

A checkpoint is untrusted input: its entries are checked for type (and its weights for NaN/inf) before anything
uses them, and its stored run config is read as plain data (`run_config`): no interpolation, the model named by
cnnlab's registry only (no `_target_` below a section's top, none outside the registry), no downloads.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab import models
from cnnlab.errors import CnnlabError
from cnnlab.models import tv
from cnnlab.untrusted import load_error, regular_file

FORMAT_VERSION = 2  # 2: epochs numbered from 1 (history, best_epoch, epoch)
SLOW_SAVE_ENV = "CNNLAB_TEST_SLOW_SAVE"  # test hook: seconds to pause inside a checkpoint write (crash tests)
# Model keys that would fetch weights from elsewhere (a download, another file): the checkpoint holds the weights,
# so a stored config must have them null (the trainer stores them so, see stored_model).
WEIGHT_SOURCES = ("weights", "weights_path", "pretrained", "url", "weights_url", "download", "download_url")


def write_failure(ex: RuntimeError) -> str | None:
    """What torch.save's RuntimeError says when the disk is full or a file size limit is hit, else None (a bug)."""
    text = str(ex)
    if "No space left" in text or "Disk quota exceeded" in text:
        return "no space left on the device"
    if any(
        s in text
        for s in ("file write failed", "PytorchStreamWriter", "inline_container", "File too large", "unexpected pos")
    ):
        return "a file write failed (the disk is full, or over a quota or file size limit)"
    return None


def save(path: Path, state: dict) -> None:
    """Write to a uniquely named temp file beside `path`, then os.replace it: a crash never leaves a
    half-written checkpoint, two writers never share a temp file, and a failed write removes its temp file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)  # not its parents: a run dir deleted mid-run is not made again
        with open(tmp, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            if os.environ.get(SLOW_SAVE_ENV):
                f.flush()
                time.sleep(float(os.environ[SLOW_SAVE_ENV]))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as ex:
        tmp.unlink(missing_ok=True)
        raise CnnlabError(
            f"cannot write checkpoint {path}: {ex.strerror or ex}; the previous {path.name} (if any) is intact"
        ) from None
    except RuntimeError as ex:
        tmp.unlink(missing_ok=True)
        reason = write_failure(ex)  # torch reports a full disk as a RuntimeError from its zip writer
        if reason is None:
            raise
        raise CnnlabError(
            f"cannot write checkpoint {path}: {reason}; the previous {path.name} (if any) is intact"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temp_files(directory: Path) -> None:
    """Temp files left by a killed writer (the caller holds the run dir's lock, so none is in use)."""
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def load(path: str | Path) -> dict:
    """Read and check the envelope: format version and model weights. Upgrades format 1 in memory."""
    path = regular_file(path, "checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as ex:  # truncated zip, pickle with foreign objects, not a torch file at all ...
        raise CnnlabError(f"{path} is not a readable cnnlab checkpoint ({load_error(ex)})") from None
    if not isinstance(state, dict) or "format_version" not in state or "model" not in state:
        raise CnnlabError(f"{path} is not a cnnlab checkpoint (no format_version/model entries)")
    version = state["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CnnlabError(f"{path} is not a cnnlab checkpoint (format_version is {version!r}, not a version number)")
    if version > FORMAT_VERSION:
        raise CnnlabError(
            f"{path} has checkpoint format {version}; this cnnlab reads up to {FORMAT_VERSION}: upgrade cnnlab"
        )
    for key in ("model", "ema"):
        if state.get(key) is not None and not _is_state_dict(state[key]):
            raise CnnlabError(f"{path} is damaged: its '{key}' entry is not a dict of tensors")
        for name, tensor in (state.get(key) or {}).items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CnnlabError(f"{path} is damaged: its '{key}' weights hold NaN or inf (in {name})")
    if version == 1:
        _upgrade_from_1(state)
    return state


def _upgrade_from_1(state: dict) -> None:
    """Format 1 numbered epochs from 0 in the history and best_epoch."""
    fit = state.get("fit")
    if isinstance(fit, dict):
        for row in fit.get("history") or []:
            if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                row["epoch"] += 1
        if isinstance(fit.get("best_epoch"), int):
            fit["best_epoch"] += 1
    if isinstance(state.get("epoch"), int):
        state["epoch"] += 1


def require(state: dict, path: str | Path, entries: dict[str, type], why: str) -> None:
    """Each entry present with the given type, or one line naming what is missing."""
    for key, kind in entries.items():
        if not isinstance(state.get(key), kind):
            found = "missing" if key not in state else f"a {type(state[key]).__name__}"
            raise CnnlabError(f"{path} cannot be used to {why}: its '{key}' entry is {found}")


def _escape(value):
    """Make every interpolation in a stored config a literal string: the checkpoint's text is data."""
    if isinstance(value, dict):
        return {str(k): _escape(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escape(v) for v in value]
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace("${", "\\${")
    return value


def _targets(value, where: str):
    """Every `_target_` in a config subtree, with its dotted location."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "_target_":
                yield where, v
            else:
                yield from _targets(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _targets(v, f"{where}[{i}]")


def _weight_sources(value, where: str = "model"):
    """Every key in the model subtree that would fetch weights from elsewhere, with a value that asks for it."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k in WEIGHT_SOURCES and v is not None and v is not False:
                yield f"{where}.{k}", v
            yield from _weight_sources(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _weight_sources(v, f"{where}[{i}]")


def stored_model(model: dict) -> tuple[str | None, dict]:
    """What the trainer stores for a live model config: its registry name (None for a user's own class) and the
    config with the weight sources nulled (the weights are in the checkpoint, so reading it downloads nothing)."""
    name = models.registry_name(model.get("_target_"))
    if name == "TorchvisionModel" and model.get("name") in tv.AUX_HEADS and model.get("weights") is not None:
        return name, model  # torchvision builds these differently with weights (transform_input): eval refuses them
    return name, {k: (None if k in WEIGHT_SOURCES and name else v) for k, v in model.items()}


def _model_name(config: dict, path) -> str:
    """The registry name of the stored model: `model_class` (new checkpoints) or, in older ones, a `_target_` that
    is exactly a registered class path. Anything else is refused: a checkpoint may not choose code to run."""
    name, target = config.get("model_class"), config["model"].get("_target_")
    if name is not None and (not isinstance(name, str) or name not in models.REGISTRY):
        raise CnnlabError(f"{path} names model_class={name!r}, which is not one of cnnlab's models")
    from_target = models.registry_name(target) if isinstance(target, str) else None
    if target is not None and from_target is None:
        raise CnnlabError(
            f"{path} names model._target_={target!r}, which is not one of cnnlab's models: "
            f"a checkpoint may not choose code to run"
        )
    if name is not None and from_target is not None and name != from_target:
        raise CnnlabError(f"{path} names two models: model_class={name!r} and model._target_={target!r}")
    if name is None and from_target is None:
        raise CnnlabError(f"{path} names no model (neither model_class nor model._target_)")
    return name or from_target


def run_config(state: dict, path: str | Path) -> DictConfig:
    """The run config stored in a checkpoint, as plain data: interpolations stay literal text, the model is one
    of cnnlab's registered models (set as `model_class`, with `model._target_` its class path), no other
    `_target_` and no weight source is set in it, and nothing is downloaded because of it."""
    config = state.get("config")
    if (
        not isinstance(config, dict)
        or not isinstance(config.get("data"), dict)
        or not isinstance(config.get("model"), dict)
    ):
        raise CnnlabError(f"{path} holds no run config: it was not written by `cnnlab train`")
    spec = config.get("data_spec")
    needed = ("num_classes", "channels", "image_size", "classes", "mean", "std")
    if not isinstance(spec, dict) or any(k not in spec for k in needed):
        raise CnnlabError(f"{path} has no complete data_spec (image size, channels, classes, mean, std)")
    if config.get("callbacks") is not None:  # training never stores them (commands/train.py): a crafted file
        raise CnnlabError(f"{path} stores callbacks: a checkpoint may not choose code to run")
    sections = {f"config.{k}" for k in config}
    for where, target in _targets(config, "config"):
        if where not in sections:  # a section's own _target_ (model, optimizer) is a record; anywhere else: code
            where = where.removeprefix("config.")
            raise CnnlabError(
                f"{path} names {where}._target_={target!r}, which is not one of cnnlab's models: "
                f"a checkpoint may not choose code to run"
            )
    name = _model_name(config, path)
    for where, value in _weight_sources(config["model"]):
        raise CnnlabError(
            f"{path} asks for {where}={value!r}: a checkpoint may not download or read other files "
            f"(its weights are in the checkpoint: cnnlab's training stores {where}=null)"
        )
    cfg = OmegaConf.create(_escape({**config, "model_class": name}))
    with open_dict(cfg):
        cfg.model._target_ = models.class_path(name)
        cfg.data.download = False
        cfg.data.download_url = None
    return cfg


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _generator_state(value, like: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == like.dtype and value.shape == like.shape


def set_rng_state(state: dict, path: str | Path = "the checkpoint") -> None:
    """Restore the RNG states `rng_state` saved; a malformed one (wrong type, size or dtype) is one line."""
    if not _generator_state(state.get("torch"), torch.get_rng_state()):
        raise CnnlabError(f"{path} cannot be used to resume: its rng.torch entry is not a CPU generator state")
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        current = torch.cuda.get_rng_state_all()
        if not isinstance(cuda, (list, tuple)) or not all(_generator_state(t, current[0]) for t in cuda):
            raise CnnlabError(f"{path} cannot be used to resume: its rng.cuda entry is not a list of CUDA states")
        cuda = list(cuda)[: len(current)]
    try:  # the right size but not a valid Mersenne Twister state
        torch.set_rng_state(state["torch"])
    except RuntimeError as ex:
        raise CnnlabError(f"{path} cannot be used to resume: its rng.torch entry is invalid ({ex})") from None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
