"""Training pictures (TrainingImages callback): the first augmented batch once, the validation predictions every
trainer.image_every epochs and at the last one, and the best epoch's validation confusion matrix at the end."""

from __future__ import annotations

import pytest
import torch
from conftest import read_json
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trained_run import compose, train_in_process

from cnnlab.config import validate_train
from cnnlab.errors import CnnlabError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(run_dir) -> dict:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    events.Reload()
    return {tag: [(e.step, e.width, e.height) for e in events.Images(tag)] for tag in events.Tags()["images"]}


def test_grids_every_n_epochs_and_the_best_confusion_matrix(tmp_path):
    run_dir = train_in_process(
        tmp_path, "trainer.epochs=3", "trainer.image_every=2", "trainer.image_grid=16", "augment=basic"
    )
    logged = images(run_dir)
    best = read_json(run_dir / "metrics.json")["best_epoch"]
    assert [step for step, _, _ in logged["train/augmented_batch"]] == [1]
    assert [step for step, _, _ in logged["val/predictions"]] == [2, 3]  # every 2nd epoch, and the last one
    assert [step for step, _, _ in logged["val/confusion_matrix"]] == [best]
    _, width, height = logged["val/predictions"][0]
    assert width >= 8 * 100 and height >= 2 * 100  # 16 images in 8 columns of > 1 inch
    assert (run_dir / "val_confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_no_grids_when_switched_off(tmp_path):
    run_dir = train_in_process(tmp_path, "trainer.epochs=1", "trainer.image_grid=0")
    assert set(images(run_dir)) == {"val/confusion_matrix"}


def test_image_every_must_be_a_count():
    with pytest.raises(CnnlabError, match="trainer.image_every must be >= 0"):
        validate_train(compose("train", "trainer.image_every=-1"))
