"""Callbacks by config (configs/callbacks/): a user's own callback from --config-dir runs its hooks in a real
training, a default one is removed by `~callbacks.NAME`, a bad target is one line (exit 2), and a checkpoint that
names callbacks runs none of them (eval refuses it; a resume builds the callbacks of its own command line)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, cli, cli_env, read_json
from trained_run import compose, train_in_process

from cnnlab.callbacks.build import build
from cnnlab.callbacks.gradient_flow import GradientFlow
from cnnlab.callbacks.train_accuracy import TrainAccuracy
from cnnlab.callbacks.training_images import TrainingImages
from cnnlab.commands import train

# A user's callback, in a module of their own: it notes every hook it sees in a file.
RECORDER = """
from cnnlab.callbacks.base import Callback


class Recorder(Callback):
    def __init__(self, out, tag="mine"):
        self.out, self.tag, self.seen = out, tag, set()

    def _note(self, hook):
        if hook not in self.seen or hook.startswith("on_epoch_end"):
            self.seen.add(hook)
            with open(self.out, "a") as f:
                f.write(hook + "\\n")

    def on_fit_start(self, trainer, model, data):
        self._note("on_fit_start")

    def on_train_batch(self, trainer, x, y, batch):
        self._note("on_train_batch")

    def after_backward(self, trainer, model):
        self._note("after_backward")

    def on_log(self, trainer, model):
        self._note("on_log")

    def on_epoch_end(self, trainer, model, data, row):
        self._note(f"on_epoch_end {row['epoch']}")

    def on_fit_end(self, trainer, model, data, metrics):
        self._note("on_fit_end")
        metrics["recorded_by"] = self.tag
