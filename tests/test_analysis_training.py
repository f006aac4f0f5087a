"""Training pictures (TrainingImages callback): the first augmented batch once, the validation predictions every
trainer.image_every epochs and at the last one, and the best epoch's validation confusion matrix at the end."""

from __future__ import annotations

import pytest
from conftest import read_json
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trained_run import compose, train_in_process

from cnnlab.errors import CnnlabError
from cnnlab.schema.train import validate as validate_train


def images(run_dir) -> dict:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    events.Reload()
    return {tag: [(e.step, e.width, e.height) for e in events.Images(tag)] for tag in events.Tags()["images"]}


def test_grids_every_n_epochs_and_the_best_confusion_matrix(tmp_path):
    run_dir = train_in_process(
        tmp_path, "trainer.epochs=3", "trainer.image_every=2", "trainer.image_grid=16", "augment=basic"
    )
    logged = images(run_dir)
    ends = [row["step"] for row in read_json(run_dir / "metrics.json")["history"]]  # x axis: the optimizer step
    # a group of their own in Time Series, after train/ and val/ (not between train/acc and train/loss)
    assert set(logged) == {"visuals/augmented_batch", "visuals/val_predictions", "visuals/val_confusion_matrix"}
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    groups = sorted({tag.split("/")[0] for kind in ("images", "scalars") for tag in events.Tags()[kind]})
    assert groups == ["train", "val", "visuals", "~final"]  # Time Series opens the first two: the curves
    assert [step for step, _, _ in logged["visuals/augmented_batch"]] == [ends[0]]  # drawn at epoch 1's end
    assert [step for step, _, _ in logged["visuals/val_predictions"]] == ends[1:]  # every 2nd epoch, and the last
    assert [step for step, _, _ in logged["visuals/val_confusion_matrix"]] == [ends[-1]]  # the best epoch's, at the end
    _, width, height = logged["visuals/val_predictions"][0]
    assert width >= 8 * 100 and height >= 2 * 100  # 16 images in 8 columns of > 1 inch
    assert (run_dir / "val_confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_no_grids_when_switched_off(tmp_path):
    run_dir = train_in_process(tmp_path, "trainer.epochs=1", "trainer.image_grid=0")
    assert set(images(run_dir)) == {"visuals/val_confusion_matrix"}


def test_image_every_must_be_a_count():
    with pytest.raises(CnnlabError, match="trainer.image_every must be >= 0"):
        validate_train(compose("train", "trainer.image_every=-1"))


def test_the_confusion_matrix_is_the_best_epochs_validation_and_survives_a_resume(tmp_path, monkeypatch):
    """At the end the best epoch's own validation is drawn (no second pass over val); after a resume whose
    best.pt came from the earlier process, best.pt is evaluated again: both give the recorded best val acc."""
    from cnnlab.callbacks import training_images

    drawn, passes = [], []
    real_figure, real_evaluate = training_images.confusion_figure, training_images.evaluate
    monkeypatch.setattr(training_images, "confusion_figure", lambda cm, *a: drawn.append(cm) or real_figure(cm, *a))
    monkeypatch.setattr(training_images, "evaluate", lambda *a, **k: passes.append(1) or real_evaluate(*a, **k))

    def check(run_dir):
        metrics = read_json(run_dir / "metrics.json")
        cm = drawn.pop()
        assert int(cm.sum()) > 0
        assert 100.0 * int(cm.trace()) / int(cm.sum()) == pytest.approx(metrics["best_val_acc"])

    # 16 memorised images reach 100% val acc, which no later epoch beats: best.pt stays the first process's
    tiny = ("trainer.overfit_batches=1", "data.batch_size=16", "trainer.image_grid=0", "optimizer.lr=0.01")
    run_dir = train_in_process(tmp_path, "trainer.epochs=30", *tiny)
    assert read_json(run_dir / "metrics.json")["best_val_acc"] == 100.0
    check(run_dir)
    assert passes == []
    last = run_dir / "checkpoints" / "last.pt"  # one more epoch, into a new run dir (best.pt comes along)
    longer = train_in_process(tmp_path / "longer", "trainer.epochs=31", *tiny, f"trainer.resume={last}")
    assert read_json(longer / "metrics.json")["best_epoch"] < 31
    check(longer)
    assert passes == [1]
