"""Sweeps end in one table, one dashboard and one plot: the report, the Hydra callback, failed jobs, TensorBoard
HParams as TensorBoard itself computes it, gradient-flow logging."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import cli, read_json
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.overrides import TorchFunctionMode

import cnnlab
from cnnlab import data as data_lib
from cnnlab import models, optim
from cnnlab.callbacks.gradient_flow import GradientFlow, stage_names
from cnnlab.cli import main
from cnnlab.engine.trainer import Trainer, planned_steps
from cnnlab.experiments import report as report_lib
from cnnlab.experiments import runs
from cnnlab.experiments.hparams import hparams_of

TINY = ["trainer.epochs=2", "trainer.image_grid=0", "data.subset=40", "trainer.progress=plain"]


# ------------------------------------------------------------------------------------------ a real sweep
@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """`cnnlab train -m optimizer.lr=0.01,-1,0.002` on digits: the middle job fails on purpose."""
    cwd = tmp_path_factory.mktemp("sweep")
    result = cli("train", "-m", "optimizer.lr=0.01,-1,0.002", *TINY, "hydra.sweep.dir=sweep", cwd=cwd)
    return cwd / "sweep", result


def test_failed_job_does_not_stop_the_sweep_and_the_sweep_exits_nonzero(sweep):
    sweep_dir, result = sweep
    assert result.returncode == 1, result.stderr
    assert (sweep_dir / "2" / "metrics.json").is_file()  # the job after the failed one ran
    failed = read_json(sweep_dir / "1" / "failed.json")
    assert failed["error"] == "optimizer.lr must be > 0, got -1"
    assert "optimizer.lr=-1" in failed["overrides"]
    assert "error: optimizer.lr must be > 0, got -1" in result.stderr
    assert "error: 1 of 3 jobs failed" in result.stderr


def test_sweep_writes_summary_csv_and_markdown_in_the_sweep_order(sweep):
    sweep_dir, result = sweep
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert len(rows) == 3
    assert list(rows[0])[:3] == ["run", "optimizer.lr", "model"]  # the varied key first; constants are not columns
    assert "trainer.epochs" not in rows[0] and "data.subset" not in rows[0]
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["optimizer.lr"] for r in rows] == ["0.01", "-1", "0.002"]  # as swept, not sorted by accuracy
    assert rows[1]["status"] == "failed: optimizer.lr must be > 0, got -1"
    for row in ok:
        metrics = read_json(Path(row["run"]) / "metrics.json")
        assert float(row["best val acc"]) == pytest.approx(metrics["best_val_acc"])
        assert int(row["best epoch"]) == metrics["best_epoch"] and 1 <= metrics["best_epoch"] <= 2
        assert float(row["test acc"]) == pytest.approx(metrics["test_acc"])
        assert int(row["params"]) == 61_706 and int(row["MACs"]) > 0
        last = metrics["history"][-1]
        assert float(row["train acc"]) == pytest.approx(last["train_eval_acc"])  # eval mode, fixed train sample
        assert float(row["train-val gap"]) == pytest.approx(last["train_eval_acc"] - last["val_acc"])
        assert float(row["total s"]) == pytest.approx(metrics["total_seconds"])
        assert float(row["load"]) == metrics["load_avg"][0]
    markdown = (sweep_dir / "summary.md").read_text()
    assert "| optimizer.lr | model | params | MACs | best val acc |" in markdown
    assert "failed: optimizer.lr must be > 0, got -1" in markdown
    assert "| optimizer.lr | model |" in result.stdout  # the same table, printed
    assert (sweep_dir / "curves.png").stat().st_size > 10_000
    assert not (sweep_dir / "accuracy_vs_params.png").exists()  # every job has the same size: no vertical strip


def test_sweep_dashboard_names_runs_by_varied_keys_with_typed_hparams_and_metric_curves(sweep):
    """TensorBoard's own HParams backend over the sweep dir: what the HParams tab shows, each job once."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    sweep_dir, _ = sweep
    logdir = str(sweep_dir)
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    assert sorted(mux.Runs()) == ["0/tb", "2/tb", "tb"]  # each job once (no links); "tb": the sweep's experiment
    tb = base_plugin.TBContext(
        logdir=logdir, multiplexer=mux, data_provider=data_provider.MultiplexerDataProvider(mux, logdir)
    )
    experiment = get_experiment.Handler(
        context.RequestContext(), backend_context.Context(tb), "", api_pb2.GetExperimentRequest()
    ).run()
    # the sweep's own experiment summary: only the varied key (constants left out), metrics in reading order
    assert [h.name for h in experiment.hparam_infos] == ["optimizer.lr"]
    assert experiment.hparam_infos[0].type == api_pb2.DATA_TYPE_FLOAT64  # numbers stay numbers
    assert [m.name.tag for m in experiment.metric_infos][:4] == [
        "~final/best_val_acc",
        "~final/test_acc",
        "val/acc",
        "val/loss",
    ]
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=10, include_metrics=True, allowed_statuses=[api_pb2.STATUS_UNKNOWN]
    )
    groups = list_session_groups.Handler(context.RequestContext(), backend_context.Context(tb), "", request).run()
    # trials named by the swept value (not a hash, not the constant overrides typed once)
    assert sorted(g.name for g in groups.session_groups) == ["optimizer.lr=0.002", "optimizer.lr=0.01"]
    events = EventAccumulator(str(sweep_dir / "0" / "tb"), size_guidance={"scalars": 0})  # optimizer.lr=0.01
    events.Reload()
    history = read_json(sweep_dir / "0" / "metrics.json")["history"]
    assert [e.step for e in events.Scalars("val/acc")] == [row["step"] for row in history]  # at each epoch's last step
    assert [e.value for e in events.Scalars("train/epoch")] == [1, 2]  # steps map to epochs numbered from 1
    assert not [t for t in events.Tags()["scalars"] if t.startswith("hparam/")]
    groups = sorted({t.split("/")[0] for t in events.Tags()["scalars"]})
    assert groups[:2] == ["train", "val"] and groups[-1] == "~final"  # Time Series opens the first two groups


