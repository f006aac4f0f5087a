"""The training loop. It knows nothing of which model or dataset it runs: it gets them built.

Per epoch: train (running sums on the device, read once per log interval), validate, log, checkpoint
(best.pt on the monitored validation metric, last.pt always). At the end: best.pt is evaluated once on
the test split and everything lands in metrics.json.

Stopping: `trainer.max_steps` and early stopping end the run; `trainer.time_limit` stops mid-epoch with
last.pt marked unfinished, so `trainer.resume=auto` (or PATH) continues exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cnnlab.analysis.grid import denormalise, prediction_grid
from cnnlab.engine import checkpoint
from cnnlab.engine.batches import FixedBatches, LimitedBatches
from cnnlab.engine.device import autocast_for, resolve_precision, set_deterministic
from cnnlab.engine.metrics import evaluate, predict
from cnnlab.engine.progress import ProgressDisplay, make_console, metrics_table, say
from cnnlab.engine.tensorboard import TensorBoard
from cnnlab.errors import CnnlabError

log = logging.getLogger("cnnlab")


def planned_steps(cfg: DictConfig, num_batches: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) for this trainer config and loader length."""
    batches = cfg.overfit_batches or min(num_batches, cfg.limit_train_batches or num_batches)
    per_epoch = math.ceil(batches / cfg.accumulate)
    total = per_epoch * cfg.epochs
    return per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total


