"""The bad-input catalogue: every mistake a user can make gives one `error:` line, exit code 2, no traceback,
and leaves nothing half-written that `trainer.resume=auto` would pick up.

Most cases call `cnnlab.cli.main` in-process (a subprocess per case would take minutes on 2 cores); a few
run the real `cnnlab` subprocess, also under Hydra-related environment variables a user may have set.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, cli_env
from test_data import jpeg, mat_v5, write_idx
from test_untrusted_data import RunsCode, png_header_only, write_cifar
from trained_run import one_error_line

from cnnlab.cli import main

TINY = [
    "data=synthetic",
    "data.num_samples=64",
    "data.batch_size=16",
    "trainer.epochs=1",
    "trainer.max_steps=1",
    "trainer.progress=none",
]


def assert_one_error_line(code: int, err: str, expected: str) -> None:
    assert "Traceback" not in err, err
    line = one_error_line((code, err))
    assert expected in line, line


def assert_nothing_resumable(root: Path, keep: tuple[Path, ...] = ()) -> None:
    """No checkpoint anywhere below `root` except the inputs `keep` (a failed start writes no last.pt/best.pt)."""
    written = [p for p in root.rglob("*.pt") if p.is_file() and p not in keep]
    assert not written, written
    assert not [p for p in root.rglob("*.tmp*")], list(root.rglob("*.tmp*"))


def check(run_main, tmp_path, argv, expected, keep=()):
    code, err = run_main(*argv)
    assert_one_error_line(code, err, expected)
    assert_nothing_resumable(tmp_path, keep)


# ---------------------------------------------------------------------------------------- config values
CONFIG_CASES = [
    # (overrides, what the line must say)
    (["seed=-1"], "seed must be >= 0"),
    (["trainer.epochs=0"], "trainer.epochs must be >= 1"),
    (["trainer.epochs=abc"], "'abc'"),
    (["trainer.epochs=1.5"], "1.5"),
    (["trainer.log_every=0"], "trainer.log_every must be >= 1"),
    (["trainer.label_smoothing=nan"], "trainer.label_smoothing must be a finite number"),
    (["trainer.label_smoothing=1.5"], "trainer.label_smoothing must be"),
    (["optimizer.lr=inf"], "optimizer.lr must be a finite number"),
    (["optimizer.lr=-inf"], "optimizer.lr must be a finite number"),
    (["optimizer.lr=-1"], "optimizer.lr must be > 0"),
    (["optimizer.lr=abc"], "optimizer.lr must be a number"),
    (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay must be >= 0"),
    (["optimizer.weight_decay=nan"], "optimizer.weight_decay must be a finite number"),
    (["optimizer=sgd", "optimizer.momentum=2"], "optimizer.momentum must be"),
    (["optimizer.layer_decay=0"], "optimizer.layer_decay must be > 0"),
    (["trainer.grad_clip=nan"], "trainer.grad_clip must be a finite number"),
    (["trainer.grad_clip=0"], "trainer.grad_clip must be > 0"),
    (["trainer.accumulate=0"], "trainer.accumulate must be >= 1"),
    (["trainer.ema_decay=1.5"], "trainer.ema_decay must be"),
    (["trainer.early_stopping_patience=0"], "trainer.early_stopping_patience must be >= 1"),
    (["trainer.max_steps=0"], "trainer.max_steps must be >= 1"),
    (["trainer.time_limit=-5"], "trainer.time_limit must be > 0"),
    (["trainer.time_limit=inf"], "trainer.time_limit must be a finite number"),
    (["trainer.limit_train_batches=0"], "trainer.limit_train_batches must be >= 1"),
    (["trainer.precision=fp8"], "trainer.precision must be one of"),
    (["trainer.progress=fancy"], "trainer.progress must be one of"),
    (["trainer.monitor=train_acc"], "trainer.monitor must be one of"),
    (["trainer.nan_policy=ignore"], "trainer.nan_policy must be one of"),
    (["trainer.device=tpu"], "trainer.device"),
    (["data.batch_size=0"], "data.batch_size must be >= 1"),
    (["data.num_workers=-1"], "data.num_workers must be >= 0"),
    (["data.val_split=1.5"], "data.val_split must be"),
    (["data.val_split=nan"], "data.val_split must be a finite number"),
    (["data.val_split=abc"], "data.val_split must be a number"),
    (["data.image_size=0"], "data.image_size must be >= 1"),
    (["data.channels=0"], "data.channels must be >= 1"),
    (["data.num_classes=0"], "data.num_classes must be >= 1"),
    (["data.loader=gpu"], "data.loader must be one of"),
    (["data.subset=0"], "data.subset must be >= 1"),
    (["data.download=maybe"], "maybe"),
    (["data.root="], "data.root is empty"),
    (["data.root=${oc.env:CNNLAB_TEST_UNSET_VARIABLE}"], "cannot resolve data.root: Environment variable"),
    (["optimizer.lr=${nowhere.key}"], "cannot resolve optimizer.lr: Interpolation key 'nowhere.key' not found"),
    (["data.download_url=https://example.com/x.zip"], "data.download_url is read by data=imagefolder only"),
    (["finetune.lr_decay=0"], "finetune.lr_decay must be"),
    (["augment.mix_prob=2"], "augment.mix_prob"),
    (["augment.hue=0.9"], "augment.hue"),
    (["augment.crop_scale=[0.5,0.1]"], "augment.crop_scale"),
    (["scheduler.warmup_epochs=-1"], "scheduler.warmup_epochs must be"),
    (["scheduler.name=cyclic"], "scheduler.name 'cyclic' is unknown"),
    (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size must be"),
    (["scheduler=onecycle", "scheduler.warmup_epochs=1"], "own warm-up"),
    (["scheduler=step", "scheduler.gamma=nan"], "scheduler.gamma must be a finite number"),
    (["scheduler=plateau", "scheduler.factor=1"], "scheduler.factor must be"),
    (["scheduler=multistep", "scheduler.milestones=[a,b]"], "scheduler.milestones must be a list"),
    (["scheduler=onecycle", "scheduler.cycle_momentum=maybe"], "scheduler.cycle_momentum must be true or false"),
    (["optimizer.betas=[0.9,nan]"], "optimizer.betas must be"),
    (["augment.crop_ratio=[1,inf]"], "augment.crop_ratio"),
    # unknown keys, with or without +: one line naming the key and the nearest valid one
    (["+foo=bar"], "unknown key foo"),
    (["+trainer.epochz=3"], "unknown key trainer.epochz (not in the config schema; did you mean trainer.epochs?)"),
    (["++trainer.epochz=3"], "did you mean trainer.epochs?"),
    (["+data.rooot=/x"], "did you mean data.root?"),
    (["+optimizer.momentm=0.9"], "unknown key optimizer.momentm"),
    (["+scheduler.gama=0.1"], "unknown key scheduler.gama"),
    (["scheduler=step", "scheduler.name=cosine"], "unknown key scheduler.step_size"),
    (["trainer.epochz=3"], "epochz"),
    (["optimizer.lrr=0.1"], "lrr"),
    (["+model.foo=1"], "foo"),
    # unknown group options
    (["model=vgg999"], "unknown model 'vgg999'; choose from:"),
    (["data=imagenet22k"], "unknown data 'imagenet22k'"),
    (["optimizer=lbfgs"], "unknown optimizer 'lbfgs'"),
    (["scheduler=cyclic"], "unknown scheduler 'cyclic'"),
    (["augment=wild"], "unknown augment 'wild'"),
    (["trainer=fast"], "unknown trainer 'fast'"),
    (["experiment=nope"], "unknown experiment 'nope'"),
    (["debug=fastest"], "unknown debug 'fastest'"),
    (["finetune=bogus"], "unknown finetune 'bogus'"),
]


@pytest.mark.parametrize("overrides, expected", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_bad_config_value(run_main, tmp_path, overrides, expected):
    check(run_main, tmp_path, ["train", *TINY, *overrides], expected)


# ---------------------------------------------------------------------------------------------- paths
def test_missing_data_root_with_download_off(run_main, tmp_path):
    check(
        run_main,
        tmp_path,
        ["train", *TINY, "data=mnist", f"data.root={tmp_path}/nowhere", "data.download=false"],
        f"MNIST not found under {tmp_path}/nowhere (data.download=false)",
    )


@pytest.mark.parametrize("dataset", ["imagefolder", "cifar10"])
def test_data_root_that_is_a_file(run_main, tmp_path, dataset):
    (tmp_path / "file").write_text("not a folder")
    check(
        run_main,
        tmp_path,
        ["train", *TINY, f"data={dataset}", f"data.root={tmp_path}/file", "data.download=false"],
        "file",
    )


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_imagefolder(run_main, tmp_path):
    for c in ("a", "b"):
        jpeg(tmp_path / "pics" / c / "0.jpg", (1, 2, 3))
    (tmp_path / "pics" / "a").chmod(0)
    try:
        check(
            run_main,
            tmp_path,
            ["train", *TINY, "data=imagefolder", f"data.root={tmp_path}/pics", "data.image_size=8"],
            "pics",
        )
    finally:
        (tmp_path / "pics" / "a").chmod(0o755)


@pytest.mark.parametrize("what", ["missing", "dir", "text", "zeros"])
def test_resume_path_that_is_not_a_checkpoint(run_main, tmp_path, what):
    path = tmp_path / "ckpt.pt"
    if what == "dir":
        path.mkdir()
    elif what == "text":
        path.write_text("hello")
    elif what == "zeros":
        path.write_bytes(bytes(1000))
    keep = (path,) if path.is_file() else ()
    check(run_main, tmp_path, ["train", *TINY, f"trainer.resume={path}"], "ckpt.pt", keep)


# ------------------------------------------------------------------------------- hostile dataset files
def _mnist(root: Path) -> Path:
    raw = root / "MNIST" / "raw"
    for stem, shape in (
        ("train-images-idx3-ubyte", (20, 28, 28)),
        ("train-labels-idx1-ubyte", (20,)),
        ("t10k-images-idx3-ubyte", (10, 28, 28)),
        ("t10k-labels-idx1-ubyte", (10,)),
    ):
        write_idx(raw / f"{stem}.gz", np.arange(np.prod(shape)).reshape(shape) % 10)
    return raw / "train-images-idx3-ubyte.gz"


def _garble_deflate(path: Path) -> None:
    whole = bytearray(path.read_bytes())
    whole[12:40] = bytes(range(28))
    path.write_bytes(bytes(whole))


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda p: p.write_bytes(gzip.compress(bytes(6))), "wrong magic number"),
        (lambda p: p.write_bytes(gzip.compress(bytes([0, 0, 8, 3, 0, 0]))), "shorter than the 16-byte idx header"),
        (_garble_deflate, "corrupt or truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:40]), "corrupt or truncated"),
        (
            lambda p: p.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 9, 28, 28) + bytes(10))),
            "header says",
        ),
    ],
    ids=["6-byte idx", "short header", "corrupt deflate", "truncated gzip", "truncated idx"],
)
def test_corrupt_mnist_file(run_main, tmp_path, damage, expected):
    path = _mnist(tmp_path / "root")
    damage(path)
    check(
        run_main,
        tmp_path,
        ["train", *TINY, "data=mnist", f"data.root={tmp_path}/root", "data.download=false"],
        f"{path}",
    )
    code, err = run_main("train", *TINY, "data=mnist", f"data.root={tmp_path}/root", "data.download=false")
    assert expected in err


def test_cifar_batch_that_would_run_code(run_main, tmp_path):
    marker = tmp_path / "pwned"
    folder = write_cifar(
        tmp_path / "root", override={"data_batch_2": pickle.dumps(RunsCode(os.system, f"touch {marker}"), protocol=2)}
    )
    check(
        run_main,
        tmp_path,
        ["train", *TINY, "data=cifar10", f"data.root={tmp_path}/root", "data.download=false"],
        f"{folder / 'data_batch_2'} is not a plain data file",
    )
    assert not marker.exists()


def test_truncated_cifar_batch(run_main, tmp_path):
    folder = write_cifar(tmp_path / "root")
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:500])
    check(
        run_main,
        tmp_path,
        ["train", *TINY, "data=cifar10", f"data.root={tmp_path}/root", "data.download=false"],
        f"{folder / 'test_batch'} is corrupt or truncated",
    )


def _pics(root: Path) -> Path:
    for c in ("cat", "dog"):
        for i in range(3):
            jpeg(root / c / f"{i}.jpg", (40 * i, 80, 0))
    return root


@pytest.mark.parametrize("case", ["empty class", "bomb", "fake jpeg"])
def test_hostile_imagefolder(run_main, tmp_path, case):
    root = _pics(tmp_path / "pics")
    if case == "empty class":
        (root / "emu").mkdir()
        bad = root / "emu"
    elif case == "bomb":
        bad = root / "dog" / "bomb.png"
        bad.write_bytes(png_header_only(20_000, 20_000))
    else:
        bad = root / "cat" / "1.jpg"
        bad.write_text("not a jpeg")
    check(
        run_main,
        tmp_path,
        ["train", *TINY, "data=imagefolder", f"data.root={root}", "data.image_size=8", "data.num_workers=0"],
        str(bad),
    )


def test_truncated_svhn_mat(run_main, tmp_path):
    x = np.zeros((32, 32, 3, 4), np.uint8)
    for split in ("train", "test"):
        (tmp_path / "root" / "svhn").mkdir(parents=True, exist_ok=True)
        (tmp_path / "root" / "svhn" / f"{split}_32x32.mat").write_bytes(
            mat_v5({"X": x, "y": np.array([[1.0], [2.0], [3.0], [10.0]])}, compress=True)[:-20]
        )
    check(
        run_main,
        tmp_path,
        ["train", *TINY, "data=svhn", f"data.root={tmp_path}/root", "data.download=false"],
        "train_32x32.mat is corrupt or truncated",
    )


def test_truncated_stl10(run_main, tmp_path):
    folder = tmp_path / "root" / "stl10_binary"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        (folder / f"{split}_X.bin").write_bytes(bytes(3 * 96 * 96 * 2 - 7))
        (folder / f"{split}_y.bin").write_bytes(bytes([1, 2]))
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    check(
        run_main,
        tmp_path,
        ["train", *TINY, "data=stl10", f"data.root={tmp_path}/root", "data.download=false"],
        "train_X.bin is corrupt or truncated",
    )


def test_flowers_setid_that_is_not_a_mat_file(run_main, tmp_path):
    folder = tmp_path / "root" / "flowers-102"
    jpeg(folder / "jpg" / "image_00001.jpg", (1, 2, 3))
    (folder / "imagelabels.mat").write_bytes(mat_v5({"labels": np.array([[1.0]])}))
    (folder / "setid.mat").write_bytes(b"<html>404 not found</html>")
    check(
        run_main,
        tmp_path,
        ["train", *TINY, "data=flowers102", f"data.root={tmp_path}/root", "data.download=false", "data.image_size=8"],
        "setid.mat is not a MATLAB v5 .mat file",
    )


# ---------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def good_checkpoint(finished_run) -> dict:
    """The state dict of a real checkpoint from a one-step training run (lenet5 on synthetic data)."""
    return torch.load(finished_run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def _damaged(good: dict, damage: str) -> dict:
    state = {k: v for k, v in good.items()}
    if damage == "string format_version":
        state["format_version"] = "2"
    elif damage == "list model":
        state["model"] = [1, 2, 3]
    elif damage == "future format":
        state["format_version"] = 999
    elif damage == "no data_spec":  # stored inside the run config
        state.pop("data_spec", None)
        state["config"] = {k: v for k, v in good["config"].items() if k != "data_spec"}
    else:
        state.pop(damage.removeprefix("no "))
    return state


DAMAGES = ["string format_version", "list model", "future format", "no rng", "no fit", "no model", "no data_spec"]


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("command", ["resume", "eval"])
def test_malformed_checkpoint(run_main, tmp_path, good_checkpoint, command, damage):
    if command == "eval" and damage in ("no rng", "no fit"):
        pytest.skip("eval needs neither the RNG states nor the fit progress")
    if command == "resume" and damage == "no data_spec":
        pytest.skip("resuming rebuilds the data from the current config; only eval reads data_spec")
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save(_damaged(good_checkpoint, damage), path)
    before = path.read_bytes()
    argv = ["train", *TINY, f"trainer.resume={path}"] if command == "resume" else ["eval", f"checkpoint={path}"]
    code, err = run_main(*argv)
    assert_one_error_line(code, err, str(path))
    assert path.read_bytes() == before  # loses nothing already saved
    assert_nothing_resumable(tmp_path, keep=(path,))


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["checkpoint=/nonexistent/best.pt"], "/nonexistent/best.pt does not exist"),
        (["checkpoint=."], "is not a file"),
        (["+foo=1", "checkpoint=x.pt"], "unknown key foo"),
        (["split=dev", "checkpoint=x.pt"], "split must be one of"),
        (["batch_size=0", "checkpoint=x.pt"], "batch_size must be >= 1"),
        ([], "checkpoint is required"),
    ],
)
def test_bad_eval_input(run_main, tmp_path, overrides, expected):
    check(run_main, tmp_path, ["eval", *overrides], expected)


# ------------------------------------------------------------- real subprocesses, under Hydra variables
@pytest.mark.parametrize(
    "env, args, expected",
    [
        ({"HYDRA_FULL_ERROR": "0"}, ["optimizer.lrr=0.1"], "lrr"),  # Hydra's own short report would be 2+ lines
        ({"HYDRA_MAIN_MODULE": "nonexistent.module"}, ["model=vgg999"], "unknown model 'vgg999'"),
        ({"HYDRA_DEPRECATION_WARNINGS_AS_ERRORS": "1"}, ["+trainer.epochz=3"], "did you mean trainer.epochs?"),
    ],
    ids=["HYDRA_FULL_ERROR=0", "HYDRA_MAIN_MODULE", "HYDRA_DEPRECATION_WARNINGS_AS_ERRORS"],
)
def test_error_contract_holds_under_hydra_environment_variables(tmp_path, env, args, expected):
    result = cli("train", *args, cwd=tmp_path, env=env)
    assert_one_error_line(result.returncode, result.stderr, expected)
    assert_nothing_resumable(tmp_path)


def test_hostile_cifar_in_a_real_subprocess(tmp_path):
    marker = tmp_path / "pwned"
    write_cifar(tmp_path / "root", override={"batches.meta": pickle.dumps(RunsCode(os.system, f"touch {marker}"))})
    result = cli("train", *TINY, "data=cifar10", f"data.root={tmp_path}/root", "data.download=false", cwd=tmp_path)
    assert_one_error_line(result.returncode, result.stderr, "batches.meta is not a plain data file")
    assert not marker.exists()
    assert_nothing_resumable(tmp_path)
    shutil.rmtree(tmp_path / "root")


# ------------------------------------------------------------------- output paths: never into a run's files
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A real finished run dir (one step of lenet5 on synthetic data), trained in-process."""
    from hydra.core.global_hydra import GlobalHydra

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    argv, cwd = list(sys.argv), os.getcwd()
    try:
        main(["train", *TINY, f"hydra.run.dir={run_dir}"])
    except SystemExit as ex:
        assert ex.code in (0, None)
    finally:
        GlobalHydra.instance().clear()
        sys.argv[:] = argv
        os.chdir(cwd)
    return run_dir


