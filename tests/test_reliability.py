"""Nothing lost: kills inside checkpoint writes, signals, NaN losses, finished and locked run dirs, write faults."""

from __future__ import annotations

import contextlib
import copy
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import Batches, cli, cli_env, read_json
from omegaconf import OmegaConf
from torch import nn

from cnnlab.data import DataBundle, DataSpec
from cnnlab.engine import checkpoint, rundir
from cnnlab.engine.trainer import Trainer
from cnnlab.errors import CnnlabError
from cnnlab.schema.train import TrainerConfig

# LeNet-5 on the embedded digits: about 11 steps an epoch, a fraction of a second each (TensorBoard points every 5).
ARGS = ["train", "model.act=tanh", "trainer.image_grid=0", "trainer.progress=plain", "trainer.log_every=5"]


def _start(tmp_path: Path, *args: str, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab", *ARGS, *args],
        cwd=tmp_path,
        env=cli_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended before the moment the test waits for"
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def _curves(run_dir: Path) -> dict:
    """tag -> [(step, value)] as TensorBoard reads the run (it drops what a process wrote past a resume's step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _same_x_axis(straight: Path, resumed: Path) -> None:
    """The resumed run's curves continue the uninterrupted run's x axis: the same steps, none twice."""
    a, b = _curves(straight), _curves(resumed)
    assert a.keys() == b.keys()
    for tag in a:
        assert [step for step, _ in b[tag]] == [step for step, _ in a[tag]], tag
    assert len(b["train/loss_step"]) > 4 and b["val/acc"] == a["val/acc"]  # bit-exact: the same accuracies


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted 4-epoch run the interrupted ones must reproduce bit for bit (in this process, on one
    thread like the `cnnlab` subprocesses)."""
    import cnnlab

    run_dir = tmp_path_factory.mktemp("straight") / "run"
    cnnlab.train(cnnlab.compose([*ARGS[1:], "trainer.epochs=4", "trainer.threads=1"]), run_dir)
    return run_dir


@pytest.mark.slow  # 22 s; the SIGINT mid-epoch resume test below stays in make test
def test_sigkill_inside_a_checkpoint_write_then_resume_gives_the_uninterrupted_weights(tmp_path, straight):
    """The write is slowed by a test hook; SIGKILL lands while the temp file is half-way to last.pt. The same
    command line (trainer.resume=auto: a fresh start the first time) run again finishes the run."""
    ckpt = tmp_path / "run" / "checkpoints"
    args = ["trainer.epochs=4", "hydra.run.dir=run", "trainer.resume=auto"]
    proc = _start(tmp_path, *args, **{checkpoint.SLOW_SAVE_ENV: "2"})
    # Epoch 2's last.pt write: an earlier last.pt exists and a temp file for the new one is being written.
    _wait_for(lambda: (ckpt / "last.pt").is_file() and any(ckpt.glob(".last.pt.*.tmp")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(ckpt.glob(".last.pt.*.tmp")), "the kill should have left the half-written temp file behind"
    assert checkpoint.load(ckpt / "last.pt")["epoch"] < 4  # the previous last.pt is intact and readable
    resumed = cli(*ARGS, *args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert not list(ckpt.glob("*.tmp")), "stale temp files are removed once the run dir is claimed again"
    _same_weights(straight / "checkpoints" / "last.pt", ckpt / "last.pt")
    assert read_json(tmp_path / "run" / "metrics.json")["epochs"] == 4
    _same_x_axis(straight, tmp_path / "run")


@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_a_signal_saves_mid_epoch_says_how_to_resume_and_resume_is_exact(tmp_path, run_main, straight, signum):
    proc = _start(tmp_path, "trainer.epochs=4", "hydra.run.dir=run")
    _wait_for(lambda: (tmp_path / "run" / "checkpoints" / "best.pt").is_file(), proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert "saved" in line and "Continue with: cnnlab train" in line and "trainer.resume=auto" in line
    state = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["fit"]["finished"] is False and not (tmp_path / "run" / "metrics.json").exists()
    command = line.split("Continue with: ", 1)[1].split()
    assert command[:2] == ["cnnlab", "train"]
    code, err = run_main(*command[1:])  # the resumed run in this process: the same code path as the command line
    assert code == 0, err
    _same_weights(straight / "checkpoints" / "last.pt", tmp_path / "run" / "checkpoints" / "last.pt")
    _same_x_axis(straight, tmp_path / "run")


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    """The first Ctrl-C starts a (slowed) save of last.pt; the second one does not wait for it."""
    proc = _start(tmp_path, "trainer.epochs=50", "hydra.run.dir=run", **{checkpoint.SLOW_SAVE_ENV: "30"})
    ckpt = tmp_path / "run" / "checkpoints"
    _wait_for(lambda: any(ckpt.glob(".best.pt.*.tmp")), proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    started = time.time()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert time.time() - started < 10
    assert proc.returncode == 130 and "exiting at once" in err and "Traceback" not in err


def test_a_finished_run_is_never_trained_into_again_unless_asked(tmp_path, run_main):
    one_epoch = [*ARGS, "trainer.epochs=1", "hydra.run.dir=run"]
    code, err = run_main(*one_epoch)
    assert code == 0, err
    files = {
        p: p.read_bytes()
        for p in (tmp_path / "run").rglob("*")
        if p.is_file() and p.suffix != ".log" and p.name != rundir.LOCK_NAME
    }
    code, err = run_main(*one_epoch, "optimizer.lr=0.1")
    assert code == 2 and "already holds a finished run" in err
    assert len(err.strip().splitlines()) == 1
    code, err = run_main(*one_epoch, "trainer.resume=auto")
    assert code == 0 and "finished run: nothing to resume" in run_main.stdout, err
    assert {p: p.read_bytes() for p in files} == files  # config, overrides, checkpoints, metrics, events
    code, err = run_main(*ARGS, "trainer.epochs=2", "hydra.run.dir=run", "trainer.overwrite=true")
    assert code == 0, err
    assert read_json(tmp_path / "run" / "metrics.json")["epochs"] == 2


def test_a_second_writer_is_refused_while_the_first_holds_the_run_dir(tmp_path):
    claim = rundir.claim(tmp_path / "run", None, False)
    try:
        second = cli(*ARGS, "trainer.epochs=1", "hydra.run.dir=run", cwd=tmp_path)
    finally:
        claim.release()
    assert second.returncode == 2
    assert f"another cnnlab process (pid {os.getpid()}) is writing to" in second.stderr
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / ".hydra").exists()


@pytest.mark.slow
def test_default_run_dirs_started_in_the_same_second_differ(tmp_path):
    procs = [
        _start(tmp_path, "trainer.epochs=1", "data=synthetic", "data.num_samples=64", "data.image_size=28")
        for _ in range(2)
    ]
    for proc in procs:
        proc.communicate(timeout=120)
        assert proc.returncode == 0
    assert len(list((tmp_path / "outputs").glob("*/*/metrics.json"))) == 2


def test_a_nan_loss_stops_with_one_line_and_saves_nothing_non_finite(tmp_path):
    result = cli(*ARGS, "trainer.epochs=2", "optimizer=sgd", "optimizer.lr=1e30", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "the loss became nan/inf in epoch 1 at step" in line and "trainer.nan_policy=skip_batch" in line
    for path in (tmp_path / "run" / "checkpoints").glob("*.pt"):
        assert all(torch.isfinite(t).all() for t in _weights(path).values() if t.is_floating_point())


@pytest.mark.slow
def test_resuming_from_a_last_pt_without_best_pt_makes_it_the_best(tmp_path):
    first = cli(*ARGS, "trainer.epochs=1", "hydra.run.dir=a", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "last.pt").write_bytes((tmp_path / "a/checkpoints/last.pt").read_bytes())
    again = cli(  # one more epoch: a finished checkpoint at its own length has nothing left to train
        *ARGS, "trainer.epochs=2", f"trainer.resume={tmp_path / 'alone/last.pt'}", "hydra.run.dir=b", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert "no best.pt beside" in again.stdout
    a, b = read_json(tmp_path / "a/metrics.json"), read_json(tmp_path / "b/metrics.json")
    assert b["epochs"] == 2 and b["history"][0] == a["history"][0]
    assert b["best_epoch"] == 2 or b["test_acc"] == a["test_acc"]  # epoch 1's weights were best.pt until beaten


@pytest.mark.slow
def test_resuming_with_a_changed_learning_rate_is_refused_before_anything_is_copied(tmp_path):
    first = cli(*ARGS, "trainer.epochs=1", "hydra.run.dir=a", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    other = cli(
        *ARGS,
        "trainer.epochs=2",
        "optimizer.lr=0.5",
        f"trainer.resume={tmp_path / 'a/checkpoints/last.pt'}",
        "hydra.run.dir=b",
        cwd=tmp_path,
    )
    assert other.returncode == 2 and "optimizer.lr was 0.001, now 0.5" in other.stderr
    assert not (tmp_path / "b" / "checkpoints").exists()


@pytest.mark.parametrize("run_dir", ["x" * 300, "a_file/run"])
def test_unwritable_run_dirs_are_one_line(tmp_path, run_dir):
    (tmp_path / "a_file").write_text("")
    result = cli(*ARGS, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot write")


# ----------------------------------------------------------------------------------------- in-process
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"model": {"w": torch.ones(3)}})

    def full_disk(obj, f):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(CnnlabError, match="No space left on device.*intact"):
        checkpoint.save(path, {"model": {"w": torch.zeros(3)}})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(3))


def test_a_stored_config_is_plain_data(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_SECRET", "hunter2")
    state = {
        "config": {
            "model": {"_target_": "cnnlab.models.lenet.LeNet5", "note": "${oc.env:CNNLAB_SECRET}"},
            "data": {
                "name": "imagefolder",
                "root": "${oc.env:CNNLAB_SECRET}",
                "download": True,
                "download_url": "http://example.invalid/x.tgz",
            },
            "data_spec": {
                "num_classes": 2,
                "channels": 1,
                "image_size": 8,
                "classes": ["a", "b"],
                "mean": [0.5],
                "std": [0.5],
            },
        }
    }
    cfg = checkpoint.run_config(state, "ckpt")
    assert cfg.model.note == "${oc.env:CNNLAB_SECRET}" and cfg.data.root == "${oc.env:CNNLAB_SECRET}"
    assert cfg.data.download is False and cfg.data.download_url is None
    assert "hunter2" not in OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True))
    for target in ("os.system", "builtins.eval"):
        for where in ({"_target_": target}, {"_target_": "cnnlab.models.lenet.LeNet5", "block": {"_target_": target}}):
            bad = {**state, "config": {**state["config"], "model": where}}
            with pytest.raises(CnnlabError, match="not one of cnnlab's models"):
                checkpoint.run_config(bad, "ckpt")


def _separable(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n points in 4-d labelled by the sign of their first coordinate, and a copy of the first 16 with a NaN."""
    torch.manual_seed(0)
    x = torch.randn(n, 4)
    poisoned = x[:16].clone()
    poisoned[0, 0] = float("nan")
    return x, (x[:, 0] > 0).long(), poisoned


def _fit_skipping(tmp_path, model, optimizer, train: list, val: tuple, **trainer) -> dict:
    """Trainer.fit with nan_policy=skip_batch on in-memory batches, at a constant lr."""
    return _fit(tmp_path, model, optimizer, train, val, nan_policy="skip_batch", **trainer)


def _fit(tmp_path, model, optimizer, train: list, val: tuple, **trainer) -> dict:
    """Trainer.fit on in-memory batches, at a constant lr."""
    from cnnlab.optim import Schedule

    spec = DataSpec(2, 1, 2, ["a", "b"], (0.0,), (1.0,))
    data = DataBundle(Batches(train), Batches([val]), Batches([val]), spec)
    cfg = OmegaConf.merge(
        OmegaConf.structured(TrainerConfig),
        {"precision": "fp32", "device": "cpu", "progress": "none", **trainer},
    )
    schedule = Schedule(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    return Trainer(cfg, tmp_path, torch.device("cpu")).fit(model, data, optimizer, schedule)


def test_skip_batch_drops_non_finite_batches_without_stopping(tmp_path):
    x, y, poisoned = _separable(64)
    train = [(poisoned, y[:16]), (x[16:32], y[16:32]), (x[32:48], y[32:48]), (x[48:], y[48:])]
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    metrics = _fit_skipping(tmp_path, model, optimizer, train, (x, y), epochs=5, log_every=2)
    assert metrics["skipped_batches"] == 5  # one poisoned batch per epoch
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert metrics["best_val_acc"] > 90.0
    history = metrics["history"]
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def _processes_with(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            pass
    return found


@pytest.mark.slow  # a subprocess with worker processes: CI's make test-all runs it
def test_dataloader_workers_end_with_a_stopped_run(tmp_path):
    marker = f"hydra.run.dir={tmp_path}/workers_run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cnnlab",
            *ARGS,
            "trainer.epochs=50",
            "data=synthetic",
            "data.num_samples=4000",
            "data.image_size=28",
            "data.loader=dataloader",
            "data.num_workers=2",
            marker,
        ],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: len(_processes_with(marker)) >= 3, proc)  # the run and its two workers
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    deadline = time.time() + 20
    while _processes_with(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert _processes_with(marker) == []


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=0.1),
        lambda params: torch.optim.AdamW(params, lr=0.1, weight_decay=0.1),
    ],
)
def test_a_skipped_batch_leaves_weights_and_optimizer_state_as_they_were(tmp_path, make_optimizer):
    """skip_batch puts back what weight decay and momentum would still move after a zeroed gradient."""
    x, y, poisoned = _separable(32)
    model = nn.Linear(4, 2)
    optimizer = make_optimizer(model.parameters())
    before = []  # the weights and the optimizer state as each optimizer step starts

    def record(optimizer, args, kwargs):
        state = [t.clone() for st in optimizer.state.values() for t in st.values()]
        before.append(([q.detach().clone() for q in model.parameters()], state))

    optimizer.register_step_pre_hook(record)
    train = [(x[16:], y[16:]), (poisoned, y[:16])]  # the first step makes the state; the second is skipped
    metrics = _fit_skipping(tmp_path, model, optimizer, train, (x, y), epochs=1)
    assert metrics["skipped_batches"] == 1 and len(before) == 2
    weights, state = before[1]  # the skipped step moved nothing
    assert all(torch.equal(a, b.detach()) for a, b in zip(weights, model.parameters()))
    now = [t for st in optimizer.state.values() for t in st.values()]
    assert len(now) == len(state) > 0 and all(torch.equal(a, b) for a, b in zip(state, now))


def _sgd_steps(model: nn.Module, groups: list, lr: float) -> nn.Module:
    """The reference: plain SGD, each step on the mean of its group's batch losses."""
    ref = copy.deepcopy(model)
    for group in groups:
        loss = sum(F.cross_entropy(ref(x), y) for x, y in group) / len(group)
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        with torch.no_grad():
            for q, g in zip(ref.parameters(), grads):
                q -= lr * g
    return ref


def _same_parameters(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))


def test_accumulation_averages_each_step_over_its_own_group(tmp_path):
    """3 batches, accumulate=2: the epoch's last step has one batch, and is not halved."""
    x, y, _ = _separable(48)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in (0, 16, 32)]
    model = nn.Linear(4, 2)
    expected = _sgd_steps(model, [batches[:2], batches[2:]], lr=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    metrics = _fit(tmp_path, model, optimizer, batches, (x, y), epochs=1, accumulate=2)
    assert metrics["steps"] == 2 and _same_parameters(model, expected)


@pytest.mark.parametrize("bad_first", [False, True])
def test_skip_batch_with_accumulation_drops_only_the_bad_micro_batch(tmp_path, bad_first):
    """The step of [good, bad] (or [bad, good]) is the step of the good micro-batch alone."""
    x, y, poisoned = _separable(32)
    good, bad = (x[16:], y[16:]), (poisoned, y[:16])
    model = nn.Linear(4, 2)
    expected = _sgd_steps(model, [[good]], lr=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    train = [bad, good] if bad_first else [good, bad]
    metrics = _fit_skipping(tmp_path, model, optimizer, train, (x, y), epochs=1, accumulate=2)
    assert metrics["skipped_batches"] == 1 and _same_parameters(model, expected)


def test_a_full_disk_inside_torch_save_is_one_line(tmp_path, monkeypatch):
    """torch.save reports a failed write as a RuntimeError from its zip writer (here: a real one, on /dev/full)."""
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"model": {"w": torch.ones(3)}})
    real_save = torch.save

    def onto_a_full_disk(obj, f):
        full = open("/dev/full", "wb")  # noqa: SIM115 - its close fails too (ENOSPC), which is not what is tested
        try:
            real_save(obj, full)
        finally:
            with contextlib.suppress(OSError):
                full.close()

    monkeypatch.setattr(checkpoint.torch, "save", onto_a_full_disk)
    with pytest.raises(CnnlabError, match="cannot write checkpoint .*(disk is full|no space left).*intact"):
        checkpoint.save(path, {"model": {"w": torch.zeros(100_000)}})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(3))


# ------------------------------------------------------------------------ resume never changes the experiment
def _files(run: Path) -> dict:
    return {
        p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix != ".log" and p.name != rundir.LOCK_NAME
    }


def test_resume_refuses_a_changed_seed_split_subset_image_size_or_augmentation(tmp_path, run_main):
    code, err = run_main(*ARGS, "trainer.epochs=1", "hydra.run.dir=a")
    assert code == 0, err
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    for override, difference in [
        ("seed=1", "seed was 0, now 1"),
        ("data.val_split=0.2", "data.val_split was 0.1, now 0.2"),
        ("data.subset=50", "data.subset was None, now 50"),
        ("data.image_size=16", "data.image_size was 32, now 16"),
        ("augment=basic", "augment.crop_padding was 0, now 4"),
    ]:
        code, err = run_main(*ARGS, "trainer.epochs=2", f"trainer.resume={last}", "hydra.run.dir=b", override)
        assert code == 2 and difference in err, (override, err)
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "b" / "checkpoints").exists()


@pytest.mark.slow
def test_a_finished_run_is_trained_longer_only_into_a_new_dir_with_its_schedule_replanned(tmp_path, run_main):
    onecycle = (*ARGS, "scheduler=onecycle")
    code, err = run_main(*onecycle, "trainer.epochs=2", "hydra.run.dir=r")
    assert code == 0, err
    last, before = tmp_path / "r" / "checkpoints" / "last.pt", _files(tmp_path / "r")
    code, err = run_main(*onecycle, "trainer.epochs=3", f"trainer.resume={last}", "hydra.run.dir=r")
    assert code == 2 and "holds a finished run: train it longer" in err and len(err.strip().splitlines()) == 1
    assert _files(tmp_path / "r") == before  # checkpoints, metrics.json and .hydra/config.yaml untouched
    code, err = run_main(*onecycle, "trainer.epochs=2", f"trainer.resume={last}", "hydra.run.dir=same")
    assert code == 2 and "nothing left to train" in err and len(err.strip().splitlines()) == 1
    longer = cli(*onecycle, "trainer.epochs=3", f"trainer.resume={last}", "hydra.run.dir=longer", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    assert "a new run of 3 epochs (the checkpoint's had 2): the onecycle schedule is re-planned" in longer.stdout
    metrics, first = read_json(tmp_path / "longer" / "metrics.json"), read_json(tmp_path / "r" / "metrics.json")
    assert metrics["epochs"] == 3 and metrics["steps"] == first["steps"] * 3 // 2
    assert metrics["history"][:2] == first["history"] and metrics["history"][-1]["lr"] < 1e-6  # ends as planned


def test_ctrl_c_in_the_final_test_evaluation_leaves_a_run_that_resume_auto_finishes(tmp_path, run_main, monkeypatch):
    from cnnlab.engine import finish as finish_module

    real_evaluate = finish_module.evaluate

    def ctrl_c_in_the_test_evaluation(model, loader, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # finish.py evaluates the test split only
        return real_evaluate(model, loader, *args, **kwargs)

    monkeypatch.setattr(finish_module, "evaluate", ctrl_c_in_the_test_evaluation)
    code, err = run_main(*ARGS, "trainer.epochs=1", "hydra.run.dir=run")
    assert code == 130 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert "before the test evaluation (training is complete)" in line and "trainer.resume=auto" in line
    assert not (tmp_path / "run" / "metrics.json").exists()
    monkeypatch.setattr(finish_module, "evaluate", real_evaluate)
    code, err = run_main(*ARGS, "trainer.epochs=1", "hydra.run.dir=run")
    assert code == 2 and "unfinished run (continue it with " in err and "trainer.resume=auto)" in err
    code, err = run_main(*ARGS, "trainer.epochs=1", "hydra.run.dir=run", "trainer.resume=auto")
    assert code == 0, err
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["epochs"] == 1 and metrics["finished"] and 0 < metrics["test_acc"] <= 100
    curves = _curves(tmp_path / "run")  # the resumed process's final points land at the run's last step, not 0
    assert curves["~final/test_acc"] == [(metrics["steps"], pytest.approx(metrics["test_acc"]))]
    assert [step for step, _ in curves["val/acc"]] == [metrics["steps"]]


def test_a_malformed_rng_state_is_one_line(tmp_path, run_main):
    code, err = run_main(*ARGS, "trainer.epochs=1", "hydra.run.dir=a")
    assert code == 0, err
    state = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    size = torch.get_rng_state().numel()
    for bad in (torch.zeros(10, dtype=torch.uint8), torch.full((size,), 255, dtype=torch.uint8)):
        state["rng"]["torch"] = bad
        torch.save(state, tmp_path / "bad.pt")
        code, err = run_main(*ARGS, "trainer.epochs=2", f"trainer.resume={tmp_path / 'bad.pt'}", "hydra.run.dir=b")
        assert code == 2 and "Traceback" not in err
        (line,) = err.strip().splitlines()
        assert "cannot be used to resume: its rng.torch entry" in line


@pytest.mark.slow
def test_a_run_dir_deleted_mid_run_is_one_line(tmp_path):
    proc = _start(tmp_path, "trainer.epochs=50", "hydra.run.dir=run")
    _wait_for(lambda: (tmp_path / "run" / "checkpoints" / "last.pt").is_file(), proc)
    time.sleep(0.2)  # inside epoch 2's training, between checkpoint writes
    shutil.rmtree(tmp_path / "run")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert "was deleted" in line or "No such file or directory" in line
    assert not (tmp_path / "run").exists()  # not made again by a checkpoint write (nor trained into)


def test_the_whitening_stem_is_fitted_on_clean_images_before_the_ema_copy(tmp_path):
    """The speedrun net's stem: fitted to the first training batch in order, not augmented, and the EMA copy
    (made after the fit) holds the same filters."""
    import cnnlab
    from cnnlab import data as data_lib
    from cnnlab import models, optim
    from cnnlab.engine.trainer import planned_steps
    from cnnlab.models.speedrun import WhiteningStem

    cfg = cnnlab.compose(
        ["model=speedrun", "model.widths=[8,8,8]", "data=synthetic", "data.num_samples=128", "data.batch_size=32"]
        + ["augment=[basic,cutout]", "trainer.ema_decay=0.9", "trainer.epochs=1", "trainer.max_steps=1"]
        + ["trainer.device=cpu", "trainer.progress=none", "trainer.image_grid=0", "trainer.precision=fp32"]
    )
    cpu = torch.device("cpu")
    clean, _ = next(iter(data_lib.build(cfg.data, cfg.augment, cpu, seed=cfg.seed).train.evaluation_mode()))
    expected = WhiteningStem(3)
    expected.fit(clean)
    bundle = data_lib.build(cfg.data, cfg.augment, cpu, seed=cfg.seed)
    model = models.build(cfg.model, bundle.spec)
    per_epoch, total = planned_steps(cfg.trainer, len(bundle.train))
    optimizer, scheduler = optim.build(cfg.optimizer, cfg.scheduler, model, per_epoch, total)
    trainer = Trainer(cfg.trainer, tmp_path, cpu, seed=cfg.seed, config={})
    trainer.fit(model, bundle, optimizer, scheduler)
    assert torch.allclose(model.whiten.weight, expected.weight, atol=1e-6)
    assert torch.allclose(trainer.state.ema.module.whiten.weight, expected.weight, atol=1e-6)


def test_an_archive_that_fails_halfway_leaves_no_partial_data_root(tmp_path):
    """A zip whose last class is corrupt: the first classes extract before the CRC error. data.root must not
    appear, so that a rerun fails the same way instead of training on the classes that got through."""
    import io
    import zipfile

    from PIL import Image

    from cnnlab.data.folders import load_imagefolder

    png = io.BytesIO()
    Image.new("RGB", (6, 6), (0, 128, 255)).save(png, "PNG")
    archive = tmp_path / "pics.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for c in ("a", "b", "c"):
            for i in range(3):
                zf.writestr(f"{c}/{i}.png", png.getvalue())
    blob = bytearray(archive.read_bytes())
    last = blob.rfind(png.getvalue())  # c/2.png's stored bytes: flip some, its CRC check fails
    blob[last + 20 : last + 30] = bytes(10)
    archive.write_bytes(bytes(blob))
    root = tmp_path / "data" / "pics"
    for _ in range(2):  # the rerun meets the same refusal, not a dataset without class c
        with pytest.raises(CnnlabError, match="could not be extracted"):
            load_imagefolder(root, archive.as_uri(), 0.2, 0, True)
        assert not root.exists() and list((tmp_path / "data").iterdir()) == []  # no temp dir left either
