"""The chapter studies on a laptop: seeds as an axis of the sweep summary (statistics against hand-computed
values), rows in the sweep's order, the eval-mode train accuracy behind the train-val gap, the study verdicts,
class subsets, and every study's budget=cpu composing and running a few steps."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import cnnlab
from cnnlab import data as data_lib
from cnnlab import models, optim
from cnnlab.callbacks.gradient_flow import stage_names
from cnnlab.callbacks.train_accuracy import TrainAccuracy, fixed_sample
from cnnlab.data.build import select_classes
from cnnlab.data.datasets import ArrayDataset
from cnnlab.engine.trainer import Trainer, planned_steps
from cnnlab.errors import CnnlabError
from cnnlab.experiments import findings, seeds
from cnnlab.experiments import report as report_lib
from cnnlab.paths import config_dir

STUDIES = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("study_*.yaml"))
CPU_STUDIES = sorted(p.name for p in (Path(config_dir()) / "budget").iterdir() if (p / "cpu.yaml").is_file())


# ------------------------------------------------------------------------------------- the statistics
def test_mean_std_and_pooled_standard_error_by_hand():
    a, b = seeds.stat([50, 52, 54]), seeds.stat([40.0, 41.0, 42.0, None])
    assert (a.mean, a.std, a.n) == (52.0, 2.0, 3)  # std: sqrt((4 + 0 + 4) / 2) = 2
    assert (b.mean, b.std, b.n) == (41.0, 1.0, 3)
    # pooled variance (2 * 4 + 2 * 1) / 4 = 2.5; se = sqrt(2.5 * (1/3 + 1/3)) = sqrt(5/3)
    assert seeds.pooled_se(a, b) == pytest.approx(math.sqrt(5 / 3))
    d = seeds.difference("batch", a, "none", b)
    assert d.diff == 11.0 and d.exceeds_noise
    assert str(d) == "batch > none by 11.0 ± 1.3 points (3 seeds)"
    close = seeds.difference("max", seeds.stat([50, 52, 54]), "avg", seeds.stat([49, 51, 53]))  # 1 < 2 x 1.63
    assert not close.exceeds_noise and "within the noise" in str(close)
    one = seeds.difference("x", seeds.stat([60]), "y", seeds.stat([50]))
    assert one.se is None and not one.exceeds_noise and "no noise estimate" in str(one)
    assert seeds.stat([]) is None and seeds.stat([7]) == seeds.Stat(7.0, 0.0, 1)


def test_arms_keep_the_sweep_order_and_curves_average_per_epoch():
    rows = [{"model.norm": n, "seed": s} for n in ("batch", "none") for s in (0, 1)]
    arms = seeds.group(rows, ["model.norm", "seed"])
    assert [(a.name, a.indices) for a in arms] == [("batch", [0, 1]), ("none", [2, 3])]
    two = seeds.group([{"a": 1, "b": "x", "seed": 0}], ["a", "b", "seed"])
    assert two[0].name == "a=1, b=x"
    histories = [[{"epoch": 1, "v": 10.0}, {"epoch": 2, "v": 20.0}], [{"epoch": 1, "v": 30.0}]]
    epochs, mean, std = seeds.mean_curve(histories, lambda h: h["v"])
    assert (epochs, mean) == ([1], [20.0]) and std == [pytest.approx(math.sqrt(200))]


def test_verdict_shown_contradicted_or_not_shown():
    arms = seeds.group([{"k": v} for v in ("0", "0.7")], ["k"])
    claim = {"text": "dropout shrinks the gap", "metric": "train-val gap", "expect": ["0 > 0.7"]}
    wide, narrow = seeds.Stat(40.0, 1.0, 3), seeds.Stat(14.0, 2.0, 3)
    shown = seeds.verdict(claim, arms, [wide, narrow])
    assert shown.startswith("verdict: dropout shrinks the gap [train-val gap]: SHOWN: 0 > 0.7 by 26.0")
    assert "CONTRADICTED" in seeds.verdict(claim, arms, [narrow, wide])
    assert "NOT SHOWN" in seeds.verdict(claim, arms, [seeds.Stat(15.0, 2.0, 3), narrow])
    assert "NOT SHOWN" in seeds.verdict(claim, arms, [seeds.Stat(40.0, 0.0, 1), seeds.Stat(14.0, 0.0, 1)])
    assert "no finished run of 0.5" in seeds.verdict({"expect": ["0.5 > 0"]}, arms, [wide, narrow])


# --------------------------------------------------------------------------------------- the report
def _run(path: Path, norm: str, seed: int, test_acc: float, val_accs: list[float], study: dict | None = None):
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create([f"model.norm={norm}", f"seed={seed}"]), path / ".hydra" / "overrides.yaml")
    config = {"model": {"norm": norm}, "seed": seed, "trainer": {"monitor": "val_acc"}, "study": study}
    OmegaConf.save(OmegaConf.create(config), path / ".hydra" / "config.yaml")
    history = [
        {"epoch": i + 1, "val_acc": v, "val_loss": 1.0, "train_acc": 99.0, "train_eval_acc": v + 10}
        for i, v in enumerate(val_accs)
    ]
    metrics = {
        "best_val_acc": max(val_accs),
        "best_val_loss": 1.0,
        "best_epoch": val_accs.index(max(val_accs)) + 1,
        "test_acc": test_acc,
        "params": 1000,
        "steps": 10 * len(val_accs),
        "seconds_per_epoch": 2.0,
        "total_seconds": 2.0 * len(val_accs),
        "load_avg": [1.5, 1.0, 0.5],
        "grad_norms": {"1_conv1": 1.0 + seed, "2_classifier": 0.5},
        "finished": True,
        "history": history,
    }
    (path / "metrics.json").write_text(json.dumps(metrics))


CLAIM = {"text": "BN helps", "metric": "test acc", "expect": ["batch > none"]}


def _seed_sweep(tmp_path: Path) -> Path:
    """none runs first and validates higher: the table must still keep the sweep's order."""
    job = 0
    for norm, tests in (("none", (40.0, 41.0, 42.0)), ("batch", (50.0, 52.0, 54.0))):
        for seed, test in enumerate(tests):
            _run(tmp_path / str(job), norm, seed, test, [30.0, 80.0 if norm == "none" else 60.0], CLAIM)
            job += 1
    return tmp_path


