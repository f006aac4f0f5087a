"""Training features end to end through the CLI: accumulation, clipping, EMA, stopping rules, time limit,
debug presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import cli, read_json

QUIET = ["trainer.progress=plain", "trainer.image_grid=0"]
SYNTH = ["data=synthetic", "data.num_samples=320", "data.image_size=32", "data.channels=1", *QUIET]
SGD = ["optimizer=sgd", "optimizer.momentum=0", "optimizer.weight_decay=0", "scheduler=none"]


def train(tmp_path: Path, name: str, *args: str) -> Path:
    run_dir = tmp_path / name
    result = cli("train", f"hydra.run.dir={run_dir}", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return run_dir


def weights(run_dir: Path, name: str = "last.pt", key: str = "model") -> dict:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)[key]


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.slow
def test_accumulation_equals_the_large_batch(tmp_path):
    big = train(tmp_path, "big", *SYNTH, *SGD, "data.batch_size=32", "trainer.epochs=1")
    small = train(tmp_path, "small", *SYNTH, *SGD, "data.batch_size=16", "trainer.accumulate=2", "trainer.epochs=1")
    assert read_json(big / "metrics.json")["steps"] == read_json(small / "metrics.json")["steps"] == 9
    assert max_diff(weights(big), weights(small)) < 1e-5


@pytest.mark.slow
def test_gradient_clipping_bounds_each_step(tmp_path):
    args = [*SYNTH, *SGD, "optimizer.lr=0.1", "trainer.grad_clip=1e-6"]
    one = train(tmp_path, "one", *args, "trainer.max_steps=1")
    two = train(tmp_path, "two", *args, "trainer.max_steps=2")
    step = torch.cat([(weights(two)[k] - weights(one)[k]).flatten() for k in weights(one)]).norm()
    assert 0 < float(step) <= 0.1 * 1e-6 * 1.01  # lr x clipped gradient norm


@pytest.mark.slow
def test_ema_weights_are_validated_saved_and_evaluated(tmp_path):
    run = train(tmp_path, "ema", "trainer.epochs=3", "trainer.ema_decay=0.9", *QUIET)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["ema"] is not None and best["ema_updates"] > 0
    assert max_diff(best["ema"], best["model"]) > 0
    metrics = read_json(run / "metrics.json")
    assert metrics["ema"] is True and metrics["best_val_acc"] > 80
    out = tmp_path / "eval.json"
    result = cli("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", f"output={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert abs(read_json(out)["top1"] - metrics["test_acc"]) < 1e-6
    result = cli("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", "split=train", f"output={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_json(out)["count"] == 1294  # every digits training image left after the 10% hold-out: none dropped


@pytest.mark.slow
def test_early_stopping_and_max_steps(tmp_path):
    stuck = train(
        tmp_path, "stuck", *SYNTH, "optimizer.lr=1e-12", "trainer.epochs=20", "trainer.early_stopping_patience=2"
    )
    metrics = read_json(stuck / "metrics.json")
    assert metrics["epochs"] == 3 and metrics["stop_reason"] == "early_stopping"
    short = train(
        tmp_path,
        "short",
        *SYNTH,
        "data.batch_size=32",
        "trainer.epochs=20",
        "trainer.max_steps=12",
        "trainer.deterministic=true",
    )
    metrics = read_json(short / "metrics.json")
    assert metrics["steps"] == 12 and metrics["epochs"] == 2 and metrics["stop_reason"] == "max_steps"


@pytest.mark.slow
def test_time_limit_stops_mid_epoch_and_resume_matches_an_uninterrupted_run(tmp_path):
    args = ["data.batch_size=8", "trainer.epochs=3", "trainer.log_every=1000", *QUIET]
    whole = train(tmp_path, "whole", *args)
    cut = train(tmp_path, "cut", *args, "trainer.time_limit=0.25")
    stopped = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)
    assert stopped["fit"]["finished"] is False and stopped["fit"]["batch"] > 0  # stopped inside an epoch
    train(tmp_path, "cut", *args, "trainer.resume=auto")
    assert max_diff(weights(whole), weights(cut)) == 0
    assert read_json(cut / "metrics.json")["finished"] is True
    history = [h["train_loss"] for h in read_json(cut / "metrics.json")["history"]]
    assert history == [h["train_loss"] for h in read_json(whole / "metrics.json")["history"]]


@pytest.mark.slow
def test_debug_presets(tmp_path):
    fast = read_json(train(tmp_path, "fast", "debug=fast", "data.batch_size=16") / "metrics.json")
    assert fast["epochs"] == 1 and fast["steps"] == 5
    overfit = read_json(
        train(tmp_path, "overfit", "debug=overfit", "trainer.epochs=40", "optimizer.lr=3e-3") / "metrics.json"
    )
    assert overfit["final_train_acc"] == 100.0 and overfit["best_val_acc"] == 100.0
    profiled = train(tmp_path, "profile", "debug=profile")
    assert list((profiled / "tb" / "profile").glob("*.pt.trace.json*"))
