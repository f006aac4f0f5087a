"""The analysis building blocks against hand computations: confusion matrix, precision/recall/F1, most-confused
pairs, flip TTA, Grad-CAM, feature capture, captions and the figures they draw."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.analysis.confusion import class_scores, confusion_figure, most_confused
from cnnlab.analysis.feature_maps import capture, feature_map_figure, filter_figure, first_conv
from cnnlab.analysis.figures import save, to_tensor
from cnnlab.analysis.gradcam import grad_cam, overlay_figure
from cnnlab.analysis.grid import caption, label_captions, prediction_figure
from cnnlab.analysis.tta import FlipAverage
from cnnlab.engine.metrics import evaluate

CLASSES = ["cat", "dog", "bird"]


def tiny_case():
    # true: 3 cats, 2 dogs, 1 bird; predicted: cat cat dog | dog cat | bird
    true = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 0, 2])
    return true, pred


class Predicts(nn.Module):
    """A "model" whose input is the class it predicts."""

    def forward(self, x):
        return F.one_hot(x.long(), 3).float()


def confusion_matrix(true: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The confusion matrix evaluate() counts for these predictions."""
    return evaluate(Predicts(), [(pred, true)], num_classes)["confusion"]


def test_confusion_matrix_rows_are_true_classes():
    true, pred = tiny_case()
    cm = confusion_matrix(true, pred, 3)
    assert cm.tolist() == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert int(cm.sum()) == 6 and int(cm.trace()) == 4


def test_precision_recall_f1_by_hand():
    true, pred = tiny_case()
    s = class_scores(confusion_matrix(true, pred, 3))
    # cat: precision 2/3 (3 predicted cat, 2 right), recall 2/3; dog: precision 1/2, recall 1/2; bird: 1, 1
    assert s["precision"] == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert s["recall"] == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert s["f1"] == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert s["support"] == [3, 2, 1]
    assert s["macro"]["precision"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # a class never predicted: precision 0, not NaN; a class absent from both is left out of the macro average
    s = class_scores(torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0]]))
    assert s["precision"][0] == 1.0 and s["recall"][0] == 0.5
    assert s["precision"][1] == 0.0 and s["f1"][1] == 0.0  # predicted 3 times, never right
    assert s["precision"][2] == 1.0 and s["recall"][2] == pytest.approx(1 / 3) and s["f1"][2] == pytest.approx(0.5)
    assert s["macro"]["recall"] == pytest.approx((0.5 + 0 + 1 / 3) / 3)  # class 3 occurs nowhere


def test_most_confused_pairs_in_order():
    cm = torch.tensor([[5, 3, 0], [1, 6, 0], [4, 0, 2]])
    pairs = most_confused(cm, CLASSES, k=10)
    assert [(p["true"], p["pred"], p["count"]) for p in pairs] == [
        ("bird", "cat", 4),
        ("cat", "dog", 3),
        ("dog", "cat", 1),
    ]
    assert pairs[0]["share"] == pytest.approx(100 * 4 / 6)
    assert most_confused(cm, CLASSES, k=1) == pairs[:1]
    assert most_confused(torch.eye(3, dtype=torch.long), CLASSES) == []


def test_evaluate_returns_the_confusion_matrix():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(10, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    result = evaluate(model, [(x[:6], y[:6]), (x[6:], y[6:])], 3)
    with torch.no_grad():
        pred = model(x).argmax(1)
    counts = torch.zeros(3, 3, dtype=torch.long).index_put_((y, pred), torch.tensor(1), accumulate=True)
    assert torch.equal(result["confusion"], counts)
    assert int(result["confusion"].sum()) == result["count"] == 10
    assert 100 * int(result["confusion"].trace()) / 10 == pytest.approx(result["top1"])


def test_flip_tta_averages_the_logits_of_the_mirror_image():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = (model(x) + model(x.flip(-1))) / 2
        got = FlipAverage(model)(x)
        assert torch.allclose(got, expected, atol=1e-6)
        assert not torch.allclose(got, model(x), atol=1e-3)  # the mirror image does change the answer
        symmetric = x + x.flip(-1)  # left-right symmetric: nothing to average
        assert torch.allclose(FlipAverage(model)(symmetric), model(symmetric), atol=1e-5)


def test_grad_cam_of_a_linear_model_is_the_image():
    # conv 1x1 (identity) -> global average -> linear: d score / d A is uniform, so the CAM is the image itself
    conv = nn.Conv2d(1, 1, 1, bias=False)
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 1:3, 5:7] = 1.0  # a bright blob top right
    x[0, 0, 6, 1] = 0.5
    cam = grad_cam(model, x, conv)
    assert cam["target"] == 0 and cam["map"] == [8, 8]
    assert torch.allclose(cam["cam"], x[0, 0], atol=1e-6)
    assert float(grad_cam(model, x, conv, target=1)["cam"].max()) == 0.0  # class 1 is pushed down by the blob
    fig = overlay_figure((x[0] * 255).to(torch.uint8), cam["cam"], "test")
    assert to_tensor(fig).shape[0] == 3


def test_feature_capture_and_first_conv():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)
    )
    layers = {"0": model[0], "2": model[2], "4": model[4]}
    outputs, logits = capture(model, torch.randn(1, 3, 8, 8), layers)
    assert outputs["0"].shape == (1, 4, 8, 8) and outputs["2"].shape == (1, 4, 4, 4) and outputs["4"].shape == (1, 2)
    assert logits.shape == (1, 2)
    assert first_conv(model) == ("0", model[0])
    assert not model[0]._forward_hooks  # hooks are removed
    maps = to_tensor(feature_map_figure(outputs["0"][0], "layer 0"))
    filters = to_tensor(filter_figure(model[0].weight, "filters"))
    assert maps.shape[0] == filters.shape[0] == 3 and maps.dtype == torch.uint8


def test_captured_conv_map_is_not_changed_by_an_in_place_relu():
    """On the CPU `.float().cpu()` is the very tensor the next in-place ReLU overwrites: the map labelled Conv2d
    must be the convolution's output (with its negative values), not the ReLU's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 36, 2))
    x = torch.randn(1, 1, 6, 6)
    with torch.no_grad():
        expected = model[0](x)
    outputs, _ = capture(model, x, {"0": model[0], "1": model[1]})
    assert torch.equal(outputs["0"], expected) and outputs["0"].min() < 0
    assert torch.equal(outputs["1"], expected.relu())


def test_captions_are_full_names():
    names = ["T-shirt/top", "Trouser", "Ankle boot"]
    assert caption(2, 0, names, 0.613) == "Ankle boot -> T-shirt/top (0.61)"
    assert caption(1, 1, names, 0.9) == "Trouser (0.90)"
    soft = torch.tensor([[0.7, 0.0, 0.3], [0.0, 1.0, 0.0]])
    assert label_captions(soft, names) == ["T-shirt/top 0.70 + Ankle boot 0.30", "Trouser"]
    assert label_captions(torch.tensor([2, 0]), names) == ["Ankle boot", "T-shirt/top"]


def test_pictures_render_and_save(tmp_path):
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    grid = to_tensor(prediction_figure(images, [0, 1, 2, 0, 1], [0, 2, 2, 1, 1], CLASSES, [0.9, 0.5, 0.8, 0.4, 0.7]))
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3 and grid.shape[2] > 5 * 100  # 5 tiles of >1 inch
    path = save(confusion_figure(torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 4]]), CLASSES, "t"), tmp_path / "a/cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
