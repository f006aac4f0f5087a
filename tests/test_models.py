"""The model zoo: parameter counts against torchvision, every model at 28x28x1 / 32x32x3 / 224x224x3, the knobs."""

from __future__ import annotations

import hashlib
import json
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import REPO
from hydra.utils import get_method
from omegaconf import OmegaConf
from torch import nn

import cnnlab
from cnnlab.data import DataSpec
from cnnlab.errors import CnnlabError
from cnnlab.models import build, count_params, knob_names, load_yaml
from cnnlab.models.blocks import InvertedResidual, conv_norm_act, squeeze_excite
from cnnlab.models.knobs import POOLS
from cnnlab.models.pooling import make_pool
from cnnlab.paths import config_dir

CONFIGS = REPO / "configs" / "model"
ZOO = sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem not in ("torchvision", "speedrun"))
# Every model runs at 28x28x1 and 32x32x3; at 224x224x3 all but the most expensive (about a minute in all on
# one core), which share their 224 code paths (stems, 7x7 classifiers) with cheaper relatives run there.
NOT_AT_224 = {
    "mnist_cnn",
    "mnist_cnn_padded",
    "vgg11",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "resnet101",
    "resnet152",
    "resnext29_8x64d",
    "wide_resnet28_10",
    "wide_resnet50_2",
    "densenet169",
    "densenet201",
    "preact_resnet50",
    "preact_resnet101",
    "mlp_head_cnn",
    # He et al.'s CIFAR nets: resnet20 / plain20 cover their 224 path
    *[f"{kind}{d}" for kind in ("resnet", "plain") for d in (32, 44, 56, 110, 1202)],
}


def make(name: str, image_size: int = 32, channels: int = 3, num_classes: int = 10, /, **overrides) -> nn.Module:
    cfg = OmegaConf.merge(load_yaml(CONFIGS / f"{name}.yaml"), overrides)
    return build(cfg, DataSpec(num_classes=num_classes, channels=channels, image_size=image_size))


def params_at_imagenet(name: str, **overrides) -> int:
    with torch.device("meta"):
        return count_params(make(name, 224, 3, 1000, **overrides))


def torchvision_params(name: str, **kwargs) -> int:
    with torch.device("meta"):
        return count_params(getattr(torchvision.models, name)(**kwargs))


