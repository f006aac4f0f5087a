"""The command line: help, config printing, and one clear line + exit 2 for every bad input."""

from __future__ import annotations

import pytest
from conftest import read_json
from trained_run import one_error_line


def test_help_lists_commands(run_cli):
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("train", "eval", "summary"):
        assert f"  {command}" in result.stdout


def test_train_help_shows_config_groups(run_cli):
    result = run_cli("train", "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "== Configuration groups ==" in out
    for group in ("model:", "data:", "augment:", "optimizer:", "scheduler:", "trainer:", "experiment:"):
        assert group in out
    assert "lenet5" in out and "cifar10" in out and "adamw" in out


def test_cfg_job_prints_composed_config(run_cli):
    result = run_cli("train", "model=lenet5", "optimizer=sgd", "optimizer.lr=0.05", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "_target_: cnnlab.models.lenet.LeNet5" in result.stdout
    assert "_target_: torch.optim.SGD" in result.stdout
    assert "lr: 0.05" in result.stdout
    assert "name: digits" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["model=vgg999"], "unknown model 'vgg999'; choose from:"),
        (["data=imagenet22k"], "unknown data 'imagenet22k'"),
        (["optimizer.lrr=0.1"], "lrr"),
        (["trainer.epochs=abc"], "abc"),
        (["optimizer.lr=-1"], "optimizer.lr must be > 0"),
        (["trainer.epochs=0"], "trainer.epochs must be >= 1"),
        (["data.batch_size=0"], "data.batch_size must be >= 1"),
        (["data.val_split=1.5"], "data.val_split"),
        (["trainer.device=cuda:3"], "trainer.device"),
        (["trainer.precision=fp8"], "trainer.precision must be one of"),
        (["trainer.resume=/nonexistent/last.pt"], "/nonexistent/last.pt does not exist"),
        (
            ["data=mnist", "data.root=/nonexistent/root", "data.download=false"],
            "MNIST not found under /nonexistent/root",
        ),
        (["trainer.accumulate=0"], "trainer.accumulate must be >= 1"),
        (["trainer.ema_decay=1.5"], "trainer.ema_decay must be"),
        (["finetune=bogus"], "unknown finetune 'bogus'"),
        (["debug=fastest"], "unknown debug 'fastest'"),
        (["scheduler=onecycle", "scheduler.warmup_epochs=1"], "own warm-up"),
        (["scheduler.name=cyclic"], "scheduler.name 'cyclic' is unknown"),
        (["augment.mix_prob=2"], "augment.mix_prob must be"),
    ],
)
def test_bad_train_input_is_one_line_exit_2(run_main, args, message):
    """In process (the catalogue in test_bad_inputs.py has more; test_unknown_command et al. run the real CLI)."""
    code, err = (
        run_main("train", *args) if "trainer.epochs" in " ".join(args) else run_main("train", "trainer.epochs=1", *args)
    )
    assert message in one_error_line((code, err))
    assert "Traceback" not in err


def test_unknown_command(run_cli):
    result = run_cli("trian")
    assert result.returncode == 2
    from cnnlab.cli import COMMANDS

    assert result.stderr.strip() == f"error: unknown command 'trian'; choose from: {', '.join(COMMANDS)}"
    assert {"train", "eval", "summary", "compare", "predict", "features", "export", "preview"} <= set(COMMANDS)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "checkpoint"),
        (["checkpoint=/nonexistent.pt"], "checkpoint /nonexistent.pt does not exist"),
        (["checkpoint=BAD", "split=dev"], "split must be one of test, val, train"),
    ],
)
def test_bad_eval_input_is_one_line_exit_2(run_main, tmp_path, args, message):
    args = [a.replace("BAD", str(tmp_path / "x.pt")) for a in args]
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    assert message in one_error_line(run_main("eval", *args))


def test_eval_rejects_a_file_that_is_not_a_checkpoint(run_main, tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"\x00" * 100)
    code, err = run_main("eval", f"checkpoint={bad}")
    assert code == 2
    assert "is not a readable cnnlab checkpoint" in err
    assert bad.read_bytes() == b"\x00" * 100  # nothing the user had is touched


def test_user_config_dir_adds_a_model_of_their_own(run_main, tmp_path, monkeypatch):
    """A user's own model class and config folder, found through --config-dir and `_target_`."""
    (tmp_path / "my_models.py").write_text(
        "import torch.nn as nn\n"
        "class Tiny(nn.Module):\n"
        "    def __init__(self, num_classes, in_channels, width=8):\n"
        "        super().__init__()\n"
        "        self.net = nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                                 nn.Flatten(), nn.Linear(width, num_classes))\n"
        "    def forward(self, x):\n"
        "        return self.net(x)\n"
    )
    (tmp_path / "mycfg" / "model").mkdir(parents=True)
    (tmp_path / "mycfg" / "model" / "tiny.yaml").write_text("# my tiny model\n_target_: my_models.Tiny\nwidth: 4\n")
    monkeypatch.syspath_prepend(tmp_path)
    code, err = run_main(
        "train", "--config-dir", "mycfg", "model=tiny", "trainer.epochs=1", "trainer.image_grid=0", "hydra.run.dir=run"
    )
    assert code == 0, err
    assert read_json(tmp_path / "run" / "metrics.json")["params"] == 4 * 1 * 9 + 4 + 4 * 10 + 10
