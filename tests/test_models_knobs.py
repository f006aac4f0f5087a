"""The course's knobs: each one changes the network as it says (in-process, tiny models, CPU)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import get_method
from test_models import CONFIGS, forward_backward, make
from torch import nn
from trained_run import one_error_line

from cnnlab.analysis.receptive_field import receptive_field
from cnnlab.errors import CnnlabError
from cnnlab.models import count_params, knob_names, load_yaml
from cnnlab.models.pooling import BlurPool
from cnnlab.models.resnet import PadShortcut

SMALL = ("lenet5", "mnist_cnn", "simple_cnn", "cifar_cnn")


def count(model: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def features_shape(model: nn.Module, size: int, channels: int = 1) -> tuple:
    with torch.no_grad():
        return tuple(model.eval().features(torch.zeros(1, channels, size, size)).shape[1:])


# ------------------------------------------------------------------------------------------ norm
@pytest.mark.parametrize("name", SMALL)
def test_norm_puts_the_chosen_layer_after_convs_and_fc_layers(name):
    hidden_fc = len(linears(make(name, 28, 1))) - 1  # the output layer gets no norm
    convs = count(make(name, 28, 1), nn.Conv2d)
    batch = make(name, 28, 1, norm="batch")
    assert count(batch, nn.BatchNorm2d) == convs and count(batch, nn.BatchNorm1d) == hidden_fc
    assert all(c.bias is None for c in batch.modules() if isinstance(c, nn.Conv2d))  # no bias before a norm
    group = make(name, 28, 1, norm="group")
    assert count(group, nn.GroupNorm) == convs + hidden_fc and count(group, nn.BatchNorm2d) == 0
    layer = make(name, 28, 1, norm="layer")
    assert [m.num_groups for m in layer.modules() if isinstance(m, nn.GroupNorm)] == [1] * convs
    assert count(layer, nn.LayerNorm) == hidden_fc
    none = make(name, 28, 1, norm="none")
    assert count(none, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm)) == 0
    fc_plain = make(name, 28, 1, norm="batch", fc_norm="none")
    assert count(fc_plain, nn.BatchNorm2d) == convs and count(fc_plain, nn.BatchNorm1d) == 0
    forward_backward(batch, 1, 28)


def test_lenet5_defaults_are_exact_and_bn_on_fc_layers_adds_their_parameters():
    assert count_params(make("lenet5", 28, 1)) == 44_426 and count_params(make("lenet5", 32, 1)) == 61_706
    # BN: conv and FC biases go (6 + 16 + 120 + 84), each BN adds 2 x width.
    assert count_params(make("lenet5", 28, 1, norm="batch")) == 44_426 - 226 + 2 * 226


# ------------------------------------------------------------------------------------------ dropout
def test_dropout_and_dropout2d_go_where_they_say():
    assert count(make("lenet5", 28, 1), (nn.Dropout, nn.Dropout2d)) == 0
    lenet = make("lenet5", 28, 1, dropout=0.3, dropout2d=0.1)
    assert [m.p for m in lenet.classifier if isinstance(m, nn.Dropout)] == [0.3, 0.3]  # after FC120, FC84
    assert [m.p for m in lenet.features if isinstance(m, nn.Dropout2d)] == [0.1, 0.1]  # after each pool
    first = make("lenet5", 28, 1, dropout=0.3, dropout_first=True)
    assert isinstance(first.classifier[1], nn.Dropout)  # on the flattened features, before the first FC
    x = torch.rand(4, 1, 28, 28)
    lenet.eval()
    assert torch.equal(lenet(x), lenet(x))  # dropout is off in eval
    lenet.train()
    torch.manual_seed(0)
    assert not torch.equal(lenet(x), lenet(x))


# ------------------------------------------------------------------------------------------ pooling
def test_pool_kernel_and_stride_change_the_output_shape():
    assert features_shape(make("lenet5", 32, 1), 32) == (16, 5, 5)
    assert features_shape(make("lenet5", 32, 1, pool_stride=1), 32) == (16, 22, 22)  # 28 -> 27 -> 23 -> 22
    assert features_shape(make("lenet5", 32, 1, pool_kernel=3, pool_stride=3), 32) == (16, 1, 1)  # 28 -> 9 -> 5 -> 1
    overlapping = make("lenet5", 32, 1, pool="max", pool_kernel=3, pool_stride=2)  # AlexNet-style overlap
    pools = [m for m in overlapping.features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(3, 2), (3, 2)]
    assert overlapping.classifier[1].in_features == 16 * 4 * 4  # 28 -> 13 -> 9 -> 4
    forward_backward(overlapping, 1, 32)


# ------------------------------------------------------------------------------------------ head
@pytest.mark.parametrize("name", ("lenet5", "mnist_cnn", "simple_cnn"))
def test_global_pooling_heads_remove_the_size_dependence_of_the_first_fc(name):
    flat28, flat32 = make(name, 28, 1), make(name, 32, 1)
    assert count_params(flat28) != count_params(flat32)  # flatten: the first FC is sized to the final map
    gap28, gap32 = make(name, 28, 1, head="gap"), make(name, 32, 1, head="gap")
    assert count_params(gap28) == count_params(gap32) < count_params(flat28)
    assert linears(gap28)[0].in_features == [m for m in gap28.features if isinstance(m, nn.Conv2d)][-1].out_channels
    assert count(gap28, nn.AdaptiveAvgPool2d) == 1
    gmp = make(name, 28, 1, head="gmp")
    assert count(gmp, nn.AdaptiveMaxPool2d) == 1
    with torch.no_grad():  # one network, any image size
        assert gap28.eval()(torch.rand(2, 1, 40, 40)).shape == (2, 10)


# ------------------------------------------------------------------------------------------ convolution
def test_kernel_size_and_padding():
    k3 = make("lenet5", 28, 1, kernel_size=3)
    assert [m.kernel_size for m in k3.modules() if isinstance(m, nn.Conv2d)] == [(3, 3), (3, 3)]
    assert features_shape(k3, 28) == (16, 5, 5)  # 26 -> 13 -> 11 -> 5
    assert features_shape(make("lenet5", 28, 1, padding="same"), 28) == (16, 7, 7)  # only the pools shrink
    assert features_shape(make("mnist_cnn", 28, 1), 28) == (64, 12, 12)  # valid: 28 -> 26 -> 24 -> 12
    assert features_shape(make("mnist_cnn", 28, 1, padding="same"), 28) == (64, 14, 14)
    even = make("simple_cnn", 32, 3, kernel_size=4)  # an even kernel keeps the size with PyTorch's "same"
    assert features_shape(even, 32, 3) == (128, 4, 4)
    forward_backward(even, 3, 32)
    with pytest.raises(CnnlabError, match="shrinks below 1 pixel"):
        make("lenet5", 12, 1, kernel_size=7)


def test_dilation_widens_the_receptive_field_and_shrinks_valid_maps():
    plain, dilated = make("mnist_cnn", 28, 1), make("mnist_cnn", 28, 1, dilation=2)
    assert [m.dilation for m in dilated.modules() if isinstance(m, nn.Conv2d)] == [(2, 2), (2, 2)]
    assert count_params(plain) > count_params(dilated)  # the same 3x3 weights, a smaller map into the FC
    assert features_shape(dilated, 28) == (64, 10, 10)  # 28 -> 24 -> 20 -> 10
    x = torch.zeros(1, 1, 28, 28)
    assert receptive_field(plain.features, x)["size"] == 6  # 3, 5, pool 2 -> 6
    assert receptive_field(dilated.features, x)["size"] == 10  # 5, 9, pool 2 -> 10
    same = make("mnist_cnn", 28, 1, dilation=2, padding="same")
    assert features_shape(same, 28) == (64, 14, 14)


@pytest.mark.parametrize(
    "act, kind", [("relu", nn.ReLU), ("silu", nn.SiLU), ("gelu", nn.GELU), ("leaky_relu", nn.LeakyReLU)]
)
def test_activation(act, kind):
    for name in SMALL:
        model = make(name, 28, 1, act=act)
        assert count(model, kind) == count(model, nn.Conv2d) + len(linears(model)) - 1
    forward_backward(make("lenet5", 28, 1, act=act), 1, 28)


def test_width_mult_scales_convs_and_hidden_fc_layers():
    half = make("lenet5", 28, 1, width_mult=0.5)
    assert [m.out_channels for m in half.modules() if isinstance(m, nn.Conv2d)] == [3, 8]
    assert [m.out_features for m in linears(half)] == [60, 42, 10]


# ------------------------------------------------------------------------------------------ named course nets
def test_the_course_networks():
    padded = make("mnist_cnn_padded", 28, 1)
    assert padded.classifier[1].in_features == 64 * 7 * 7  # two same-padded convs, each pooled
    mlp = make("mlp_head_cnn", 32, 3)
    assert [m.out_features for m in linears(mlp)] == [512, 256, 10] and count(mlp, nn.Dropout) == 3
    simple = make("simple_resnet", 32, 3)
    assert [stage[0].convs[0].out_channels for stage in simple.layers] == [64, 128, 256]
    modern = make("modern_resnet", 28, 1, width_mult=0.25)
    assert modern.stem[0][0].kernel_size == (7, 7) and isinstance(modern.stem[1], nn.MaxPool2d)  # even at 28 px
    assert count(modern, nn.AdaptiveAvgPool2d) == 1 + 8 and modern.layers[0][0].preact  # the head, 8 SE blocks
    assert sum(type(m).__name__ == "SqueezeExcitation" for m in modern.modules()) == 8
    assert len(modern.layers[0][0].convs) == 3  # bottleneck
    forward_backward(modern, 1, 28)


# ------------------------------------------------------------------------------------------ ResNet pooling, shortcuts
def test_resnet_stem_pool_choice():
    base = make("resnet18", 64, 3, stem="imagenet", width_mult=0.25)
    blur = make("resnet18", 64, 3, stem="imagenet", width_mult=0.25, pool="blur")
    conv = make("resnet18", 64, 3, stem="imagenet", width_mult=0.25, pool="conv")
    assert isinstance(base.stem[1], nn.MaxPool2d) and isinstance(blur.stem[1], BlurPool)
    assert count_params(conv) - count_params(base) == 16 * 16 * 9 + 16  # a learned strided 3x3 conv
    x = torch.rand(2, 3, 64, 64)
    assert base.stem(x).shape == blur.stem(x).shape == conv.stem(x).shape == (2, 16, 16, 16)
    with pytest.raises(CnnlabError, match="model.pool=blur .* cifar stem"):
        make("resnet18", 32, 3, pool="blur")


@pytest.mark.parametrize("kind, layer", [("blur", BlurPool), ("max", nn.MaxPool2d), ("avg", nn.AvgPool2d)])
def test_resnet_downsampling_by_pooling(kind, layer):
    model = make("resnet20", 32, 3, downsample=kind)
    assert count(model, layer) == 2  # the first block of stages 2 and 3
    assert all(c.stride == (1, 1) for c in model.modules() if isinstance(c, nn.Conv2d))
    assert count_params(model) == 269_722
    strided = make("resnet20", 32, 3)
    assert sum(c.stride == (2, 2) for c in strided.modules() if isinstance(c, nn.Conv2d)) == 2
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        assert model.layers(model.stem(x)).shape == strided.layers(strided.stem(x)).shape == (2, 64, 8, 8)
    forward_backward(model, 3, 32)


def test_shortcut_a_pads_with_zeros_and_b_projects():
    a, b = make("resnet20", 32, 3), make("resnet20", 32, 3, shortcut="B")
    assert count(a, PadShortcut) == 2 and count_params(a) == 269_722
    assert count_params(b) - count_params(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # 1x1 conv + BN, twice
    pad = PadShortcut(2, 4, 2)
    x = torch.rand(1, 2, 4, 4)
    out = pad(x)
    assert out.shape == (1, 4, 2, 2) and torch.equal(out[:, :2], x[:, :, ::2, ::2]) and not out[:, 2:].any()
    for preact in (False, True):
        forward_backward(make("resnet20", 32, 3, preact=preact), 3, 32)
    plain = make("plain20", 32, 3)
    assert count(plain, PadShortcut) == 0 and not any(b.skip for b in plain.layers.modules() if hasattr(b, "skip"))


def test_alexnet_local_response_normalisation():
    plain, lrn = make("alexnet", 32, 3, hidden=64), make("alexnet", 32, 3, hidden=64, lrn=True)
    assert count(plain, nn.LocalResponseNorm) == 0 and count(lrn, nn.LocalResponseNorm) == 2
    assert count_params(plain) == count_params(lrn)
    assert isinstance(lrn.features[2], nn.LocalResponseNorm)  # conv - ReLU - LRN - pool
    forward_backward(lrn, 3, 32)


# ------------------------------------------------------------------------------------------ bad values, unknown keys
BAD_VALUES = [
    ("width_mult", -1),
    ("norm", "banana"),
    ("pool", "nonsense"),
    ("dropout", 1.5),
    ("act", "swish"),
    ("head", "gap2"),
    ("dilation", 0),
    ("pool_kernel", 1.5),
]


@pytest.mark.parametrize(
    "name",
    (
        "lenet5",
        "mnist_cnn",
        "cifar_cnn",
        "resnet20",
        "resnet18",
        "vgg11",
        "densenet121",
        "alexnet",
        "efficientnet_b0",
        "mobilenet_v2",
    ),
)
def test_bad_knob_values_are_a_cnnlab_error_naming_the_key(name):
    accepted = set(knob_names(get_method(load_yaml(CONFIGS / f"{name}.yaml")._target_)))
    tried = 0
    for key, value in BAD_VALUES:
        if key not in accepted:
            continue
        tried += 1
        with pytest.raises(CnnlabError, match=rf"^model\.{key}( must|=)") as info, torch.device("meta"):
            make(name, 32, 3, **{key: value})
        assert "\n" not in str(info.value)
    assert tried >= 2


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("lenet5", "padding", "full"),
        ("lenet5", "convs", [6, "X"]),
        ("resnet20", "shortcut", "C"),
        ("resnet20", "downsample", "lp"),
        ("resnet20", "depth", 21),
        ("alexnet", "lrn", "yes"),
        ("lenet5", "dropout_first", "no"),
        ("lenet5", "pool_stride", 0),
    ],
)
def test_model_specific_bad_values(name, key, value):
    with pytest.raises(CnnlabError, match=f"model.{key}"):
        make(name, 32, 3, **{key: value})


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("densenet121", "growth_rate", 0),
        ("densenet121", "compression", 0),
        ("vit_tiny", "heads", -3),
        ("resnet18", "layers", [2, "x"]),
        ("resnet18", "widths", []),
        ("wide_resnet16_8", "widen", 0),
        ("resnext50_32x4d", "groups", 0),
    ],
)
def test_family_knobs_are_checked_by_name(name, key, value):
    with pytest.raises(CnnlabError, match=rf"^model\.{key} must be"):
        make(name, 32, 3, **{key: value})


def test_an_unknown_knob_names_the_keys_the_model_accepts():
    with pytest.raises(CnnlabError, match=r"^model.foo is not a knob of LeNet5; it accepts: convs, fc, kernel_size"):
        make("lenet5", 28, 1, foo=1)


class Buggy(nn.Module):
    """A model whose constructor has a bug: its TypeError must reach the user with its traceback."""

    def __init__(self, num_classes: int = 10, width: int = 4):
        super().__init__()
        self.fc = nn.Linear(width, num_classes, bogus=True)


def test_a_bug_inside_a_model_keeps_its_traceback():
    from omegaconf import OmegaConf

    from cnnlab.data import DataSpec
    from cnnlab.models import build

    with pytest.raises(TypeError, match="bogus"):
        build(OmegaConf.create({"_target_": "test_models_knobs.Buggy", "width": 3}), DataSpec(10, 3, 32))
    with pytest.raises(CnnlabError, match="model.depth is not a knob of Buggy; it accepts: width"):
        build(OmegaConf.create({"_target_": "test_models_knobs.Buggy", "depth": 3}), DataSpec(10, 3, 32))


def test_cli_knob_override_without_plus_and_unknown_key_line(run_main):
    code, err = run_main("train", "model=lenet5", "model.width_mult=0.5", "model.head=gap", "--cfg", "job")
    assert code == 0, err[-2000:]
    assert "width_mult: 0.5" in run_main.stdout and "head: gap" in run_main.stdout
    assert one_error_line(run_main("train", "model=resnet20", "model.foo=1", "trainer.epochs=1")) == (
        "error: model.foo is not a knob of cifar_resnet; it accepts: depth, shortcut, bottleneck, groups, "
        "width_per_group, stem, norm, act, se, skip, preact, dropout, block_dropout, width_mult, depth_mult, pool, "
        "downsample"
    )
