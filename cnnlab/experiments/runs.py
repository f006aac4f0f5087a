"""Run directories read as data: one `Run` per directory, with its metrics, config, overrides and group choices.

A run directory holds metrics.json (what training measured), .hydra/overrides.yaml (what the user changed),
.hydra/config.yaml (the composed config, for typed values), .hydra/hydra.yaml (group choices) and failed.json
(written by cli.py when a sweep job stops on a user error). Nothing in them is instantiated.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnlab.errors import CnnlabError

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


def plain(value):
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
        return plain(run.choices[key])
    given = [o.partition("=")[2] for o in run.overrides if o.partition("=")[0].lstrip("+~") == key]
    if run.config is not None:
        found = OmegaConf.select(run.config, key, default=_ABSENT, throw_on_resolution_failure=False)
        if found is not _ABSENT and not (given and isinstance(found, DictConfig)):
            return plain(found)
    # A group picked as a list (augment=[basic,cutout]: Hydra records no choice), or a run without its config.
    return _typed(given[-1]) if given else None


def _typed(text: str):
    """Hydra's own parse of an override value (`0.01` float, `3` int, `true` bool, `null` None)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return plain(OverridesParser.create().parse_override(f"k={text}").value())
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


def objective(metrics: dict, monitor: str = "val_acc") -> float | None:
    """The number a sweeper optimises: the best monitored validation metric (None for an unfinished run)."""
    key = "best_val_loss" if monitor == "val_loss" else "best_val_acc"
    value = metrics.get(key) if isinstance(metrics, dict) else None
    return float(value) if value is not None else None
