"""The training loop. It knows nothing of which model or dataset it runs: it gets them built.

Per epoch: train (running sums on the device, read only when the progress display or the log interval
asks), validate, log, checkpoint (best.pt on the monitored validation metric, last.pt always). At the end:
best.pt is evaluated once on the test split and everything lands in metrics.json. Epochs are numbered
from 1 wherever a user reads them (console, history, TensorBoard steps, checkpoints).

Everything a checkpoint holds lives in one TrainState, so every save (epoch end, time limit, Ctrl-C) is
one call. Stopping: `trainer.max_steps` and early stopping end the run; `trainer.time_limit`, SIGINT and
SIGTERM stop at the next step boundary with last.pt marked unfinished, so `trainer.resume=auto` (or PATH)
continues exactly where it stopped. Non-finite losses stop the run (or drop the batch) and non-finite
weights are never saved.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from cnnlab.analysis.tta import with_tta
from cnnlab.engine import checkpoint, distributed, resume_checks
from cnnlab.engine.batches import FixedBatches, LimitedBatches
from cnnlab.engine.callbacks import Callbacks
from cnnlab.engine.data_init import fit_data_dependent_layers
from cnnlab.engine.device import autocast_for, resolve_precision, set_deterministic
from cnnlab.engine.ema import EMA
from cnnlab.engine.metrics import evaluate
from cnnlab.engine.progress import ProgressDisplay, make_console, metrics_table, say
from cnnlab.engine.signals import StopSignals
from cnnlab.engine.stop_now import Stopped, StopRaises, write_atomically
from cnnlab.engine.tensorboard import Session, TensorBoard
from cnnlab.errors import CnnlabError

log = logging.getLogger("cnnlab")


def planned_steps(cfg: DictConfig, num_batches: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) for this trainer config and loader length."""
    batches = cfg.overfit_batches or min(num_batches, cfg.limit_train_batches or num_batches)
    per_epoch = math.ceil(batches / cfg.accumulate)
    total = per_epoch * cfg.epochs
    return per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped the run after last.pt was saved; the CLI exits with 128 + signum."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


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


def _images(loader) -> int | None:
    """How many images an evaluation split holds (data.eval_subset may cut it); None for a foreign loader."""
    labels = getattr(loader, "labels", None)
    return len(labels) if labels is not None else None


