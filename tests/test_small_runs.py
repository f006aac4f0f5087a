"""Cheap small runs: data.eval_subset limits val and test evaluation to their first n images, and trainer.threads
sets torch's CPU threads; both are recorded in metrics.json (and the test image count in the sweep summary)."""

from __future__ import annotations

import pytest
import torch
from conftest import cli, read_json
from omegaconf import OmegaConf

import cnnlab
from cnnlab.data.build import split
from cnnlab.data.datasets import ArrayDataset
from cnnlab.errors import CnnlabError
from cnnlab.experiments import report as report_lib

TINY = ["trainer.epochs=1", "trainer.image_grid=0", "data.subset=20", "trainer.progress=none"]


def _arrays(n_train=200, n_test=100):
    g = torch.Generator().manual_seed(0)
    return ArrayDataset(
        torch.randint(0, 255, (n_train, 1, 4, 4), dtype=torch.uint8, generator=g),
        torch.arange(n_train) % 10,
        torch.randint(0, 255, (n_test, 1, 4, 4), dtype=torch.uint8, generator=g),
        torch.arange(n_test) % 10,
        [str(c) for c in range(10)],
    )


@pytest.mark.parametrize("val_split", [0.25, "test"])
def test_eval_subset_keeps_the_first_n_val_and_test_images(val_split):
    arrays = _arrays()
    full = split(arrays, OmegaConf.create({"subset": None, "val_split": val_split}), seed=3)
    cut = split(arrays, OmegaConf.create({"subset": None, "val_split": val_split, "eval_subset": 30}), seed=3)
    assert len(cut.test_y) == len(cut.val_y) == 30
    assert torch.equal(cut.test_x, full.test_x[:30]) and torch.equal(cut.val_x, full.val_x[:30])
    assert torch.equal(cut.val_y, full.val_y[:30]) and torch.equal(cut.train_x, full.train_x)  # training untouched
    bigger = split(arrays, OmegaConf.create({"subset": None, "val_split": val_split, "eval_subset": 10_000}), seed=3)
    assert len(bigger.test_y) == 100  # more than there are: the whole split


def test_eval_subset_and_threads_reach_metrics_json_and_the_summary(tmp_path):
    threads = torch.get_num_threads()
    try:
        cfg = cnnlab.compose([*TINY, "data.eval_subset=16", "trainer.threads=2"])
        metrics = cnnlab.train(cfg, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    assert metrics["test_images"] == 16 and metrics["val_images"] == 16 and metrics["threads"] == 2
    assert read_json(tmp_path / "run" / "metrics.json")["test_images"] == 16
    report = report_lib.build([tmp_path])
    assert report.rows[0]["test images"] == 16 and "test images" in report_lib.to_markdown(report)


@pytest.mark.slow  # a subprocess for its environment: CI's make test-all runs it
def test_threads_default_follows_omp_num_threads(tmp_path):
    result = cli("train", *TINY, "data.eval_subset=32", "hydra.run.dir=run", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["threads"] == 1 and metrics["test_images"] == 32


@pytest.mark.parametrize("override", ["data.eval_subset=0", "trainer.threads=0"])
def test_bad_values_are_one_clear_error(override, tmp_path):
    cfg = cnnlab.compose([*TINY, override])
    with pytest.raises(CnnlabError, match=override.split("=")[0]):
        cnnlab.train(cfg, tmp_path / "run")
