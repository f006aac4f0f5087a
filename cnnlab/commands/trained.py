"""What the commands that start from a checkpoint share (eval, predict, features, export): the stored run
config read as data, the data spec, the model with its validated weights, and image files preprocessed the
way the model was trained."""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image
from torch import nn

from cnnlab import models
from cnnlab.data import DataSpec
from cnnlab.data.augment import image_transform
from cnnlab.data.transforms import Normalise
from cnnlab.engine import checkpoint
from cnnlab.errors import CnnlabError


@dataclass
class Trained:
    path: Path  # the checkpoint file
    state: dict
    config: DictConfig  # the run config stored in the checkpoint
    spec: DataSpec
    model: nn.Module  # on the device, in eval mode, with the weights that were validated (EMA when kept)

    @property
    def name(self) -> str:
        return type(self.model).__name__

    @property
    def run_dir(self) -> Path:
        """The training run the checkpoint belongs to: <run>/checkpoints/best.pt -> <run>."""
        parent = self.path.resolve().parent
        return parent.parent if parent.name == "checkpoints" else parent

    @property
    def params(self) -> int:
        return models.count_params(self.model)


def _spec(config: DictConfig, path: Path) -> DataSpec:
    """The stored data spec, checked (a checkpoint is untrusted input): wrong kinds, NaN/inf or a non-positive std
    and a class list that does not match the outputs would give wrong results with exit 0."""
    s = OmegaConf.to_container(config.data_spec)
    counts = [s[k] for k in ("num_classes", "channels", "image_size")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in counts):
        raise CnnlabError(f"{path} has a damaged data_spec (num_classes, channels, image_size: not positive integers)")
    for key in ("mean", "std"):
        values = s[key]
        if (
            not isinstance(values, list)
            or len(values) != s["channels"]
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in values)
            or (key == "std" and any(x <= 0 for x in values))
        ):
            need = "positive" if key == "std" else "finite"
            raise CnnlabError(
                f"{path} has a damaged data_spec: {key} must be {s['channels']} {need} numbers, one per channel; "
                f"got {values!r}"
            )
    classes = s["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise CnnlabError(f"{path} has a damaged data_spec: classes must be a list of names")
    if len(classes) != s["num_classes"]:
        raise CnnlabError(
            f"{path} has a damaged data_spec: {len(classes)} class names for a model with {s['num_classes']} outputs"
        )
    return DataSpec(s["num_classes"], s["channels"], s["image_size"], classes, tuple(s["mean"]), tuple(s["std"]))


def load_trained(path: str | Path, device: torch.device) -> Trained:
    path = Path(path).expanduser()
    state = checkpoint.load(path)
    config = checkpoint.run_config(state, path)  # plain, validated data
    spec = _spec(config, path)
    knobs = OmegaConf.to_container(config.model, resolve=True)  # every ${...} in it was escaped: literal text
    knobs.pop("_target_")
    model = models.build_registered(config.model_class, knobs, spec)  # by registry name: no code named by the file
    try:
        model.load_state_dict(state.get("ema") or state["model"])  # EMA weights are the ones that were validated
    except RuntimeError as ex:
        raise CnnlabError(
            f"{path}: weights do not fit the model in its config ({str(ex).strip().splitlines()[0]})"
        ) from None
    return Trained(path, state, config, spec, model.to(device).eval())


# ------------------------------------------------------------------------------------------- image files
def find_files(inputs) -> list[Path]:
    """FILE, DIR (its files, recursively, sorted), GLOB, or a list of them -> files; nothing found is an error."""
    items = [str(i) for i in inputs] if isinstance(inputs, (list, tuple, ListConfig)) else [str(inputs)]
    found: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif glob.has_magic(item):
            found += sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        elif path.exists():  # a FIFO or device: reading it would block or never end
            raise CnnlabError(f"input {item} is not a regular file (a FIFO, socket or device)")
        else:
            raise CnnlabError(f"input {item} does not exist")
    if not found:
        raise CnnlabError(f"no files found in {', '.join(items)}")
    return found


def load_image(path: Path, spec: DataSpec) -> torch.Tensor:
    """One image file as uint8 (C, H, W) at the model's size and channels: the short side resized, then
    centre-cropped (what evaluation does with image-file datasets). Unreadable -> CnnlabError."""
    if spec.channels not in (1, 3):
        raise CnnlabError(f"this model takes {spec.channels}-channel images; image files give 1 or 3")
    try:
        with Image.open(path) as opened:
            image = opened.convert("L" if spec.channels == 1 else "RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as ex:  # not an image, truncated, huge
        detail = str(ex).strip().splitlines()[0][:160] if str(ex).strip() else type(ex).__name__
        raise CnnlabError(f"{path} is not a readable image ({detail})") from None
    return image_transform(None, spec.image_size, (0,), from_files=True)(image)


def normalise(images: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float, normalised with the training set's mean and std (as the loaders do)."""
    return Normalise(spec.mean, spec.std, images.device)(images)
