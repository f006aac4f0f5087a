"""The training loop. It knows nothing of which model or dataset it runs: it gets them built.

Per epoch: train (running sums on the device, read once per log interval), validate, log, checkpoint
(best.pt on the monitored validation metric, last.pt always). At the end: best.pt is evaluated once on
the test split and everything lands in metrics.json.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from cnnlab.analysis.grid import denormalise, prediction_grid
from cnnlab.engine import checkpoint
from cnnlab.engine.device import autocast_for, resolve_precision
from cnnlab.engine.metrics import evaluate, predict
from cnnlab.engine.progress import ProgressDisplay, make_console, metrics_table, say
from cnnlab.engine.tensorboard import TensorBoard
from cnnlab.errors import CnnlabError

log = logging.getLogger("cnnlab")


@dataclass
class FitState:
    epoch: int = 0  # the next epoch to run
    step: int = 0  # optimizer steps so far
    best_metric: float | None = None
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path, device: torch.device, *, seed: int = 0,
                 config: dict | None = None, hparams: dict | None = None):
        self.cfg, self.run_dir, self.device, self.seed = cfg, Path(run_dir), device, seed
        self.config = config or {}  # the resolved run config, stored in every checkpoint
        self.hparams = hparams or {}
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.console = make_console()
        self.amp_dtype = resolve_precision(cfg.precision, device)
        self.autocast = autocast_for(device, self.amp_dtype)
        use_cl = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
        self.memory_format = torch.channels_last if use_cl else torch.contiguous_format

    # ------------------------------------------------------------------------------------------ resume
    def _resume_path(self) -> Path | None:
        resume = self.cfg.resume
        if not resume:
            return None
        if resume == "auto":
            last = self.ckpt_dir / "last.pt"
            if last.is_file() and not (self.run_dir / "metrics.json").is_file():
                return last
            return None
        return Path(resume).expanduser()

    def _restore(self, path: Path, model, optimizer, scheduler, scaler) -> FitState:
        state = checkpoint.load(path)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as ex:
            first = str(ex).strip().splitlines()[0]
            raise CnnlabError(f"cannot resume from {path}: it does not match this model/optimizer ({first})") from None
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        fit = FitState(**state["fit"])
        self._adopt_best(path, fit)
        say(self.console, f"resumed from {path} at epoch {fit.epoch} (step {fit.step})")
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
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": fit.epoch - 1,  # the last completed epoch
            "step": fit.step,
            "best_metric": fit.best_metric,
            "fit": fit.__dict__,
            "rng": checkpoint.rng_state(),
            "config": self.config,
        })

    # -------------------------------------------------------------------------------------------- loop
    def _train_epoch(self, model, loader, optimizer, scheduler, scaler, fit: FitState, display) -> dict:
        model.train()
        loader.set_epoch(fit.epoch)
        display.start_epoch(fit.epoch, len(loader))
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        start = time.perf_counter()
        for i, (x, y) in enumerate(loader):
            x = x.contiguous(memory_format=self.memory_format)
            with self.autocast():
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            fit.step += 1
            loss_sum += loss.detach() * len(y)
            hard = y.argmax(1) if y.ndim == 2 else y  # mixup/cutmix give soft targets: score the dominant class
            correct += (logits.detach().argmax(1) == hard).sum()
            seen += len(y)
            if (i + 1) % self.cfg.log_every == 0 and display.mode == "rich":  # the only host syncs
                elapsed = time.perf_counter() - start
                display.update(i + 1, float(loss_sum) / seen, 100.0 * int(correct) / seen, seen / elapsed)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        if seen == 0:
            raise CnnlabError("the training split has no batches: lower data.batch_size or data.val_split")
        return {"loss": float(loss_sum) / seen, "acc": 100.0 * int(correct) / seen, "seconds": seconds,
                "images_per_sec": seen / seconds}

    def _is_better(self, val: dict, fit: FitState) -> tuple[bool, float]:
        metric = val["top1"] if self.cfg.monitor == "val_acc" else -val["loss"]
        return fit.best_metric is None or metric > fit.best_metric, metric

    def fit(self, model: nn.Module, data, optimizer, scheduler) -> dict:
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cfg.cudnn_benchmark
        model.to(self.device, memory_format=self.memory_format)
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        fit = FitState()
        resume = self._resume_path()
        if resume is not None:
            fit = self._restore(resume, model, optimizer, scheduler, scaler)
        step_model = torch.compile(model) if self.cfg.compile else model
        spec = data.spec
        epochs = self.cfg.epochs
        tb = TensorBoard(self.run_dir / "tb", purge_step=fit.epoch if fit.epoch else None)
        display = ProgressDisplay(self.cfg.progress, epochs, self.console)
        if data.val_is_test:
            say(self.console, "[yellow]data.val_split=test: the best checkpoint is selected on the test split, "
                              "so the reported test accuracy is optimistic[/yellow]")
        try:
            while fit.epoch < epochs:
                train = self._train_epoch(step_model, data.train, optimizer, scheduler, scaler, fit, display)
                val = evaluate(step_model, data.val, spec.num_classes, self.autocast, self.memory_format)
                epoch = fit.epoch
                fit.train_seconds += train["seconds"]
                fit.history.append({"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"],
                                    "val_loss": val["loss"], "val_acc": val["top1"], "val_top5": val["top5"],
                                    "seconds": train["seconds"], "images_per_sec": train["images_per_sec"]})
                tb.scalars({"train/loss": train["loss"], "train/acc": train["acc"], "val/loss": val["loss"],
                            "val/acc": val["top1"], "val/top5": val["top5"],
                            "lr": optimizer.param_groups[0]["lr"], "time/epoch_seconds": train["seconds"],
                            "time/images_per_sec": train["images_per_sec"]}, epoch)
                better, metric = self._is_better(val, fit)
                fit.epoch += 1
                if better:
                    fit.best_metric, fit.best_epoch = metric, epoch
                    self._save("best.pt", model, optimizer, scheduler, scaler, fit)
                self._save("last.pt", model, optimizer, scheduler, scaler, fit)
                display.end_epoch(epoch, (
                    f"epoch {epoch + 1}/{epochs} | train loss {train['loss']:.4f} acc {train['acc']:.2f}% | "
                    f"val loss {val['loss']:.4f} acc {val['top1']:.2f}%{' *' if better else ''} | "
                    f"{train['seconds']:.1f}s {train['images_per_sec']:,.0f} img/s"),
                    short=f"val acc {val['top1']:.2f}%")
        finally:
            display.close()
        return self._finish(model, data, fit, tb)

    # ------------------------------------------------------------------------------------------ report
    def _finish(self, model: nn.Module, data, fit: FitState, tb: TensorBoard) -> dict:
        spec = data.spec
        best = checkpoint.load(self.ckpt_dir / "best.pt")
        model.load_state_dict(best["model"])
        test = evaluate(model, data.test, spec.num_classes, self.autocast, self.memory_format)
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
            "seconds_per_epoch": fit.train_seconds / max(1, len(fit.history)),
            "total_seconds": fit.train_seconds,
            "images_per_sec": sum(h["images_per_sec"] for h in fit.history) / len(fit.history),
            "val_is_test": data.val_is_test,
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
            ("best val acc", f"{metrics['best_val_acc']:.2f}% (epoch {metrics['best_epoch']})"),
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
