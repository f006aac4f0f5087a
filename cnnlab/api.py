"""The Python API, for notebooks: compose a config, train in-process, load a checkpoint.

    import cnnlab
    cfg = cnnlab.compose(["model=lenet5", "data=digits", "trainer.epochs=3"])
    metrics = cnnlab.train(cfg, run_dir="runs/lenet")       # the same run directory as `cnnlab train`
    model, spec = cnnlab.load("runs/lenet/checkpoints/best.pt")

No live Hydra job is needed: `compose` uses Hydra's compose API (with cnnlab's schemas registered), and
`train` writes the run directory it is given, .hydra/config.yaml and overrides.yaml included, so that
`cnnlab compare` and TensorBoard's HParams tab see API runs like CLI runs.
"""

from __future__ import annotations

import shutil
import weakref
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "train") -> DictConfig:
    """The config `cnnlab <config_name> OVERRIDES...` would run, composed and validated against the schema."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cnnlab.paths import config_dir
    from cnnlab.schema import register

    register()
    overrides = [str(o) for o in overrides]
    if GlobalHydra.instance().is_initialized():  # e.g. a previous compose in a notebook that was interrupted
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base=None, job_name=f"cnnlab_{config_name}"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    _COMPOSED[id(cfg)] = (weakref.ref(cfg), overrides, choices)
    weakref.finalize(cfg, _COMPOSED.pop, id(cfg), None)
    return cfg


# id(config) -> (weak reference, its overrides, group choices): for train()'s .hydra/ files
_COMPOSED: dict[int, tuple[weakref.ref, list[str], dict]] = {}


def _composed(cfg: DictConfig) -> tuple[list[str], dict]:
    """The overrides and group choices compose() made `cfg` with (none for a config made another way)."""
    entry = _COMPOSED.get(id(cfg))
    return (list(entry[1]), dict(entry[2])) if entry is not None and entry[0]() is cfg else ([], {})


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Train in this process; returns the metrics dict (also written to <run_dir>/metrics.json).

    `run_dir` defaults to a new outputs/<date>/<time>-<id>, as on the command line. A refused start (a bad value,
    a finished or locked run) removes the dir again when this call made it."""
    from hydra.core.hydra_config import HydraConfig

    from cnnlab.commands import train as train_command
    from cnnlab.engine import outputs
    from cnnlab.errors import CnnlabError

    made = run_dir is None or not Path(run_dir).exists()
    run_dir = Path(run_dir) if run_dir is not None else outputs.new_dir("outputs")
    hydra_dir = run_dir / ".hydra"
    if not (hydra_dir / "config.yaml").is_file():  # a fresh run dir: what `cnnlab train` would have written
        hydra_dir.mkdir(parents=True, exist_ok=True)
        overrides, choices = _composed(cfg)
        OmegaConf.save(cfg, hydra_dir / "config.yaml")
        OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")
        if choices:
            OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), hydra_dir / "hydra.yaml")
    # A Hydra job config left over from an earlier in-process run (or the caller's own @hydra.main app) is not
    # this run's: hide it, so that the overrides and choices come from the files above.
    hydra = HydraConfig.instance()
    outer, hydra.cfg = hydra.cfg, None
    try:
        return train_command.run(cfg, run_dir=run_dir)
    except CnnlabError as ex:
        if made and not (run_dir / "checkpoints").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise CnnlabError(str(ex).replace("hydra.run.dir", "run_dir")) from None  # the API's name for it
    finally:
        hydra.cfg = outer


def load(checkpoint: str | Path, device: str = "cpu"):
    """(model, data spec) from a checkpoint: the model in eval mode with the weights that were validated (EMA
    when kept). The stored config is read as data; only cnnlab's own model classes are built."""
    from cnnlab.commands.trained import load_trained
    from cnnlab.engine.device import resolve_device

    trained = load_trained(checkpoint, resolve_device(device))
    return trained.model, trained.spec
