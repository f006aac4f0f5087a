"""`cnnlab summary model=... data=...`: the model's layers, parameters, MACs and receptive field for one image.

The data config only supplies the image shape and class count (channels, image_size, num_classes), so no
dataset is loaded.
"""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from cnnlab import models
from cnnlab.analysis.summary import summarize
from cnnlab.checks import choice, number
from cnnlab.data import DataSpec
from cnnlab.engine.progress import make_console, say
from cnnlab.errors import CnnlabError


def spec_of(data_cfg: DictConfig) -> DataSpec:
    facts = {}
    for key in ("channels", "image_size", "num_classes"):
        value = OmegaConf.select(data_cfg, key)
        if value is None:
            raise CnnlabError(
                f"data.{key} is not known without loading data={data_cfg.get('name')}: add data.{key}=..."
            )
        number(data_cfg, key, low=1, integer=True)
        facts[key] = value
    return DataSpec(**facts)


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def _shape(shape: list[int]) -> str:
    return "x".join(map(str, shape))


def run(cfg: DictConfig) -> dict:
    choice(cfg, "format", ("table", "json"))
    spec = spec_of(cfg.data)
    model = models.build(cfg.model, spec)
    result = summarize(model, (spec.channels, spec.image_size, spec.image_size))
    name = cfg.model.get("name") or cfg.model._target_.rsplit(".", 1)[-1]
    result = {"model": name, **result}
    if cfg.format == "json":
        print(json.dumps(result))
        return result

    console = make_console()
    table = Table(title=f"{name}: one {_shape(result['input'])} image, {spec.num_classes} classes")
    for column, justify in (
        ("layer", "left"),
        ("type", "left"),
        ("output", "right"),
        ("params", "right"),
        ("MACs", "right"),
        ("RF", "right"),
        ("jump", "right"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # full layer names, wrapped when narrow
    for row in result["layers"]:
        rf, jump = (f"{row[k]:g}" if row.get(k) is not None else "" for k in ("rf", "jump"))
        table.add_row(row["name"], row["type"], _shape(row["shape"]), f"{row['params']:,}", _si(row["macs"]), rf, jump)
    console.print(table)
    say(
        console,
        f"parameters {result['params']:,} (trainable {result['trainable_params']:,})  "
        f"MACs {_si(result['macs'])}  activations {result['activation_bytes'] / 2**20:.2f} MiB per image",
    )
    rf = result["receptive_field"]
    if rf:
        extent = "global (attention after the patch grid)" if rf["global"] else f"{rf['size']:g} px"
        say(console, f"final feature map {_shape(rf['map'])}: receptive field {extent}, jump {rf['jump']:g} px")
    collapse = result["collapse"]
    if collapse:
        where = f"{collapse['layer']} ({collapse['type']})"
        detail = (
            f"input {_shape(collapse['input'])}: {collapse['error']}"
            if "error" in collapse
            else f"output {_shape(collapse['output'])}"
        )
        console.print(
            f"[yellow]warning: the spatial size collapses below 1 at {where}, {detail}; a "
            f"{spec.image_size}x{spec.image_size} input is too small for this model[/yellow]"
        )
    return result
