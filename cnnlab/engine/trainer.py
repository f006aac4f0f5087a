"""The training loop. It knows nothing of which model or dataset it runs: it gets them built.

Per epoch: train (running sums on the device, read only when the progress display or the log interval
asks), validate, log, checkpoint (best.pt on the monitored validation metric, last.pt always). At the end:
best.pt is evaluated once on the test split and everything lands in metrics.json. Epochs are numbered
from 1 wherever a user reads them (console, history, checkpoints); TensorBoard's x axis is the optimizer step.

Everything a checkpoint holds lives in one TrainState, so every save (epoch end, time limit, Ctrl-C) is
one call. Stopping: `trainer.max_steps` and early stopping end the run; `trainer.time_limit`, SIGINT and
SIGTERM stop at the next step boundary with last.pt marked unfinished, so `trainer.resume=auto` (or PATH)
continues exactly where it stopped. Non-finite losses stop the run (or drop the batch) and non-finite
weights are never saved.

Around the loop: state.py (TrainState, Progress), epoch_sums.py (the running sums), nonfinite.py
(trainer.nan_policy), restore.py (resuming), stop_now.py (stopping early), finish.py (the test evaluation,
metrics.json, the console table) and profiler.py (debug=profile).
"""

from __future__ import annotations

import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from cnnlab.callbacks.base import Callbacks
from cnnlab.engine import checkpoint, distributed
from cnnlab.engine.batches import FixedBatches, LimitedBatches
from cnnlab.engine.data_init import fit_data_dependent_layers
from cnnlab.engine.device import autocast_for, resolve_precision, set_deterministic
from cnnlab.engine.ema import EMA
from cnnlab.engine.epoch_sums import EpochSums
from cnnlab.engine.finish import finish
from cnnlab.engine.metrics import evaluate
from cnnlab.engine.nonfinite import KeptState, all_finite, check_finite, drop_gradients_unless, scale_gradients
from cnnlab.engine.profiler import profiler_for
from cnnlab.engine.progress import ProgressDisplay, make_console, say
from cnnlab.engine.restore import restore
from cnnlab.engine.signals import StopSignals
from cnnlab.engine.state import Progress, TrainState
from cnnlab.engine.stop_now import Interrupted, Stopped, stop_raises, stopped_early
from cnnlab.engine.tensorboard import Session, TensorBoard
from cnnlab.errors import CnnlabError

__all__ = ["Interrupted", "Progress", "TrainState", "Trainer", "planned_steps"]