class Trainer:
    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        device: torch.device,
        *,
        seed: int = 0,
        config: dict | None = None,
        hparams: Session | None = None,
        finetune=None,
        callbacks=(),
        resume_hint: str = "",
    ):
        self.cfg, self.run_dir, self.device, self.seed = cfg, Path(run_dir), device, seed
        self.config = config or {}  # the resolved run config, stored in every checkpoint
        self.hparams = hparams  # what the HParams tab shows of this run
        self.finetune = finetune if finetune is not None and finetune.active else None
        self.callbacks = Callbacks(callbacks)
        self.resume_hint = resume_hint  # the command that continues this run (printed when it is stopped)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.is_main = distributed.is_main()
        self.console = make_console()
        self.amp_dtype = resolve_precision(cfg.precision, device)
        self.autocast = autocast_for(device, self.amp_dtype)
        use_cl = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
        self.memory_format = torch.channels_last if use_cl else torch.contiguous_format
        self.started = time.monotonic()
        self.state: TrainState | None = None
        self.tb: TensorBoard | None = None
        self.spec = self.data = None
        self.val_loader = None  # what each epoch is validated on (trainer.limit_val_batches/overfit_batches applied)
        self.best_val: dict | None = None  # the best epoch's validation, if it ran in this process (not resumed)
        self.signals = StopSignals()
        self.vote = distributed.StopVote() if distributed.world_size() > 1 else None  # ranks stop at one step

    # ------------------------------------------------------------------------------------------ saving
    def _save(self, name: str) -> None:
        """Write a checkpoint (rank 0); never one with non-finite weights."""
        if self.is_main:
            if not _finite(self.state.model):
                raise CnnlabError(
                    f"the weights are not finite in epoch {self.state.progress.epoch + 1} "
                    f"(step {self.state.progress.step}); {name} was not written, the previous one "
                    f"is intact. Lower optimizer.lr, set trainer.grad_clip, or use trainer.precision=fp32"
                )
            checkpoint.save(self.ckpt_dir / name, self.state.state_dict())
        distributed.barrier()

    def _restore(self, path: Path, state: dict) -> None:
        """Continue from a checkpoint that resume_checks.check accepted (before anything was written)."""
        stored = state.get("config") if isinstance(state.get("config"), dict) else {}
        replan = resume_checks.replanned(stored, self.config)
        self.state.load_state_dict(state, path, replan=replan)
        if distributed.rank():  # the checkpoint holds rank 0's RNG: the other ranks draw (dropout) from their own
            torch.manual_seed(self.seed + 1_000_003 * distributed.rank() + self.state.progress.step)
        self._adopt_best(path)
        p = self.state.progress
        where = f"epoch {p.epoch + 1}" + (f", batch {p.batch}" if p.batch else "")
        longer = ""
        if replan:
            old = stored.get("trainer", {})
            longer = (
                f"; a new run of {self.cfg.epochs} epochs (the checkpoint's had {old.get('epochs')}): "
                f"the {self.config.get('scheduler', {}).get('name', '')} schedule is re-planned for it"
            )
        self._say(f"resumed from {path} at {where} (step {p.step}){longer}")

    def _adopt_best(self, resumed_from: Path) -> None:
        """Resuming into another run directory: bring the source run's best.pt along (or pick a new best)."""
        mine = self.ckpt_dir / "best.pt"
        theirs = resumed_from.parent / "best.pt"
        if mine.is_file() or not self.is_main:
            return
        if theirs.is_file():
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(theirs, mine)
            return
        p = self.state.progress
        p.best_metric, p.best_epoch = None, 0
        if p.history:  # no best.pt to bring: the resumed weights are the best known until a better epoch
            last = p.history[-1]
            p.best_epoch = last["epoch"]
            p.best_metric = last["val_acc"] if self.cfg.monitor == "val_acc" else -last["val_loss"]
            self._say(
                f"[yellow]no best.pt beside {resumed_from}: the resumed weights (epoch {p.best_epoch}) are "
                f"best.pt until an epoch validates better[/yellow]"
            )
            self._save("best.pt")

    def _say(self, message: str) -> None:
        if self.is_main:
            say(self.console, message)

    def _eval_loader(self, loader):
        """Validation and test loaders, cut to trainer.limit_val_batches (debug=fast) when set."""
        return LimitedBatches(loader, self.cfg.limit_val_batches) if self.cfg.limit_val_batches else loader

    def _out_of_time(self) -> bool:
        return self.cfg.time_limit is not None and time.monotonic() - self.started >= self.cfg.time_limit

    def _stop_reason(self) -> str:
        """ "interrupted", "time_limit" or "" after an optimizer step; with several ranks, their agreed outcome
        (distributed.StopVote: every rank stops at the same step, one step after the first one saw a reason)."""
        signalled, late = bool(self.signals.received), self._out_of_time()
        if self.vote is not None:
            signalled, late = self.vote(signalled, late)
        return "interrupted" if signalled else "time_limit" if late else ""

    # -------------------------------------------------------------------------------------------- loop
    def _train_epoch(self, model, loader, display, profiler) -> dict | None:
        """Train one epoch from batch progress.batch; returns its means, or None when stopped before its end."""
        state, p, cfg = self.state, self.state.progress, self.cfg
        model.train()
        if self.finetune is not None:
            self.finetune.apply(model, p.epoch)
        loader.set_epoch(p.epoch)
        num_batches = len(loader)
        display.start_epoch(p.epoch + 1, num_batches)
        partial = (p.partial or {}) if self.is_main else {}  # several ranks: whole-job sums, held by rank 0
        # Running sums on the device, read only when due: loss over finite batches, correct, non-finite batches,
        # images in finite batches.
        sums = torch.tensor(
            [
                partial.get("loss_sum", 0.0),
                partial.get("correct", 0),
                0.0,
                partial.get("counted", partial.get("seen", 0)),
            ],
            device=self.device,
            dtype=torch.float64,
        )
        first_bad = torch.full((), -1, device=self.device, dtype=torch.long)  # step of the first non-finite loss
        seen = partial.get("seen", 0)
        start = time.perf_counter() - partial.get("seconds", 0.0)
        accumulate, skip_bad = cfg.accumulate, cfg.nan_policy == "skip_batch"
        finite_count = None  # skip_batch: micro-batches of the coming optimizer step whose loss was finite
        stopped = ""
        for i, (x, y) in enumerate(loader):
            if i < p.batch:  # resuming mid-epoch: these batches were trained before the stop
                continue
            x = x.contiguous(memory_format=self.memory_format)
            self.callbacks.on_train_batch(self, x, y, i)
            # An optimizer step averages its group of micro-batches (the epoch's last group may be smaller).
            group = min(accumulate, num_batches - i + i % accumulate)
            stepped = i % accumulate + 1 == group
            # DDP all-reduces once per group; under skip_batch every micro-batch (see README: Numerical faults)
            with nullcontext() if stepped or skip_bad else distributed.no_sync(model):
                with self.autocast():
                    logits = model(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                finite = torch.isfinite(loss.detach())
                if skip_bad:
                    finite = distributed.all_true(finite)  # several ranks: a batch is dropped everywhere or nowhere
                    before = [q.grad.clone() if q.grad is not None else None for q in model.parameters()]
                (state.scaler.scale(loss / group) if state.scaler is not None else loss / group).backward()
            if skip_bad:
                _drop_gradients_unless(model, finite, before)
                finite_count = finite.long() if finite_count is None else finite_count + finite.long()
            self.callbacks.after_backward(self, model)
            if stepped:
                if finite_count is not None:  # the step averages the finite micro-batches only
                    _scale_gradients(model, group / finite_count.clamp(min=1))
                self._optimizer_step(model, None if finite_count is None else finite_count > 0)
                finite_count = None
                state.scheduler.step()
                p.step += 1
                if p.step % cfg.log_every == 0:
                    self.callbacks.on_log(self, model)
                if cfg.max_steps and p.step >= cfg.max_steps:
                    stopped = "max_steps"
                elif i + 1 < num_batches:
                    stopped = self._stop_reason()
            profiler.step()
            hard = y.argmax(1) if y.ndim == 2 else y  # mixup/cutmix give soft targets: score the dominant class
            sums += torch.stack(
                [
                    torch.where(finite, loss.detach().double() * len(y), 0.0),
                    (logits.detach().argmax(1) == hard).sum().double(),
                    (~finite).double(),
                    finite.double() * len(y),
                ]
            )
            first_bad = torch.where((first_bad < 0) & ~finite, p.step, first_bad)
            seen += len(y)
            due = display.due()
            if due or (stepped and p.step % cfg.log_every == 0):  # the only host syncs in an epoch
                loss_sum, correct, bad, counted = sums.tolist()
                self._check_finite(bad, first_bad)
                if due:
                    display.update(
                        i + 1, loss_sum / max(counted, 1), 100.0 * correct / seen, seen / (time.perf_counter() - start)
                    )
            if stopped:
                p.batch = i + 1
                break
        else:
            p.batch = 0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        if distributed.world_size() > 1:  # the whole job's numbers: every rank trained an equal share
            totals = torch.cat([sums, sums.new_tensor([seen])])
            distributed.all_reduce_sum(totals)
            sums, seen = totals[:4], int(totals[4])
        if seen == 0:
            raise CnnlabError("the training split has no batches: lower data.batch_size or data.val_split")
        loss_sum, correct, bad, counted = sums.tolist()
        self._check_finite(bad, first_bad)
        p.skipped_batches += int(bad)
        p.stop_reason = stopped
        totals = {
            "loss_sum": loss_sum,
            "correct": int(correct),
            "seen": seen,
            "counted": int(counted),
            "seconds": seconds,
        }
        if stopped in ("time_limit", "interrupted"):
            p.partial = totals
            return None
        p.partial, p.batch = {}, 0
        return {
            "loss": loss_sum / max(counted, 1),
            "acc": 100.0 * correct / seen,
            "seconds": seconds,
            "images_per_sec": seen / seconds,
        }

    def _check_finite(self, bad: float, first_bad: torch.Tensor) -> None:
        """nan_policy=stop: a non-finite loss ends the run with one line; skip_batch: count what was dropped."""
        if not bad:
            return
        if self.cfg.nan_policy == "skip_batch":
            return  # dropped on the device; counted in progress.skipped_batches at the epoch's end
        p, step = self.state.progress, int(first_bad)
        raise CnnlabError(
            f"the loss became nan/inf in epoch {p.epoch + 1} at step {step + 1}: stopped; "
            f"checkpoints hold the last finite weights. Lower optimizer.lr, set trainer.grad_clip, "
            f"use trainer.precision=fp32, or trainer.nan_policy=skip_batch"
        )

    def _optimizer_step(self, model, any_finite: torch.Tensor | None = None) -> None:
        """One optimizer step. `any_finite` (nan_policy=skip_batch): a device bool; when false, the weights and the
        optimizer's state are put back as they were, so weight decay and momentum do not move them either."""
        state = self.state
        kept = _Kept(model, state.optimizer) if any_finite is not None else None
        if state.scaler is not None:
            if self.cfg.grad_clip:
                state.scaler.unscale_(state.optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            if self.cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
            state.optimizer.step()
        if kept is not None:
            kept.restore_unless(any_finite)
        state.optimizer.zero_grad(set_to_none=True)
        if state.ema is not None:
            state.ema.update_parameters(model)

    def _is_better(self, val: dict) -> tuple[bool, float]:
        metric = val["top1"] if self.cfg.monitor == "val_acc" else -val["loss"]
        best = self.state.progress.best_metric
        return best is None or metric > best, metric

    def _profiler(self):
        """debug=profile: a torch.profiler trace of a few steps, written where TensorBoard finds it."""
        if not self.cfg.profile or not self.is_main:
            return _NoProfiler()
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        return torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(self.run_dir / "tb" / "profile")),
            record_shapes=True,
            profile_memory=True,
        )

    def fit(self, model: nn.Module, data, optimizer, scheduler, resume: tuple[Path, dict] | None = None) -> dict:
        """Train `model`; `resume` is (path, checkpoint) to continue from (see engine.rundir.claim)."""
        set_deterministic(self.cfg.deterministic)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cfg.cudnn_benchmark and not self.cfg.deterministic
        if self.cfg.sync_bn and distributed.world_size() > 1:
            if self.device.type != "cuda":
                raise CnnlabError(
                    f"trainer.sync_bn=true needs CUDA (torch's SyncBatchNorm has no kernel for "
                    f"{self.device.type}); without it each rank normalises over its own share"
                )
            model = distributed.convert_sync_bn(model)  # same parameter objects: the optimizer is unaffected
        model.to(self.device, memory_format=self.memory_format)
        fit_data_dependent_layers(model, data.train)  # before the EMA copy and the DDP wrapper take the model
        ema = None
        if self.cfg.ema_decay:
            ema = EMA(model, self.cfg.ema_decay)
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.state = TrainState(model, optimizer, scheduler, scaler, ema, self.config)
        self.spec, self.data = data.spec, data
        if resume is not None:
            self._restore(*resume)
        p = self.state.progress
        # several ranks: DistributedDataParallel (`model` is what is saved); fine-tuning freezes and unfreezes
        ddp_model = distributed.wrap(model, self.device, changing_trainables=self.finetune is not None)
        step_model = torch.compile(ddp_model) if self.cfg.compile else ddp_model
        eval_model = ema.module if ema is not None else step_model if ddp_model is model else model
        train_loader, val_loader = data.train, data.val
        if self.cfg.overfit_batches:
            train_loader = val_loader = FixedBatches(data.train, self.cfg.overfit_batches)
        elif self.cfg.limit_train_batches:
            train_loader = LimitedBatches(train_loader, self.cfg.limit_train_batches)
        if not self.cfg.overfit_batches:
            val_loader = self._eval_loader(val_loader)
        self.val_loader = val_loader
        if self.is_main:
            self.tb = TensorBoard(self.run_dir / "tb", purge_step=p.epoch + 1 if p.epoch else None)
        display = ProgressDisplay(
            self.cfg.progress if self.is_main else "none", self.cfg.epochs, self.console, device=self.device
        )
        if data.val_is_test:
            self._say(
                "[yellow]data.val_split=test: the best checkpoint is selected on the test split, "
                "so the reported test accuracy is optimistic[/yellow]"
            )
        self.callbacks.on_fit_start(self, model, data)
        try:
            with self.signals, self._profiler() as profiler:
                while p.epoch < self.cfg.epochs and not p.stop_reason:
                    train = self._train_epoch(step_model, train_loader, display, profiler)
                    if train is None:  # time limit or a signal: last.pt holds the half-trained epoch
                        self._save("last.pt")
                        break
                    self._end_epoch(eval_model, val_loader, train, display)
                    if (
                        distributed.any_rank(bool(self.signals.received))
                        and p.epoch < self.cfg.epochs
                        and not p.stop_reason
                    ):
                        p.stop_reason = "interrupted"
        except torch.OutOfMemoryError:
            raise CnnlabError(
                f"out of memory on {self.device}: lower data.batch_size (trainer.accumulate keeps the "
                f"effective batch), or use trainer.precision=bf16; checkpoints so far are intact"
            ) from None
        finally:
            if self.vote is not None:
                self.vote.flush()
            display.close()
            if self.tb is not None and self.run_dir.is_dir():
                self.tb.writer.flush()
        if p.stop_reason in ("time_limit", "interrupted"):
            return self._stopped_early()
        # Training is complete, but the run is finished only once metrics.json is written: a stop from here on
        # leaves last.pt as it is (or marked finished), and resume=auto runs the test evaluation again.
        try:
            with StopRaises():
                if distributed.any_rank(bool(self.signals.received)):  # came during the last validation
                    raise Stopped(self.signals.received or signal.SIGINT)
                p.finished = True
                self._save("last.pt")
                return self._finish(data)
        except Stopped as ex:
            p.finished, self.signals.received = True, ex.signum
            return self._stopped_early(", before the test evaluation (training is complete)")

    def _stopped_early(self, after: str = "") -> dict:
        p = self.state.progress
        where = f"epoch {p.epoch + 1}, batch {p.batch}" if p.batch else f"the end of epoch {p.epoch}{after}"
        hint = self.resume_hint or "rerun with trainer.resume=auto (same run dir)"
        if self.tb is not None:
            self.tb.close()
        if p.stop_reason == "interrupted" or p.finished:
            name = self.signals.name
            raise Interrupted(
                self.signals.received,
                f"{name}: stopped at {where}; saved {self.ckpt_dir / 'last.pt'}. Continue with: {hint}",
            )
        self._say(
            f"[yellow]trainer.time_limit={self.cfg.time_limit}s reached at {where}; saved "
            f"{self.ckpt_dir / 'last.pt'}. Continue with: {hint}[/yellow]"
        )
        return {"finished": False, "stop_reason": p.stop_reason}

    def _end_epoch(self, eval_model, val_loader, train: dict, display) -> None:
        p = self.state.progress
        if self.is_main and not self.run_dir.is_dir():  # nothing can be saved: say so, not a traceback
            raise CnnlabError(f"the run dir {self.run_dir} was deleted during epoch {p.epoch + 1}: stopped")
        val = evaluate(eval_model, val_loader, self.spec.num_classes, self.autocast, self.memory_format)
        p.epoch += 1
        epoch = p.epoch
        p.train_seconds += train["seconds"]
        row = {
            "epoch": epoch,
            "train_loss": train["loss"],
            "train_acc": train["acc"],
            "val_loss": val["loss"],
            "val_acc": val["top1"],
            "val_top5": val["top5"],
            "seconds": train["seconds"],
            "images_per_sec": train["images_per_sec"],
            "lr": max(g["lr"] for g in self.state.optimizer.param_groups),
        }
        p.history.append(row)
        if self.tb is not None:
            self.tb.scalars(
                {
                    "train/loss": train["loss"],
                    "train/acc": train["acc"],
                    "val/loss": val["loss"],
                    "val/acc": val["top1"],
                    "val/top5": val["top5"],
                    "lr": row["lr"],
                    "time/epoch_seconds": train["seconds"],
                    "time/images_per_sec": train["images_per_sec"],
                },
                epoch,
            )
        better, metric = self._is_better(val)
        self.state.scheduler.epoch_end(metric)
        if better:
            p.best_metric, p.best_epoch, p.bad_epochs = metric, epoch, 0
            self.best_val = val
            self._save("best.pt")
        else:
            p.bad_epochs += 1
            if self.cfg.early_stopping_patience and p.bad_epochs >= self.cfg.early_stopping_patience:
                p.stop_reason = "early_stopping"
        self._save("last.pt")
        self.callbacks.on_epoch_end(self, eval_model, self.data, row)
        display.end_epoch(
            epoch,
            (
                f"epoch {epoch}/{self.cfg.epochs} | train loss {train['loss']:.4f} acc {train['acc']:.2f}% | "
                f"val loss {val['loss']:.4f} acc {val['top1']:.2f}%{' *' if better else ''} | "
                f"{train['seconds']:.1f}s {train['images_per_sec']:,.0f} img/s"
            ),
            short=f"val acc {val['top1']:.2f}%",
        )
        if p.stop_reason:
            self._say(
                f"stopping after epoch {epoch}: "
                + (
                    f"no better {self.cfg.monitor} for {p.bad_epochs} epochs (early stopping)"
                    if p.stop_reason == "early_stopping"
                    else f"trainer.max_steps={self.cfg.max_steps} reached"
                )
            )

    # ------------------------------------------------------------------------------------------ report
    def _finish(self, data) -> dict:
        p, model = self.state.progress, self.state.model
        if not p.history:
            if self.tb is not None:
                self.tb.close()
            return {"finished": False, "stop_reason": p.stop_reason}
        spec = data.spec
        if self.is_main:
            best = checkpoint.load(self.ckpt_dir / "best.pt")
            model.load_state_dict(best.get("ema") or best["model"])  # the weights that were validated
        distributed.broadcast_module(model)  # the other ranks need no shared filesystem
        tested = with_tta(model, self.cfg.tta)  # trainer.tta: the test split only (validation stays plain)
        test = evaluate(tested, self._eval_loader(data.test), spec.num_classes, self.autocast, self.memory_format)
        best_val = next(h for h in p.history if h["epoch"] == p.best_epoch)
        last = p.history[-1]
        metrics = {
            "best_val_acc": best_val["val_acc"],
            "best_val_loss": best_val["val_loss"],
            "best_epoch": p.best_epoch,
            "test_acc": test["top1"],
            "test_top5": test["top5"],
            "test_loss": test["loss"],
            "test_tta": self.cfg.tta,
            "final_train_loss": last["train_loss"],
            "final_train_acc": last["train_acc"],
            "epochs": len(p.history),
            "steps": p.step,
            "params": sum(q.numel() for q in model.parameters()),
            "trainable_params": sum(q.numel() for q in model.parameters() if q.requires_grad),
            "seconds_per_epoch": p.train_seconds / max(1, len(p.history)),
            "total_seconds": p.train_seconds,
            "images_per_sec": sum(h["images_per_sec"] for h in p.history) / len(p.history),
            "val_is_test": data.val_is_test,
            "ema": self.state.ema is not None,
            "finished": p.finished,
            "stop_reason": p.stop_reason or "epochs",
            "skipped_batches": p.skipped_batches,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "val_images": _images(data.val),
            "test_images": _images(data.test),
            "world_size": distributed.world_size(),
            "global_batch": data.train.batch_size * distributed.world_size() * self.cfg.accumulate,
            "history": p.history,
        }
        self.callbacks.on_fit_end(self, model, data, metrics)
        if not self.is_main:
            return metrics
        write_atomically(self.run_dir / "metrics.json", json.dumps(metrics, indent=2))  # the finished mark
        self.tb.hparams(
            self.hparams,
            {
                "hparam/best_val_acc": metrics["best_val_acc"],
                "hparam/test_acc": metrics["test_acc"],
                "hparam/test_top5": metrics["test_top5"],
                "hparam/test_loss": metrics["test_loss"],
            },
        )
        self.tb.close()
        self.console.print(
            metrics_table(
                f"cnnlab run: {self.run_dir}",
                [
                    (
                        "best val acc",
                        f"{metrics['best_val_acc']:.2f}% (epoch {metrics['best_epoch']})"
                        + (" [EMA weights]" if self.state.ema is not None else ""),
                    ),
                    (
                        "test acc (best.pt)",
                        f"{metrics['test_acc']:.2f}%" + (" [selected on test]" if data.val_is_test else ""),
                    ),
                    ("test top-5", f"{metrics['test_top5']:.2f}%"),
                    ("test loss", f"{metrics['test_loss']:.4f}"),
                    (
                        "final train loss / acc",
                        f"{metrics['final_train_loss']:.4f} / {metrics['final_train_acc']:.2f}%",
                    ),
                    ("parameters", f"{metrics['params']:,}"),
                    ("time per epoch", f"{metrics['seconds_per_epoch']:.2f} s"),
                    ("throughput", f"{metrics['images_per_sec']:,.0f} img/s on {self.device}"),
                ],
            )
        )
        log.info("metrics: %s", {k: v for k, v in metrics.items() if k != "history"})
        return metrics


