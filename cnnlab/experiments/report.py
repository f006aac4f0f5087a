"""The sweep report: every run's numbers in one table, over any mix of run and sweep directories.

A run directory is read as data: metrics.json (what training measured), .hydra/overrides.yaml (what the user
changed), .hydra/config.yaml (the composed config, for typed values), .hydra/hydra.yaml (group choices) and
failed.json (written by cli.py when a sweep job stops on a user error). Nothing in them is instantiated.

The table has one row per run: the keys whose values differ across the runs (typed: 0.01 is a float, 3 an
int), model (the one built: plain56 for resnet56 with model.skip=false), parameters, MACs, best validation
accuracy and its epoch, test accuracy, the final epoch's eval-mode accuracy on a fixed train sample and its
gap to val accuracy (engine/train_accuracy.py; older runs: the running train-mode accuracy), the optimizer
steps until val accuracy first reached the level every run reached (convergence), the mean per-stage gradient
norms (when logged), seconds per epoch with the machine's load average, total seconds and the status. Rows
keep the sweep's order of values. When `seed` varies, experiments/seeds.py groups the other keys.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnlab.errors import CnnlabError
from cnnlab.experiments import seeds as seeds_lib
from cnnlab.experiments.readings import common_level, norms_text, steps_to, train_eval_gap, within  # noqa: F401

_ABSENT = object()
FAILED = "failed.json"  # written into a sweep job's dir when it stops on a user error (cli.py)


@dataclass
class Run:
    """One run directory, read."""

    path: Path
    metrics: dict | None = None
    config: DictConfig | None = None
    overrides: list[str] = field(default_factory=list)
    choices: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return f"failed: {self.error}"
        if self.metrics is None:
            return "no metrics.json (running or killed)"
        if not self.metrics.get("finished", True) or "best_val_acc" not in self.metrics:
            return f"stopped: {self.metrics.get('stop_reason', 'unfinished')}"
        return "ok"

    @property
    def ok(self) -> bool:
        return self.metrics is not None and "best_val_acc" in self.metrics and self.error is None

    @property
    def history(self) -> list[dict]:
        return (self.metrics or {}).get("history", [])


def write_failure(
    run_dir: str | Path,
    message: str,
    overrides: list[str],
    choices: dict | None = None,
    config: DictConfig | None = None,
) -> Path:
    """Record a sweep job that stopped on a user error, so that the summary lists it as `failed: <message>`.

    The job's overrides, group choices and config go into its .hydra/ folder too when training never got as far
    as writing them (a bad value fails before that)."""
    run_dir = Path(run_dir)
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    if not (hydra_dir / "overrides.yaml").is_file():
        OmegaConf.save(OmegaConf.create(list(overrides)), hydra_dir / "overrides.yaml")
    if config is not None and not (hydra_dir / "config.yaml").is_file():
        OmegaConf.save(config, hydra_dir / "config.yaml")
    path = run_dir / FAILED
    path.write_text(json.dumps({"error": message, "overrides": list(overrides), "choices": choices or {}}, indent=2))
    return path


# ----------------------------------------------------------------------------------------------- reading
def _natural(path: Path) -> list:
    """Sort key: job 10 after job 9."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _is_run(path: Path) -> bool:
    return (path / "metrics.json").is_file() or (path / FAILED).is_file() or (path / ".hydra" / "config.yaml").is_file()


