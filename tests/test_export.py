"""`cnnlab export`: ONNX (run by onnxruntime, dynamic batch) and TorchScript files that match PyTorch on real
images, the parity check failing cleanly, and bad inputs one error line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trained_run import compose, loaders_of, one_error_line

from cnnlab.commands import export
from cnnlab.commands.trained import load_trained
from cnnlab.errors import CnnlabError


@pytest.fixture(scope="module")
def trained(tiny_run):
    trained = load_trained(tiny_run / "checkpoints" / "best.pt", torch.device("cpu"))
    data = loaders_of(trained)
    x, _ = next(iter(data.val))  # other real images than the test batch the parity check uses
    return trained, x[:5]


def test_onnx_runs_in_onnxruntime_with_any_batch(trained, run_main, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, x = trained
    code, err = run_main("export", f"checkpoint={model.path}", "format=onnx", f"output={tmp_path / 'm.onnx'}")
    assert code == 0, err[-2000:]
    assert list(tmp_path.iterdir()) == [tmp_path / "m.onnx"]  # no temp file, nothing else
    out = " ".join(run_main.stdout.split())
    diff = float(out.split("max abs difference ")[1].split()[0])
    assert diff < 1e-4 and "top-1 agreement 100.0%" in out
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])  # 5 images: the batch is dynamic
    with torch.no_grad():
        assert (got - model.model(x)).abs().max() < 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_loads_without_cnnlab(trained, tmp_path):
    model, x = trained
    report = export.run(compose("export", f"checkpoint={model.path}", "format=torchscript"))
    path = Path(report["output"])
    assert path == model.path.with_name("best.torchscript.pt") and report["images"] == 16
    assert report["max_abs_diff"] < 1e-5
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.model(x), atol=1e-5)


def test_parity_failure_leaves_nothing(trained, tmp_path, monkeypatch):
    model, _ = trained
    real = export.run_torchscript
    monkeypatch.setattr(export, "run_torchscript", lambda path, x: real(path, x) + 1e-3)  # a runtime that drifts
    out = tmp_path / "m.pt"
    with pytest.raises(CnnlabError, match=r"torchscript export differs from PyTorch by 0\.001 .* > tolerance=0\.0001"):
        export.run(compose("export", f"checkpoint={model.path}", "format=torchscript", f"output={out}"))
    assert list(tmp_path.iterdir()) == []


def test_parity_on_image_files(trained, tmp_path):
    from PIL import Image

    model, _ = trained
    Image.new("L", (20, 20), 128).save(tmp_path / "grey.png")
    report = export.run(
        compose(
            "export",
            f"checkpoint={model.path}",
            "format=torchscript",
            f"inputs={tmp_path / 'grey.png'}",
            f"output={tmp_path / 'm.pt'}",
        )
    )
    assert report["images"] == 1 and report["max_abs_diff"] < 1e-5


def test_bad_inputs(trained, tmp_path, run_main):
    model, _ = trained
    with pytest.raises(CnnlabError, match="format must be one of onnx, torchscript; got 'tflite'"):
        export.run(compose("export", f"checkpoint={model.path}", "format=tflite"))
    with pytest.raises(CnnlabError, match="would write into the training run|is a checkpoint"):
        export.run(compose("export", f"checkpoint={model.path}", f"output={model.path}"))
    with pytest.raises(CnnlabError, match="tolerance must be >= 0"):
        export.run(compose("export", f"checkpoint={model.path}", "tolerance=-1"))
    line = one_error_line(run_main("export", f"checkpoint={tmp_path / 'nope.pt'}"))
    assert "does not exist" in line