def test_rerun_into_a_finished_sweep_dir_is_refused_and_keeps_every_row(sweep, monkeypatch, capsys):
    sweep_dir, _ = sweep
    before = {p: p.read_bytes() for p in sorted(sweep_dir.rglob("*")) if p.is_file()}
    monkeypatch.chdir(sweep_dir.parent)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "-m", "optimizer.lr=0.01,-1,0.002", *TINY, f"hydra.sweep.dir={sweep_dir}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: hydra.sweep.dir=") and "holds 2 finished job(s)" in err and len(err.splitlines()) == 1
    after = {p: p.read_bytes() for p in sorted(sweep_dir.rglob("*")) if p.is_file()}
    assert after == before  # no failed.json in the good jobs, summary.csv as it was


def test_rerun_with_resume_auto_skips_the_finished_jobs_and_keeps_their_rows(sweep, monkeypatch, capsys):
    sweep_dir, _ = sweep
    files = [p for p in sorted(sweep_dir.glob("[02]/**/*")) if p.is_file() and p.suffix not in (".log", ".lock")]
    kept = {p: p.read_bytes() for p in files}  # everything but the lock (it holds the pid) and the log
    monkeypatch.chdir(sweep_dir.parent)
    argv = ["train", "-m", "optimizer.lr=0.01,-1,0.002", *TINY, "trainer.resume=auto", f"hydra.sweep.dir={sweep_dir}"]
    with pytest.raises(SystemExit) as exit_info:  # job 1 fails again: the sweep exits 1 at the end
        main(argv)
    assert exit_info.value.code == 1
    assert {p: p.read_bytes() for p in kept} == kept  # the finished jobs: untouched, no failed.json
    assert not (sweep_dir / "0" / "failed.json").exists() and not (sweep_dir / "2" / "failed.json").exists()
    rows = {r["optimizer.lr"]: r["status"] for r in csv.DictReader((sweep_dir / "summary.csv").open())}
    assert rows == {"0.01": "ok", "0.002": "ok", "-1": "failed: optimizer.lr must be > 0, got -1"}
    assert "nothing to resume" in capsys.readouterr().out


