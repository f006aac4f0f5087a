"""TensorBoard: per-step and per-epoch scalars, the run's hyper-parameters, histograms and images, all in the run's
own writer.

One x axis, as in Lightning's TensorBoardLogger: every scalar, histogram and image is written at the optimizer step
(global step). The training loss of the last log interval (`train/loss_step`), the learning rate (`train/lr`) and
the epoch in progress (`train/epoch`, from 1: maps steps to epochs) every trainer.log_every steps; the epoch's
numbers (train/acc, val/acc, val/loss, epoch time ...) at the step that ends the epoch. A resumed run continues
the same axis: the writer purges what a killed process wrote after the checkpoint's step.

Tag layout. TensorBoard's Time Series groups cards by a tag's first path segment, sorts the groups by name and
opens the first two; so the curves a user looks at first are `train/...` and `val/...`, and everything else
sorts after them: the pictures (`visuals/...`: the augmented batch, validation predictions, confusion matrix),
then `weights/...` (gradient norms and histograms). The learning rate and the epoch timings are training curves
(`train/lr`, `train/epoch_seconds`, `train/images_per_sec`). The final numbers (best val acc; test acc, top-5 and
loss of best.pt) are single points, written once at the last step under `~final/`, a group that sorts after every
other one, so they never take the first rows ("test/" would sort before "train/").

HParams. The run writes TensorBoard's experiment summary itself (the hparams plugin's summary API), so the
HParams tab opens on the answer: the metric columns in the order of METRICS (best val acc, test acc, val acc,
val loss, then the rest), the hyper-parameters in the order given (overridden keys first) and a readable
trial name instead of a hash. A job of a `-m` sweep writes only its session: the sweep writes one experiment
for all of its jobs (experiments/hparams.write_sweep_experiment), with the varied keys only.
(torch's `add_hparams` would open a separate run per call, pytorch #32651, and register only its own metrics.)
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

FINAL = "~final"  # '~' sorts after every letter: the point-only group comes last in Time Series

# The trainer's names for a few scalars -> where they belong in the layout above.
TAGS = {
    "lr": "train/lr",
    "epoch": "train/epoch",
    "time/epoch_seconds": "train/epoch_seconds",
    "time/images_per_sec": "train/images_per_sec",
    "hparam/best_val_acc": f"{FINAL}/best_val_acc",
    "hparam/test_acc": f"{FINAL}/test_acc",
    "hparam/test_top5": f"{FINAL}/test_top5",
    "hparam/test_loss": f"{FINAL}/test_loss",
}

# The HParams tab's metric columns, in the order a user reads them: (tag, column title).
METRICS = (
    (f"{FINAL}/best_val_acc", "best val acc"),
    (f"{FINAL}/test_acc", "test acc"),
    ("val/acc", "val acc"),
    ("val/loss", "val loss"),
    ("val/top5", "val top-5"),
    (f"{FINAL}/test_top5", "test top-5"),
    (f"{FINAL}/test_loss", "test loss"),
    ("train/acc", "train acc"),
    ("train/loss", "train loss"),
    ("train/lr", "lr (last epoch)"),
    ("train/epoch_seconds", "s / epoch"),
    ("train/images_per_sec", "img / s"),
)


def tag_of(name: str) -> str:
    return TAGS.get(name, name)


@dataclass
class Session:
    """One run as the HParams tab lists it (built by experiments/hparams.session_of)."""

    values: dict = field(default_factory=dict)  # name -> bool/int/float/str, in the order of the columns
    trial: str | None = None  # the name in the trial column (None: TensorBoard's hash)
    experiment: bool = True  # False inside a `-m` sweep: the sweep writes the experiment for all its jobs
    first: tuple = ()  # the names listed first (what the user set)


def experiment_pb(values: dict[str, list], first=()):
    """The experiment summary: one column per hyper-parameter (name -> the values it takes) and the metric columns
    of METRICS. TensorBoard lists the columns marked `differs` first, then by name: the keys in `first` get it."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    hparams = []
    for name, vals in values.items():
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        vals = sorted({float(v) for v in vals}) if numbers else vals
        kinds = {type(v) for v in vals}
        kind = {float: api_pb2.DATA_TYPE_FLOAT64, str: api_pb2.DATA_TYPE_STRING, bool: api_pb2.DATA_TYPE_BOOL}
        info = api_pb2.HParamInfo(name=name, differs=name in first)
        if len(kinds) == 1:  # one type: TensorBoard can filter by its values; mixed types stay untyped
            info.type = kind[kinds.pop()]
            info.domain_discrete.extend(sorted(set(vals), key=str))
        hparams.append(info)
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=title) for tag, title in METRICS]
    experiment = api_pb2.Experiment(hparam_infos=hparams, metric_infos=metrics, time_created_secs=time.time())
    content = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(experiment=experiment))
    # what tensorboard.plugins.hparams.summary.experiment_pb writes (that module needs TensorFlow)
    return Summary(value=[Summary.Value(tag=metadata.EXPERIMENT_TAG, metadata=content, tensor=metadata.NULL_TENSOR)])