def planned_steps(cfg: DictConfig, num_batches: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) for this trainer config and loader length."""
    batches = cfg.overfit_batches or min(num_batches, cfg.limit_train_batches or num_batches)
    per_epoch = math.ceil(batches / cfg.accumulate)
    total = per_epoch * cfg.epochs
    return per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total


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
    def save(self, name: str) -> None:
        """Write a checkpoint (rank 0); never one with non-finite weights."""
        if self.is_main:
            if not all_finite(self.state.model):
                raise CnnlabError(
                    f"the weights are not finite in epoch {self.state.progress.epoch + 1} "
                    f"(step {self.state.progress.step}); {name} was not written, the previous one "
                    f"is intact. Lower optimizer.lr, set trainer.grad_clip, or use trainer.precision=fp32"
                )
            checkpoint.save(self.ckpt_dir / name, self.state.state_dict())
        distributed.barrier()

    def say(self, message: str) -> None:
        if self.is_main:
            say(self.console, message)

    def eval_loader(self, loader):
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
        sums = EpochSums(partial, self.device)
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
                drop_gradients_unless(model, finite, before)
                finite_count = finite.long() if finite_count is None else finite_count + finite.long()
            self.callbacks.after_backward(self, model)
            if stepped:
                if finite_count is not None:  # the step averages the finite micro-batches only
                    scale_gradients(model, group / finite_count.clamp(min=1))
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
            sums.add(loss, logits, y, finite, p.step)
            logs, due = stepped and p.step % cfg.log_every == 0, display.due()
            if due or logs:  # the only host syncs in an epoch
                loss_sum, correct, bad, counted = sums.read()
                check_finite(cfg.nan_policy, p.epoch + 1, bad, sums.first_bad)
                if logs and self.tb is not None:  # the per-step curves, read at this sync
                    self._check_run_dir()
                    interval_loss = sums.loss_since_log(loss_sum, counted)
                    self.tb.train_step(p.step, p.epoch + 1, interval_loss, self.state.optimizer)
                if due:
                    display.update(
                        i + 1, loss_sum / max(counted, 1), 100.0 * correct / sums.seen, sums.seen / sums.seconds()
                    )
            if stopped:
                p.batch = i + 1
                break
        else:
            p.batch = 0
        return self._end_train_epoch(sums, stopped)

    def _end_train_epoch(self, sums: EpochSums, stopped: str) -> dict | None:
        """The epoch's means, or None when it stopped before its end (its sums kept in progress.partial)."""
        p = self.state.progress
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = sums.seconds()
        sums.all_reduce()
        if sums.seen == 0:
            raise CnnlabError("the training split has no batches: lower data.batch_size or data.val_split")
        loss_sum, correct, bad, counted = sums.read()
        check_finite(self.cfg.nan_policy, p.epoch + 1, bad, sums.first_bad)
        p.skipped_batches += int(bad)
        p.stop_reason = stopped
        totals = {
            "loss_sum": loss_sum,
            "correct": int(correct),
            "seen": sums.seen,
            "counted": int(counted),
            "seconds": seconds,
        }
        if stopped in ("time_limit", "interrupted"):
            p.partial = totals
            return None
        p.partial, p.batch = {}, 0
        return {
            "loss": loss_sum / max(counted, 1),
            "acc": 100.0 * correct / sums.seen,
            "seconds": seconds,
            "images_per_sec": sums.seen / seconds,
        }

    def _optimizer_step(self, model, any_finite: torch.Tensor | None = None) -> None:
        """One optimizer step. `any_finite` (nan_policy=skip_batch): a device bool; when false, the weights and the
        optimizer's state are put back as they were, so weight decay and momentum do not move them either."""
        state = self.state
        kept = KeptState(model, state.optimizer) if any_finite is not None else None
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
            restore(self, *resume)
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
            val_loader = self.eval_loader(val_loader)
        self.val_loader = val_loader
        if self.is_main:
            self.tb = TensorBoard(self.run_dir / "tb", p.step)  # resumed: the same x axis
        display = ProgressDisplay(
            self.cfg.progress if self.is_main else "none", self.cfg.epochs, self.console, device=self.device
        )
        if data.val_is_test:
            self.say(
                "[yellow]data.val_split=test: the best checkpoint is selected on the test split, "
                "so the reported test accuracy is optimistic[/yellow]"
            )
        self.callbacks.on_fit_start(self, model, data)
        try:
            with self.signals, profiler_for(self.cfg.profile and self.is_main, self.device, self.run_dir) as profiler:
                while p.epoch < self.cfg.epochs and not p.stop_reason:
                    train = self._train_epoch(step_model, train_loader, display, profiler)
                    if train is None:  # time limit or a signal: last.pt holds the half-trained epoch
                        self.save("last.pt")
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
            return stopped_early(self)
        # Training is complete, but the run is finished only once metrics.json is written: a stop from here on
        # leaves last.pt as it is (or marked finished), and resume=auto runs the test evaluation again.
        try:
            with stop_raises():
                if distributed.any_rank(bool(self.signals.received)):  # came during the last validation
                    raise Stopped(self.signals.received or signal.SIGINT)
                p.finished = True
                self.save("last.pt")
                return finish(self, data)
        except Stopped as ex:
            p.finished, self.signals.received = True, ex.signum
            return stopped_early(self, ", before the test evaluation (training is complete)")

    def _check_run_dir(self) -> None:
        if self.is_main and not self.run_dir.is_dir():  # nothing can be saved: say so, not a traceback
            raise CnnlabError(f"the run dir {self.run_dir} was deleted during epoch {self.state.progress.epoch + 1}")

    def _end_epoch(self, eval_model, val_loader, train: dict, display) -> None:
        p = self.state.progress
        self._check_run_dir()
        val = evaluate(eval_model, val_loader, self.spec.num_classes, self.autocast, self.memory_format)
        p.epoch += 1
        epoch = p.epoch
        p.train_seconds += train["seconds"]
        row = {
            "epoch": epoch,
            "step": p.step,  # the optimizer steps so far: TensorBoard's x axis
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
            self.tb.epoch(row)
        better, metric = self._is_better(val)
        self.state.scheduler.epoch_end(metric)
        if better:
            p.best_metric, p.best_epoch, p.bad_epochs = metric, epoch, 0
            self.best_val = val
            self.save("best.pt")
        else:
            p.bad_epochs += 1
            if self.cfg.early_stopping_patience and p.bad_epochs >= self.cfg.early_stopping_patience:
                p.stop_reason = "early_stopping"
        self.save("last.pt")
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
            self.say(
                f"stopping after epoch {epoch}: "
                + (
                    f"no better {self.cfg.monitor} for {p.bad_epochs} epochs (early stopping)"
                    if p.stop_reason == "early_stopping"
                    else f"trainer.max_steps={self.cfg.max_steps} reached"
                )
            )