CRASHY = """
import torch.nn as nn


class Net(nn.Sequential):  # a user's own model with a bug when fail=true
    def __init__(self, num_classes, in_channels, image_size, fail=False, **knobs):
        if fail:
            raise ZeroDivisionError("a bug in the user's model")
        super().__init__(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))
"""


@pytest.mark.slow  # an end-to-end run: CI's make test-all runs it
def test_a_crashed_job_keeps_its_traceback_and_the_sweep_still_writes_its_summary(tmp_path):
    (tmp_path / "crashy.py").write_text(CRASHY)
    argv = ["train", "-m", "model._target_=crashy.Net", "+model.fail=true,false", *TINY, "hydra.sweep.dir=sweep"]
    result = cli(*argv, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr  # a bug keeps its traceback
    rows = {r["model.fail"]: r["status"] for r in csv.DictReader((tmp_path / "sweep" / "summary.csv").open())}
    assert rows == {"False": "ok", "True": "failed: crashed: ZeroDivisionError: a bug in the user's model"}
    assert "error: 1 of 2 jobs failed" in result.stderr


def _main_fails(args: list[str], tmp_path, monkeypatch, capsys) -> str:
    """cnnlab ARGS in-process (the same entry point as the command): exit code 2 and its stderr."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_single_run_failure_is_still_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    err = _main_fails(["train", "optimizer.lr=-1", *TINY, "hydra.run.dir=run"], tmp_path, monkeypatch, capsys)
    assert err.strip() == "error: optimizer.lr must be > 0, got -1"
    assert not (tmp_path / "run" / "failed.json").exists()


# -------------------------------------------------------------------------------- the report, in-process
def _fake_run(path: Path, overrides: list[str], config: dict, history: list[dict] | None, **metrics) -> Path:
    """A run directory as training writes it (the numbers given), to test the report's arithmetic on known input."""
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), path / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create(config), path / ".hydra" / "config.yaml")
    if history is not None:
        best = max(history, key=lambda h: h["val_acc"])
        (path / "metrics.json").write_text(
            json.dumps(
                {
                    "best_val_acc": best["val_acc"],
                    "best_val_loss": best["val_loss"],
                    "best_epoch": best["epoch"],
                    "test_acc": 50.0,
                    "params": 1000,
                    "seconds_per_epoch": 1.0,
                    "total_seconds": len(history),
                    "finished": True,
                    "history": history,
                    **metrics,
                }
            )
        )
    return path


def _history(val_accs, train_acc=90.0):
    return [
        {"epoch": i + 1, "val_acc": v, "val_loss": 1 / (1 + v), "train_acc": train_acc} for i, v in enumerate(val_accs)
    ]