TORCHVISION_TWINS = [
    "alexnet",
    *[f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")],
    *[f"resnet{d}" for d in (18, 34, 50, 101, 152)],
    "resnext50_32x4d",
    "wide_resnet50_2",
    "densenet121",
    "densenet169",
    "densenet201",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    *[f"efficientnet_b{i}" for i in range(8)],
]


@pytest.mark.parametrize("name", TORCHVISION_TWINS)
def test_parameter_count_equals_torchvision(name):
    assert params_at_imagenet(name) == torchvision_params(name)


def test_googlenet_parameter_count_equals_torchvision_without_aux_heads():
    assert params_at_imagenet("googlenet") == torchvision_params("googlenet", aux_logits=False, init_weights=False)


def test_published_parameter_counts():
    assert params_at_imagenet("vgg16") == 138_357_544
    assert params_at_imagenet("resnet18") == 11_689_512
    assert params_at_imagenet("resnet50") == 25_557_032
    assert params_at_imagenet("densenet121") == 7_978_856
    assert params_at_imagenet("vit_tiny") == 5_717_416  # ViT-Ti/16
    with torch.device("meta"):
        assert count_params(make("lenet5", 28, 1)) == 44_426
        assert count_params(make("lenet5", 32, 1)) == 61_706
        assert 36_000_000 < count_params(make("wide_resnet28_10", 32)) < 37_000_000  # WRN-28-10: 36.5M
        assert 34_000_000 < count_params(make("resnext29_8x64d", 32)) < 35_000_000  # 34.4M


# Measured on the hand-written blocks before they became torchvision's (Conv2dNormActivation, SqueezeExcitation,
# StochasticDepth): parameters and a digest of the state_dict's (key, shape) list at 32x32x3, 10 classes. Equal
# digests mean a checkpoint saved before the swap still loads.
ARCHITECTURE = {
    "alexnet": (28_711_754, "11508828109a"),
    "cifar_cnn": (4_507_722, "490f7f2af1a7"),
    "densenet121": (6_956_298, "a05e0fdc998a"),
    "densenet169": (12_493_322, "1990249e1297"),
    "densenet201": (18_104_330, "2120987bd9e5"),
    "efficientnet_b0": (4_020_358, "2afa408d1160"),
    "efficientnet_b1": (6_525_994, "60a67b9978f8"),
    "efficientnet_b2": (7_715_084, "eb0cec0108ca"),
    "efficientnet_b3": (10_711_602, "6d23a6a14ead"),
    "efficientnet_b4": (17_566_546, "f35d3b42f408"),
    "efficientnet_b5": (28_361_274, "bead19327954"),
    "efficientnet_b6": (40_758_754, "7e2266f4d3d2"),
    "efficientnet_b7": (63_812_570, "27754e4510cb"),
    "googlenet": (5_602_474, "f2cf81ef8331"),
    "lenet5": (62_006, "14e6e824560d"),
    "mlp_head_cnn": (1_276_234, "bc573ac54ef6"),
    "mnist_cnn": (1_626_442, "2f6dd87a2257"),
    "mnist_cnn_padded": (545_098, "dee5ecab852e"),
    "mobilenet_v1": (3_217_226, "fd587d48da1c"),
    "mobilenet_v2": (2_236_682, "b08faeeb3e8c"),
    "mobilenet_v3_large": (4_214_842, "1d4d754ef420"),
    "mobilenet_v3_small": (1_528_106, "0a1ff54a3c49"),
    "modern_resnet": (15_359_914, "e54e7799a1ef"),
    "plain110": (1_727_962, "8ffe6492e2bc"),
    "plain20": (269_722, "fefe661bd872"),
    "plain32": (464_154, "2fb255359e5b"),
    "plain44": (658_586, "981b9cc9bdc7"),
    "plain56": (853_018, "413414b1ecd4"),
    "preact_resnet101": (42_505_290, "33ada59c5149"),
    "preact_resnet18": (11_172_170, "915624c4b8eb"),
    "preact_resnet34": (21_280_330, "35eb10d0491f"),
    "preact_resnet50": (23_513_162, "99ee6fea03b2"),
    "resnet101": (42_512_970, "f1fc93465087"),
    "resnet110": (1_727_962, "8ffe6492e2bc"),
    "resnet1202": (19_421_274, "23902fa7443c"),
    "resnet152": (58_156_618, "c41a3eee7efc"),
    "resnet18": (11_173_962, "215f21267b65"),
    "resnet20": (269_722, "fefe661bd872"),
    "resnet32": (464_154, "2fb255359e5b"),
    "resnet34": (21_282_122, "86072126de35"),
    "resnet44": (658_586, "981b9cc9bdc7"),
    "resnet50": (23_520_842, "53514c8b9bd7"),
    "resnet56": (853_018, "413414b1ecd4"),
    "resnext29_8x64d": (34_426_698, "52e282a7cd30"),
    "resnext50_32x4d": (22_992_714, "e2d2a3a6a951"),
    "se_resnet18": (11_263_042, "a27f1c828d02"),
    "se_resnet50": (26_051_834, "6b6fd59101b4"),
    "simple_cnn": (1_147_466, "87d1ed335e8e"),
    "simple_resnet": (2_777_674, "83cdbfe2b7ee"),
    "speedrun": (1_972_504, "4e61ffc226ac"),
    "vgg11": (28_144_010, "c5f4c587f218"),
    "vgg11_bn": (28_149_514, "2a0781716801"),
    "vgg13": (28_328_522, "3610fe064890"),
    "vgg13_bn": (28_334_410, "801b0a907ad2"),
    "vgg16": (33_638_218, "d1ec123f252f"),
    "vgg16_bn": (33_646_666, "a436633f15a5"),
    "vgg19": (38_947_914, "c28e19c650af"),
    "vgg19_bn": (38_958_922, "2a172c4f3bbd"),
    "vit_tiny": (5_362_762, "1f5e5de27ed8"),
    "wide_resnet16_8": (10_961_370, "459c58d6befa"),
    "wide_resnet28_10": (36_479_194, "1b619e98e745"),
    "wide_resnet50_2": (66_847_050, "1ff86feb83ae"),
}


def state_dict_digest(model: nn.Module) -> str:
    layout = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    return hashlib.sha1(json.dumps(layout).encode()).hexdigest()[:12]


def test_architecture_facts_cover_the_zoo():
    assert sorted(ARCHITECTURE) == sorted([*ZOO, "speedrun"])


@pytest.mark.parametrize("name", sorted(ARCHITECTURE))
def test_parameters_and_state_dict_keys_unchanged(name):
    with torch.device("meta"):
        model = make(name)
    assert (count_params(model), state_dict_digest(model)) == ARCHITECTURE[name]


def test_library_blocks_compute_what_the_hand_written_ones_did():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5)
    se = squeeze_excite(8, 2, "relu", "hardsigmoid")
    gate = F.hardsigmoid(se.fc2(F.relu(se.fc1(x.mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(se(x), x * gate)
    cna = conv_norm_act(8, 6, 3, 2, norm="group", act="silu").eval()
    conv, norm = cna[0], cna[1]
    assert conv.bias is None and conv.padding == (1, 1) and norm.num_groups == 2
    torch.testing.assert_close(cna(x), F.silu(norm(conv(x))))
    assert (
        len(conv_norm_act(8, 6, 1, norm="none", act=None)) == 1 and conv_norm_act(8, 6, norm="none")[0].bias is not None
    )
    # stochastic depth: whole samples dropped in training, survivors scaled by 1/(1-p); identity in eval
    block = InvertedResidual(8, 8, 16, 3, 1, "relu", drop_path=0.5).train()
    x = torch.randn(16, 8, 5, 5)
    out = block(x) - x
    branch = block.block(x)
    kept = [torch.allclose(o, 2 * branch[i], atol=1e-5) for i, o in enumerate(out)]
    dropped = [torch.equal(o, torch.zeros_like(o)) for o in out]
    assert all(k != d for k, d in zip(kept, dropped)) and any(kept) and any(dropped)
    torch.testing.assert_close(block.eval()(x), x + block.block(x))


# He et al. (2015), CIFAR-10: 32x32x3, 10 classes, option-A shortcuts (no parameters); the plain twins are equal.
CIFAR_RESNET_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}


@pytest.mark.parametrize("depth", CIFAR_RESNET_PARAMS)
def test_cifar_resnet_and_plain_parameter_counts(depth):
    with torch.device("meta"):
        assert count_params(make(f"resnet{depth}", 32, 3, 10)) == CIFAR_RESNET_PARAMS[depth]
        if depth != 1202:
            assert count_params(make(f"plain{depth}", 32, 3, 10)) == CIFAR_RESNET_PARAMS[depth]
        assert count_params(make("resnet20", 32, 3, 10, depth=depth, skip=False)) == CIFAR_RESNET_PARAMS[depth]


def test_every_model_yaml_lists_every_knob_of_its_constructor():
    """So that any knob is overridable as model.<knob>=... without `++` (a family inherits its base's keys). Each
    group file is composed on its own (defaults included): what `model=NAME` puts under `model`, in half the time."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        for name in [*ZOO, "torchvision"]:
            cfg = compose(f"model/{name}").model
            listed = {k for k in cfg if k != "_target_"}
            assert listed == set(knob_names(get_method(cfg._target_))), name


def forward_backward(model: nn.Module, channels: int, size: int, num_classes: int = 10) -> None:
    x = torch.randn(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, num_classes)
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# The deepest relatives of cheaper models (same code paths) train their step in `make test-all` only.
SLOW_SMALL = {"resnet1202", "resnet152", "resnet101", "preact_resnet101", "densenet169", "densenet201"}
SLOW_SMALL |= {"wide_resnet50_2", "wide_resnet28_10", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SMALL else n for n in ZOO])
def test_forward_backward_small_images(name):
    torch.manual_seed(0)
    for channels, size in [(1, 28), (3, 32)]:
        forward_backward(make(name, size, channels, 7), channels, size, 7)


@pytest.mark.parametrize("name", [n for n in ZOO if n not in NOT_AT_224])
def test_forward_backward_imagenet_size(name):
    forward_backward(make(name, 224, 3, 5), 3, 224, 5)


def test_small_image_stems_and_classifiers():
    small, large = make("resnet18", 32), make("resnet18", 224)
    assert not any(isinstance(m, nn.MaxPool2d) for m in small.modules())
    assert small.stem[0].kernel_size == (3, 3) and small.stem[0].stride == (1, 1)
    assert any(isinstance(m, nn.MaxPool2d) for m in large.modules())
    with torch.device("meta"):
        vgg32, vgg224 = make("vgg16", 32), make("vgg16", 224, 3, 1000)
    assert vgg32.classifier[1].in_features == 512  # a 1x1 final map: no 7x7 upsampling
    assert vgg224.classifier[1].in_features == 512 * 7 * 7


def test_resnet_knobs():
    plain = make("resnet18", skip=False)
    assert not any(b.project is not None for b in plain.layers.modules() if hasattr(b, "project"))
    forward_backward(plain, 3, 32)
    assert count_params(make("resnet18", width_mult=0.25)) < count_params(make("resnet18")) / 10
    assert sum(isinstance(m, nn.GroupNorm) for m in make("resnet18", norm="group").modules()) > 10
    assert not any(isinstance(m, nn.BatchNorm2d) for m in make("resnet18", norm="none").modules())
    assert sum(isinstance(m, nn.SiLU) for m in make("resnet18", act="silu").modules()) > 10
    se = make("se_resnet18", width_mult=0.25)
    assert sum(type(m).__name__ == "SqueezeExcitation" for m in se.modules()) == 8
    deeper = make("resnet18", depth_mult=2, width_mult=0.25)
    assert sum(len(s) for s in deeper.layers) == 16


@pytest.mark.parametrize(
    "override, key",
    [
        ({"pool": "median"}, "model.pool"),
        ({"norm": "banana"}, "model.norm"),
        ({"act": "swish"}, "model.act"),
        ({"width_mult": -1}, "model.width_mult"),
        ({"dropout": 1.5}, "model.dropout"),
        ({"hidden": 0}, "model.hidden"),
        ({"pool": "mixed", "pool_lambda": 2}, "model.pool_lambda"),
        ({"pool": "lp", "pool_p": 0}, "model.pool_p"),
    ],
)
def test_bad_knobs_name_the_key(override, key):
    with pytest.raises(CnnlabError, match=key):
        make("vgg11", **override)


def test_bad_resnet_and_efficientnet_knobs_name_the_key():
    for name, override, key in [
        ("resnet18", {"skip": "maybe"}, "model.skip"),
        ("resnet18", {"stem": "big"}, "model.stem"),
        ("resnet18", {"width_mult": 0}, "model.width_mult"),
        ("wide_resnet28_10", {"depth": 27}, "model.depth"),
        ("efficientnet_b0", {"variant": "b9"}, "model.variant"),
    ]:
        with pytest.raises(CnnlabError, match=key):
            make(name, **override)


# ------------------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("kind", POOLS)
@pytest.mark.parametrize("k, s, p, size", [(2, 2, 0, 9), (3, 2, 1, 8), (3, 2, 0, 13)])
def test_every_pool_has_max_pooling_output_size(kind, k, s, p, size):
    x = torch.rand(2, 4, size, size)
    want = nn.MaxPool2d(k, s, p)(x).shape
    pool = make_pool(kind, k, s, channels=4, padding=p)
    assert pool(x).shape == want
    pool.eval()
    assert pool(x).shape == want


def test_sum_and_lp_pooling_values():
    x = torch.tensor([[[[1.0, 3.0], [0.0, 4.0]]]])
    assert make_pool("sum")(x).item() == 8.0
    y = torch.randn(2, 3, 7, 7)  # sum pooling is nn.LPPool2d(1, k), negative inputs included (but that has no padding)
    torch.testing.assert_close(make_pool("sum", 3, 2)(y), nn.LPPool2d(1, 3, 2)(y))
    assert make_pool("lp", p=1)(x).item() == pytest.approx(2.0)
    assert make_pool("lp", p=2)(x).item() == pytest.approx((26 / 4) ** 0.5)
    assert make_pool("lp", p=50)(x).item() == pytest.approx(4.0, rel=0.05)  # large p approaches max


def test_stochastic_pooling_samples_in_training_and_weights_in_eval():
    x = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]]]])
    pool = make_pool("stochastic")
    torch.manual_seed(0)
    draws = [pool(x).item() for _ in range(400)]
    assert set(draws) == {1.0, 3.0}  # a sampled activation, never the zero
    assert 0.65 < draws.count(3.0) / len(draws) < 0.85  # p = 3/4
    pool.eval()
    assert pool(x).item() == pytest.approx((1 * 1 + 3 * 3) / 4)  # sum p_i a_i, deterministic
    assert pool(torch.zeros(1, 1, 2, 2)).item() == 0.0
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    make_pool("stochastic")(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_mixed_pooling_random_in_training_majority_in_eval():
    x = torch.rand(4, 3, 8, 8)
    mx, av = nn.functional.max_pool2d(x, 2), nn.functional.avg_pool2d(x, 2)
    pool = make_pool("mixed")  # Yu et al.: each region picks max or avg at random
    torch.manual_seed(0)
    out = pool(x)
    is_max, is_avg = torch.isclose(out, mx), torch.isclose(out, av)
    assert (is_max | is_avg).all() and is_max.any() and is_avg.any()
    assert not torch.equal(pool(x), out)  # a fresh draw each training step
    pool.eval()
    first = pool(x)
    assert torch.equal(first, pool(x)) and (torch.equal(first, mx) or torch.equal(first, av))
    pool.max_bias.fill_(-1.0)  # average was picked more often in training
    assert torch.equal(pool(x), av)


def test_mixed_pooling_fixed_and_learned_lambda():
    x = torch.rand(2, 3, 8, 8)
    mx, av = nn.functional.max_pool2d(x, 2), nn.functional.avg_pool2d(x, 2)
    assert torch.allclose(make_pool("mixed", mix=0.3)(x), 0.3 * mx + 0.7 * av)
    learned = make_pool("mixed", mix="learn")
    assert torch.allclose(learned(x), 0.5 * mx + 0.5 * av)  # sigmoid(0)
    learned(x).sum().backward()
    assert learned.logit.grad is not None
    learned.eval()
    assert torch.allclose(learned(x), 0.5 * mx + 0.5 * av)


def test_blur_and_conv_pooling():
    blur = make_pool("blur")
    assert torch.allclose(blur(torch.full((1, 2, 8, 8), 3.0)), torch.full((1, 2, 4, 4), 3.0))
    assert count_params(blur) == 0
    assert count_params(make_pool("conv", channels=8)) == 8 * 8 * 4 + 8


@pytest.mark.parametrize("pool", POOLS)
def test_pool_knob_in_models(pool):
    for name in ("lenet5", "mnist_cnn", "simple_cnn", "cifar_cnn"):
        forward_backward(make(name, 28, 1, pool=pool), 1, 28)
    vgg = make("vgg11_bn", 32, pool=pool, width_mult=0.125, hidden=32)
    forward_backward(vgg, 3, 32)
    vgg.eval()
    with torch.no_grad():
        assert vgg(torch.rand(2, 3, 32, 32)).shape == (2, 10)


# ------------------------------------------------------------------------------------------- model=torchvision
def test_torchvision_model_fresh_and_errors():
    model = make("torchvision", 32, 1, name="resnet18")
    forward_backward(model, 1, 32)
    with pytest.raises(CnnlabError, match="model.name 'resnet9000'"):
        make("torchvision", name="resnet9000")
    with pytest.raises(CnnlabError, match="does not exist"):
        make("torchvision", name="resnet18", weights_path="/nonexistent/weights.pth")


def test_torchvision_offline_download_is_a_clear_error(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    # Patched where torchvision looks it up (WeightsEnum.get_state_dict), not in torch.hub: a real offline failure
    # whether or not this machine has a network.
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CnnlabError, match="cannot download.*weights_path"):
        make("torchvision", name="mobilenet_v3_small", weights="DEFAULT")


def test_torchvision_weights_path(tmp_path: Path):
    reference = torchvision.models.mobilenet_v3_small()
    path = tmp_path / "w.pth"
    torch.save(reference.state_dict(), path)
    model = make("torchvision", 32, 3, num_classes=4, name="mobilenet_v3_small", weights_path=str(path))
    assert model.classifier[-1].out_features == 4
    assert torch.equal(model.features[0][0].weight, reference.features[0][0].weight)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CnnlabError, match="not a state dict"):
        make("torchvision", name="mobilenet_v3_small", weights_path=str(tmp_path / "bad.pth"))


# ------------------------------------------------------------------------------------------- through the CLI
@pytest.mark.slow  # ~5 s each; every zoo model's forward/backward runs in make test, the CLI path in test_train
@pytest.mark.parametrize(
    "args",
    [
        ["model=resnet18", "model.width_mult=0.125"],
        ["model=vgg11_bn", "model.width_mult=0.125", "model.hidden=32", "model.pool=stochastic"],
    ],
)
def test_train_cli_end_to_end(run_cli, args):
    result = run_cli(
        "train",
        *args,
        "data=synthetic",
        "data.image_size=32",
        "data.num_samples=64",
        "data.batch_size=32",
        "trainer.epochs=1",
        "trainer.device=cpu",
        "trainer.image_grid=0",
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_train_cli_bad_knob_is_one_line(run_main):
    code, err = run_main(
        "train",
        "model=vgg11",
        "model.pool=median",
        "data=synthetic",
        "data.num_samples=16",
        "trainer.epochs=1",
    )
    assert code == 2
    assert "model.pool must be one of" in err and "Traceback" not in err


def test_speedrun_act_knob_swaps_every_activation_and_is_checked():
    spec = DataSpec(10, 3, 32)
    relu = build(cnnlab.compose(["model=speedrun", "model.widths=[8,16,16]", "model.act=relu"]).model, spec)
    kinds = {type(m) for m in relu.modules()}
    assert nn.ReLU in kinds and nn.GELU not in kinds
    assert nn.GELU in {
        type(m) for m in build(cnnlab.compose(["model=speedrun", "model.widths=[8,16,16]"]).model, spec).modules()
    }
    relu.fit(torch.randn(16, 3, 32, 32))
    forward_backward(relu, 3, 32)
    with pytest.raises(CnnlabError, match="model.act must be one of"):
        build(cnnlab.compose(["model=speedrun", "model.act=swish"]).model, spec)
