"""`cnnlab eval checkpoint=PATH`: rebuild data and model from the config stored in the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from cnnlab import data as data_lib
from cnnlab import models
from cnnlab.config import validate_eval
from cnnlab.engine import checkpoint
from cnnlab.engine.device import autocast_for, resolve_device, resolve_precision
from cnnlab.engine.metrics import evaluate
from cnnlab.engine.progress import make_console, say
from cnnlab.errors import CnnlabError


def run(cfg: DictConfig) -> dict:
    validate_eval(cfg)
    state = checkpoint.load(cfg.checkpoint)
    if not isinstance(state.get("config"), dict) or "data" not in state["config"]:
        raise CnnlabError(f"{cfg.checkpoint} holds no run config: it was not written by `cnnlab train`")
    run_cfg = OmegaConf.create(state["config"])
    if cfg.data_root:
        run_cfg.data.root = cfg.data_root
    if cfg.batch_size:
        run_cfg.data.eval_batch_size = cfg.batch_size
    device = resolve_device(cfg.device)
    spec_saved = run_cfg.data_spec
    stats = (tuple(spec_saved.mean), tuple(spec_saved.std))
    data = data_lib.build(run_cfg.data, run_cfg.augment, device, seed=run_cfg.seed, stats=stats)
    model = models.build(run_cfg.model, data.spec)
    try:
        model.load_state_dict(state.get("ema") or state["model"])  # EMA weights are the ones that were validated
    except RuntimeError as ex:
        raise CnnlabError(f"{cfg.checkpoint}: weights do not fit the model in its config "
                          f"({str(ex).strip().splitlines()[0]})") from None
    model.to(device)
    loader = data.train.evaluation_mode() if cfg.split == "train" else {"test": data.test, "val": data.val}[cfg.split]
    result = evaluate(model, loader, data.spec.num_classes, autocast_for(device, resolve_precision("auto", device)))
    classes = data.spec.classes
    report = {
        "checkpoint": str(Path(cfg.checkpoint).resolve()), "split": cfg.split, "epoch": state.get("epoch"),
        "loss": result["loss"], "top1": result["top1"], "top5": result["top5"], "count": result["count"],
        "per_class": {(classes[i] if i < len(classes) else str(i)): acc for i, acc in enumerate(result["per_class"])},
    }
    out = Path(cfg.output) if cfg.output else Path(HydraConfig.get().runtime.output_dir) / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))

    console = make_console()
    table = Table(title=f"{cfg.split} split: {result['count']:,} images")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("accuracy", justify="right")
    for i, acc in enumerate(result["per_class"]):
        table.add_row(classes[i] if i < len(classes) else str(i), f"{result['per_class_count'][i]:,}", f"{acc:.2f}%")
    console.print(table)
    say(console, f"loss {result['loss']:.4f}  top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  -> {out}")
    return report
