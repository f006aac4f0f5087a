"""The sweep report: every run's numbers in one table, over any mix of run and sweep directories (read by runs.py).

The table has one row per run: the keys whose values differ across the runs (typed: 0.01 is a float, 3 an
int), model, parameters, MACs, best validation accuracy and its epoch, test accuracy, the train-minus-val
accuracy gap of the final epoch, seconds per epoch, total seconds, the first epoch within 1 point of the best,
and the status. Rows are sorted by the monitored metric (trainer.monitor), failed runs last.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from cnnlab.experiments.runs import Run, find_runs, model_name, monitor_of, read_run, value_of, varied_keys


def label(run: Run, keys: list[str]) -> str:
    """A run's name by its varied keys (`model.pool=avg, seed=1`), else its directory name."""
    if not keys:
        return run.path.name
    return ", ".join(f"{k}={_fmt(value_of(run, k))}" for k in keys)


# ------------------------------------------------------------------------------------------------ table
COLUMNS = [
    "model",
    "params",
    "MACs",
    "best val acc",
    "best epoch",
    "test acc",
    "test images",
    "train-val gap",
    "s/epoch",
    "total s",
    "epoch within 1pt",
    "status",
]


def within(history: list[dict], best: float, points: float = 1.0) -> int | None:
    """The first epoch (as numbered in the history: from 1) whose val accuracy is within `points` of `best`."""
    for row in history:
        if row.get("val_acc") is not None and row["val_acc"] >= best - points:
            return row["epoch"]
    return None


def row_of(run: Run, keys: list[str]) -> dict:
    row = {k: value_of(run, k) for k in keys}
    m = run.metrics or {}
    last = run.history[-1] if run.history else {}
    gap = last["train_acc"] - last["val_acc"] if "train_acc" in last and "val_acc" in last else None
    row.update(
        {
            "model": model_name(run),
            "params": m.get("params"),
            "MACs": m.get("macs"),
            "best val acc": m.get("best_val_acc"),
            "best epoch": m.get("best_epoch"),
            "test acc": m.get("test_acc"),
            "test images": m.get("test_images"),  # fewer than the test split with data.eval_subset
            "train-val gap": gap,
            "s/epoch": m.get("seconds_per_epoch"),
            "total s": m.get("total_seconds"),
            "epoch within 1pt": within(run.history, m["best_val_acc"]) if run.ok else None,
            "status": run.status,
        }
    )
    return row


@dataclass
class Report:
    runs: list[Run]
    keys: list[str]  # the varied keys
    rows: list[dict]  # sorted, one per run, in the same order as `runs`
    monitor: str

    @property
    def columns(self) -> list[str]:
        return self.keys + [c for c in COLUMNS if c not in self.keys]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if r.error is not None]

    def labels(self) -> list[str]:
        return [label(r, self.keys) for r in self.runs]


def build(paths) -> Report:
    """Read every run under `paths` and lay out the table."""
    runs = [read_run(p) for p in find_runs(paths)]
    keys = varied_keys(runs)
    monitor = monitor_of(runs)
    metric = "best_val_loss" if monitor == "val_loss" else "best_val_acc"
    sign = 1 if monitor == "val_loss" else -1

    def order(run: Run):
        value = (run.metrics or {}).get(metric)
        return (not run.ok, sign * value if value is not None else 0.0)

    runs.sort(key=order)
    return Report(runs, keys, [row_of(r, keys) for r in runs], monitor)


def _fmt(value, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if column in ("params", "MACs") and isinstance(value, (int, float)):
        return _si(value)
    if isinstance(value, float):
        if column in ("best val acc", "test acc", "train-val gap"):
            return f"{value:.2f}"
        if column in ("s/epoch", "total s"):
            return f"{value:.1f}"
        return f"{value:g}"
    return str(value)


def _si(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:g}"


def to_csv(report: Report) -> str:
    """Raw typed values (full precision), one row per run."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["run", *report.columns], lineterminator="\n")
    writer.writeheader()
    for run, row in zip(report.runs, report.rows):
        writer.writerow({"run": str(run.path), **{c: "" if row.get(c) is None else row[c] for c in report.columns}})
    return out.getvalue()


def to_markdown(report: Report, title: str = "") -> str:
    head = [*report.columns, "run"]
    lines = [f"# {title}", ""] if title else []
    lines += [f"Sorted by {report.monitor}; accuracies in %, train-val gap at the final epoch.", ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append(
        "|" + "|".join("---" if c in report.keys or c in ("model", "status", "run") else "---:" for c in head) + "|"
    )
    for run, row in zip(report.runs, report.rows):
        cells = [_fmt(row.get(c), c).replace("|", "\\|") for c in report.columns] + [run.path.name]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(report: Report, out_dir: str | Path, title: str = "") -> tuple[Path, Path]:
    """summary.csv and summary.md in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    csv_path.write_text(to_csv(report))
    md_path.write_text(to_markdown(report, title))
    return csv_path, md_path


def print_table(report: Report, title: str = "") -> None:
    """The same table on the console: a rich table on a terminal, the markdown lines otherwise (logs, pipes)."""
    from rich.table import Table

    from cnnlab.engine.progress import make_console

    console = make_console()
    if not console.is_terminal:
        print(to_markdown(report, title), flush=True)
        return
    table = Table(title=title or None)
    for column in report.columns:
        table.add_column(
            column,
            justify="left" if column in report.keys or column in ("model", "status") else "right",
            overflow="fold",
        )
    for row in report.rows:
        table.add_row(*(_fmt(row.get(c), c) for c in report.columns))
    console.print(table)
