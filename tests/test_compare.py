"""`cnnlab compare PATH...`: the sweep table over any mix of run and sweep dirs, as CSV and markdown, and plots."""

from __future__ import annotations

import csv

import pytest
from conftest import cli
from PIL import Image

import cnnlab
from cnnlab.cli import main
from cnnlab.commands.compare import paths_override

TINY = ["data.subset=30", "trainer.image_grid=0", "trainer.progress=none"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three real runs trained in-process: two in a 'sweep' folder (lenet5 lr 0.01 / 0.003), one alone (mnist_cnn)."""
    root = tmp_path_factory.mktemp("compare")
    for where, overrides in (
        (root / "sweep" / "0", ["optimizer.lr=0.01"]),
        (root / "sweep" / "1", ["optimizer.lr=0.003"]),
        (root / "alone", ["model=mnist_cnn", "model.width_mult=0.25"]),
    ):
        cnnlab.train(cnnlab.compose([*overrides, "trainer.epochs=2", *TINY]), run_dir=where)
    return root


def test_paths_become_one_override():
    expected = ["plot=true", "paths=['outputs/a','out dir/b\\'s']"]
    assert paths_override(["outputs/a", "plot=true", "out dir/b's"]) == expected
    assert paths_override(["paths=[x]"]) == ["paths=[x]"]


def test_compare_a_run_and_a_sweep_with_plots(runs, tmp_path):
    result = cli(
        "compare", str(runs / "alone"), str(runs / "sweep"), "plot=true", f"output={tmp_path / 'cmp'}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "cmp" / "summary.csv").open()))
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    assert list(rows[0])[1:4] == ["model", "model.width_mult", "optimizer.lr"]  # what differs, in the order first seen
    by_model = [(r["model"], r["optimizer.lr"]) for r in rows]  # in the order given, not sorted by accuracy
    assert by_model == [("mnist_cnn", "0.001"), ("lenet5", "0.01"), ("lenet5", "0.003")]  # 0.001: adam's default
    header = "| model | model.width_mult | optimizer.lr | params |"  # `model` varies: no second model column
    assert header in (tmp_path / "cmp" / "summary.md").read_text() and header in result.stdout
    for name in ("curves.png", "accuracy_vs_params.png"):
        with Image.open(tmp_path / "cmp" / name) as image:
            assert image.size[0] >= 800 and image.size[1] >= 400
    assert not list(tmp_path.glob("outputs"))  # output= was honoured; nothing else written
    assert not (tmp_path / ".hydra").exists()


def test_compare_default_output_and_no_plots(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["compare", str(runs / "sweep")])  # in-process: the same entry point as the command
    (out,) = list((tmp_path / "outputs" / "compare").glob("*/*"))
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv", "summary.md"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["nowhere"], "error: nowhere does not exist"),
        ([], "error: cnnlab compare needs run or sweep dirs: cnnlab compare outputs/"),
        (["EMPTY"], "error: no runs in "),
        (["RUN", "plot=maybe"], "error: plot must be true or false, got 'maybe'"),
    ],
)
def test_compare_mistakes_are_one_line(runs, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    args = [{"EMPTY": str(tmp_path / "empty"), "RUN": str(runs / "alone")}.get(a, a) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1


def test_compare_lists_training_runs_only_and_says_what_it_skipped(runs, tmp_path, monkeypatch, capsys):
    """outputs/ also holds what other commands wrote: a predict dir with Hydra's .hydra/ (as cnnlab wrote them
    before), a preview dir, an eval report inside a run. None of them is a row."""
    import shutil

    monkeypatch.chdir(tmp_path)
    outputs = tmp_path / "outputs"
    shutil.copytree(runs / "alone", outputs / "2026-01-01" / "12-00-00-abcd")
    predict = outputs / "predict" / "2026-01-01" / "12-00-01"
    (predict / ".hydra").mkdir(parents=True)
    (predict / ".hydra" / "config.yaml").write_text("checkpoint: x.pt\ninputs: a.png\ntopk: 5\n")
    (predict / "predict.log").write_text("")
    (predict / "predictions.json").write_text("{}")
    main(["preview", "count=4"])  # a real preview dir
    main(["eval", f"checkpoint={outputs / '2026-01-01' / '12-00-00-abcd' / 'checkpoints' / 'best.pt'}"])
    capsys.readouterr()
    main(["compare", "outputs", "output=cmp"])
    out = capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "cmp" / "summary.csv").open()))
    assert [r["model"] for r in rows] == ["mnist_cnn"]
    assert f"skipped 1 dir(s) that are not training runs (other commands' outputs, e.g. {predict.resolve()})" in out