def test_report_groups_seeds_keeps_the_sweep_order_and_gives_the_verdict(tmp_path, capsys):
    report = report_lib.build([_seed_sweep(tmp_path)])
    assert [r.path.name for r in report.runs] == ["0", "1", "2", "3", "4", "5"]  # not sorted by val acc
    assert report.level == 60.0 and report.rows[0]["steps to level"] == 20  # 60% first at epoch 2 of 10 steps
    assert report.rows[3]["train-val gap"] == pytest.approx(10.0)  # eval-mode train acc - val acc
    assert report.rows[0]["load"] == 1.5 and report.rows[1]["grad norm per stage"] == "2 / 0.5"
    grouped = findings.by_seed(report)
    none, batch = grouped.rows
    assert (none["model.norm"], none["seeds"], batch["model.norm"]) == ("none", 3, "batch")
    assert batch["test acc"] == seeds.Stat(52.0, 2.0, 3) and none["test acc"] == seeds.Stat(41.0, 1.0, 3)
    assert none["grad norm per stage"] == "2 / 0.5"  # seeds 0, 1, 2: conv1 norms 1, 2, 3
    lines = findings.lines(report)
    assert lines[0] == "verdict: BN helps [test acc]: SHOWN: batch > none by 11.0 ± 1.3 points (3 seeds)"
    assert "  batch > none by 11.0 ± 1.3 points (3 seeds)" in lines
    csv_path, md_path = report_lib.write(report, tmp_path / "out", "study")
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["model.norm"] for r in rows] == ["none", "batch"]
    assert float(rows[1]["test acc"]) == 52.0 and float(rows[1]["test acc std"]) == 2.0 and rows[1]["seeds"] == "3"
    assert len(list(csv.DictReader((tmp_path / "out" / "runs.csv").open()))) == 6
    markdown = md_path.read_text()
    assert "| batch | 3 |" in markdown and "52.00 ± 2.00" in markdown and "SHOWN" in markdown
    report_lib.print_table(report, "study")
    printed = capsys.readouterr().out
    assert "52.00 ± 2.00" in printed and "verdict: BN helps" in printed


def test_curves_draw_one_band_per_arm_and_no_size_plot_for_equal_sizes(tmp_path):
    from cnnlab.experiments import plots

    report = report_lib.build([_seed_sweep(tmp_path / "sweep")])
    made = plots.write(report, tmp_path / "png", "study")
    assert [p.name for p in made] == ["curves.png"]  # every arm has 1,000 parameters: no accuracy_vs_params.png
    lines = plots._lines(report)
    assert [lab for lab, *_ in lines] == ["none (3 seeds)", "batch (3 seeds)"]
    assert lines[0][2][0] == [30.0, 80.0] and lines[0][3][0] == [pytest.approx(10.0)] * 2


