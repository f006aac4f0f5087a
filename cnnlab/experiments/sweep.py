"""What happens around a `-m` sweep: failed jobs are recorded instead of ending it, and it ends in a report.

configs/train.yaml registers `SweepSummary` as a Hydra callback. Before the sweep starts it refuses a sweep dir
that already holds finished jobs (unless trainer.resume=auto asks to finish only the others). When the sweep is
over it writes summary.csv, summary.md, curves.png and accuracy_vs_params.png into the sweep dir and prints the
table (`tensorboard --logdir <sweep dir>` is its dashboard: each job once, under its own tb/). If any job failed
(a user error, or a crash, which keeps its traceback) it says so and exits 1.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import CnnlabError
from cnnlab.experiments import report as report_lib
from cnnlab.experiments import runs


def record_failed_job(message: str, cfg: DictConfig | None = None) -> bool:
    """Inside a `-m` sweep job: write failed.json into the job's dir and return True (the sweep goes on).
    Outside a sweep (or without Hydra) return False: the caller fails as usual."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    hydra = HydraConfig.get()
    if (Path(hydra.runtime.output_dir) / "metrics.json").is_file():  # a finished job's dir: its row stays as it is
        return True
    choices = {k: v for k, v in hydra.runtime.choices.items() if not k.startswith("hydra")}
    runs.write_failure(hydra.runtime.output_dir, message, list(hydra.overrides.task), choices, cfg)
    return True


class SweepSummary(Callback):
    """Hydra callback: the sweep's report at the end of every multirun (any sweeper, any launcher)."""

    def __init__(self, plot: bool = True):
        self.plot = plot

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """A sweep dir with finished jobs is refused: a re-run would train over them (or mark them failed)."""
        sweep_dir = Path(config.hydra.sweep.dir)
        resume = OmegaConf.select(config, "trainer.resume", default=None)
        if resume == "auto" or not sweep_dir.is_dir():
            return
        finished = sorted(sweep_dir.glob("*/metrics.json"))
        if finished:  # Hydra turns a callback's exception into a warning: say it and exit here (cli.py's format)
            print(
                f"error: hydra.sweep.dir={sweep_dir} already holds {len(finished)} finished job(s): choose another "
                f"hydra.sweep.dir, or add trainer.resume=auto to run only the jobs that did not finish",
                file=sys.stderr,
            )
            sys.exit(2)

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
        from cnnlab.experiments.hparams import write_sweep_experiment

        write_sweep_experiment(report, sweep_dir / "tb")  # the HParams summary only: the jobs' events stay in theirs
        print("wrote " + ", ".join(str(p) for p in made))
        print(f"TensorBoard: tensorboard --logdir {shlex.quote(str(sweep_dir))}")
        if report.failed:
            print(
                f"error: {len(report.failed)} of {len(report.runs)} jobs failed (status column of {md_path})",
                file=sys.stderr,
            )
            sys.exit(1)
