"""The code paths a GPU run takes, exercised on the CPU: bf16 autocast, channels_last, torch.compile
(inductor, slow), trainer.monitor=val_loss, and resuming under another precision (a clear error)."""

from __future__ import annotations

import json

import pytest
import torch

import cnnlab
from cnnlab.commands.train import run
from cnnlab.engine.device import autocast_for, resolve_precision
from cnnlab.errors import CnnlabError

CPU = torch.device("cpu")


def config(*overrides: str):
    return cnnlab.compose(
        [
            "model=lenet5",
            "data=synthetic",
            "data.num_samples=512",
            "data.batch_size=64",
            "optimizer=adam",
            "optimizer.lr=0.003",
            "scheduler=none",
            "trainer.epochs=3",
            "trainer.device=cpu",
            "trainer.progress=none",
            "trainer.image_grid=0",
            *overrides,
        ]
    )


def falls(metrics: dict) -> None:
    losses = [h["train_loss"] for h in metrics["history"]]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0] - 0.1, losses


def test_bf16_autocast_runs_on_cpu():
    assert resolve_precision("bf16", CPU) == torch.bfloat16
    assert resolve_precision("auto", CPU) is None  # auto: fp32 off CUDA
    with pytest.raises(CnnlabError, match="fp16 needs CUDA"):
        resolve_precision("fp16", CPU)
    with autocast_for(CPU, torch.bfloat16)():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16  # the autocast really is on


@pytest.mark.parametrize(
    "features, expected",
    [
        ({}, None),
        ({"_is_avx512_bf16_supported": True}, torch.bfloat16),
        ({"_is_amx_tile_supported": True}, torch.bfloat16),
    ],
)
def test_bf16_native_is_bf16_only_where_the_cpu_has_bf16_units(monkeypatch, features, expected):
    """bf16_native: bf16 on a CPU with AVX512-BF16 or AMX (a Zen 4 step ran ~1.8x faster), fp32 where bf16 would be
    emulated; a torch without the private checks counts as no."""
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, check, raising=False)  # absent: as on a torch without them
    for check, value in features.items():
        monkeypatch.setattr(torch.cpu, check, lambda value=value: value, raising=False)
    assert resolve_precision("bf16_native", CPU) == expected
    assert resolve_precision("bf16_native", torch.device("mps")) is None


def test_metrics_record_what_bf16_native_resolved_to(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    on = run(config("trainer.precision=bf16_native", "trainer.epochs=1"), run_dir=tmp_path / "on")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    off = run(config("trainer.precision=bf16_native", "trainer.epochs=1"), run_dir=tmp_path / "off")
    assert on["precision"] == "bf16" and off["precision"] == "fp32"
    assert on["test_loss"] != off["test_loss"]  # the autocast really ran in one and not the other
    assert json.loads((tmp_path / "on" / "metrics.json").read_text())["precision"] == "bf16"


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.precision=bf16"],
        ["trainer.channels_last=true"],
        ["trainer.precision=bf16", "trainer.channels_last=true"],
    ],
)
def test_gpu_paths_train_on_cpu(tmp_path, overrides):
    falls(run(config(*overrides), run_dir=tmp_path / "run"))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.bool, torch.int64) for v in state["model"].values())  # fp32 master


@pytest.mark.slow
def test_compile_trains_on_cpu(tmp_path):
    falls(run(config("trainer.compile=true", "trainer.epochs=2", "trainer.precision=bf16"), run_dir=tmp_path / "run"))


def test_monitor_val_loss_picks_the_lowest_val_loss(tmp_path):
    metrics = run(config("trainer.monitor=val_loss", "trainer.epochs=4", "optimizer.lr=0.02"), run_dir=tmp_path / "r")
    history = metrics["history"]
    best = min(history, key=lambda h: h["val_loss"])
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["best_val_loss"] == pytest.approx(best["val_loss"])
    stored = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert stored["best_epoch"] == best["epoch"]


def test_resume_under_another_precision_is_a_clear_error(tmp_path):
    run(config("trainer.epochs=1"), run_dir=tmp_path / "fp32")
    last = tmp_path / "fp32" / "checkpoints" / "last.pt"
    with pytest.raises(CnnlabError, match="precision"):
        run(config("trainer.epochs=2", "trainer.precision=bf16", f"trainer.resume={last}"), run_dir=tmp_path / "bf16")
