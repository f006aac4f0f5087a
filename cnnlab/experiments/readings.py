"""Numbers the sweep table reads off a run's history: the train-val gap, convergence in optimizer steps, and the
per-stage gradient norms as one cell."""

from __future__ import annotations

import math


def within(history: list[dict], best: float, points: float = 1.0) -> int | None:
    """The first epoch (as numbered in the history: from 1) whose val accuracy is within `points` of `best`."""
    for row in history:
        if row.get("val_acc") is not None and row["val_acc"] >= best - points:
            return row["epoch"]
    return None


def train_eval_gap(row: dict) -> float | None:
    """Train minus val accuracy of a history row: eval-mode train accuracy when measured, else train-mode."""
    train = row.get("train_eval_acc", row.get("train_acc"))
    return train - row["val_acc"] if train is not None and row.get("val_acc") is not None else None


def steps_to(run, level: float | None) -> int | None:
    """Optimizer steps until the val accuracy first reached `level` (checked at the end of each epoch)."""
    m = run.metrics or {}
    if level is None or not run.ok or not m.get("steps") or not run.history:
        return None
    epoch = within(run.history, level, 0.0)
    return None if epoch is None else round(epoch * m["steps"] / len(run.history))


def common_level(runs: list) -> float | None:
    """The val accuracy every finished run reached (the lowest best, to the point below): the convergence mark."""
    bests = [r.metrics["best_val_acc"] for r in runs if r.ok]
    return float(math.floor(min(bests))) if bests else None


def norms_text(norms) -> str | None:
    """Mean gradient norm per stage, input to output, as one cell."""
    if not isinstance(norms, dict) or not norms:
        return None
    return " / ".join(f"{float(v):.3g}" for v in norms.values())
