"""The sweep report: every run's numbers in one table, over any mix of run and sweep directories (read by runs.py).

The table has one row per run: the keys whose values differ across the runs (typed: 0.01 is a float, 3 an
int), model (the one built: plain56 for resnet56 with model.skip=false), parameters, MACs, best validation
accuracy and its epoch, test accuracy, the final epoch's eval-mode accuracy on a fixed train sample and its
gap to val accuracy (callbacks/train_accuracy.py; older runs: the running train-mode accuracy), the optimizer
steps until val accuracy first reached the level every run reached (convergence), the mean per-stage gradient
norms (when logged), seconds per epoch with the machine's load average, total seconds and the status. Rows
keep the sweep's order of values. When `seed` varies, experiments/seeds.py groups the other keys.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from cnnlab.experiments import seeds as seeds_lib
from cnnlab.experiments.readings import common_level, norms_text, steps_to, train_eval_gap, within  # noqa: F401
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
    "train acc",
    "train-val gap",
    "steps to level",
    "grad norm per stage",
    "s/epoch",
    "load",
    "total s",
    "status",
]
OPTIONAL = ("train acc", "grad norm per stage", "load")  # shown when some run has them (older runs do not)


def row_of(run: Run, keys: list[str], level: float | None = None) -> dict:
    row = {k: value_of(run, k) for k in keys}
    m = run.metrics or {}
    last = run.history[-1] if run.history else {}
    load = m.get("load_avg")
    row.update(
        {
            "model": model_name(run),
            "params": m.get("params"),
            "MACs": m.get("macs"),
            "best val acc": m.get("best_val_acc"),
            "best epoch": m.get("best_epoch"),
            "test acc": m.get("test_acc"),
            "test images": m.get("test_images"),  # fewer than the test split with data.eval_subset
            "train acc": last.get("train_eval_acc"),
            "train-val gap": train_eval_gap(last),
            "steps to level": steps_to(run, level),
            "grad norm per stage": norms_text(m.get("grad_norms")),
            "s/epoch": m.get("seconds_per_epoch"),
            "load": load[0] if isinstance(load, list) and load else None,
            "total s": m.get("total_seconds"),
            "status": run.status,
        }
    )
    return row


@dataclass
class Report:
    runs: list[Run]
    keys: list[str]  # the varied keys
    rows: list[dict]  # one per run, in the same order as `runs`: the sweep's order
    monitor: str
    level: float | None = None  # "steps to level": the val accuracy every finished run reached

    @property
    def columns(self) -> list[str]:
        shown = [c for c in COLUMNS if c not in OPTIONAL or any(row.get(c) is not None for row in self.rows)]
        return self.keys + [c for c in shown if c not in self.keys]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if r.error is not None]

    def labels(self) -> list[str]:
        return [label(r, self.keys) for r in self.runs]


def build(paths) -> Report:
    """Read every run under `paths` and lay out the table, in the order of the runs (a sweep's job order,
    which is the order of its swept values)."""
    runs = [read_run(p) for p in find_runs(paths)]
    keys = varied_keys(runs)
    level = common_level(runs)
    return Report(runs, keys, [row_of(r, keys, level) for r in runs], monitor_of(runs), level)


def _fmt(value, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, seeds_lib.Stat):  # an arm over seeds
        return f"{_fmt(value.mean, column)} ± {_fmt(value.std, column)}" if value.n > 1 else _fmt(value.mean, column)
    if isinstance(value, bool):
        return str(value).lower()
    if column in ("params", "MACs") and isinstance(value, (int, float)):
        return _si(value)
    if isinstance(value, float):
        if column in ("best val acc", "test acc", "train acc", "train-val gap"):
            return f"{value:.2f}"
        if column in ("s/epoch", "total s", "load", "best epoch"):
            return f"{value:.1f}"
        if column == "steps to level":
            return f"{value:.0f}"
        return f"{value:g}"
    return str(value)


def _si(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:g}"


def _csv_cells(row: dict, columns: list[str]) -> dict:
    """Typed values; a mean over seeds is two cells, `<column>` and `<column> std`."""
    cells = {}
    for c in columns:
        value = row.get(c)
        if isinstance(value, seeds_lib.Stat):
            cells[c], cells[f"{c} std"] = value.mean, value.std
        else:
            cells[c] = "" if value is None else value
    return cells


def to_csv(report: Report) -> str:
    """Raw typed values (full precision), one row per run (per arm for a report grouped over seeds)."""
    rows = [{"run": str(run.path), **_csv_cells(row, report.columns)} for run, row in zip(report.runs, report.rows)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


LEGEND = (
    "In the sweep's order; accuracies in %; train acc: eval-mode accuracy on a fixed training sample at the final "
    "epoch, train-val gap: that minus val acc; steps to level: optimizer steps until val acc first reached {level}% "
    "(what every run reached); load: the 1-minute load average at the end of the run."
)


def to_markdown(report: Report, title: str = "") -> str:
    """The summary document: the study's verdict and noise lines, the table over seeds (when seeds vary) and
    the table of every run."""
    from cnnlab.experiments import findings

    lines = [f"# {title}", ""] if title else []
    found = findings.lines(report)
    if found:
        lines += [*found, ""]
    grouped = findings.by_seed(report)
    if grouped is not None:
        lines += ["## Mean ± std over seeds", "", _md_table(grouped, first_run=True), "## Every run", "", ""]
    return "\n".join(lines) + _md_table(report)


def _md_table(report: Report, first_run: bool = False) -> str:
    head = [*report.columns, "first run" if first_run else "run"]
    lines = [LEGEND.format(level=_fmt(report.level)), ""]
    lines.append("| " + " | ".join(head) + " |")
    left = (*report.keys, "model", "status", "run", "first run")
    lines.append("|" + "|".join("---" if c in left else "---:" for c in head) + "|")
    for run, row in zip(report.runs, report.rows):
        cells = [_fmt(row.get(c), c).replace("|", "\\|") for c in report.columns] + [run.path.name]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(report: Report, out_dir: str | Path, title: str = "") -> tuple[Path, Path]:
    """summary.csv and summary.md in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from cnnlab.experiments import findings

    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    grouped = findings.by_seed(report)
    csv_path.write_text(to_csv(grouped or report))  # over seeds: one row per arm; every run in runs.csv
    if grouped is not None:
        (out_dir / "runs.csv").write_text(to_csv(report))
    md_path.write_text(to_markdown(report, title))
    return csv_path, md_path


def print_table(report: Report, title: str = "") -> None:
    """The same table on the console: a rich table on a terminal, the markdown lines otherwise (logs, pipes)."""
    from rich.table import Table

    from cnnlab.engine.progress import make_console
    from cnnlab.experiments import findings

    console = make_console()
    if not console.is_terminal:
        print(to_markdown(report, title), flush=True)
        return
    shown = findings.by_seed(report) or report  # over seeds: one row per arm, mean ± std
    table = Table(title=title or None)
    for column in shown.columns:
        table.add_column(
            column,
            justify="left" if column in shown.keys or column in ("model", "status") else "right",
            overflow="fold",
        )
    for row in shown.rows:
        table.add_row(*(_fmt(row.get(c), c) for c in shown.columns))
    console.print(table)
    for line in findings.lines(report):
        console.print(line, markup=False, highlight=False)