_LOG_DIRS: set[Path] = set()  # every writer's log dir in this process


def _quiet_when_deleted(log_dir: Path) -> None:
    """The event writer's thread opens its file by path on every write: when the run dir is deleted mid-run it
    dies with a traceback on stderr. The trainer reports that in one line (run dir deleted), so the thread's
    FileNotFoundError inside a log dir that is gone is not printed a second time."""
    if not _LOG_DIRS:
        previous = threading.excepthook

        def hook(args):
            name = os.fsdecode(getattr(args.exc_value, "filename", None) or "")  # the writer gives bytes
            gone = isinstance(args.exc_value, FileNotFoundError) and any(
                name.startswith(str(d)) and not d.is_dir() for d in _LOG_DIRS
            )
            if not gone:
                previous(args)

        threading.excepthook = hook
    _LOG_DIRS.add(log_dir)


class TensorBoard:
    def __init__(self, log_dir: Path, step: int = 0):
        """`step`: the optimizer step the run starts from (a resume's); what was written after it is purged."""
        self.writer = SummaryWriter(str(log_dir), purge_step=step + 1 if step else None)
        _quiet_when_deleted(Path(log_dir))
        self.last_step = step
        self.written: dict[str, int] = {}  # tag -> its last step: a value logged twice at one step is written once

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            tag = tag_of(tag)
            if self.written.get(tag) != step:
                self.writer.add_scalar(tag, value, step)
                self.written[tag] = step
        self.last_step = max(self.last_step, step)

    def train_step(self, step: int, epoch: int, loss: float | None, optimizer) -> None:
        """Every trainer.log_every optimizer steps: the mean training loss since the last log (None: no finite
        batch), the learning rate the next step uses and the epoch in progress (from 1)."""
        values = {"lr": max(float(g["lr"]) for g in optimizer.param_groups), "epoch": epoch}
        if loss is not None:
            values["train/loss_step"] = loss
        self.scalars(values, step)

    def epoch(self, row: dict) -> None:
        """One epoch's history row (the trainer's) as scalars at the optimizer step that ended it."""
        names = {
            "train/loss": "train_loss",
            "train/acc": "train_acc",
            "val/loss": "val_loss",
            "val/acc": "val_acc",
            "val/top5": "val_top5",
            "lr": "lr",
            "time/epoch_seconds": "seconds",
            "time/images_per_sec": "images_per_sec",
            "epoch": "epoch",
        }
        self.scalars({tag: row[key] for tag, key in names.items()}, row["step"])

    def hparams(self, session: Session | None, metrics: dict[str, float]) -> None:
        """The run's session (and, outside a sweep, the experiment) for the HParams tab, and its final `metrics`,
        written at the last step."""
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        session = session or Session()
        typed = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in session.values.items()}
        typed = {k: v for k, v in typed.items() if v is not None}
        if session.experiment:
            self.writer.file_writer.add_summary(experiment_pb({k: [v] for k, v in typed.items()}, session.first))
        self.writer.file_writer.add_summary(hparams_pb(typed, trial_id=session.trial))
        for tag, value in metrics.items():
            self.writer.add_scalar(tag_of(tag), value, self.last_step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def image(self, tag: str, picture: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, picture, step)

    def close(self) -> None:
        self.writer.close()
