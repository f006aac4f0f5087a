"""`cnnlab predict checkpoint=PATH inputs=FILE|DIR|GLOB`: classify image files with a trained model, from its
checkpoint or from an ONNX export (checkpoint=model.onnx: the preprocessing stored in it, commands/exported.py).

Each file is preprocessed with the checkpoint's own data spec (size, channels, normalisation) and the files
run in batches. A file that is not an image gets one line and an `error` entry; the others go on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.table import Table
from rich.text import Text

from cnnlab.analysis.grid import class_name
from cnnlab.commands.exported import is_onnx, load_onnx, refuse_torchscript
from cnnlab.commands.trained import find_files, load_image, load_trained, normalise
from cnnlab.engine import outputs
from cnnlab.engine.device import resolve_device
from cnnlab.engine.progress import make_console, say
from cnnlab.errors import CnnlabError
from cnnlab.schema.predict import validate
from cnnlab.untrusted import regular_file


@torch.no_grad()
def predict_files(trained, files: list[Path], topk: int, batch_size: int, device: torch.device, warn=print) -> list:
    """One entry per file: {"file", "class", "index", "prob", "topk": [{"class", "index", "prob"}]} or
    {"file", "error"} for a file that could not be read as an image."""
    entries: dict[Path, dict] = {}
    k = min(topk, trained.spec.num_classes)
    for start in range(0, len(files), batch_size):
        images, readable = [], []
        for path in files[start : start + batch_size]:
            try:
                images.append(load_image(path, trained.spec))
                readable.append(path)
            except CnnlabError as ex:
                entries[path] = {"file": str(path), "error": str(ex)}
                warn(f"skipped: {ex}")
        if not images:
            continue
        x = normalise(torch.stack(images).to(device), trained.spec)
        probs = trained.model(x).float().softmax(1)
        top = probs.topk(k, dim=1)
        for path, values, indices in zip(readable, top.values.tolist(), top.indices.tolist()):
            ranked = [
                {"class": class_name(trained.spec.classes, i), "index": i, "prob": p} for p, i in zip(values, indices)
            ]
            entries[path] = {"file": str(path), **ranked[0], "topk": ranked}
    return [entries[path] for path in files]


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """`run_dir` defaults to Hydra's output dir (pass one to call this without a live HydraConfig)."""
    validate(cfg)
    out = outputs.check(  # checked before anything is read or written
        cfg.output or Path(run_dir or HydraConfig.get().runtime.output_dir) / "predictions.json"
    )
    files = find_files(cfg.inputs)
    device = resolve_device(cfg.device)
    regular_file(cfg.checkpoint, "checkpoint")  # before any read: a FIFO would block the first open forever
    if is_onnx(cfg.checkpoint):
        trained = load_onnx(cfg.checkpoint)
    else:
        refuse_torchscript(Path(cfg.checkpoint).expanduser())
        trained = load_trained(cfg.checkpoint, device)
    console = make_console()
    entries = predict_files(
        trained, files, cfg.topk, cfg.batch_size, device, warn=lambda line: console.print(Text(line, style="yellow"))
    )
    done = [e for e in entries if "error" not in e]
    if not done:
        raise CnnlabError(
            f"none of the {len(files)} input file(s) is an image this model can read (first: {entries[0]['error']})"
        )
    report = {
        "checkpoint": str(trained.path.resolve()),
        "model": trained.name,
        "input_size": [trained.spec.channels, trained.spec.image_size, trained.spec.image_size],
        "topk": cfg.topk,
        "count": len(done),
        "skipped": len(entries) - len(done),
        "predictions": entries,
    }
    outputs.make_dir(out.parent)
    out.write_text(json.dumps(report, indent=2))

    # the files relative to the folder they share, folded rather than cut: a narrow console shows every name
    common = Path(os.path.commonpath([str(Path(e["file"]).parent) for e in entries]))
    table = Table(title=f"{trained.name} ({trained.path.name}): {len(done)} image(s) in {common}")
    names = [os.path.relpath(e["file"], common) for e in entries]
    table.add_column("file", overflow="fold", min_width=min(40, max(len(n) for n in names)))
    table.add_column("prediction")
    table.add_column("prob", justify="right")
    table.add_column(f"top-{min(cfg.topk, trained.spec.num_classes)}")
    for e, name in zip(entries, names):
        if "error" in e:
            table.add_row(Text(name), Text("not an image", style="red"), "", "")
        else:
            table.add_row(
                Text(name),
                Text(e["class"]),
                f"{e['prob']:.3f}",
                Text(", ".join(f"{r['class']} {r['prob']:.2f}" for r in e["topk"])),
            )
    console.print(table)
    say(
        console,
        f"predictions for {len(done)} file(s) -> {out}"
        + (f" ({report['skipped']} skipped: not images)" if report["skipped"] else ""),
    )
    return report
