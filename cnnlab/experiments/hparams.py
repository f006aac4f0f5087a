"""The hyper-parameters a run shows in TensorBoard's HParams tab, with their types kept.

Shown: every key or group the user overrode (first), then the model and data choices, the experiment (if any)
and a few keys every comparison needs (lr, weight decay, batch size, epochs, seed). Values come from the
composed config, so `optimizer.lr=0.01` is the float 0.01 in every run, whether overridden or a default, and
TensorBoard draws numeric axes. Constant groups (augment, debug, finetune ...) appear only when overridden.
A trial is named by what it set (`optimizer.lr=0.01 model=vgg11`; in a sweep only what the sweep varies).
A sweep's dashboard gets one experiment summary, written at its end, with only the keys that vary.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnlab.engine.tensorboard import Session, experiment_pb
from cnnlab.experiments.report import Report
from cnnlab.experiments.runs import override_keys, plain, value_of

CORE = ("optimizer.lr", "optimizer.weight_decay", "data.batch_size", "trainer.epochs", "seed")


def _overrides_and_choices(run_dir: str | Path | None) -> tuple[list[str], dict]:
    """The live Hydra job's overrides and group choices; without one, those saved in <run_dir>/.hydra/."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        return list(hydra.overrides.task), dict(hydra.runtime.choices)
    overrides: list[str] = []
    choices: dict = {}
    saved = Path(run_dir) / ".hydra" if run_dir is not None else None
    if saved is not None and (saved / "overrides.yaml").is_file():
        listed = OmegaConf.load(saved / "overrides.yaml")
        overrides = [str(o) for o in listed] if isinstance(listed, ListConfig) else []
    if saved is not None and (saved / "hydra.yaml").is_file():
        found = OmegaConf.select(OmegaConf.load(saved / "hydra.yaml"), "hydra.runtime.choices", default=None)
        choices = OmegaConf.to_container(found) if isinstance(found, DictConfig) else {}
    return overrides, choices


def _value(value):
    """A TensorBoard hparam value: bool, int, float or str (None is written as the text "null")."""
    value = plain(value)
    return "null" if value is None else value


def hparams_of(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    return session_of(cfg, run_dir).values


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _trial_name(overrides: list[str], sweep: bool) -> str | None:
    """The overrides this run set; in a sweep whose jobs run in this process, only those not typed as they are
    on the command line (`model=a,b` became `model=a`: swept; `data=mnist` is the same in every job)."""
    own = [o for o in overrides if override_keys([o])]
    if sweep:
        own = [o for o in own if o not in sys.argv[1:]] or own
    return " ".join(own) or None


def session_of(cfg: DictConfig, run_dir: str | Path | None = None) -> Session:
    overrides, choices = _overrides_and_choices(run_dir)
    target = str(OmegaConf.select(cfg, "model._target_", default="?"))
    params = {
        "model": choices.get("model") or target.rsplit(".", 1)[-1],
        "data": choices.get("data") or OmegaConf.select(cfg, "data.name", default="?"),
    }
    if choices.get("experiment"):
        params["experiment"] = choices["experiment"]
    for key in [*CORE, *override_keys(overrides)]:
        if key in choices:  # a group: its chosen option
            params[key] = choices[key]
        elif key not in params:
            value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
            if isinstance(value, DictConfig):  # a group picked without a live Hydra job: the option's name
                value = next(o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+~") == key)
            params[key] = value
    first = [k for k in override_keys(overrides) if k in params]
    ordered = {k: params[k] for k in [*first, *params]}
    sweep = _in_sweep()
    return Session(
        values={k: _value(v) for k, v in ordered.items()},
        trial=_trial_name(overrides, sweep) or (Path(run_dir).name if run_dir is not None else None),
        experiment=not sweep,
        first=tuple(first),
    )


def write_sweep_experiment(report: Report, log_dir: Path) -> Path:
    """One experiment summary for a sweep's dashboard (<log_dir>/ holds the jobs' TensorBoard folders): the keys
    that vary, in the report's order; constants are left out (they are in every job's config)."""
    from torch.utils.tensorboard import SummaryWriter

    keys = report.keys or ["model"]
    values = {k: [_value(value_of(run, k)) for run in report.runs] for k in keys}
    with SummaryWriter(str(log_dir), filename_suffix=".sweep") as writer:
        writer.file_writer.add_summary(experiment_pb(values, first=keys))
    return log_dir