"""


def user_module(where: Path) -> Path:
    mods = where / "mods"
    mods.mkdir()
    (mods / "my_callbacks.py").write_text(RECORDER)
    return mods


def test_a_user_callback_from_config_dir_runs_its_hooks_beside_the_defaults(tmp_path):
    mods = user_module(tmp_path)
    hooks = tmp_path / "hooks.txt"
    conf = tmp_path / "conf" / "callbacks"
    conf.mkdir(parents=True)
    (conf / "with_recorder.yaml").write_text(
        "# cnnlab's callbacks and mine\ndefaults:\n  - default\n  - _self_\n"
        f"recorder:\n  _target_: my_callbacks.Recorder\n  out: {hooks}\n  tag: from-yaml\n"
    )
    run_dir = tmp_path / "run"
    result = cli(
        "train",
        "--config-dir",
        str(tmp_path / "conf"),
        "callbacks=with_recorder",
        "trainer.epochs=2",
        "trainer.log_every=2",
        "trainer.progress=plain",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env=cli_env(PYTHONPATH=os.pathsep.join([str(mods), str(REPO)])),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert hooks.read_text().split("\n")[:-1] == [
        "on_fit_start",
        "on_train_batch",
        "after_backward",
        "on_log",
        "on_epoch_end 1",
        "on_epoch_end 2",
        "on_fit_end",
    ]
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["recorded_by"] == "from-yaml"
    assert "macs" in metrics and "train_eval_acc" in metrics["history"][-1]  # the defaults ran too


def test_removing_a_default_callback(tmp_path):
    assert any(isinstance(cb, TrainAccuracy) for cb in build(compose("train").callbacks))
    cfg = compose("train", "~callbacks.train_accuracy")
    assert "train_accuracy" not in cfg.callbacks
    assert not any(isinstance(cb, TrainAccuracy) for cb in build(cfg.callbacks))
    metrics = read_json(train_in_process(tmp_path, "~callbacks.train_accuracy") / "metrics.json")
    assert all("train_eval_acc" not in row for row in metrics["history"]) and "load_avg" not in metrics
    assert "macs" in metrics  # the others still run


def test_trainer_keys_still_reach_the_callbacks(tmp_path):
    (images,) = [cb for cb in build(compose("train", "trainer.image_every=3").callbacks) if hasattr(cb, "every")]
    assert images.every == 3
    metrics = read_json(train_in_process(tmp_path, "trainer.log_grad_norms=true") / "metrics.json")
    assert metrics["grad_norms"] and all(v > 0 for v in metrics["grad_norms"].values())


def test_callbacks_that_are_off_do_nothing_per_step():
    """GradientFlow is always listed; with its switches off (the default) it keeps no stages, so no work."""
    (flow,) = [cb for cb in build(compose("train").callbacks) if isinstance(cb, GradientFlow)]
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    flow.on_fit_start(SimpleNamespace(device=torch.device("cpu")), model, None)
    assert flow.stages == [] and flow.sums is None


@pytest.mark.parametrize("finetune, grid", [(None, 32), ("gradual", 32), ("feature_extract", 0)])
def test_no_image_grids_when_the_model_trains_on_cached_features(finetune, grid):
    (images,) = [cb for cb in build(compose("train").callbacks) if isinstance(cb, TrainingImages)]
    trainer = SimpleNamespace(finetune=SimpleNamespace(name=finetune) if finetune else None)
    images.on_fit_start(trainer, None, None)
    assert images.grid == grid


@pytest.mark.parametrize(
    "override, message",
    [
        ("+callbacks.mine._target_=nowhere.Mine", "callbacks.mine._target_='nowhere.Mine' cannot be imported"),
        ("+callbacks.mine._target_=os.path.join", "is not a trainer callback"),
        ("+callbacks.training_images.gridd=3", "unexpected keyword argument 'gridd'"),
        ("~callbacks.training_images.grid", "missing a required argument: 'grid'"),
        ("+callbacks.mine=3", "callbacks.mine needs a _target_"),
        ("callbacks.mine._target_=my.Cb", "add one with +callbacks.mine._target_=CLASS"),
        # each callback's declared `ranges`, checked before the run starts
        ("callbacks.train_accuracy.samples=-5", "callbacks.train_accuracy.samples must be >= 0, got -5"),
        ("callbacks.training_images.every=1.5", "callbacks.training_images.every must be an integer, got 1.5"),
        ("callbacks.gradient_flow.histogram_every=-1", "callbacks.gradient_flow.histogram_every must be >= 0"),
    ],
)
def test_bad_callback_config_is_one_line_and_writes_nothing(run_main, tmp_path, override, message):
    code, err = run_main("train", override, f"hydra.run.dir={tmp_path / 'run'}")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], (code, err)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ checkpoints hold no callbacks
@pytest.fixture(scope="module")
def last_checkpoint(tmp_path_factory) -> Path:
    return train_in_process(tmp_path_factory.mktemp("trained"), "trainer.epochs=1") / "checkpoints" / "last.pt"


def harmful(marker: Path) -> dict:
    """What Hydra would turn into os.system('touch MARKER') if it ever instantiated it."""
    return {"_target_": "os.system", "command": f"touch {marker}"}


def crafted(trained: Path, where: Path, callbacks) -> Path:
    state = torch.load(trained, map_location="cpu", weights_only=True)
    assert "callbacks" not in state["config"]  # training never stores them
    state["config"]["callbacks"] = callbacks
    path = where / "crafted.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("shape", ["entry", "section"])
def test_eval_refuses_a_checkpoint_that_names_callbacks(last_checkpoint, tmp_path, run_main, shape):
    marker = tmp_path / "pwned"
    callbacks = {"evil": harmful(marker)} if shape == "entry" else harmful(marker)
    path = crafted(last_checkpoint, tmp_path, callbacks)
    code, err = run_main("eval", f"checkpoint={path}", f"output_dir={tmp_path / 'eval'}")
    assert not marker.exists()
    assert code == 2 and "crafted.pt stores callbacks" in err and len(err.strip().splitlines()) == 1, err


def test_resume_builds_the_command_lines_callbacks_never_the_checkpoints(last_checkpoint, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    path = crafted(last_checkpoint, tmp_path, {"evil": harmful(marker)})
    monkeypatch.syspath_prepend(str(user_module(tmp_path)))
    hooks = tmp_path / "hooks.txt"
    cfg = compose(
        "train",
        "trainer.epochs=2",
        "trainer.progress=plain",
        f"trainer.resume={path}",
        "+callbacks.recorder._target_=my_callbacks.Recorder",
        f"+callbacks.recorder.out={hooks}",
    )
    metrics = train.run(cfg, run_dir=tmp_path / "resumed")
    assert not marker.exists()
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]  # it resumed after epoch 1
    assert hooks.read_text().split("\n")[:-1][0] == "on_fit_start" and "on_epoch_end 2" in hooks.read_text()
    assert "on_epoch_end 1" not in hooks.read_text()
    assert metrics["recorded_by"] == "mine"