def find_runs(paths) -> list[Path]:
    """The run directories in `paths`: each a run dir itself, or a folder (a sweep) searched for run dirs."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise CnnlabError(f"{path} does not exist")
        if not path.is_dir():
            raise CnnlabError(f"{path} is not a directory: give run or sweep directories")
        if _is_run(path):
            found.append(path)
            continue
        inner = {p.parent for name in ("metrics.json", FAILED) for p in path.rglob(name)}
        inner |= {p.parent.parent for p in path.rglob(".hydra/config.yaml")}
        found += sorted((p for p in inner if not p.is_symlink()), key=_natural)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise CnnlabError(f"no runs in {', '.join(str(p) for p in paths)}: a run dir holds metrics.json and .hydra/")
    return unique


def _load_yaml(path: Path):
    try:
        return OmegaConf.load(path) if path.is_file() else None
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as ex:  # a hand-edited or truncated file
        raise CnnlabError(f"{path} is not readable YAML ({str(ex).strip().splitlines()[0]})") from None


def read_run(path: str | Path) -> Run:
    path = Path(path)
    run = Run(path)
    metrics = path / "metrics.json"
    if metrics.is_file():
        try:
            run.metrics = json.loads(metrics.read_text())
        except json.JSONDecodeError as ex:
            run.error = f"metrics.json is not valid JSON ({ex})"
    run.config = _load_yaml(path / ".hydra" / "config.yaml")
    overrides = _load_yaml(path / ".hydra" / "overrides.yaml")
    run.overrides = [str(o) for o in overrides] if isinstance(overrides, ListConfig) else []
    hydra = _load_yaml(path / ".hydra" / "hydra.yaml")
    if hydra is not None:
        choices = OmegaConf.select(hydra, "hydra.runtime.choices", default=None)
        run.choices = OmegaConf.to_container(choices) if choices is not None else {}
    failed = path / FAILED
    if failed.is_file():
        record = json.loads(failed.read_text())
        run.error = record.get("error", "unknown error")
        run.overrides = run.overrides or list(record.get("overrides", []))
        run.choices = run.choices or dict(record.get("choices", {}))
    return run


# ------------------------------------------------------------------------------------------ varied keys
def override_keys(overrides: list[str]) -> list[str]:
    """The config keys and groups a run's overrides set (not Hydra's own)."""
    keys = []
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        if key and not key.startswith(("hydra.", "hydra/")) and key != "hydra":
            keys.append(key)
    return keys


def _plain(value):
    """A config value as a plain, typed Python value (containers as compact text)."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
        return "[" + ",".join(str(v) for v in value) + "]"  # as typed on the command line: [basic,cutout]
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value, separators=(",", ":"))
    return value


def value_of(run: Run, key: str):
    """The typed value of `key` in this run: a group's chosen option, or the composed config's value."""
    if key in run.choices:
        return _plain(run.choices[key])
    given = [o.partition("=")[2] for o in run.overrides if o.partition("=")[0].lstrip("+~") == key]
    if run.config is not None:
        found = OmegaConf.select(run.config, key, default=_ABSENT, throw_on_resolution_failure=False)
        if found is not _ABSENT and not (given and isinstance(found, DictConfig)):
            return _plain(found)
    # A group picked as a list (augment=[basic,cutout]: Hydra records no choice), or a run without its config.
    return _typed(given[-1]) if given else None


def _typed(text: str):
    """Hydra's own parse of an override value (`0.01` float, `3` int, `true` bool, `null` None)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return _plain(OverridesParser.create().parse_override(f"k={text}").value())
    except OverrideParseException:  # not a value Hydra would parse: keep the text
        return text


def varied_keys(runs: list[Run]) -> list[str]:
    """Keys overridden somewhere whose typed values differ across the runs, in the order first seen."""
    keys = list(dict.fromkeys(k for run in runs for k in override_keys(run.overrides)))
    if len(runs) < 2:
        return []
    return [k for k in keys if len({json.dumps(value_of(r, k), sort_keys=True, default=str) for r in runs}) > 1]


def model_name(run: Run) -> str:
    if "model" in run.choices:
        name = str(run.choices["model"])
        skip = OmegaConf.select(run.config, "model.skip", default=None) if run.config is not None else None
        if skip is False and name.startswith("resnet"):  # what the arm built: configs/model/plainN = resnetN, skip off
            return "plain" + name.removeprefix("resnet")
        if name == "torchvision" and run.config is not None:  # which torchvision model
            return f"tv_{OmegaConf.select(run.config, 'model.name', default='?')}"
        return name
    target = OmegaConf.select(run.config, "model._target_", default=None) if run.config is not None else None
    return str(target).rsplit(".", 1)[-1] if target else "?"


def monitor_of(runs: list[Run]) -> str:
    monitors = {
        OmegaConf.select(r.config, "trainer.monitor", default="val_acc") if r.config is not None else "val_acc"
        for r in runs
    }
    return monitors.pop() if len(monitors) == 1 else "val_acc"


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


def objective(metrics: dict, monitor: str = "val_acc") -> float | None:
    """The number a sweeper optimises: the best monitored validation metric (None for an unfinished run)."""
    key = "best_val_loss" if monitor == "val_loss" else "best_val_acc"
    value = metrics.get(key) if isinstance(metrics, dict) else None
    return float(value) if value is not None else None
