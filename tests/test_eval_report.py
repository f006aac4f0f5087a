"""`cnnlab eval`: the report beside the run (eval.json, confusion matrix and misclassified PNGs, TensorBoard),
its numbers against each other and the training run, flip TTA, and bad inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import cli, read_json
from trained_run import compose, one_error_line, train_in_process

from cnnlab.commands import evaluate
from cnnlab.errors import CnnlabError


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory):
    """The real command line, from an empty working directory."""
    cwd = tmp_path_factory.mktemp("cwd")
    result = cli("eval", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(cwd.iterdir()) == []  # everything went beside the run, nothing into the working directory
    return result, run_dir / "eval" / "test"


def test_report_files_beside_the_run(report):
    result, out = report
    # no tb/: TensorBoard over outputs/ lists training runs only
    assert {p.name for p in out.iterdir()} == {"eval.json", "confusion_matrix.png", "misclassified.png"}
    for name in ("confusion_matrix.png", "misclassified.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    stdout = " ".join(result.stdout.split())
    assert "LeNet5" in stdout and "best.pt" in stdout and "macro average" in stdout  # names model and checkpoint
    assert "most confused" in stdout


def test_numbers_agree_with_each_other_and_with_training(report, run_dir):
    _, out = report
    r = read_json(out / "eval.json")
    cm = torch.tensor(r["confusion_matrix"])
    assert cm.shape == (10, 10) and int(cm.sum()) == r["count"] == 359  # the digits test split
    assert 100 * int(cm.trace()) / r["count"] == pytest.approx(r["top1"])
    assert r["top1"] == pytest.approx(read_json(run_dir / "metrics.json")["test_acc"])
    for i, (name, row) in enumerate(r["per_class"].items()):
        assert name == str(i) and row["images"] == int(cm[i].sum())
        assert row["recall"] == pytest.approx(100 * int(cm[i, i]) / int(cm[i].sum()))
        if cm[:, i].sum() > 0:
            assert row["precision"] == pytest.approx(100 * int(cm[i, i]) / int(cm[:, i].sum()))
    assert r["macro"]["f1"] == pytest.approx(sum(row["f1"] for row in r["per_class"].values()) / 10)
    off = cm.clone().fill_diagonal_(0)
    top = r["most_confused"][0]
    assert top["count"] == int(off.max()) and int(off[int(top["true"]), int(top["pred"])]) == top["count"]
    assert r["model"] == "LeNet5" and r["checkpoint"].endswith("best.pt") and r["tta"] == "none"


def test_flip_tta_other_splits_and_checkpoints_get_their_own_reports(report, run_dir, tmp_path):
    ckpt = run_dir / "checkpoints" / "best.pt"
    flipped = evaluate.run(compose("eval", f"checkpoint={ckpt}", "tta=flip", "split=val"))
    assert flipped == read_json(run_dir / "eval" / "val-tta_flip" / "eval.json")
    assert (
        flipped["tta"] == "flip"
        and flipped["count"] == 144
        and int(torch.tensor(flipped["confusion_matrix"]).sum()) == 144
    )
    assert read_json(report[1] / "eval.json")["tta"] == "none"  # the test report was not touched
    last = evaluate.run(
        compose("eval", f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}", f"output={tmp_path / 'r.json'}", "grid=4")
    )
    assert read_json(tmp_path / "r.json")["checkpoint"].endswith("last.pt") == last["checkpoint"].endswith("last.pt")
    assert (tmp_path / "confusion_matrix.png").is_file()  # the pictures go beside output=
    assert not (run_dir / "eval" / "test-last").exists()


def test_misclassified_are_the_most_confident_mistakes(run_dir):
    hook = evaluate.ConfidentMistakes(limit=3)
    x = torch.zeros(5, 1, 2, 2)
    logits = torch.tensor([[5.0, 0], [0, 1.0], [3.0, 0], [0, 9.0], [2.0, 0]])
    hook(x, torch.tensor([1, 1, 1, 0, 0]), logits)  # wrong: 0 (p .99), 2 (p .95), 3 (p 1.0); 1 and 4 right
    assert hook.wrong == 3 and hook.y.tolist() == [0, 1, 1] and hook.pred.tolist() == [1, 0, 0]
    hook(x[:1], torch.tensor([1]), torch.tensor([[20.0, 0]]))
    assert hook.wrong == 4 and hook.prob[0] > 0.999999 and len(hook.y) == 3


def test_bad_inputs(run_dir, tmp_path, run_main):
    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 64)
    for args, message in (
        (["checkpoint=" + str(tmp_path / "none.pt")], "does not exist"),
        (["checkpoint=" + str(tmp_path / "garbage.pt")], "is not a readable cnnlab checkpoint"),
        (["grid=-1"], "grid must be >= 0"),
    ):
        if not args[0].startswith("checkpoint"):
            args = [f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", *args]
        with pytest.raises(CnnlabError, match=message):
            evaluate.run(compose("eval", *args))
    line = one_error_line(run_main("eval", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", "tta=rotate"))
    assert line == "error: tta must be one of none, flip, flip_translate; got 'rotate'"


def test_eval_runs_in_the_precision_the_run_trained_in(tmp_path):
    """A bf16 run's test loss was measured under bf16 autocast: eval reproduces it by default; precision= overrides."""
    run = train_in_process(tmp_path, "trainer.precision=bf16")
    checkpoint = run / "checkpoints" / "best.pt"
    stored = evaluate.run(compose("eval", f"checkpoint={checkpoint}", f"output_dir={tmp_path / 'stored'}"))
    fp32 = evaluate.run(
        compose("eval", f"checkpoint={checkpoint}", "precision=fp32", f"output_dir={tmp_path / 'fp32'}")
    )
    metrics = read_json(run / "metrics.json")
    assert stored["precision"] == "bf16" and fp32["precision"] == "fp32"
    assert stored["autocast"] == "bf16" and fp32["autocast"] == "fp32"
    assert stored["loss"] == pytest.approx(metrics["test_loss"], rel=1e-6)
    assert fp32["loss"] != stored["loss"]  # bf16 autocast really changes the numbers, so the default matters
    with pytest.raises(CnnlabError, match="precision=fp16 needs CUDA"):
        evaluate.run(compose("eval", f"checkpoint={checkpoint}", "precision=fp16", f"output_dir={tmp_path / 'x'}"))
    with pytest.raises(CnnlabError, match="precision must be one of"):
        evaluate.run(compose("eval", f"checkpoint={checkpoint}", "precision=fp8"))
