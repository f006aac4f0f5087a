"""Augmentation: both loader paths draw from the same distributions; mixing, determinism, presets, eval."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import cnnlab
from cnnlab import data
from cnnlab.commands.train import validate
from cnnlab.data.augment import BatchAugment, image_transform
from cnnlab.data.loaders import DeviceLoader, WorkerLoader
from cnnlab.data.mix import Mixer
from cnnlab.errors import CnnlabError
from cnnlab.schema.common import AugmentConfig, DataConfig

CPU = torch.device("cpu")
RAW = ((0.0, 0.0, 0.0), (1 / 255,) * 3)  # mean/std that make the loaders' normalisation the identity on 0..255
REPO = Path(__file__).resolve().parent.parent


def augment(**kw):
    return OmegaConf.merge(OmegaConf.structured(AugmentConfig), kw)


def coordinates(n: int, size: int) -> torch.Tensor:
    """Images whose pixels say where they came from: channel 0 = row + 1, channel 1 = column + 1."""
    r = torch.arange(1, size + 1)
    image = torch.stack([r[:, None].expand(size, size), r[None, :].expand(size, size), torch.full((size, size), 128)])
    return image.to(torch.uint8).expand(n, 3, size, size).contiguous()


def both_paths(images: torch.Tensor, fill=(0, 0, 0), mixer=None, batch=256, workers=0, **aug_kw):
    """All training batches of one epoch from the device loader and from the DataLoader path."""
    aug = augment(**aug_kw)
    labels = torch.arange(len(images)) % 10
    size = images.shape[-1]
    device = DeviceLoader(images, labels, batch, *RAW, train=True, augment=BatchAugment(aug, fill), mixer=mixer, seed=1)
    worker = WorkerLoader(
        images,
        labels,
        batch,
        *RAW,
        CPU,
        train=True,
        mixer=mixer,
        seed=1,
        num_workers=workers,
        augment=image_transform(aug, size, fill, from_files=False),
        eval_transform=image_transform(None, size, fill, from_files=False),
    )
    return [list(loader) for loader in (device, worker)]


def stacked(batches):
    return torch.cat([x for x, _ in batches])


def histogram(values: torch.Tensor, bins: int) -> torch.Tensor:
    return torch.bincount(values.long(), minlength=bins).float() / len(values)


# ------------------------------------------------------------------------------ distributions agree
def test_padded_crop_and_flip_agree():
    outs = [stacked(b) for b in both_paths(coordinates(2048, 32), crop_padding=4, flip=True)]
    stats = []
    for out in outs:
        rows, cols, right = out[:, 0, 16, 16], out[:, 1, 16, 16], out[:, 1, 16, 17]
        flipped = right < cols
        dy = rows - 13  # centre row reads source row 12 + dy (1-based value 13 + dy)
        dx = torch.where(flipped, cols - 12, cols - 13)
        assert dy.min() == 0 and dy.max() == 8 and dx.min() == 0 and dx.max() == 8
        stats.append((histogram(dy, 9), histogram(dx, 9), flipped.float().mean()))
    (hy0, hx0, f0), (hy1, hx1, f1) = stats
    for h in (hy0, hx0, hy1, hx1):  # uniform over the 9 offsets
        assert (h - 1 / 9).abs().max() < 0.035
    assert abs(f0 - 0.5) < 0.05 and abs(f1 - 0.5) < 0.05


def test_random_resized_crop_agrees():
    size = 48
    outs = [stacked(b) for b in both_paths(coordinates(768, size), resized_crop=True)]
    areas, aspects = [], []
    for out in outs:
        cols, rows = out[:, 1, size // 2, :].float(), out[:, 0, :, size // 2].float()
        width = (cols.max(1).values - cols.min(1).values + 1) / size
        height = (rows.max(1).values - rows.min(1).values + 1) / size
        areas.append((width * height).mean())
        aspects.append(torch.log(width / height).mean())
    assert 0.4 < areas[0] < 0.7
    assert abs(areas[0] - areas[1]) < 0.05 and abs(aspects[0] - aspects[1]) < 0.08


def erased(out: torch.Tensor) -> torch.Tensor:
    return (out == 0).all(1).float().mean(dim=(1, 2))  # fraction of pixels set to the fill (0) per image


def test_random_erasing_and_cutout_agree():
    images = torch.full((1536, 3, 24, 24), 200, dtype=torch.uint8)
    for kw, rate in (({"erasing": 0.5}, 0.5), ({"cutout": 6}, 1.0)):
        fractions = [erased(stacked(b)) for b in both_paths(images, **kw)]
        for f in fractions:
            assert abs((f > 0).float().mean() - rate) < 0.06
        means = [f[f > 0].mean() for f in fractions]
        assert abs(means[0] - means[1]) < 0.02, (kw, means)


def test_colour_jitter_agrees():
    images = torch.tensor([150, 90, 40], dtype=torch.uint8).view(1, 3, 1, 1).expand(512, 3, 8, 8).contiguous()
    outs = [stacked(b).mean(dim=(2, 3)) for b in both_paths(images, color_jitter=0.4, hue=0.1)]
    assert (outs[0].std(0) > 10).all()  # it does jitter
    assert (outs[0].mean(0) - outs[1].mean(0)).abs().max() < 6
    assert ((outs[0].std(0) / outs[1].std(0)) - 1).abs().max() < 0.2


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment", "trivialaugment"])
def test_policies_run_on_both_paths(policy):
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    for batches in both_paths(images, batch=16, policy=policy):
        out = stacked(batches)
        assert out.shape == images.shape and (out != images).flatten(1).any(1).float().mean() > 0.5
    first, again = both_paths(images, batch=16, policy=policy), both_paths(images, batch=16, policy=policy)
    for a, b in zip(first, again):
        assert torch.equal(stacked(a), stacked(b))  # seeded: the same epoch, the same images


def test_to_uint8_truncates_as_a_direct_conversion_does():
    from cnnlab.data.transforms import to_uint8

    values = torch.cat([torch.linspace(0, 255, 100_001), torch.arange(256.0), torch.arange(256.0) - 1e-4]).clamp(0, 255)
    assert torch.equal(to_uint8(values), values.to(torch.uint8))


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment", "trivialaugment"])
def test_batched_policy_keeps_the_batch_order_and_its_input(policy):
    """Stages sort the batch by op and overwrite the sorted copy in place: the caller's tensor stays as it was,
    and image i of the output is image i transformed (each image alone gives the same pixels)."""
    from cnnlab.data.policies import OPS, BatchedPolicy, reference_policy

    images = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    before = images.clone()
    policy = BatchedPolicy(reference_policy(policy))
    out = policy(images, np.random.default_rng(0))
    assert torch.equal(images, before)
    # the same draws, one image per call: re-draw the batch's choices and replay them image by image
    stages = list(policy.stages(64, 12, 12, np.random.default_rng(0)))
    for i in range(64):
        image = images[i : i + 1]
        for names, op, mag in stages:
            if op[i] >= 0 and names[op[i]] != "Identity":
                image = OPS[names[op[i]]](image, mag[i : i + 1])
        assert torch.equal(out[i : i + 1], image), i


# -------------------------------------------------------------------------------------- mixup/cutmix
def test_mixup_is_a_convex_pair_with_soft_targets():
    x, y = torch.randn(8, 3, 4, 4), torch.arange(8)
    rng = np.random.default_rng(0)
    mixer = Mixer(8, mixup_alpha=0.4)
    lams = []
    for _ in range(400):
        out, target = mixer(x, y, rng)
        lam = float(target[0, 0])
        assert torch.allclose(out, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
        assert torch.allclose(target.sum(1), torch.ones(8))
        lams.append(lam)
    lams = np.array(lams)  # Beta(0.4, 0.4): mean 1/2, variance 1/(4 (2 alpha + 1)) = 0.139
    assert abs(lams.mean() - 0.5) < 0.05 and abs(lams.var() - 0.25 / 1.8) < 0.03


def test_cutmix_lambda_is_the_area_kept_and_switching():
    x, y = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 16, 16).contiguous(), torch.arange(4)
    rng = np.random.default_rng(1)
    for _ in range(50):
        out, target = Mixer(4, cutmix_alpha=1.0)(x, y, rng)
        kept = (out[0] == x[0]).float().mean()
        assert float(target[0, 0]) == pytest.approx(float(kept))
    both = Mixer(4, mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=1.0)
    out, _ = both(x, y, rng)
    assert set(out.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}  # always cutmix: pasted, never blended
    never = Mixer(4, mixup_alpha=0.2, prob=0.0)
    assert not never.active


def test_both_loaders_mix_identically():
    images = torch.randint(0, 256, (512, 3, 8, 8), dtype=torch.uint8)
    mixer = Mixer(10, mixup_alpha=0.2, cutmix_alpha=1.0)
    device, worker = both_paths(images, mixer=mixer, batch=64)
    lam_device = [t.max(1).values.min().item() for _, t in device]
    lam_worker = [t.max(1).values.min().item() for _, t in worker]
    assert lam_device == pytest.approx(lam_worker)  # one per-batch draw sequence per (seed, epoch)
    assert all(t.shape == (64, 10) for _, t in device + worker)


# ---------------------------------------------------------------------------- determinism and eval
def test_epochs_are_seeded_and_workers_do_not_matter():
    images = torch.randint(0, 256, (96, 3, 12, 12), dtype=torch.uint8)
    aug = augment(crop_padding=2, flip=True, erasing=0.5)
    labels = torch.arange(96) % 10

    def worker_loader(workers):
        return WorkerLoader(
            images,
            labels,
            32,
            *RAW,
            CPU,
            train=True,
            seed=3,
            num_workers=workers,
            augment=image_transform(aug, 12, (0, 0, 0), from_files=False),
            eval_transform=image_transform(None, 12, (0, 0, 0), from_files=False),
        )

    inline, pooled = worker_loader(0), worker_loader(2)
    for epoch in (0, 1):
        inline.set_epoch(epoch)
        pooled.set_epoch(epoch)
        assert torch.equal(stacked(inline), stacked(pooled))
    inline.set_epoch(0)
    epoch0 = stacked(inline)
    inline.set_epoch(1)
    assert not torch.equal(epoch0, stacked(inline))
    device = DeviceLoader(images, labels, 32, *RAW, train=True, augment=BatchAugment(aug, (0, 0, 0)), seed=3)
    device.set_epoch(1)
    first = stacked(device)
    list(DeviceLoader(images, labels, 32, *RAW, train=True, augment=BatchAugment(aug, (0, 0, 0)), seed=9))
    assert torch.equal(first, stacked(device))


@pytest.mark.parametrize("loader", ["device", "dataloader"])
def test_evaluation_never_augments(loader):
    data_cfg = OmegaConf.merge(
        OmegaConf.structured(DataConfig),
        {"name": "synthetic", "num_samples": 64, "batch_size": 16, "loader": loader, "num_workers": 0},
    )
    bundle = data.build(data_cfg, augment(crop_padding=4, flip=True, cutout=4, mixup_alpha=0.2), CPU)
    arrays = data.load_arrays(data_cfg)
    x, y = next(iter(bundle.test))
    assert y.ndim == 1 and torch.allclose(x, bundle.test.normalise(arrays.test_x[:32]))
    train = bundle.train
    train.evaluation_mode()  # what `cnnlab eval split=train` does
    x, y = next(iter(train))
    assert y.ndim == 1 and x.shape[0] == 16
    images = train.images if loader == "device" else train.loader.dataset.images
    assert torch.allclose(torch.cat([b for b, _ in train]), train.normalise(images))  # in order, unaugmented


# ---------------------------------------------------------------------------------- presets, checks
def test_presets_compose_as_a_list():
    cfg = cnnlab.compose(["augment=[basic,cutout,mixup,cutmix]"])
    a = cfg.augment
    assert (a.crop_padding, a.flip, a.cutout, a.mixup_alpha, a.cutmix_alpha) == (4, True, 16, 0.2, 1.0)
    validate(cfg)
    for key, value, message in (
        ("policy", "autoaug", "augment.policy must be one of"),
        ("crop_scale", [0.5, 0.1], "augment.crop_scale must be"),
        ("mix_prob", 1.5, "augment.mix_prob must be"),
        ("hue", 0.6, "augment.hue must be"),
    ):
        bad = cfg.copy()
        bad.augment[key] = value
        with pytest.raises(CnnlabError, match=message):
            validate(bad)


# ---------------------------------------------------------------------------- batched policies
def per_image_op(image: torch.Tensor, name: str, m: float) -> torch.Tensor:
    """A policy op on one image through torchvision's public kernels, as its v2 policies call them (nearest, fill 0)."""
    from torchvision.transforms.v2 import functional as TF

    affine = dict(angle=0.0, scale=1.0, interpolation=TF.InterpolationMode.NEAREST, fill=None)
    shear = math.degrees(math.atan(m))
    calls = {
        "ShearX": lambda: TF.affine(image, translate=[0, 0], shear=[shear, 0.0], center=[0, 0], **affine),
        "ShearY": lambda: TF.affine(image, translate=[0, 0], shear=[0.0, shear], center=[0, 0], **affine),
        "TranslateX": lambda: TF.affine(image, translate=[int(m), 0], shear=[0.0, 0.0], **affine),
        "TranslateY": lambda: TF.affine(image, translate=[0, int(m)], shear=[0.0, 0.0], **affine),
        "Rotate": lambda: TF.rotate(image, m, interpolation=TF.InterpolationMode.NEAREST, fill=None),
        "Brightness": lambda: TF.adjust_brightness(image, 1.0 + m),
        "Color": lambda: TF.adjust_saturation(image, 1.0 + m),
        "Contrast": lambda: TF.adjust_contrast(image, 1.0 + m),
        "Sharpness": lambda: TF.adjust_sharpness(image, 1.0 + m),
        "Posterize": lambda: TF.posterize(image, int(m)),
        "Solarize": lambda: TF.solarize(image, 255.0 * m),
        "AutoContrast": lambda: TF.autocontrast(image),
        "Equalize": lambda: TF.equalize(image),
        "Invert": lambda: TF.invert(image),
    }
    return calls[name]()


