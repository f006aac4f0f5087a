"""Continuing a fit from a checkpoint that resume_checks.check accepted: the TrainState loaded, the schedule
re-planned for a longer run, the other ranks' RNG, and best.pt brought along when resuming into a new run dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from cnnlab.engine import distributed, resume_checks


def restore(trainer, path: Path, state: dict) -> None:
    """Continue from a checkpoint that resume_checks.check accepted (before anything was written)."""
    stored = state.get("config") if isinstance(state.get("config"), dict) else {}
    replan = resume_checks.replanned(stored, trainer.config)
    trainer.state.load_state_dict(state, path, replan=replan)
    if distributed.rank():  # the checkpoint holds rank 0's RNG: the other ranks draw (dropout) from their own
        torch.manual_seed(trainer.seed + 1_000_003 * distributed.rank() + trainer.state.progress.step)
    _adopt_best(trainer, path)
    p = trainer.state.progress
    where = f"epoch {p.epoch + 1}" + (f", batch {p.batch}" if p.batch else "")
    longer = ""
    if replan:
        old = stored.get("trainer", {})
        longer = (
            f"; a new run of {trainer.cfg.epochs} epochs (the checkpoint's had {old.get('epochs')}): "
            f"the {trainer.config.get('scheduler', {}).get('name', '')} schedule is re-planned for it"
        )
    trainer.say(f"resumed from {path} at {where} (step {p.step}){longer}")


def _adopt_best(trainer, resumed_from: Path) -> None:
    """Resuming into another run directory: bring the source run's best.pt along (or pick a new best)."""
    mine = trainer.ckpt_dir / "best.pt"
    theirs = resumed_from.parent / "best.pt"
    if mine.is_file() or not trainer.is_main:
        return
    if theirs.is_file():
        trainer.ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(theirs, mine)
        return
    p = trainer.state.progress
    p.best_metric, p.best_epoch = None, 0
    if p.history:  # no best.pt to bring: the resumed weights are the best known until a better epoch
        last = p.history[-1]
        p.best_epoch = last["epoch"]
        p.best_metric = last["val_acc"] if trainer.cfg.monitor == "val_acc" else -last["val_loss"]
        trainer.say(
            f"[yellow]no best.pt beside {resumed_from}: the resumed weights (epoch {p.best_epoch}) are "
            f"best.pt until an epoch validates better[/yellow]"
        )
        trainer.save("best.pt")
