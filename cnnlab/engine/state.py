"""What a checkpoint holds: one TrainState (weights, optimizer, schedule, scaler, EMA, RNG) and its Progress.

Every save (epoch end, time limit, Ctrl-C) is one `state_dict()` call; a resume is one `load_state_dict()`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from cnnlab.engine import checkpoint, resume_checks
from cnnlab.engine.ema import EMA
from cnnlab.errors import CnnlabError


@dataclass
class Progress:
    """Where the fit is: the part of the TrainState that is not tensors."""

    epoch: int = 0  # epochs completed (the one in progress is epoch + 1)
    step: int = 0  # optimizer steps so far
    batch: int = 0  # batches of the epoch in progress already trained (non-zero only after a mid-epoch stop)
    partial: dict = field(default_factory=dict)  # running sums of the unfinished epoch
    best_metric: float | None = None
    best_epoch: int = 0  # from 1; 0: none yet
    bad_epochs: int = 0  # epochs since the monitored metric last improved
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    finished: bool = False
    stop_reason: str = ""
    skipped_batches: int = 0  # trainer.nan_policy=skip_batch: batches whose loss was not finite

    @classmethod
    def from_dict(cls, values: dict, path) -> Progress:
        known = {f.name: f for f in fields(cls)}
        kept = {k: v for k, v in values.items() if k in known}
        for key in ("epoch", "step", "batch", "best_epoch", "bad_epochs", "skipped_batches"):
            if key in kept and (not isinstance(kept[key], int) or isinstance(kept[key], bool) or kept[key] < 0):
                raise CnnlabError(f"{path} is damaged: fit.{key} is {kept[key]!r}, not a count")
        for key, kind in (("partial", dict), ("history", list)):
            if key in kept and not isinstance(kept[key], kind):
                raise CnnlabError(f"{path} is damaged: fit.{key} is not a {kind.__name__}")
        return cls(**kept)


class TrainState:
    """Everything a checkpoint holds: weights, optimizer, schedule, scaler, EMA, progress and RNG."""

    def __init__(
        self, model: nn.Module, optimizer, scheduler, scaler=None, ema: EMA | None = None, config: dict | None = None
    ):
        self.model, self.optimizer, self.scheduler, self.scaler, self.ema = model, optimizer, scheduler, scaler, ema
        self.config = config or {}
        self.progress = Progress()

    def state_dict(self) -> dict:
        p = self.progress
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_updates": int(self.ema.n_averaged) if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "optimizer_groups": [g.get("name") for g in self.optimizer.param_groups],
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": p.epoch + (1 if p.batch else 0),  # the last epoch trained (from 1), fully or partly
            "step": p.step,
            "best_metric": p.best_metric,
            "fit": asdict(p),
            "rng": checkpoint.rng_state(),
            "config": self.config,
        }

    def load_state_dict(self, state: dict, path, replan: bool = False) -> None:
        """`replan`: this run is longer or shorter than the checkpoint's; its freshly planned schedule is
        fast-forwarded instead of loaded (resume_checks.continue_schedule)."""
        checkpoint.require(state, path, {"optimizer": dict, "scheduler": dict, "fit": dict, "rng": dict}, "resume")
        if not isinstance(state["rng"].get("torch"), torch.Tensor):
            raise CnnlabError(f"{path} cannot be used to resume: its 'rng' entry holds no torch generator state")
        progress = Progress.from_dict(state["fit"], path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if not replan:
                self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None:
                self.ema.module.load_state_dict(state.get("ema") or state["model"])
                self.ema.n_averaged.fill_(state.get("ema_updates", 0))
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as ex:
            first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
            raise CnnlabError(
                f"cannot resume from {path}: it does not match this model/optimizer ({first[:200]})"
            ) from None
        if replan:
            resume_checks.continue_schedule(self.scheduler, state["scheduler"], path)
        checkpoint.set_rng_state(state["rng"], path)
        if replan or not progress.finished:  # a finished one only lacks its test evaluation (metrics.json)
            progress.finished, progress.stop_reason = False, ""
        self.progress = progress
