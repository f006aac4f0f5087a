"""`cnnlab features checkpoint=PATH input=IMAGE [layers=[...]]`: what a trained network does with one image.

Writes PNGs and features.json into the command's own dir (outputs/features/<date>/<time>-<id>/; no TensorBoard
events, so that TensorBoard lists training runs only): a grid of feature maps per layer (default:
the output of every stage, input to output), the first convolution's filters, and Grad-CAM for the
predicted class overlaid on the input.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.table import Table
from rich.text import Text

from cnnlab.analysis.feature_maps import capture, feature_map_figure, filter_figure, first_conv, last_feature_map
from cnnlab.analysis.figures import save
from cnnlab.analysis.gradcam import grad_cam, overlay_figure
from cnnlab.analysis.grid import class_name
from cnnlab.commands.trained import load_image, load_trained, normalise
from cnnlab.engine import outputs as output_paths
from cnnlab.engine.device import resolve_device
from cnnlab.engine.progress import make_console, say
from cnnlab.errors import CnnlabError
from cnnlab.optim import stage_modules
from cnnlab.schema.features import validate


def chosen_layers(model, names) -> dict:
    """{name: module} for `layers` (module names as model.named_modules() gives them), default every stage."""
    modules = dict(model.named_modules())
    if not names:
        by_id = {id(m): n for n, m in modules.items()}
        return {by_id[id(m)]: m for m in stage_modules(model)}
    unknown = [n for n in names if n not in modules or n == ""]
    if unknown:
        known = [n for n in modules if n]
        listing = ", ".join(known[:40]) + (f", ... ({len(known)} in all)" if len(known) > 40 else "")
        raise CnnlabError(f"unknown layer {unknown[0]!r} in {type(model).__name__}; its layers: {listing}")
    return {n: modules[n] for n in names}


def _file_name(index: int, layer: str) -> str:
    return f"{index:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', layer)}.png"


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """`run_dir` defaults to Hydra's output dir (pass one to call this without a live HydraConfig)."""
    validate(cfg)
    run_dir = output_paths.check(run_dir or HydraConfig.get().runtime.output_dir, "hydra.run.dir", directory=True)
    device = resolve_device(cfg.device)
    trained = load_trained(cfg.checkpoint, device)
    model, spec = trained.model, trained.spec
    layers = chosen_layers(model, list(cfg.layers) if cfg.layers else None)
    path = Path(cfg.input).expanduser()
    if not path.is_file():
        raise CnnlabError(f"input {path} does not exist" if not path.exists() else f"input {path} is not a file")
    image = load_image(path, spec)
    x = normalise(image[None].to(device), spec)
    outputs, logits = capture(model, x, layers)
    probs = logits[0].float().softmax(0).cpu()
    pred = int(probs.argmax())
    pred_text = f"{class_name(spec.classes, pred)} (p={float(probs[pred]):.2f})"

    output_paths.make_dir(run_dir, "hydra.run.dir")
    report = {
        "checkpoint": str(trained.path.resolve()),
        "model": trained.name,
        "input": str(path),
        "prediction": {"class": class_name(spec.classes, pred), "index": pred, "prob": float(probs[pred])},
        "layers": [],
        "filters": None,
        "gradcam": None,
    }
    heading = f"{trained.name}, {path.name} -> {pred_text}"
    for i, (name, module) in enumerate(layers.items()):
        out = outputs.get(name)
        row = {"layer": name, "type": type(module).__name__, "shape": list(out.shape[1:]) if out is not None else None}
        if out is not None and out.dim() == 4:
            fig = feature_map_figure(out[0], f"{heading}\nlayer {name} ({type(module).__name__})", cfg.max_maps)
            row["file"] = str(save(fig, run_dir / "feature_maps" / _file_name(i, name)))
        report["layers"].append(row)
    if (conv := first_conv(model)) is not None:
        name, module = conv
        fig = filter_figure(module.weight, f"{trained.name}: filters of the first convolution, {name}")
        report["filters"] = {
            "layer": name,
            "shape": list(module.weight.shape),
            "file": str(save(fig, run_dir / "filters.png")),
        }
    # Grad-CAM at the deepest chosen layer with a map, by default at the network's last map (after its activation)
    maps = [(name, layers[name]) for name in layers if outputs.get(name) is not None and outputs[name].dim() == 4]
    target = last_feature_map(model, x) if not cfg.layers else maps[-1] if maps else None
    if target is not None:
        name, module = target
        cam = grad_cam(model, x, module, pred)
        h, w = cam["map"]
        fig = overlay_figure(image, cam["cam"], f"Grad-CAM for {pred_text} at {name} ({h}x{w} map) - {path.name}")
        report["gradcam"] = {
            "layer": name,
            "class": class_name(spec.classes, pred),
            "map": cam["map"],
            "file": str(save(fig, run_dir / "gradcam.png")),
        }
    (run_dir / "features.json").write_text(json.dumps(report, indent=2))
    _print(report, heading, run_dir)
    return report


def _print(report: dict, heading: str, run_dir: Path) -> None:
    console = make_console()
    table = Table(title=heading)
    for column in ("layer", "type", "output", "picture"):
        table.add_column(column)
    for row in report["layers"]:
        shape = "x".join(map(str, row["shape"])) if row["shape"] else "(not run)"
        picture = Path(row["file"]).name if "file" in row else "not a feature map"
        table.add_row(Text(row["layer"]), row["type"], shape, Text(picture))
    console.print(table)
    if report["gradcam"] is None:
        say(console, "no layer outputs a spatial feature map: no Grad-CAM")
    say(console, f"feature maps, filters.png and gradcam.png in {run_dir}")
