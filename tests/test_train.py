"""End-to-end training through the real CLI: the run directory, checkpoints, TensorBoard, eval, resume, sweeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import cli, read_json
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator as PluginEventAccumulator

FAST = ["trainer.image_grid=8"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Path:
    """`cnnlab train` with its defaults (lenet5 on digits), run once for the tests below."""
    cwd = tmp_path_factory.mktemp("default")
    result = cli("train", cwd=cwd)
    assert result.returncode == 0, result.stderr
    (run_dir,) = [p.parent for p in (cwd / "outputs").glob("*/*/metrics.json")]
    return run_dir


def test_default_run_reaches_95_percent(default_run):
    metrics = read_json(default_run / "metrics.json")
    assert metrics["best_val_acc"] >= 95.0
    assert metrics["test_acc"] >= 93.0
    for key in (
        "best_val_acc",
        "best_epoch",
        "test_acc",
        "test_loss",
        "final_train_loss",
        "final_train_acc",
        "epochs",
        "params",
        "seconds_per_epoch",
        "total_seconds",
    ):
        assert key in metrics, key
    assert metrics["params"] == 61_706  # LeNet-5 at 32x32
    assert metrics["epochs"] == 15 and 1 <= metrics["best_epoch"] <= 15
    assert metrics["val_is_test"] is False


def test_run_directory_layout(default_run):
    assert (default_run / ".hydra" / "config.yaml").is_file()
    assert (default_run / ".hydra" / "overrides.yaml").is_file()
    assert "epoch 15/15" in (default_run / "train.log").read_text()
    assert list((default_run / "tb").glob("events.out.tfevents.*"))
    for name in ("best.pt", "last.pt"):
        state = torch.load(default_run / "checkpoints" / name, weights_only=True)
        for key in ("format_version", "model", "optimizer", "scheduler", "epoch", "config"):
            assert key in state, (name, key)
        assert state["config"]["model"]["_target_"] == "cnnlab.models.lenet.LeNet5"
        assert isinstance(state["config"], dict)
    last = torch.load(default_run / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(default_run / "checkpoints" / "best.pt", weights_only=True)
    metrics = read_json(default_run / "metrics.json")
    assert last["epoch"] == 15  # epochs are numbered from 1 everywhere
    assert best["epoch"] == metrics["best_epoch"]
    assert [row["epoch"] for row in metrics["history"]] == list(range(1, 16))


def test_tensorboard_has_scalars_hparams_and_image_grid(default_run):
    events = EventAccumulator(str(default_run / "tb"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    ends = [row["step"] for row in read_json(default_run / "metrics.json")["history"]]  # each epoch's last step
    assert len(ends) == 15
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "train/epoch_seconds", "train/images_per_sec"):
        assert [e.step for e in events.Scalars(tag)] == ends, tag
    lr_steps = [e.step for e in events.Scalars("train/lr")]  # every log_every steps and at each epoch's end, once
    assert set(ends) < set(lr_steps) and lr_steps == sorted(set(lr_steps))
    assert "visuals/val_predictions" in tags["images"]
    plugin_events = PluginEventAccumulator(str(default_run / "tb"))
    plugin_events.Reload()
    hparams = plugin_events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams and "_hparams_/experiment" in hparams  # test_dashboard.py
    assert b"optimizer.lr" in hparams["_hparams_/session_start_info"]
    assert "~final/test_acc" in tags["scalars"]
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert lrs[0] > lrs[-1]  # cosine schedule decays


def test_eval_of_best_checkpoint_matches_reported_test_accuracy(default_run, tmp_path):
    out = tmp_path / "eval.json"
    result = cli("eval", f"checkpoint={default_run / 'checkpoints' / 'best.pt'}", f"output={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = read_json(out)
    metrics = read_json(default_run / "metrics.json")
    assert report["top1"] == pytest.approx(metrics["test_acc"])
    assert report["loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)
    assert 0 <= report["top1"] <= report["top5"] <= 100
    assert set(report["per_class"]) == {str(d) for d in range(10)}
    assert "top-5" in result.stdout and "per" not in result.stderr


@pytest.mark.slow  # an end-to-end run: CI's make test-all runs it
def test_mnist_from_data_root(data_root, tmp_path):
    """A few hundred steps of LeNet-5 on the real MNIST files (211 steps of batch 256)."""
    result = cli(
        "train",
        "data=mnist",
        f"data.root={data_root}",
        "trainer.epochs=1",
        "optimizer.lr=3e-3",
        "hydra.run.dir=run",
        *FAST,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["steps"] == 54000 // 256
    assert metrics["test_acc"] >= 95.0
    assert metrics["params"] == 44_426  # LeNet-5 at 28x28


@pytest.mark.slow
def test_resume_from_explicit_path_continues_epochs(tmp_path):
    first = cli("train", "trainer.epochs=2", "hydra.run.dir=a", "trainer.image_grid=0", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    ckpt = tmp_path / "a" / "checkpoints" / "last.pt"
    # Asked for 2 epochs again: nothing left to train, one line
    same = cli(
        "train", "trainer.epochs=2", f"trainer.resume={ckpt}", "hydra.run.dir=b", "trainer.image_grid=0", cwd=tmp_path
    )
    assert (
        same.returncode == 2 and "nothing left to train" in same.stderr and len(same.stderr.strip().splitlines()) == 1
    )
    # 3 epochs: only the third is trained, into the new run dir
    again = cli(
        "train", "trainer.epochs=3", f"trainer.resume={ckpt}", "hydra.run.dir=c", "trainer.image_grid=0", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout and "epoch 1/3" not in again.stdout and "epoch 3/3" in again.stdout
    assert (
        read_json(tmp_path / "c" / "metrics.json")["history"][:2]
        == read_json(tmp_path / "a" / "metrics.json")["history"]
    )


@pytest.mark.slow
def test_resume_with_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    first = cli("train", "trainer.epochs=1", "hydra.run.dir=a", "trainer.image_grid=0", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    ckpt = tmp_path / "a" / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()
    other = cli(
        "train",
        "trainer.epochs=1",
        "data=synthetic",
        "data.channels=3",
        f"trainer.resume={ckpt}",
        "hydra.run.dir=b",
        cwd=tmp_path,
    )
    assert other.returncode == 2
    assert other.stderr.startswith("error: cannot resume from") and len(other.stderr.strip().splitlines()) == 1
    assert ckpt.read_bytes() == before


@pytest.mark.slow
def test_multirun_sweep_writes_one_run_per_job(tmp_path):
    result = cli(
        "train",
        "-m",
        "optimizer.lr=0.01,0.001",
        "trainer.epochs=1",
        "trainer.image_grid=0",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert [p.parent.name for p in runs] == ["0", "1"]
    lrs = [
        torch.load(p.parent / "checkpoints" / "last.pt", weights_only=True)["config"]["optimizer"]["lr"] for p in runs
    ]
    assert lrs == [0.01, 0.001]


def test_synthetic_data_trains(run_main, tmp_path):
    code, err = run_main(
        "train",
        "data=synthetic",
        "data.num_samples=512",
        "data.image_size=28",
        "data.num_classes=4",
        "trainer.epochs=3",
        "hydra.run.dir=run",
        "trainer.image_grid=4",
    )
    assert code == 0, err
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["best_val_acc"] > 50.0  # 4 classes: chance is 25%; the class templates are learnable
