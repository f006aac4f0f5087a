"""The speedrun net's data-dependent whitening stem and its flip test-time augmentation."""

from __future__ import annotations

import torch

from cnnlab.models.speedrun import SpeedrunNet, WhiteningStem


def test_whitening_stem_fits_once_and_whitens_patches():  # the fit itself: data_init calls it before training
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.2], [0.0, 0.5, 0.9], [0.3, 0.0, 1.0]])
    x = torch.einsum("ij,bjhw->bihw", mix, torch.randn(64, 3, 16, 16))  # correlated channels
    stem = WhiteningStem(3).train()
    assert not stem.fitted
    assert stem(x).abs().max() == 0  # forward never fits (a per-step check would be a host sync on CUDA)
    stem.init_from_batch(x)
    out = stem(x)
    assert stem.fitted and out.shape == (64, 24, 15, 15)
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)  # the first 12 filters; the rest are their negatives
    cov = torch.cov(half.T)
    assert torch.allclose(cov, torch.eye(12), atol=0.05)
    before = stem.weight.clone()
    stem.init_from_batch(torch.randn(8, 3, 16, 16) * 5)  # fitted already (e.g. restored): no refit
    stem(torch.randn(8, 3, 16, 16) * 5)
    assert torch.equal(stem.weight, before)
    assert "weight" in stem.state_dict() and "fitted" in stem.state_dict()


def test_eval_mode_averages_over_the_mirror_image():
    torch.manual_seed(0)
    model = SpeedrunNet(num_classes=10, widths=(8, 16, 16))
    x = torch.randn(4, 3, 32, 32)
    model.fit(x)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), model(x.flip(3)), atol=1e-5)
        assert not torch.allclose(model.logits(x), model.logits(x.flip(3)), atol=1e-5)
