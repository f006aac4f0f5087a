"""`cnnlab compare DIR... [plot=true] [output=DIR]`: the sweep report over any mix of run and sweep dirs.

Only training runs are listed: the dirs other commands leave (predict, features, preview, compare) are skipped,
and the console says how many."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig

from cnnlab.engine import outputs
from cnnlab.errors import CnnlabError
from cnnlab.experiments import report as report_lib
from cnnlab.experiments import runs as runs_lib

USAGE = "cnnlab compare needs run or sweep dirs: cnnlab compare outputs/<date>/<time>-<id> outputs/multirun/..."


def training_runs(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """(training run dirs, other dirs) under `paths`: what predict, features, preview and compare write is not a run."""
    found = runs_lib.find_runs(paths)
    runs = [p for p in found if outputs.is_training_run(p) or (p / runs_lib.FAILED).is_file()]
    return runs, [p for p in found if p not in runs]


def paths_override(args: list[str]) -> list[str]:
    """argv for Hydra: the bare arguments (directories) gathered into one `paths=[...]` override.

    Arguments with `=` are overrides and flags start with `-`; a directory whose name holds `=` (a job dir
    named by its overrides) can be given as paths=[...] directly."""
    dirs = [a for a in args if "=" not in a and not a.startswith("-")]
    if not dirs:
        if not any(a.startswith(("paths=", "-")) for a in args):  # nothing to compare, and no --help/--cfg
            raise CnnlabError(USAGE)
        return args
    quoted = ",".join("'" + d.replace("\\", "\\\\").replace("'", "\\'") + "'" for d in dirs)
    return [a for a in args if a not in dirs] + [f"paths=[{quoted}]"]


def run(cfg: DictConfig) -> dict:
    paths = list(cfg.paths) if isinstance(cfg.paths, ListConfig) else [cfg.paths]
    if not paths:
        raise CnnlabError(USAGE)
    if not isinstance(cfg.plot, bool):
        raise CnnlabError(f"plot must be true or false, got {cfg.plot!r}")
    if cfg.output:
        outputs.check(cfg.output, "output", directory=True)
    runs, others = training_runs([str(p) for p in paths])
    if others:
        print(f"skipped {len(others)} dir(s) that are not training runs (other commands' outputs, e.g. {others[0]})")
    if not runs:
        raise CnnlabError(f"no training runs in {', '.join(str(p) for p in paths)} (only outputs of other commands)")
    report = report_lib.build(runs)
    out = outputs.make_dir(Path(cfg.output).expanduser()) if cfg.output else outputs.new_dir("outputs/compare")
    title = "compare " + " ".join(str(p) for p in paths)
    made = list(report_lib.write(report, out, title))
    report_lib.print_table(report, title)
    if cfg.plot:
        from cnnlab.experiments import plots

        made += plots.write(report, out, title=", ".join(str(p) for p in paths))
    print("wrote " + ", ".join(str(p) for p in made))
    return {"runs": len(report.runs), "failed": len(report.failed), "files": [str(p) for p in made]}
