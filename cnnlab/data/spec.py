"""What `cnnlab.data.build` hands back: the loaders of a run and the facts about its data (DataSpec)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cnnlab.data.loaders import DeviceLoader, WorkerLoader

Loader = DeviceLoader | WorkerLoader


@dataclass
class DataSpec:
    """What a model and a report need to know about the data, and nothing about how it is loaded."""

    num_classes: int
    channels: int
    image_size: int
    classes: list[str] = field(default_factory=list)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def as_dict(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "channels": self.channels,
            "image_size": self.image_size,
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass
class DataBundle:
    train: Loader
    val: Loader
    test: Loader
    spec: DataSpec
    val_is_test: bool = False