def snapshot(root: Path) -> dict:
    """Every file below `root` with its bytes: a refused command must leave it exactly as it was."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


OUTPUT_CASES = [
    # (command line with RUN for the finished run and TMP for the test's dir, what the line must say)
    (["eval", "checkpoint=RUN/checkpoints/best.pt", "output=RUN/metrics.json"], "would write into the training run"),
    (["eval", "checkpoint=RUN/checkpoints/best.pt", "output=RUN/eval.json"], "would write into the training run"),
    (["eval", "checkpoint=RUN/checkpoints/best.pt", "output=TMP/adir"], "output=TMP/adir is a directory"),
    (["eval", "checkpoint=RUN/checkpoints/best.pt", "output_dir=RUN"], "would write into the training run"),
    (["eval", "checkpoint=RUN/checkpoints/best.pt", "output_dir=RUN/tb"], "would write into the training run"),
    (["predict", "checkpoint=RUN/checkpoints/best.pt", "inputs=TMP", "output=RUN/checkpoints/best.pt"], "training run"),
    (["predict", "checkpoint=RUN/checkpoints/best.pt", "inputs=TMP", "output=TMP/adir"], "is a directory"),
    (["predict", "checkpoint=RUN/checkpoints/best.pt", "inputs=TMP", "output=TMP/afile/p.json"], "afile is a file"),
    (["export", "checkpoint=RUN/checkpoints/best.pt", "output=RUN/checkpoints/last.pt"], "training run"),
    (["export", "checkpoint=RUN/checkpoints/best.pt", "output=TMP/copy.pt"], "is a checkpoint"),
    (["export", "checkpoint=RUN/checkpoints/best.pt", "output=TMP/adir"], "is a directory"),
    (["preview", "output=RUN/.hydra/grid.png"], "would write into the training run"),
    (["preview", "output=TMP/afile/grid.png"], "afile is a file"),
    (["features", "checkpoint=RUN/checkpoints/best.pt", "input=x.png", "hydra.run.dir=RUN"], "training run"),
    (["compare", "RUN", "output=RUN"], "would write into the training run"),
    (["compare", "RUN", "output=TMP/afile"], "is a file"),
]


@pytest.mark.parametrize("argv, expected", OUTPUT_CASES, ids=[" ".join(a[:1] + a[2:]) for a, _ in OUTPUT_CASES])
def test_output_never_replaces_or_deletes_a_runs_files(run_main, tmp_path, finished_run, argv, expected):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("not a directory")
    shutil.copy(finished_run / "checkpoints" / "best.pt", tmp_path / "copy.pt")  # a checkpoint outside any run
    before, copy = snapshot(finished_run), (tmp_path / "copy.pt").read_bytes()
    argv = [a.replace("RUN", str(finished_run)).replace("TMP", str(tmp_path)) for a in argv]
    code, err = run_main(*argv)
    assert_one_error_line(code, err, expected.replace("TMP", str(tmp_path)))
    assert snapshot(finished_run) == before  # nothing replaced, nothing deleted
    assert (tmp_path / "copy.pt").read_bytes() == copy and list((tmp_path / "adir").iterdir()) == []
    assert not (tmp_path / "outputs").exists()  # and no output dir left behind


def test_eval_report_in_a_subfolder_of_the_run_keeps_its_files(run_main, tmp_path, finished_run):
    """The default report dir (<run>/eval/test/) is allowed; it writes PNGs and eval.json only, no tb/ events."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    code, err = run_main("eval", f"checkpoint={run}/checkpoints/best.pt")
    assert code == 0, err
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k.parts[0] != "eval"} == before
    assert {p.name for p in (run / "eval" / "test").iterdir()} == {
        "eval.json",
        "confusion_matrix.png",
        "misclassified.png",
    }


