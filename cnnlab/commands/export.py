"""`cnnlab export checkpoint=PATH format=onnx|torchscript [output=F]`: a deployable model, parity-checked.

The exported file is run on real images (a batch of the checkpoint's test split, or `inputs=` files) and its
logits compared with PyTorch's: the max abs difference is printed, and beyond `tolerance` the export fails
and nothing is left behind. ONNX goes through torch.onnx (needs the `cnnlab[export]` extra: onnx,
onnxscript, and onnxruntime for the check); the batch dimension stays dynamic. Both formats carry the model's
preprocessing (class names, mean/std, input size and channels; commands/exported.py): ONNX as metadata_props,
TorchScript as the extra file preprocessing.json.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from cnnlab import data as data_lib
from cnnlab.commands.exported import EXTRA_FILE, add_onnx_metadata, preprocessing
from cnnlab.commands.trained import Trained, find_files, load_image, load_trained, normalise
from cnnlab.engine import outputs
from cnnlab.engine.progress import make_console, say
from cnnlab.errors import CnnlabError
from cnnlab.schema.export import validate

SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise CnnlabError(f"format=onnx needs {module}: pip install 'cnnlab[export]'") from None


def parity_batch(cfg: DictConfig, trained: Trained) -> torch.Tensor:
    """Real, normalised images on the CPU: `inputs` files, else the first batch of the stored test split."""
    if cfg.inputs:
        images = []
        for path in find_files(cfg.inputs)[: cfg.batch_size]:
            images.append(load_image(path, trained.spec))
        return normalise(torch.stack(images), trained.spec)
    run_cfg = trained.config
    with open_dict(run_cfg):
        run_cfg.data.eval_batch_size = cfg.batch_size
        if cfg.data_root:
            run_cfg.data.root = cfg.data_root
    try:
        data = data_lib.build(
            run_cfg.data,
            run_cfg.augment,
            torch.device("cpu"),
            seed=run_cfg.seed,
            stats=(trained.spec.mean, trained.spec.std),
        )
    except CnnlabError as ex:
        raise CnnlabError(
            f"{ex} (the parity check needs real images: give inputs=FILE|DIR|GLOB or data_root=DIR)"
        ) from None
    x, _ = next(iter(data.test))
    return x


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int | None) -> None:
    _need("onnxscript")
    _need("onnx")
    batch = torch.export.Dim("batch", min=1)
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            verbose=False,
            external_data=False,
        )  # one self-contained file (weights inside; fine below 2 GB)
    except torch.onnx.OnnxExporterError as ex:  # an op the exporter cannot translate: say which, in one line
        first = str(ex).strip().splitlines()[0][:300]
        raise CnnlabError(f"torch.onnx cannot export {type(model).__name__}: {first}; try format=torchscript") from None


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    ort = _need("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    with warnings.catch_warnings():  # torch.jit says it is deprecated; it is still what TorchScript users load
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        torch.jit.trace(model, example).save(str(path), _extra_files={EXTRA_FILE: json.dumps(meta)})


def run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        return torch.jit.load(str(path), map_location="cpu")(x)


def run(cfg: DictConfig) -> dict:
    validate(cfg)
    if cfg.output:  # checked before anything is read or written: never into a run's files, never a checkpoint
        outputs.check(cfg.output)
    trained = load_trained(cfg.checkpoint, torch.device("cpu"))  # export on the CPU, in fp32
    out = (
        Path(cfg.output).expanduser()
        if cfg.output
        else trained.path.with_name(trained.path.name.removesuffix(".pt") + SUFFIX[cfg.format])
    )
    if out.resolve() == trained.path.resolve():
        raise CnnlabError(f"output={out} is the checkpoint itself: choose another file")
    x = parity_batch(cfg, trained)
    model = trained.model
    meta = preprocessing(trained.spec, trained.name)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            expected = model(x).float()
            if cfg.format == "onnx":
                export_onnx(model, x[:2], tmp, cfg.opset)
                add_onnx_metadata(tmp, meta)
                got = run_onnx(tmp, x)
            else:
                export_torchscript(model, x[:2], tmp, meta)
                got = run_torchscript(tmp, x)
        diff = float((got.float() - expected).abs().max())
        agree = float((got.argmax(1) == expected.argmax(1)).float().mean()) * 100
        if diff > cfg.tolerance:
            raise CnnlabError(
                f"{cfg.format} export differs from PyTorch by {diff:.3g} (max abs over {len(x)} "
                f"images' logits) > tolerance={cfg.tolerance:g}; nothing written"
            )
        os.replace(tmp, out)
    except OSError as ex:
        raise CnnlabError(f"cannot write {out}: {ex.strerror or ex}") from None
    finally:
        tmp.unlink(missing_ok=True)
    console = make_console()
    size = trained.spec.image_size
    say(
        console,
        f"{trained.name} ({trained.path}) -> {out}: {cfg.format}, input images N x {trained.spec.channels} "
        f"x {size} x {size} (N dynamic), output logits N x {trained.spec.num_classes}; with its preprocessing "
        f"(classes, mean/std, input size) as {'metadata_props' if cfg.format == 'onnx' else EXTRA_FILE}",
    )
    say(
        console,
        f"parity on {len(x)} real images: max abs difference {diff:.3g} (tolerance {cfg.tolerance:g}), "
        f"top-1 agreement {agree:.1f}%",
    )
    return {"output": str(out), "format": cfg.format, "max_abs_diff": diff, "images": len(x), "agreement": agree}
