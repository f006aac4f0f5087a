"""`cnnlab compare DIR... [plot=true] [output=DIR]`: the sweep report over any mix of run and sweep dirs."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from cnnlab.errors import CnnlabError
from cnnlab.experiments import report as report_lib


def paths_override(args: list[str]) -> list[str]:
    """argv for Hydra: the bare arguments (directories) gathered into one `paths=[...]` override.

    Arguments with `=` are overrides and flags start with `-`; a directory whose name holds `=` (a job dir
    named by its overrides) can be given as paths=[...] directly."""
    dirs = [a for a in args if "=" not in a and not a.startswith("-")]
    if not dirs:
        return args
    quoted = ",".join("'" + d.replace("\\", "\\\\").replace("'", "\\'") + "'" for d in dirs)
    return [a for a in args if a not in dirs] + [f"paths=[{quoted}]"]


def run(cfg: DictConfig) -> dict:
    paths = list(cfg.paths) if isinstance(cfg.paths, ListConfig) else [cfg.paths]
    if not paths:
        raise CnnlabError("give at least one run or sweep directory: cnnlab compare DIR...")
    if not isinstance(cfg.plot, bool):
        raise CnnlabError(f"plot must be true or false, got {cfg.plot!r}")
    report = report_lib.build([str(p) for p in paths])
    out = Path(cfg.output) if cfg.output else Path("outputs/compare") / time.strftime("%Y-%m-%d/%H-%M-%S")
    title = "compare " + " ".join(str(p) for p in paths)
    made = list(report_lib.write(report, out, title))
    report_lib.print_table(report, title)
    if cfg.plot:
        from cnnlab.experiments import plots

        made += plots.write(report, out, title=", ".join(str(p) for p in paths))
    print("wrote " + ", ".join(str(p) for p in made))
    return {"runs": len(report.runs), "failed": len(report.failed), "files": [str(p) for p in made]}