def test_plain_arm_of_a_resnet_is_labelled_plain(tmp_path):
    for job, skip in enumerate((True, False)):
        path = tmp_path / str(job)
        (path / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create([f"model.skip={str(skip).lower()}"]), path / ".hydra" / "overrides.yaml")
        OmegaConf.save(OmegaConf.create({"model": {"skip": skip}}), path / ".hydra" / "config.yaml")
        hydra = {"hydra": {"runtime": {"choices": {"model": "resnet56"}}}}
        OmegaConf.save(OmegaConf.create(hydra), path / ".hydra" / "hydra.yaml")
    report = report_lib.build([tmp_path])
    assert [row["model"] for row in report.rows] == ["resnet56", "plain56"]
    tv = report_lib.Run(
        tmp_path, config=OmegaConf.create({"model": {"name": "resnet18"}}), choices={"model": "torchvision"}
    )
    assert report_lib.model_name(tv) == "tv_resnet18"


def test_grad_norm_stages_have_the_same_names_with_and_without_norm_layers():
    from cnnlab.models.small_cnns import SimpleCNN

    names = {n: [s for s, _ in stage_names(SimpleCNN(norm=n))] for n in ("batch", "none", "group")}
    assert names["batch"] == names["none"] == names["group"] == ["1_conv1", "2_conv2", "3_conv3", "4_classifier"]
    conv1 = dict(stage_names(SimpleCNN(norm="batch")))["1_conv1"]
    assert sum(p.numel() for p in conv1.parameters()) == 3 * 32 * 9 + 2 * 32  # the conv and its BatchNorm


# ------------------------------------------------------------------------------ eval-mode train accuracy
def test_fixed_sample_is_seeded_sorted_and_capped():
    assert fixed_sample(5, 10, 0).tolist() == [0, 1, 2, 3, 4]
    a = fixed_sample(100, 10, 3)
    assert a.tolist() == sorted(set(a.tolist())) and len(a) == 10 and torch.equal(a, fixed_sample(100, 10, 3))
    assert not torch.equal(a, fixed_sample(100, 10, 4))


def test_train_accuracy_is_eval_mode_on_the_fixed_sample_by_hand(tmp_path):
    """A dropout-heavy net: the logged train_eval_acc equals accuracy computed here, in eval mode, on the same
    fixed un-augmented images with the final weights; and the load average lands in metrics.json."""
    cfg = cnnlab.compose(
        ["model=lenet5", "data.subset=30", "augment=basic", "trainer.epochs=2", "trainer.progress=none"]
        + ["trainer.image_grid=0", "trainer.device=cpu"]
    )
    data = data_lib.build(cfg.data, cfg.augment, torch.device("cpu"), seed=0)
    model = models.build(cfg.model, data.spec)
    per_epoch, total = planned_steps(cfg.trainer, len(data.train))
    optimizer, scheduler = optim.build(cfg.optimizer, cfg.scheduler, model, per_epoch, total)
    callback = TrainAccuracy(64)
    metrics = Trainer(cfg.trainer, tmp_path, torch.device("cpu"), seed=5, callbacks=[callback]).fit(
        model, data, optimizer, scheduler
    )
    assert [("train_eval_acc" in h) for h in metrics["history"]] == [True, True]
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    model.load_state_dict(last["model"])
    model.eval()
    keep = fixed_sample(len(data.train.labels), 64, 5)
    x = data.train.normalise(data.train.images[keep])
    with torch.no_grad():
        correct = (model(x).argmax(1) == data.train.labels[keep]).sum().item()
    assert metrics["history"][-1]["train_eval_acc"] == pytest.approx(100.0 * correct / 64)
    assert len(metrics["load_avg"]) == 3 and json.loads((tmp_path / "metrics.json").read_text())["load_avg"]


# ------------------------------------------------------------------------------------------ class subset
def test_select_classes_keeps_and_relabels_in_the_given_order():
    arrays = ArrayDataset(
        torch.arange(6).view(6, 1, 1, 1).to(torch.uint8),
        torch.tensor([0, 1, 2, 0, 1, 2]),
        torch.zeros(3, 1, 1, 1, dtype=torch.uint8),
        torch.tensor([2, 1, 0]),
        ["cat", "dog", "ship"],
    )
    out = select_classes(arrays, ["ship", 0], "toy")
    assert out.classes == ["ship", "cat"]
    assert out.train_x.flatten().tolist() == [0, 2, 3, 5] and out.train_y.tolist() == [1, 0, 1, 0]
    assert out.test_y.tolist() == [0, 1]
    for bad, message in ((["horse"], "'horse' is not a class of toy"), ([0, "cat"], "names a class twice")):
        with pytest.raises(CnnlabError, match=message):
            one = ArrayDataset(arrays.train_x, arrays.train_y, arrays.test_x, arrays.test_y, ["cat"])
            select_classes(one, bad, "toy")


