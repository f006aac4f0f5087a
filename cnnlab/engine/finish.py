"""Finishing a run: the test evaluation of best.pt, metrics.json, TensorBoard's HParams and the console table."""

from __future__ import annotations

import json
import logging

import torch

from cnnlab.analysis.tta import with_tta
from cnnlab.engine import checkpoint, distributed
from cnnlab.engine.device import precision_name
from cnnlab.engine.metrics import evaluate
from cnnlab.engine.progress import metrics_table
from cnnlab.engine.stop_now import write_atomically

log = logging.getLogger("cnnlab")


def _images(loader) -> int | None:
    """How many images an evaluation split holds (data.eval_subset may cut it); None for a foreign loader."""
    labels = getattr(loader, "labels", None)
    return len(labels) if labels is not None else None


def finish(trainer, data) -> dict:
    """The end of a completed fit: best.pt evaluated once on the test split (trainer.tta), metrics.json (the
    finished mark, written last), the HParams tab and the console table. Every rank evaluates; rank 0 writes."""
    p, model = trainer.state.progress, trainer.state.model
    if not p.history:
        if trainer.tb is not None:
            trainer.tb.close()
        return {"finished": False, "stop_reason": p.stop_reason}
    spec = data.spec
    if trainer.is_main:
        best = checkpoint.load(trainer.ckpt_dir / "best.pt")
        model.load_state_dict(best.get("ema") or best["model"])  # the weights that were validated
    distributed.broadcast_module(model)  # the other ranks need no shared filesystem
    tested = with_tta(model, trainer.cfg.tta)  # trainer.tta: the test split only (validation stays plain)
    test = evaluate(tested, trainer.eval_loader(data.test), spec.num_classes, trainer.autocast, trainer.memory_format)
    best_val = next(h for h in p.history if h["epoch"] == p.best_epoch)
    last = p.history[-1]
    metrics = {
        "best_val_acc": best_val["val_acc"],
        "best_val_loss": best_val["val_loss"],
        "best_epoch": p.best_epoch,
        "test_acc": test["top1"],
        "test_top5": test["top5"],
        "test_loss": test["loss"],
        "test_tta": trainer.cfg.tta,
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
        "ema": trainer.state.ema is not None,
        "finished": p.finished,
        "stop_reason": p.stop_reason or "epochs",
        "skipped_batches": p.skipped_batches,
        "device": str(trainer.device),
        "precision": precision_name(trainer.amp_dtype),  # what autocast ran in (trainer.precision resolved)
        "threads": torch.get_num_threads(),
        "val_images": _images(data.val),
        "test_images": _images(data.test),
        "world_size": distributed.world_size(),
        "global_batch": data.train.batch_size * distributed.world_size() * trainer.cfg.accumulate,
        "history": p.history,
    }
    trainer.callbacks.on_fit_end(trainer, model, data, metrics)
    if not trainer.is_main:
        return metrics
    write_atomically(trainer.run_dir / "metrics.json", json.dumps(metrics, indent=2))  # the finished mark
    trainer.tb.hparams(
        trainer.hparams,
        {
            "hparam/best_val_acc": metrics["best_val_acc"],
            "hparam/test_acc": metrics["test_acc"],
            "hparam/test_top5": metrics["test_top5"],
            "hparam/test_loss": metrics["test_loss"],
        },
    )
    trainer.tb.close()
    trainer.console.print(
        metrics_table(
            f"cnnlab run: {trainer.run_dir}",
            [
                (
                    "best val acc",
                    f"{metrics['best_val_acc']:.2f}% (epoch {metrics['best_epoch']})"
                    + (" [EMA weights]" if trainer.state.ema is not None else ""),
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
                ("throughput", f"{metrics['images_per_sec']:,.0f} img/s on {trainer.device} ({metrics['precision']})"),
            ],
        )
    )
    log.info("metrics: %s", {k: v for k, v in metrics.items() if k != "history"})
    return metrics
