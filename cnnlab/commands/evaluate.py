"""`cnnlab eval checkpoint=PATH`: rebuild data and model from the config stored in the checkpoint and report
on one split: loss, top-1/top-5, per-class precision/recall/F1, the confusion matrix, the most-confused
pairs and the most confident mistakes. Everything lands beside the evaluated run, in <run>/eval/<split>/: PNGs and
eval.json, no TensorBoard events (TensorBoard lists training runs only)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.table import Table

from cnnlab import data as data_lib
from cnnlab.analysis.confusion import class_scores, confusion_figure, most_confused
from cnnlab.analysis.figures import save
from cnnlab.analysis.grid import class_name, denormalise, prediction_figure
from cnnlab.analysis.tta import with_tta
from cnnlab.commands.trained import Trained, load_trained
from cnnlab.engine import outputs
from cnnlab.engine.device import autocast_for, precision_name, resolve_device, resolve_precision
from cnnlab.engine.metrics import evaluate
from cnnlab.engine.progress import make_console, say
from cnnlab.errors import CnnlabError
from cnnlab.schema.common import PRECISIONS
from cnnlab.schema.evaluate import validate


class ConfidentMistakes:
    """An `on_batch` hook for evaluate(): keeps the `limit` misclassified images predicted most confidently."""

    def __init__(self, limit: int):
        self.limit = limit
        self.x = self.y = self.pred = self.prob = None
        self.wrong = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        prob, pred = logits.softmax(1).max(1)
        wrong = pred != y
        self.wrong += int(wrong.sum())
        if not self.limit or not wrong.any():
            return
        parts = [t[wrong] for t in (x, y, pred, prob)]
        if self.x is not None:
            parts = [torch.cat([old, new]) for old, new in zip((self.x, self.y, self.pred, self.prob), parts)]
        keep = parts[3].argsort(descending=True, stable=True)[: self.limit]
        self.x, self.y, self.pred, self.prob = (t[keep] for t in parts)


def report_dir(cfg: DictConfig, trained: Trained) -> Path:
    """output_dir, else beside `output`, else <run>/eval/<split>[-<checkpoint>][-tta_<level>]."""
    if cfg.output_dir:
        return outputs.check(cfg.output_dir, "output_dir", directory=True)
    if cfg.output:
        return outputs.check(Path(cfg.output).expanduser().parent, "output", directory=True)
    name = cfg.split + ("" if trained.path.stem == "best" else f"-{trained.path.stem}")
    return outputs.check(
        trained.run_dir / "eval" / (name + (f"-tta_{cfg.tta}" if cfg.tta != "none" else "")), directory=True
    )


def eval_precision(cfg: DictConfig, run_cfg: DictConfig, device: torch.device) -> str:
    """`precision=`, else the precision the run trained and validated in (fp16 is CUDA-only: fp32 elsewhere)."""
    if cfg.precision is not None:
        if cfg.precision == "fp16" and device.type != "cuda":
            raise CnnlabError(f"precision=fp16 needs CUDA (device is {device}); use bf16 or fp32")
        return cfg.precision
    stored = OmegaConf.select(run_cfg, "trainer.precision", default="auto")
    if stored not in PRECISIONS:
        raise CnnlabError(f"{cfg.checkpoint} stores trainer.precision={stored!r}; set precision={'|'.join(PRECISIONS)}")
    return "fp32" if stored == "fp16" and device.type != "cuda" else stored


def run(cfg: DictConfig) -> dict:
    validate(cfg)
    if cfg.output:  # checked before anything is read or written
        outputs.check(cfg.output)
    if cfg.output_dir:
        outputs.check(cfg.output_dir, "output_dir", directory=True)
    device = resolve_device(cfg.device)
    trained = load_trained(cfg.checkpoint, device)
    run_cfg, spec = trained.config, trained.spec
    with open_dict(run_cfg):
        if cfg.data_root:
            run_cfg.data.root = cfg.data_root
        if cfg.batch_size:
            run_cfg.data.eval_batch_size = cfg.batch_size
    data = data_lib.build(run_cfg.data, None, device, seed=run_cfg.seed, stats=(spec.mean, spec.std))  # no augment
    if data.spec.num_classes != spec.num_classes:
        raise CnnlabError(
            f"{trained.path} was trained on {spec.num_classes} classes but its data now has {data.spec.num_classes}"
        )
    out_dir = report_dir(cfg, trained)

    loader = data.train.evaluation_mode() if cfg.split == "train" else {"test": data.test, "val": data.val}[cfg.split]
    model = with_tta(trained.model, cfg.tta)
    mistakes = ConfidentMistakes(cfg.grid)
    precision = eval_precision(cfg, run_cfg, device)
    amp_dtype = resolve_precision(precision, device)
    result = evaluate(model, loader, spec.num_classes, autocast_for(device, amp_dtype), on_batch=mistakes)
    cm, classes = result["confusion"], spec.classes
    scores = class_scores(cm)
    pairs = most_confused(cm, classes, cfg.pairs)
    title = f"{trained.name} · {trained.path.name} (epoch {trained.state.get('epoch')}) · {cfg.split} split" + (
        f" · {cfg.tta} TTA" if cfg.tta != "none" else ""
    )
    report = {
        "checkpoint": str(trained.path.resolve()),
        "model": trained.name,
        "model_target": run_cfg.model._target_,
        "params": trained.params,
        "split": cfg.split,
        "epoch": trained.state.get("epoch"),
        "tta": cfg.tta,
        "precision": precision,
        "autocast": precision_name(amp_dtype),  # what `precision` resolved to here
        "loss": result["loss"],
        "top1": result["top1"],
        "top5": result["top5"],
        "count": result["count"],
        "macro": {k: 100 * v for k, v in scores["macro"].items()},
        "per_class": {
            class_name(classes, i): {
                "images": scores["support"][i],
                **{k: 100 * scores[k][i] for k in ("precision", "recall", "f1")},
            }
            for i in range(spec.num_classes)
        },
        "most_confused": pairs,
        "confusion_matrix": cm.tolist(),
        "files": {},
    }
    pictures = {"confusion_matrix": confusion_figure(cm, classes, title)}
    if mistakes.x is not None:
        images = denormalise(mistakes.x, spec.mean, spec.std)
        pictures["misclassified"] = prediction_figure(
            images,
            mistakes.y.tolist(),
            mistakes.pred.tolist(),
            classes,
            mistakes.prob.tolist(),
            f"{title}: the {len(images)} most confident of {mistakes.wrong:,} mistakes",
        )
    outputs.make_dir(out_dir, "output_dir")
    for name, fig in pictures.items():
        report["files"][name] = str(save(fig, out_dir / f"{name}.png"))
    out = Path(cfg.output).expanduser() if cfg.output else out_dir / "eval.json"
    out.write_text(json.dumps(report, indent=2))
    _print(report, title, out_dir, out)
    return report


def _print(report: dict, title: str, out_dir: Path, out: Path) -> None:
    console = make_console()
    table = Table(title=f"{title}: {report['count']:,} images ({report['params']:,} parameters)")
    for column, justify in (
        ("class", "left"),
        ("images", "right"),
        ("precision", "right"),
        ("recall", "right"),
        ("F1", "right"),
    ):
        table.add_column(column, justify=justify)
    for name, row in report["per_class"].items():
        table.add_row(
            name, f"{row['images']:,}", f"{row['precision']:.2f}%", f"{row['recall']:.2f}%", f"{row['f1']:.2f}%"
        )
    macro = report["macro"]
    table.add_section()
    table.add_row("macro average", "", f"{macro['precision']:.2f}%", f"{macro['recall']:.2f}%", f"{macro['f1']:.2f}%")
    console.print(table)
    if report["most_confused"]:
        pairs = Table(title="most confused (true -> predicted)")
        for column, justify in (
            ("true", "left"),
            ("predicted", "left"),
            ("images", "right"),
            ("% of true class", "right"),
        ):
            pairs.add_column(column, justify=justify)
        for p in report["most_confused"]:
            pairs.add_row(p["true"], p["pred"], f"{p['count']:,}", f"{p['share']:.1f}%")
        console.print(pairs)
    say(console, f"checkpoint {report['checkpoint']}")
    say(
        console,
        f"loss {report['loss']:.4f}  top-1 {report['top1']:.2f}%  top-5 {report['top5']:.2f}%  "
        f"macro F1 {macro['f1']:.2f}%",
    )
    say(console, f"report: {out}; pictures in {out_dir}")