def _finite(model: nn.Module) -> bool:
    """All parameters and buffers finite: one device reduction and one host sync (per checkpoint save)."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _drop_gradients_unless(model: nn.Module, finite: torch.Tensor, before: list) -> None:
    """nan_policy=skip_batch, without a host sync: a micro-batch whose loss is not finite contributes no gradient;
    `before` holds the gradients accumulated by the earlier micro-batches of the step, which are kept."""
    for q, old in zip(model.parameters(), before):
        if q.grad is not None:
            q.grad.copy_(torch.where(finite, q.grad.nan_to_num(0.0, 0.0, 0.0), 0.0 if old is None else old))


def _scale_gradients(model: nn.Module, factor: torch.Tensor) -> None:
    for q in model.parameters():
        if q.grad is not None:
            q.grad.mul_(factor.to(q.grad.dtype))


class _Kept:
    """Copies of the weights and the optimizer's state tensors, put back where a step must not count, with
    torch.where on the device bool (no host sync). Not covered: state this very step creates (the first step's)
    and tensors on another device than the weights (Adam's step counters live on the CPU; moving the bool there
    would be a sync)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        params = [q for q in model.parameters() if q.requires_grad]
        device = params[0].device if params else None
        state = [t for st in optimizer.state.values() for t in st.values() if torch.is_tensor(t)]
        self.tensors = params + [t for t in state if t.device == device]
        self.copies = [t.detach().clone() for t in self.tensors]

    @torch.no_grad()
    def restore_unless(self, keep_new: torch.Tensor) -> None:
        for t, old in zip(self.tensors, self.copies):
            t.copy_(torch.where(keep_new, t, old))


class _NoProfiler(nullcontext):
    """Stands in for torch.profiler.profile when not profiling."""

    def __enter__(self):
        return self

    def step(self) -> None:
        pass
