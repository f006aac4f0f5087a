"""The hyper-parameters a run shows in TensorBoard's HParams tab, with their types kept.

Shown: the model and data choices, the experiment (if any), a few keys every comparison needs (lr, weight
decay, batch size, epochs, seed) and every key or group the user overrode. Values come from the composed
config, so `optimizer.lr=0.01` is the float 0.01 in every run, whether overridden or a default, and
TensorBoard draws numeric axes. Constant groups (augment, debug, finetune ...) appear only when overridden.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnlab.experiments.runs import override_keys, plain

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
    return {k: _value(v) for k, v in params.items()}