def test_every_policy_op_computes_what_torchvision_computes():
    """Each batched op, with a different magnitude per image, against torchvision's per-image kernel."""

    from cnnlab.data.policies import OPS

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (24, 3, 18, 22), dtype=torch.uint8, generator=gen)
    x[0] = 9  # a flat image (autocontrast/equalize edge case)
    ranges = {
        "ShearX": (-0.99, 0.99),
        "ShearY": (-0.99, 0.99),
        "TranslateX": (-12, 12),
        "TranslateY": (-12, 12),
        "Rotate": (-135, 135),
        "Brightness": (-0.99, 0.99),
        "Color": (-0.99, 0.99),
        "Contrast": (-0.99, 0.99),
        "Sharpness": (-0.99, 0.99),
        "Posterize": (2, 8),
        "Solarize": (0, 1),
    }
    for name, op in OPS.items():
        low, high = ranges.get(name, (0, 0))
        m = torch.rand(len(x), generator=gen, dtype=torch.float64) * (high - low) + low
        if name == "Posterize":
            m = m.round()
        want = torch.stack([per_image_op(image, name, float(v)) for image, v in zip(x, m)])
        got = op(x, m.numpy())
        assert got.dtype == torch.uint8 and torch.equal(got, want), name


@pytest.mark.parametrize("policy, bins", [("trivialaugment", 31), ("autoaugment", 10)])
def test_every_policy_op_at_the_table_magnitudes_computes_what_torchvision_computes(policy, bins):
    """The magnitudes the policies draw: float32 table values (solarize's threshold 255 m must round as
    torchvision's float32 comparison rounds it), and few distinct values per group (geometric ops make one
    grid per distinct matrix)."""
    from cnnlab.data.policies import OPS
    from cnnlab.data.policy_tables import SPACES

    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (96, 3, 18, 22), dtype=torch.uint8, generator=gen)
    rng = np.random.default_rng(1)
    for name, (magnitudes, signed) in SPACES[policy].items():
        table = magnitudes(bins, 18, 22)
        if table is None:
            continue
        m = table.double().numpy()[rng.integers(bins, size=len(x))] * (rng.choice([-1, 1], len(x)) if signed else 1)
        want = torch.stack([per_image_op(image, name, float(v)) for image, v in zip(x, m)])
        assert torch.equal(OPS[name](x, m), want), name