def test_report_types_varied_keys_from_the_config_and_finds_convergence(tmp_path):
    base = {
        "model": {"_target_": "cnnlab.models.lenet.LeNet5"},
        "trainer": {"epochs": 3, "monitor": "val_acc"},
        "optimizer": {"lr": 0.001},
        "seed": 0,
    }
    _fake_run(
        tmp_path / "a",
        ["optimizer.lr=1e-2", "seed=0"],
        {**base, "optimizer": {"lr": 0.01}},
        _history([40.0, 79.5, 80.0]),
        steps=30,
    )
    _fake_run(tmp_path / "b", ["seed=0"], base, _history([60.0, 85.0, 84.0]), steps=30)
    _fake_run(tmp_path / "c", ["optimizer.lr=0.1", "seed=0"], {**base, "optimizer": {"lr": 0.1}}, None)
    runs.write_failure(tmp_path / "c", "optimizer.lr too high", ["optimizer.lr=0.1", "seed=0"])
    report = report_lib.build([tmp_path])
    assert report.keys == ["optimizer.lr"]  # seed is constant; b's lr is the config default, 0.001
    assert [r.path.name for r in report.runs] == ["a", "b", "c"]
    a, b, c = report.rows
    assert a["optimizer.lr"] == 0.01 and isinstance(a["optimizer.lr"], float) and b["optimizer.lr"] == 0.001
    assert (a["best val acc"], a["best epoch"], b["best val acc"], b["best epoch"]) == (80.0, 3, 85.0, 2)
    assert report.level == 80.0  # the val accuracy every finished run reached
    assert (a["steps to level"], b["steps to level"]) == (30, 20)  # 80% first at epoch 3 / 2, 10 steps an epoch
    assert a["train-val gap"] == pytest.approx(10.0) and b["train-val gap"] == pytest.approx(6.0)
    assert c["status"] == "failed: optimizer.lr too high" and c["best val acc"] is None
    assert report.labels() == ["optimizer.lr=0.01", "optimizer.lr=0.001", "optimizer.lr=0.1"]


def test_report_keeps_the_order_of_the_runs_given(tmp_path):
    cfg = {"trainer": {"monitor": "val_loss"}, "seed": 0}
    _fake_run(tmp_path / "x", ["seed=1"], {**cfg, "seed": 1}, _history([50.0]))  # loss 1/51
    _fake_run(tmp_path / "y", ["seed=2"], {**cfg, "seed": 2}, _history([90.0]))  # loss 1/91: lower, still second
    report = report_lib.build([tmp_path / "x", tmp_path / "y"])
    assert report.monitor == "val_loss" and [r.path.name for r in report.runs] == ["x", "y"]
    assert [row["seed"] for row in report.rows] == [1, 2]


def test_report_of_nothing_is_a_clear_error(tmp_path):
    from cnnlab.errors import CnnlabError

    with pytest.raises(CnnlabError, match="no runs in"):
        report_lib.build([tmp_path])
    with pytest.raises(CnnlabError, match="does not exist"):
        report_lib.build([tmp_path / "missing"])


def test_hparams_of_without_hydra_reads_the_saved_overrides(tmp_path, run_main):
    # an earlier command in this process (here a refused start and a --cfg print) leaves no Hydra job behind
    assert run_main("train", "trainer.epochs=-1")[0] == 2
    assert run_main("train", "optimizer.lr=0.5", "--cfg", "job")[0] == 0
    cfg = cnnlab.compose(["optimizer.lr=1e-2", "data.subset=20", "augment=basic"])
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(
        OmegaConf.create(["optimizer.lr=1e-2", "data.subset=20", "augment=basic"]),
        tmp_path / ".hydra" / "overrides.yaml",
    )
    params = hparams_of(cfg, tmp_path)
    assert params["optimizer.lr"] == 0.01 and params["data.subset"] == 20 and params["trainer.epochs"] == 15
    assert params["model"] == "LeNet5" and params["data"] == "digits" and params["augment"] == "basic"
    assert "finetune" not in params and "debug" not in params


# ----------------------------------------------------------------------------------------- gradient flow
class SyncCounter(TorchFunctionMode):
    """Counts tensor calls that wait for the device on CUDA (.item(), .tolist(), bool(), ...)."""

    SYNCING = {"item", "__bool__", "__float__", "__int__", "tolist", "numpy", "cpu", "nonzero"}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.SYNCING:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


class Watch(GradientFlow):
    """GradientFlow, with the syncs of its after_backward counted."""

    def __init__(self, *args):
        super().__init__(*args)
        self.counter = SyncCounter()

    def after_backward(self, trainer, model) -> None:
        with self.counter:
            super().after_backward(trainer, model)


