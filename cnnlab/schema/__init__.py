"""Each command's config schema and validation, one module per command (common.py: what they share). Light on
purpose: `register` runs on every `cnnlab` start, so nothing here imports torch, torchvision or a data module.
"""

from __future__ import annotations

import secrets

RUN_ID = secrets.token_hex(2)  # one per process: default run dirs end in it, so two runs never share one


def schemas() -> dict:
    """command -> its schema dataclass."""
    from cnnlab.schema import evaluate, export, features, predict, preview, train

    return {
        "train": train.TrainSchema,
        "eval": evaluate.EvalSchema,
        "predict": predict.PredictSchema,
        "features": features.FeaturesSchema,
        "export": export.ExportSchema,
        "preview": preview.PreviewSchema,
    }


def register() -> None:
    """Put the schemas into Hydra's ConfigStore (as <command>_schema) and the `${cnnlab.run_id:}` resolver into
    OmegaConf."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver(
        "cnnlab.run_id", lambda: RUN_ID, replace=True, use_cache=True
    )  # cached: launchers' jobs in other processes reuse it
    cs = ConfigStore.instance()
    for command, schema in schemas().items():
        cs.store(name=f"{command}_schema", node=schema)


def unknown_key_message(command: str, key: str) -> str | None:
    """Hydra's "Key 'epoch' not in 'TrainerConfig'" for `trainer.epoch=2` as one line with the nearest key of the
    command's schema (None where the schema does not close that part of the config)."""
    import dataclasses
    import typing

    from cnnlab.schema.common import unknown

    schema = schemas().get(command)
    *path, name = key.split(".")
    if command == "train" and len(path) == 1 and path[0] == "callbacks":
        return f"no callback {name} in this config (add one with +callbacks.{name}._target_=CLASS)"
    for part in path:
        if schema is None or not dataclasses.is_dataclass(schema):
            return None
        schema = typing.get_type_hints(schema).get(part)
    if schema is None or not dataclasses.is_dataclass(schema):
        return None
    known = [f.name for f in dataclasses.fields(schema)]
    return None if name in known else str(unknown(key, known, "not in the config schema"))