def policy_stats(out: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-image summaries a policy moves: unchanged?, mean |change|, mean, spread, zero (filled) pixels."""
    changed = (out != images).flatten(1)
    diff = (out.float() - images.float()).abs().flatten(1).mean(1)
    f = out.float().flatten(1)
    return torch.stack(
        [(~changed.any(1)).float(), diff, f.mean(1), f.std(1), (out == 0).all(1).flatten(1).float().mean(1)], 1
    )


@pytest.mark.parametrize(
    "kw",
    [
        {"policy": "randaugment"},
        {"policy": "randaugment", "randaugment_n": 1, "randaugment_m": 20},
        {"policy": "trivialaugment"},
        {"policy": "autoaugment"},
        {"policy": "autoaugment", "autoaugment_policy": "cifar10"},
        {"policy": "autoaugment", "autoaugment_policy": "svhn"},
    ],
)
def test_batched_policies_match_the_per_image_distributions(kw):
    gen = torch.Generator().manual_seed(0)
    base = torch.randint(40, 216, (1, 3, 16, 16), dtype=torch.uint8, generator=gen)
    images = (base.float() * torch.linspace(0.4, 1.2, 1536).view(-1, 1, 1, 1)).clamp(0, 255).to(torch.uint8)
    device, worker = (stacked(b) for b in both_paths(images, batch=512, **kw))
    sd, sw = policy_stats(device, images), policy_stats(worker, images)
    scale = torch.maximum(sd.std(0), sw.std(0)).clamp_min(1e-6)
    gap = (sd.mean(0) - sw.mean(0)).abs() / scale  # in per-image standard deviations; noise ~ sqrt(2/1536) = 0.036
    assert (gap < 0.15).all(), (kw, gap, sd.mean(0), sw.mean(0))


# ------------------------------------------------------------------ airbench: reflect translate, alternating flip
def windows_of(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every crop of the reflect-padded image, and of its mirror image."""
    size = image.shape[-1]
    out = []
    for source in (image, image.flip(-1)):
        padded = torch.nn.functional.pad(source[None].float(), (padding,) * 4, mode="reflect")[0]
        out += [padded[:, i : i + size, j : j + size] for i in range(2 * padding + 1) for j in range(2 * padding + 1)]
    return out


def test_reflect_translate_agrees_and_reads_mirrored_borders():
    images = coordinates(512, 12)
    outs = [stacked(b) for b in both_paths(images, crop_padding=2, crop_pad_mode="reflect", flip=True)]
    candidates = torch.stack(windows_of(images[0], 2))  # every image is the same: (50, C, H, W)
    for out in outs:
        match = (out[:, None].float() == candidates[None]).flatten(2).all(2)  # (N, 50)
        assert match.any(1).all()  # every crop is a window of the reflect-padded image (or its mirror)
        hits = match.float().argmax(1)
        assert len(hits.unique()) == 50  # all 25 offsets, both ways, occur
        assert (out == 0).sum() == 0  # no zero padding anywhere
    rows = [out[:, 0, 6, 6].float() for out in outs]  # centre row: 7 + dy - 2, dy uniform in 0..4
    assert abs(rows[0].mean() - rows[1].mean()) < 0.3


def alternating_epochs(epochs: int, **aug_kw) -> list[torch.Tensor]:
    """Per epoch, whether each image (by dataset index) came out mirrored."""
    n = 400
    images = coordinates(n, 12)
    loader = DeviceLoader(
        images, torch.arange(n), 100, *RAW, train=True, augment=BatchAugment(augment(**aug_kw), (0, 0, 0)), seed=5
    )
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        flipped = torch.zeros(n, dtype=torch.bool)
        for x, y in loader:
            flipped[y] = x[:, 1, 6, 7] < x[:, 1, 6, 6]  # columns run backwards
        out.append(flipped)
    return out


@pytest.mark.parametrize("crop", [{}, {"crop_padding": 2, "crop_pad_mode": "reflect"}])
def test_alternating_flip_mirrors_every_image_every_other_epoch(crop):
    e0, e1, e2, e3 = alternating_epochs(4, flip=True, flip_mode="alternate", **crop)
    assert 0.4 < e0.float().mean() < 0.6  # a random half in the first epoch
    assert torch.equal(e1, ~e0) and torch.equal(e2, e0) and torch.equal(e3, ~e0)
    r0, r1 = alternating_epochs(2, flip=True, **crop)  # random mode: no such pattern
    assert not torch.equal(r1, ~r0)


def test_alternating_flip_depends_on_the_seed_not_the_batch_order():
    from cnnlab.data.transforms import alternating_flips

    index = torch.arange(1000)
    a, b = alternating_flips(index, 0, 0), alternating_flips(index, 0, 1)
    assert not torch.equal(a, b) and 0.45 < a.float().mean() < 0.55
    assert torch.equal(alternating_flips(index.flip(0), 0, 0), a.flip(0))


# ------------------------------------------------------------- airbench's way: the dataset padded once
CROPS = [
    {"crop_pad_mode": "zeros"},
    {"crop_pad_mode": "reflect"},
    {"crop_pad_mode": "reflect", "flip": True},
    {"crop_pad_mode": "zeros", "flip": True, "flip_mode": "alternate"},
    {"crop_pad_mode": "reflect", "flip": True, "cutout": 3},  # a step after the crop
]


@pytest.mark.parametrize("kw", CROPS)
def test_loader_crops_from_the_padded_dataset_what_the_batch_path_crops(kw, monkeypatch):
    """The device loader reads its crops from the dataset padded once (with each image's mirror when flipping): the
    same pixels and generator draws as padding each gathered batch, and as when the copy is over budget."""
    from cnnlab.data import augment as augment_module
    from cnnlab.data.augment import Position

    images = torch.randint(0, 256, (300, 3, 12, 10), dtype=torch.uint8)
    aug = augment(crop_padding=3, **kw)
    fast = BatchAugment(aug, (1, 2, 3))
    loader = DeviceLoader(images, torch.arange(300), 64, *RAW, train=True, augment=fast, seed=4)
    loader.set_epoch(1)
    got = list(loader)
    copy = fast._padded[1]
    assert fast._padded[0] is loader.images and copy.shape == (600 if aug.flip else 300, 3, 18, 16)
    list(loader)
    assert fast._padded[1] is copy  # padded once, not per epoch

    by_batch = BatchAugment(aug, (1, 2, 3))
    g = torch.Generator().manual_seed(loader.epoch_seed)
    order = torch.randperm(300, generator=g)
    rng = np.random.default_rng(loader.augment_seed)
    for i, (x, y) in enumerate(got):
        index = order[i * 64 : (i + 1) * 64]
        want = by_batch(images.index_select(0, index), g, rng, Position(index, 1, 4))
        assert torch.equal(y, index) and torch.equal(x, want.float())

    monkeypatch.setattr(augment_module, "PREPAD_MAX_BYTES", 0)  # over budget: pads each batch instead
    over = DeviceLoader(images, torch.arange(300), 64, *RAW, train=True, augment=BatchAugment(aug, (1, 2, 3)), seed=4)
    over.set_epoch(1)
    assert torch.equal(stacked(over), stacked(got)) and over.augment._padded is None


@pytest.mark.parametrize("reflect", [False, True])
def test_padded_crop_is_a_window_of_the_padded_image_mirrored_or_not(reflect):
    from cnnlab.data import transforms as T

    images = torch.randint(0, 256, (40, 2, 9, 11), dtype=torch.uint8)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect" if reflect else "constant")
    index = torch.randperm(40)[:25]
    top, left = torch.randint(0, 5, (25,)), torch.randint(0, 5, (25,))
    got = T.windows(T.pad(images, 2, reflect=reflect), index, top, left, 9, 11)
    for k, (i, t, c) in enumerate(zip(index.tolist(), top.tolist(), left.tolist())):
        assert torch.equal(got[k], padded[i, :, t : t + 9, c : c + 11])
    mirrored = torch.rand(25) < 0.5
    assert torch.equal(T.mirror(got, mirrored), torch.where(mirrored[:, None, None, None], got.flip(3), got))
    both = T.pad(images, 2, reflect=reflect, with_mirror=True)
    assert torch.equal(both[0::2], padded) and torch.equal(both[1::2], padded.flip(3))
    for flip, given in ((0.5, None), (0.0, mirrored)):
        one, two = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        plain = T.random_crop_from(padded, index, 2, one, flip, mirrored=given)
        assert torch.equal(plain, T.random_crop_from(both, index, 2, two, flip, mirrored=given, with_mirror=True))


@pytest.mark.parametrize("values", [1, 2, 3, 17, 256])
def test_equalize_matches_torchvision_on_few_valued_and_large_images(values):
    from torchvision.transforms.v2 import functional as TF

    from cnnlab.data.policies import equalize

    gen = torch.Generator().manual_seed(values)
    x = (torch.randint(0, values, (16, 3, 7, 9), generator=gen) * (255 // max(values - 1, 1))).to(torch.uint8)
    x[0, 0], x[1] = 255, 0
    big = torch.randint(0, values, (2, 3, 300, 200), generator=gen).to(torch.uint8)
    for images in (x, big):
        assert torch.equal(equalize(images, None), TF.equalize(images))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("crop_pad_mode", "wrap", "augment.crop_pad_mode must be one of zeros, reflect"),
        ("flip_mode", "sometimes", "augment.flip_mode must be one of random, alternate"),
    ],
)
def test_translate_and_flip_modes_are_checked(key, value, message):
    cfg = cnnlab.compose(["augment=airbench"])
    validate(cfg)
    cfg.augment[key] = value
    with pytest.raises(CnnlabError, match=message):
        validate(cfg)