def _train_with(callback, run_dir: Path, epochs: int = 2, log_every: int = 3) -> dict:
    cfg = cnnlab.compose(
        [
            "model=resnet18",
            "model.width_mult=0.125",
            "data=synthetic",
            "data.num_samples=256",
            "data.image_size=16",
            "data.batch_size=32",
            f"trainer.epochs={epochs}",
            f"trainer.log_every={log_every}",
            "trainer.image_grid=0",
            "trainer.progress=none",
            "trainer.device=cpu",
        ]
    )
    data = data_lib.build(cfg.data, cfg.augment, torch.device("cpu"), seed=0)
    model = models.build(cfg.model, data.spec)
    per_epoch, total = planned_steps(cfg.trainer, len(data.train))
    optimizer, scheduler = optim.build(cfg.optimizer, cfg.scheduler, model, per_epoch, total)
    trainer = Trainer(cfg.trainer, run_dir, torch.device("cpu"), callbacks=[callback])
    metrics = trainer.fit(model, data, optimizer, scheduler)
    return {"metrics": metrics, "steps": metrics["steps"], "model": model}


def test_grad_norms_per_stage_every_log_interval_without_host_syncs(tmp_path):
    callback = Watch(True, None)
    out = _train_with(callback, tmp_path)
    assert callback.counter.calls == []  # summed on the device: nothing read back per step
    names = [name for name, _ in stage_names(out["model"])]
    assert len(names) >= 4 and [n.split("_", 1)[0] for n in names] == [str(i) for i in range(1, len(names) + 1)]
    head = dict(stage_names(out["model"]))[names[-1]]
    assert any(p.shape[0] == 10 for p in head.parameters())  # the last stage holds the classifier (10 classes)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = [t for t in events.Tags()["scalars"] if t.startswith("weights/grad_norm/")]
    assert tags == sorted(f"weights/grad_norm/{n}" for n in names)
    steps, per_epoch = out["steps"], out["steps"] // 2
    expected = sorted(set(range(3, steps + 1, 3)) | {per_epoch, steps})  # every 3 steps and at each epoch's end
    for tag in tags:
        points = events.Scalars(tag)
        assert [p.step for p in points] == expected
        assert all(math.isfinite(p.value) and p.value > 0 for p in points)
        run_mean = out["metrics"]["grad_norms"][tag.removeprefix("weights/grad_norm/")]  # the sweep table's column
        assert min(p.value for p in points) <= run_mean <= max(p.value for p in points)
    assert list(out["metrics"]["grad_norms"]) == names
    assert events.Tags()["histograms"] == []


def test_histograms_every_n_epochs(tmp_path):
    out = _train_with(GradientFlow(False, 2), tmp_path, epochs=3)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    names = [name for name, _ in stage_names(out["model"])]
    histograms = events.Tags()["histograms"]
    assert set(histograms) == {f"weights/{n}" for n in names} | {f"weights/{n}/grad" for n in names}
    # epochs 1..3, every 2nd: at the step that ends epoch 2
    assert [h.step for h in events.Histograms(f"weights/{names[0]}")] == [out["steps"] // 3 * 2]
    grad = events.Histograms(f"weights/{names[-1]}/grad")[0].histogram_value
    weight = events.Histograms(f"weights/{names[-1]}")[0].histogram_value
    assert grad.num == weight.num == sum(p.numel() for p in dict(stage_names(out["model"]))[names[-1]].parameters())
    assert not [t for t in events.Tags()["scalars"] if t.startswith("weights/grad_norm")]


def test_log_histograms_must_be_a_positive_integer(tmp_path, monkeypatch, capsys):
    err = _main_fails(["train", "trainer.log_histograms=0", *TINY, "hydra.run.dir=run"], tmp_path, monkeypatch, capsys)
    assert err.strip() == "error: trainer.log_histograms must be >= 1, got 0"