# ------------------------------------------------------------------------------------ the CPU budgets
def test_every_study_has_a_claim_and_a_cpu_budget_with_seeds_where_the_effect_is_small():
    assert set(CPU_STUDIES) >= set(STUDIES) - {"study_transfer"}
    for study in STUDIES:
        cfg = cnnlab.compose([f"experiment={study}"]) if study != "study_transfer" else None
        if cfg is not None:
            assert cfg.study.metric in findings.CLAIM_METRICS and cfg.study.text, study
    for study in ("study_batchnorm", "study_dropout", "study_skip", "study_pooling", "study_augment"):
        budget = OmegaConf.load(Path(config_dir()) / "budget" / study / "cpu.yaml")
        assert len(str(budget.hydra.sweeper.params.seed).split(",")) >= 3, study


def _first_job(study: str) -> list[str]:
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cnnlab.schema import register

    register()
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        cfg = compose("train", overrides=[f"experiment={study}", "budget=cpu"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    parser = OverridesParser.create()
    return [f"{k}={next(iter(parser.parse_override(f'{k}={v}').sweep_string_iterator()))}" for k, v in params.items()]


FEW_STEPS = ["trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.train_eval_samples=16"]
FEW_STEPS += ["trainer.progress=none", "trainer.device=cpu", "data.eval_batch_size=16"]


@pytest.mark.slow
@pytest.mark.parametrize("study", [s for s in CPU_STUDIES if s.startswith("study_") and s != "study_transfer_offline"])
def test_each_cpu_budget_runs_a_few_steps(study, tmp_path, data_root):
    cfg = cnnlab.compose([f"experiment={study}", "budget=cpu", *_first_job(study), *FEW_STEPS])
    assert cfg.data.loader == "device" and cfg.trainer.image_grid == 0
    metrics = cnnlab.train(cfg, tmp_path / "run")
    assert metrics["steps"] == 2 and "train_eval_acc" in metrics["history"][-1]


@pytest.mark.slow
def test_offline_transfer_from_a_source_model_cnnlab_trained(tmp_path, data_root):
    source = cnnlab.compose(["experiment=transfer_source_animals", "budget=cpu", *FEW_STEPS])
    assert list(source.data.classes) == ["bird", "cat", "deer", "dog", "frog", "horse"]
    cnnlab.train(source, tmp_path / "source")
    best = tmp_path / "source" / "checkpoints" / "best.pt"
    for mode in ("linear_probe", "feature_extract", "gradual"):
        cfg = cnnlab.compose(
            ["experiment=study_transfer_offline", "budget=cpu", f"finetune={mode}", *FEW_STEPS]
            + [f"model.weights_path={best}"]
        )
        metrics = cnnlab.train(cfg, tmp_path / mode)
        assert metrics["steps"] == 2
        model, spec = cnnlab.load(tmp_path / mode / "checkpoints" / "best.pt")
        assert spec.num_classes == 4 and spec.classes == ["airplane", "automobile", "ship", "truck"]
    # the source's backbone really was loaded: a linear probe keeps it bit for bit
    source_state = torch.load(best, weights_only=True)["model"]
    probe_state = torch.load(tmp_path / "linear_probe" / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert torch.equal(source_state["layer1.0.conv1.weight"], probe_state["layer1.0.conv1.weight"])
    assert probe_state["fc.weight"].shape == (4, 512)


def test_torchvision_weights_path_takes_a_cnnlab_checkpoint_and_replaces_its_head(tmp_path):
    from cnnlab.models.tv import TorchvisionModel

    source = TorchvisionModel("resnet18", num_classes=6)
    torch.save({"model": source.state_dict(), "fit": {}, "epoch": 1}, tmp_path / "best.pt")
    for classes in (4, 6):
        model = TorchvisionModel("resnet18", num_classes=classes, weights_path=str(tmp_path / "best.pt"))
        assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
        assert model.fc.weight.shape == (classes, 512) and not torch.equal(model.fc.bias, source.fc.bias[:classes])
    torch.save({"model": {"fc.weight": torch.zeros(3, 512)}, "fit": {}}, tmp_path / "other.pt")
    with pytest.raises(CnnlabError, match="is not a state dict of torchvision's resnet18"):
        TorchvisionModel("resnet18", num_classes=4, weights_path=str(tmp_path / "other.pt"))
