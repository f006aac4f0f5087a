"""What happens around a `-m` sweep: failed jobs are recorded instead of ending it, and it ends in a report.

configs/train.yaml registers `SweepSummary` as a Hydra callback. When the sweep is over it writes
summary.csv, summary.md, curves.png and accuracy_vs_params.png into the sweep dir, prints the table, and
links every job's TensorBoard folder into <sweep dir>/tb/ under its varied keys (one dashboard per sweep:
`tensorboard --logdir <sweep dir>/tb`). If any job failed it says so and exits 1.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cnnlab.errors import CnnlabError
from cnnlab.experiments import report as report_lib
from cnnlab.experiments import runs

log = logging.getLogger("cnnlab")


def record_failed_job(message: str, cfg: DictConfig | None = None) -> bool:
    """Inside a `-m` sweep job: write failed.json into the job's dir and return True (the sweep goes on).
    Outside a sweep (or without Hydra) return False: the caller fails as usual."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    hydra = HydraConfig.get()
    choices = {k: v for k, v in hydra.runtime.choices.items() if not k.startswith("hydra")}
    runs.write_failure(hydra.runtime.output_dir, message, list(hydra.overrides.task), choices, cfg)
    return True


def _dir_name(text: str) -> str:
    """A run label usable as one directory name."""
    return re.sub(r"[/\\\0]", "_", text)[:200] or "run"


def link_tensorboard(report: report_lib.Report, sweep_dir: Path) -> Path | None:
    """<sweep dir>/tb/<varied keys> -> ../<job>/tb for every job that wrote TensorBoard events."""
    links = sweep_dir / "tb"
    made = 0
    for run, name in zip(report.runs, report.labels()):
        target = run.path / "tb"
        if not target.is_dir():
            continue
        links.mkdir(exist_ok=True)
        link, n = links / _dir_name(name), 1
        while link.is_symlink() and link.resolve() != target.resolve():  # two jobs with the same values
            n += 1
            link = links / _dir_name(f"{name} #{n}")
        if link.is_symlink():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(target, links), target_is_directory=True)
            made += 1
        except OSError as ex:  # a filesystem without symlinks: the per-job folders still work
            log.warning("cannot link %s: %s", link, ex)
            return None
    return links if made else None


class SweepSummary(Callback):
    """Hydra callback: the sweep's report at the end of every multirun (any sweeper, any launcher)."""

    def __init__(self, plot: bool = True, tensorboard_links: bool = True):
        self.plot = plot
        self.tensorboard_links = tensorboard_links

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        try:
            report = report_lib.build([sweep_dir])
        except CnnlabError as ex:  # no job got as far as its run dir
            print(f"cnnlab: no sweep summary: {ex}", file=sys.stderr)
            return
        experiments = {str(r.choices.get("experiment")) for r in report.runs}
        name = experiments.pop() if len(experiments) == 1 else "None"  # a study: every job has the same one
        title = f"{name}: sweep {sweep_dir}" if name != "None" else f"sweep {sweep_dir}"
        csv_path, md_path = report_lib.write(report, sweep_dir, title)
        report_lib.print_table(report, title)
        made = [csv_path, md_path]
        if self.plot:
            from cnnlab.experiments import plots

            made += plots.write(report, sweep_dir, title=f"{name} ({sweep_dir})" if name != "None" else str(sweep_dir))
        links = link_tensorboard(report, sweep_dir) if self.tensorboard_links else None
        if links is not None:
            from cnnlab.experiments.hparams import write_sweep_experiment

            write_sweep_experiment(report, links)
        print("wrote " + ", ".join(str(p) for p in made))
        if links is not None:
            print(f"TensorBoard, runs named by their varied keys: tensorboard --logdir {links}")
        if report.failed:
            print(
                f"error: {len(report.failed)} of {len(report.runs)} jobs failed (status column of {md_path})",
                file=sys.stderr,
            )
            sys.exit(1)
