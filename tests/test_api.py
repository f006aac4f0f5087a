"""The Python API for notebooks: cnnlab.compose / cnnlab.train / cnnlab.load, in-process, no live Hydra job."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import cnnlab
from cnnlab.errors import CnnlabError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("api") / "run"
    cfg = cnnlab.compose(
        ["trainer.epochs=2", "optimizer.lr=3e-3", "data.subset=40", "trainer.image_grid=0", "trainer.progress=none"]
    )
    return cfg, cnnlab.train(cfg, run_dir=run_dir), run_dir


def test_compose_registers_the_schema_and_applies_overrides():
    cfg = cnnlab.compose(["model=mnist_cnn", "trainer.epochs=3", "optimizer.lr=1e-2"])
    assert cfg.model._target_ == "cnnlab.models.small_cnns.MnistCNN"
    assert cfg.trainer.epochs == 3 and cfg.optimizer.lr == 0.01 and cfg.data.name == "digits"
    assert "hydra" not in cfg
    with pytest.raises(ConfigCompositionException):  # the schema is there: a wrong type fails at composition
        cnnlab.compose(["trainer.epochs=many"])
    assert cnnlab.compose(["checkpoint=x.pt"], config_name="eval").split == "test"


def test_train_in_process_returns_metrics_and_writes_the_run_dir(trained):
    cfg, metrics, run_dir = trained
    assert metrics["epochs"] == 2 and [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["best_val_acc"] > 20.0  # 10 digit classes: well above chance after 2 epochs
    assert (run_dir / "metrics.json").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").optimizer.lr == 0.003
    assert list(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))[:2] == ["trainer.epochs=2", "optimizer.lr=3e-3"]
    assert OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.choices.model == "lenet5"


def test_load_returns_the_validated_model_and_its_data_spec(trained):
    cfg, metrics, run_dir = trained
    model, spec = cnnlab.load(run_dir / "checkpoints" / "best.pt")
    assert not model.training and type(model).__name__ == "LeNet5"
    assert spec.num_classes == 10 and spec.channels == 1 and spec.image_size == 32 and len(spec.classes) == 10
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_load_refuses_a_checkpoint_that_names_foreign_code(trained, tmp_path):
    _, _, run_dir = trained
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["model"]["_target_"] = "os.system"
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(CnnlabError, match="not one of cnnlab's models"):
        cnnlab.load(tmp_path / "evil.pt")


def test_the_commands_package_does_not_shadow_the_api():
    import cnnlab.commands.train as command

    assert callable(cnnlab.train) and cnnlab.train is not command and cnnlab.train.__module__ == "cnnlab.api"
    from cnnlab import compose, load, train

    assert (compose, load, train) == (cnnlab.compose, cnnlab.load, cnnlab.train)