@dataclass
class FitState:
    epoch: int = 0  # the epoch in progress (or the next one to run)
    step: int = 0  # optimizer steps so far
    batch: int = 0  # batches of `epoch` already trained (non-zero only after a time-limit stop)
    partial: dict = field(default_factory=dict)  # running sums of the unfinished epoch
    best_metric: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0  # epochs since the monitored metric last improved
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    finished: bool = False
    stop_reason: str = ""


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path, device: torch.device, *, seed: int = 0,
                 config: dict | None = None, hparams: dict | None = None, finetune=None):
        self.cfg, self.run_dir, self.device, self.seed = cfg, Path(run_dir), device, seed
        self.config = config or {}  # the resolved run config, stored in every checkpoint
        self.hparams = hparams or {}
        self.finetune = finetune if finetune is not None and finetune.active else None
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.console = make_console()
        self.amp_dtype = resolve_precision(cfg.precision, device)
        self.autocast = autocast_for(device, self.amp_dtype)
        use_cl = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
        self.memory_format = torch.channels_last if use_cl else torch.contiguous_format
        self.started = time.monotonic()
        self.ema: AveragedModel | None = None

    # ------------------------------------------------------------------------------------------ resume
    def _resume_from(self) -> tuple[Path, dict] | None:
        """(path, checkpoint) to continue from, read once, or None to start fresh."""
        resume = self.cfg.resume
        if not resume:
            return None
        if resume == "auto":
            last = self.ckpt_dir / "last.pt"
            if not last.is_file():
                return None
            state = checkpoint.load(last)
            return None if state.get("fit", {}).get("finished", False) else (last, state)
        path = Path(resume).expanduser()
        return path, checkpoint.load(path)

    def _restore(self, path: Path, state: dict, model, optimizer, scheduler, scaler) -> FitState:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None:
                self.ema.module.load_state_dict(state.get("ema") or state["model"])
                self.ema.n_averaged.fill_(state.get("ema_updates", 0))
        except (RuntimeError, ValueError, KeyError, TypeError) as ex:
            first = str(ex).strip().splitlines()[0]
            raise CnnlabError(f"cannot resume from {path}: it does not match this model/optimizer ({first})") from None
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        fit = FitState(**state["fit"])
        fit.finished, fit.stop_reason = False, ""
        self._adopt_best(path, fit)
        where = f"epoch {fit.epoch + 1}" + (f", batch {fit.batch}" if fit.batch else "")
        say(self.console, f"resumed from {path} at {where} (step {fit.step})")
        return fit

    def _adopt_best(self, resumed_from: Path, fit: FitState) -> None:
        """Resuming into another run directory: bring the source run's best.pt along (or pick a new best)."""
        mine = self.ckpt_dir / "best.pt"
        theirs = resumed_from.parent / "best.pt"
        if mine.is_file():
            return
        if theirs.is_file():
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(theirs, mine)
        else:
            fit.best_metric, fit.best_epoch = None, -1

    def _save(self, name: str, model, optimizer, scheduler, scaler, fit: FitState) -> None:
        checkpoint.save(self.ckpt_dir / name, {
            "model": model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_updates": int(self.ema.n_averaged) if self.ema is not None else 0,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": fit.epoch - 1 if not fit.batch else fit.epoch,  # the last (partly) trained epoch
            "step": fit.step,
            "best_metric": fit.best_metric,
            "fit": fit.__dict__,
            "rng": checkpoint.rng_state(),
            "config": self.config,
        })

    def _eval_loader(self, loader):
        """Validation and test loaders, cut to trainer.limit_val_batches (debug=fast) when set."""
        return LimitedBatches(loader, self.cfg.limit_val_batches) if self.cfg.limit_val_batches else loader

    def _out_of_time(self) -> bool:
        return self.cfg.time_limit is not None and time.monotonic() - self.started >= self.cfg.time_limit

    # -------------------------------------------------------------------------------------------- loop
    def _train_epoch(self, model, loader, optimizer, scheduler, scaler, fit: FitState, display, profiler) -> dict:
        """Train one epoch from batch fit.batch; returns its sums, or None when stopped before its end."""
        model.train()
        if self.finetune is not None:
            self.finetune.apply(model, fit.epoch)
        loader.set_epoch(fit.epoch)
        num_batches = len(loader)
        display.start_epoch(fit.epoch, num_batches)
        partial = fit.partial or {}
        loss_sum = torch.tensor(partial.get("loss_sum", 0.0), device=self.device)
        correct = torch.tensor(partial.get("correct", 0), device=self.device)
        seen = partial.get("seen", 0)
        start = time.perf_counter() - partial.get("seconds", 0.0)
        accumulate = self.cfg.accumulate
        stopped = ""
        for i, (x, y) in enumerate(loader):
            if i < fit.batch:  # resuming mid-epoch: these batches were trained before the stop
                continue
            x = x.contiguous(memory_format=self.memory_format)
            with self.autocast():
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
            (scaler.scale(loss / accumulate) if scaler is not None else loss / accumulate).backward()
            if (i + 1) % accumulate == 0 or i + 1 == num_batches:
                self._optimizer_step(model, optimizer, scaler)
                scheduler.step()
                fit.step += 1
                if self.cfg.max_steps and fit.step >= self.cfg.max_steps:
                    stopped = "max_steps"
                elif self._out_of_time() and i + 1 < num_batches:
                    stopped = "time_limit"
            profiler.step()
            loss_sum += loss.detach() * len(y)
            hard = y.argmax(1) if y.ndim == 2 else y  # mixup/cutmix give soft targets: score the dominant class
            correct += (logits.detach().argmax(1) == hard).sum()
            seen += len(y)
            if (i + 1) % self.cfg.log_every == 0 and display.mode == "rich":  # the only host syncs
                elapsed = time.perf_counter() - start
                display.update(i + 1, float(loss_sum) / seen, 100.0 * int(correct) / seen, seen / elapsed)
            if stopped:
                fit.batch = i + 1
                break
        else:
            fit.batch = 0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        if seen == 0:
            raise CnnlabError("the training split has no batches: lower data.batch_size or data.val_split")
        fit.stop_reason = stopped
        sums = {"loss_sum": float(loss_sum), "correct": int(correct), "seen": seen, "seconds": seconds}
        if stopped == "time_limit":
            fit.partial = sums
            return None
        fit.partial, fit.batch = {}, 0
        return {"loss": sums["loss_sum"] / seen, "acc": 100.0 * sums["correct"] / seen, "seconds": seconds,
                "images_per_sec": seen / seconds}

    def _optimizer_step(self, model, optimizer, scaler) -> None:
        if scaler is not None:
            if self.cfg.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            if self.cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(model)

    def _is_better(self, val: dict, fit: FitState) -> tuple[bool, float]:
        metric = val["top1"] if self.cfg.monitor == "val_acc" else -val["loss"]
        return fit.best_metric is None or metric > fit.best_metric, metric

    def _profiler(self):
        """debug=profile: a torch.profiler trace of a few steps, written where TensorBoard finds it."""
        if not self.cfg.profile:
            return _NoProfiler()
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        return torch.profiler.profile(
            activities=activities, schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(self.run_dir / "tb" / "profile")),
            record_shapes=True, profile_memory=True)

    def fit(self, model: nn.Module, data, optimizer, scheduler) -> dict:
        set_deterministic(self.cfg.deterministic)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cfg.cudnn_benchmark and not self.cfg.deterministic
        model.to(self.device, memory_format=self.memory_format)
        if self.cfg.ema_decay:
            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema_decay), use_buffers=True)
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        fit = FitState()
        resume = self._resume_from()
        if resume is not None:
            fit = self._restore(*resume, model, optimizer, scheduler, scaler)
        step_model = torch.compile(model) if self.cfg.compile else model
        eval_model = self.ema.module if self.ema is not None else step_model
        train_loader, val_loader = data.train, data.val
        if self.cfg.overfit_batches:
            train_loader = val_loader = FixedBatches(data.train, self.cfg.overfit_batches)
        elif self.cfg.limit_train_batches:
            train_loader = LimitedBatches(train_loader, self.cfg.limit_train_batches)
        if not self.cfg.overfit_batches:
            val_loader = self._eval_loader(val_loader)
        spec = data.spec
        epochs = self.cfg.epochs
        tb = TensorBoard(self.run_dir / "tb", purge_step=fit.epoch if fit.epoch else None)
        display = ProgressDisplay(self.cfg.progress, epochs, self.console)
        if data.val_is_test:
            say(self.console, "[yellow]data.val_split=test: the best checkpoint is selected on the test split, "
                              "so the reported test accuracy is optimistic[/yellow]")
        try:
            with self._profiler() as profiler:
                while fit.epoch < epochs and not fit.stop_reason:
                    train = self._train_epoch(step_model, train_loader, optimizer, scheduler, scaler, fit, display,
                                              profiler)
                    if train is None:  # time limit: last.pt holds the half-trained epoch
                        self._save("last.pt", model, optimizer, scheduler, scaler, fit)
                        say(self.console, f"[yellow]trainer.time_limit={self.cfg.time_limit}s reached in epoch "
                                          f"{fit.epoch + 1} (batch {fit.batch}); saved {self.ckpt_dir / 'last.pt'}: "
                                          f"rerun with trainer.resume=auto (same run dir) to continue[/yellow]")
                        break
                    self._end_epoch(model, eval_model, val_loader, spec, train, optimizer, scheduler, scaler, fit,
                                    tb, display)
        finally:
            display.close()
        fit.finished = fit.stop_reason != "time_limit"
        if fit.finished:
            self._save("last.pt", model, optimizer, scheduler, scaler, fit)
        return self._finish(model, data, fit, tb)

    def _end_epoch(self, model, eval_model, val_loader, spec, train, optimizer, scheduler, scaler, fit, tb,
                   display) -> None:
        val = evaluate(eval_model, val_loader, spec.num_classes, self.autocast, self.memory_format)
        epoch = fit.epoch
        fit.train_seconds += train["seconds"]
        fit.history.append({"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"],
                            "val_loss": val["loss"], "val_acc": val["top1"], "val_top5": val["top5"],
                            "seconds": train["seconds"], "images_per_sec": train["images_per_sec"]})
        tb.scalars({"train/loss": train["loss"], "train/acc": train["acc"], "val/loss": val["loss"],
                    "val/acc": val["top1"], "val/top5": val["top5"],
                    "lr": max(g["lr"] for g in optimizer.param_groups), "time/epoch_seconds": train["seconds"],
                    "time/images_per_sec": train["images_per_sec"]}, epoch)
        better, metric = self._is_better(val, fit)
        scheduler.epoch_end(metric)
        fit.epoch += 1
        if better:
            fit.best_metric, fit.best_epoch, fit.bad_epochs = metric, epoch, 0
            self._save("best.pt", model, optimizer, scheduler, scaler, fit)
        else:
            fit.bad_epochs += 1
            if self.cfg.early_stopping_patience and fit.bad_epochs >= self.cfg.early_stopping_patience:
                fit.stop_reason = "early_stopping"
        self._save("last.pt", model, optimizer, scheduler, scaler, fit)
        display.end_epoch(epoch, (
            f"epoch {epoch + 1}/{self.cfg.epochs} | train loss {train['loss']:.4f} acc {train['acc']:.2f}% | "
            f"val loss {val['loss']:.4f} acc {val['top1']:.2f}%{' *' if better else ''} | "
            f"{train['seconds']:.1f}s {train['images_per_sec']:,.0f} img/s"),
            short=f"val acc {val['top1']:.2f}%")
        if fit.stop_reason:
            say(self.console, f"stopping after epoch {epoch + 1}: " + (
                f"no better {self.cfg.monitor} for {fit.bad_epochs} epochs (early stopping)"
                if fit.stop_reason == "early_stopping" else f"trainer.max_steps={self.cfg.max_steps} reached"))

    # ------------------------------------------------------------------------------------------ report
    def _finish(self, model: nn.Module, data, fit: FitState, tb: TensorBoard) -> dict:
        if not fit.history:
            tb.close()
            return {"finished": False, "stop_reason": fit.stop_reason}
        spec = data.spec
        best = checkpoint.load(self.ckpt_dir / "best.pt")
        model.load_state_dict(best.get("ema") or best["model"])  # the weights that were validated
        test = evaluate(model, self._eval_loader(data.test), spec.num_classes, self.autocast, self.memory_format)
        best_val = next(h for h in fit.history if h["epoch"] == fit.best_epoch)
        last = fit.history[-1]
        metrics = {
            "best_val_acc": best_val["val_acc"],
            "best_val_loss": best_val["val_loss"],
            "best_epoch": fit.best_epoch + 1,
            "test_acc": test["top1"],
            "test_top5": test["top5"],
            "test_loss": test["loss"],
            "final_train_loss": last["train_loss"],
            "final_train_acc": last["train_acc"],
            "epochs": len(fit.history),
            "steps": fit.step,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "seconds_per_epoch": fit.train_seconds / max(1, len(fit.history)),
            "total_seconds": fit.train_seconds,
            "images_per_sec": sum(h["images_per_sec"] for h in fit.history) / len(fit.history),
            "val_is_test": data.val_is_test,
            "ema": self.ema is not None,
            "finished": fit.finished,
            "stop_reason": fit.stop_reason or "epochs",
            "device": str(self.device),
            "history": fit.history,
        }
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        tb.hparams(self.hparams, {"hparam/best_val_acc": metrics["best_val_acc"],
                                  "hparam/test_acc": metrics["test_acc"], "hparam/test_loss": metrics["test_loss"]})
        if self.cfg.image_grid:
            self._log_grid(model, data, tb, fit.best_epoch)
        tb.close()
        self.console.print(metrics_table(f"cnnlab run: {self.run_dir}", [
            ("best val acc", f"{metrics['best_val_acc']:.2f}% (epoch {metrics['best_epoch']})"
                             + (" [EMA weights]" if self.ema is not None else "")),
            ("test acc (best.pt)", f"{metrics['test_acc']:.2f}%" + (" [selected on test]" if data.val_is_test else "")),
            ("test top-5", f"{metrics['test_top5']:.2f}%"),
            ("test loss", f"{metrics['test_loss']:.4f}"),
            ("final train loss / acc", f"{metrics['final_train_loss']:.4f} / {metrics['final_train_acc']:.2f}%"),
            ("parameters", f"{metrics['params']:,}"),
            ("time per epoch", f"{metrics['seconds_per_epoch']:.2f} s"),
            ("throughput", f"{metrics['images_per_sec']:,.0f} img/s on {self.device}"),
        ]))
        log.info("metrics: %s", {k: v for k, v in metrics.items() if k != "history"})
        return metrics

    def _log_grid(self, model: nn.Module, data, tb: TensorBoard, step: int) -> None:
        x, y = next(iter(data.val))
        x, y = x[: self.cfg.image_grid], y[: self.cfg.image_grid]
        pred = predict(model, x.contiguous(memory_format=self.memory_format), self.autocast)
        picture = prediction_grid(denormalise(x, data.spec.mean, data.spec.std), y.tolist(), pred.tolist(),
                                  data.spec.classes)
        tb.image("val/predictions", picture, step)


class _NoProfiler(nullcontext):
    """Stands in for torch.profiler.profile when not profiling."""

    def __enter__(self):
        return self

    def step(self) -> None:
        pass