def test_default_output_dirs_are_unique(tmp_path, monkeypatch):
    """Two commands started in the same second never share a folder: the API's run dir and compare's report."""
    from cnnlab.engine import outputs

    monkeypatch.chdir(tmp_path)
    made = {outputs.new_dir("outputs/compare") for _ in range(20)}
    assert len(made) == 20 and all(p.is_dir() for p in made)
    for command in ("predict", "features", "preview"):  # Hydra's run dir for them ends in the per-process id
        text = (Path(__file__).parent.parent / "configs" / f"{command}.yaml").read_text()
        assert "${now:%H-%M-%S}-${cnnlab.run_id:}" in text, command


def test_api_default_run_dirs_are_unique_and_a_refused_start_leaves_nothing(tmp_path, monkeypatch):
    import cnnlab
    from cnnlab.errors import CnnlabError

    monkeypatch.chdir(tmp_path)
    cfg = cnnlab.compose([*TINY, "trainer.image_grid=0"])
    first, second = cnnlab.train(cfg), cnnlab.train(cfg)
    runs = sorted((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 2 and all((r / "metrics.json").is_file() for r in runs), runs
    assert first["finished"] and second["finished"]
    with pytest.raises(CnnlabError, match="seed must be >= 0"):
        cnnlab.train(cnnlab.compose([*TINY, "seed=-1"]))
    assert sorted((tmp_path / "outputs").glob("*/*")) == runs  # the refused start left no dir
    with pytest.raises(CnnlabError) as info:  # the API's name for the dir is run_dir
        cnnlab.train(cfg, run_dir=runs[0])
    assert "choose another run_dir" in str(info.value) and "hydra.run.dir" not in str(info.value)


# ---------------------------------------------------------------- refused starts leave nothing behind
@pytest.mark.parametrize(
    "argv",
    [
        ["train", *TINY, "seed=-1"],
        ["train", *TINY, "data.root=/nonexistent/root", "data=mnist", "data.download=false"],
        ["predict", "checkpoint=/nonexistent.pt", "inputs=x.png"],
        ["preview", "count=0"],
        ["features", "checkpoint=/nonexistent.pt", "input=x.png"],
    ],
    ids=["bad value", "missing data", "predict", "preview", "features"],
)
def test_refused_start_leaves_no_dir(run_main, tmp_path, argv):
    code, err = run_main(*argv)
    assert code == 2 and "Traceback" not in err, err
    assert not (tmp_path / "outputs").exists(), list((tmp_path / "outputs").rglob("*"))


def test_refused_start_into_an_existing_run_says_why_in_its_log(run_main, tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    code, err = run_main("train", *TINY, f"hydra.run.dir={run}")
    assert_one_error_line(code, err, "already holds a finished run")
    log = (run / "train.log").read_text()
    assert log.startswith(before[Path("train.log")].decode())  # appended to, nothing else touched
    assert log.rstrip().endswith(err.strip())  # the cluster job's run dir says why it failed
    assert {k: v for k, v in snapshot(run).items() if k.name != "train.log"} == {
        k: v for k, v in before.items() if k.name != "train.log"
    }


def test_resuming_a_finished_run_into_a_new_dir_with_nothing_left_says_so(run_main, tmp_path, finished_run):
    last = finished_run / "checkpoints" / "last.pt"
    code, err = run_main("train", *TINY, f"trainer.resume={last}", f"hydra.run.dir={tmp_path}/new")
    assert_one_error_line(code, err, "nothing left to train: ")
    assert "has trained 1 epoch(s)" in err and "raise trainer.epochs" in err
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------- one line instead of a traceback
def test_unknown_key_without_plus_gets_a_suggestion(run_main, tmp_path):
    check(run_main, tmp_path, ["train", "trainer.epoch=2"], "unknown key trainer.epoch")
    check(run_main, tmp_path, ["train", "trainer.epoch=2"], "did you mean trainer.epochs?")
    check(run_main, tmp_path, ["eval", "spilt=val", "checkpoint=x.pt"], "did you mean split?")


def test_print_resolved_config_with_a_bad_interpolation(run_main, tmp_path):
    argv = ["train", "optimizer.lr=${nowhere.key}", "--cfg", "job", "--resolve"]
    check(run_main, tmp_path, argv, "Interpolation key 'nowhere.key' not found")


def test_disk_full_while_saving_a_checkpoint_is_one_line(tmp_path):
    """A real write failure: the file size limit (RLIMIT_FSIZE) stops torch.save part-way, as a full disk does;
    torch raises RuntimeError, not OSError. The line reaches train.log too."""
    import resource
    import signal
    import subprocess

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # lenet5's checkpoint is ~750 kB

    argv = [sys.executable, "-m", "cnnlab", "train", *TINY, "trainer.image_grid=0", "hydra.run.dir=run"]
    result = subprocess.run(argv, cwd=tmp_path, env=cli_env(), preexec_fn=limit, capture_output=True, text=True)
    assert_one_error_line(result.returncode, result.stderr, "a file write failed (the disk is full")
    assert "cannot write checkpoint" in result.stderr
    assert "error: cannot write" in (tmp_path / "run" / "train.log").read_text()
    assert_nothing_resumable(tmp_path)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps")
def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "train", *TINY],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Ctrl-C while torch is being imported (the case that once left numpy half-imported): wait until its library is
    # mapped rather than a fixed time, which on a loaded machine can still be inside Python's own start-up.
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + 60
    while "libtorch" not in maps.read_text() and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert_nothing_resumable(tmp_path)


def test_the_continue_hint_for_a_path_with_spaces_can_be_pasted(run_main, tmp_path, finished_run):
    import shlex

    run = tmp_path / "my runs" / "run 1"
    shutil.copytree(finished_run / "checkpoints", run / "checkpoints")  # last.pt without metrics.json: unfinished
    code, err = run_main("train", *TINY, f"hydra.run.dir={run}")
    assert_one_error_line(code, err, "already holds an unfinished run (continue it with ")
    hint = err.split("continue it with ", 1)[1].split(" trainer.resume=auto)", 1)[0]
    assert shlex.split(hint) == [f"hydra.run.dir={run}"]


def test_a_refused_command_that_writes_into_the_working_dir_keeps_it(run_main, tmp_path):
    """eval and export run with hydra.run.dir=. : a refused start removes nothing there, even when it is empty."""
    code, err = run_main("eval", "checkpoint=/nonexistent/best.pt")
    assert_one_error_line(code, err, "does not exist")
    assert tmp_path.is_dir() and Path.cwd() == tmp_path


@pytest.mark.parametrize("sweep_dir", ["afile/sweep", "afile"])
def test_a_sweep_dir_that_cannot_be_created_is_one_line(run_main, tmp_path, sweep_dir):
    (tmp_path / "afile").write_text("not a directory")
    check(run_main, tmp_path, ["train", "-m", *TINY, f"hydra.sweep.dir={tmp_path / sweep_dir}"], "cannot write")
