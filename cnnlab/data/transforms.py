"""Batched augmentation on uint8 (B, C, H, W) tensors on the training device: no per-sample Python.

Every op draws its per-image randomness from the generator it is given (the loader's, reseeded per
epoch), and follows torchvision's sampling rules, so the DataLoader path (torchvision v2, per image)
and this one have the same augmentation distributions (tests/test_augment.py checks that).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float values already in [0, 255] as uint8, truncated as .to(torch.uint8) truncates, through int16: torch's
    CPU float -> uint8 copy is scalar, 4-8x slower than float -> int16 -> uint8."""
    return x.to(torch.int16).to(torch.uint8)


class Normalise:
    """uint8 (N, C, H, W) -> float, normalised with the training set's mean and std (given for [0, 1] images) in one
    fused op on the raw values: (x - 255 mean) / (255 std). The constants are made once, on `device`."""

    def __init__(self, mean, std, device=None):
        self.shift = (torch.tensor(mean, device=device) * 255).view(1, -1, 1, 1)
        self.scale = (torch.tensor(std, device=device) * 255).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # in place on the one new float tensor: each fresh 6 MB buffer of a CIFAR batch costs page faults on the CPU
        return x.to(torch.float32, copy=True).sub_(self.shift).div_(self.scale)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device) -> torch.Tensor:
    """n uniform draws in [low, high); generator None draws from torch's global RNG (per-image use)."""
    dev = generator.device if generator is not None else device
    return (torch.rand(n, generator=generator, device=dev) * (high - low) + low).to(device)


def _randint_below(high: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One integer in [0, high[i]) per entry of `high` (a vectorised randint with per-entry bounds)."""
    u = _uniform(len(high), 0.0, 1.0, generator, high.device)
    return (u * high).long().clamp_max(high - 1)


def pad(x: torch.Tensor, padding: int, *, reflect: bool = False, with_mirror: bool = False) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H + 2 padding, W + 2 padding), zeros or reflected borders (the edge not repeated);
    `with_mirror`: each padded image followed by its mirror image, (2 N, C, H + 2 padding, W + 2 padding), so
    that a mirrored crop is a window of image 2 i + 1. In chunks: a whole dataset takes little more than its
    padded copy."""
    mode = "reflect" if reflect else "constant"
    n, c, h, w = x.shape
    copies = 2 if with_mirror else 1
    out = torch.empty((n, copies, c, h + 2 * padding, w + 2 * padding), dtype=x.dtype, device=x.device)
    for start in range(0, n, 4096):
        chunk = F.pad(x[start : start + 4096], (padding,) * 4, mode=mode)
        out[start : start + 4096, 0] = chunk
        if with_mirror:
            out[start : start + 4096, 1] = chunk.flip(3)
    return out.view(n * copies, c, h + 2 * padding, w + 2 * padding)


def windows(padded: torch.Tensor, index: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int, w: int):
    """(B, C, h, w): per i, padded[index[i], :, top[i] : top[i] + h, left[i] : left[i] + w].

    One index_select of whole w-pixel runs: the flat storage viewed as overlapping rows of w pixels (row k starts
    at pixel k), and each window is C x h of those rows. Copying rows is several times faster on the CPU than
    gathering pixel by pixel, and there is no (B, C, h, w) index tensor to build.
    """
    n, c, ph, pw = padded.shape
    flat = padded.contiguous().view(-1)
    runs = flat.as_strided((flat.numel() - w + 1, w), (1, 1))
    start = index * (c * ph * pw) + top * pw + left  # (B,) the window's first pixel
    offsets = torch.arange(c, device=padded.device)[:, None] * (ph * pw) + torch.arange(h, device=padded.device) * pw
    return runs.index_select(0, (start[:, None, None] + offsets).view(-1)).view(len(index), c, h, w)


def mirror(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with the images where `mask` (a bool per image) holds mirrored left-right: one row pick out of x and its
    mirror (torch.where with a per-image mask is 3-5x slower on the CPU), with no host sync."""
    b = len(x)
    both = torch.cat([x, x.flip(3)]).view(2 * b, -1)
    pick = torch.arange(b, device=x.device) + b * mask.to(x.device, torch.long)
    return both.index_select(0, pick).view(x.shape)


def random_crop_from(
    padded: torch.Tensor,
    index: torch.Tensor,
    padding: int,
    generator: torch.Generator | None,
    flip: float = 0.0,
    *,
    mirrored: torch.Tensor | None = None,
    with_mirror: bool = False,
) -> torch.Tensor:
    """Random crops of padded[index] (images padded by `padding`, `with_mirror` as pad() makes them) back to the
    unpadded size, each at a uniform offset in 0..2 padding per axis; with `flip` > 0, each also mirrored with
    that probability, or those where `mirrored` (a bool per image) holds. The draws: row offsets, column
    offsets, then the flips."""
    b, h, w = len(index), padded.shape[2] - 2 * padding, padded.shape[3] - 2 * padding
    span = torch.full((b,), 2 * padding + 1, device=padded.device)
    dy, dx = _randint_below(span, generator), _randint_below(span, generator)
    if mirrored is None and flip > 0:
        mirrored = _uniform(b, 0.0, 1.0, generator, padded.device) < flip
    if mirrored is None:
        return windows(padded, index, dy, dx, h, w)
    if with_mirror:  # the crop at dx, mirrored, is the window at 2 padding - dx of the image's mirror, 2 i + 1
        return windows(padded, 2 * index + mirrored.long(), dy, torch.where(mirrored, 2 * padding - dx, dx), h, w)
    return mirror(windows(padded, index, dy, dx, h, w), mirrored)


def random_crop(
    x: torch.Tensor,
    padding: int,
    generator: torch.Generator | None,
    flip: float = 0.0,
    *,
    reflect: bool = False,
    mirrored: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pad the batch by `padding` (zeros, or `reflect`ed) and crop back to its size at a random offset per image
    (random_crop_from; the device loader pads its whole dataset once instead)."""
    index = torch.arange(len(x), device=x.device)
    return random_crop_from(pad(x, padding, reflect=reflect), index, padding, generator, flip, mirrored=mirrored)


def alternating_flips(index: torch.Tensor, epoch: int, seed: int) -> torch.Tensor:
    """airbench's alternating flip, per image: mirrored in even epochs for a fixed random half of the images
    (a hash of (index, seed)), in odd epochs for the other half; so each image is seen both ways every two
    epochs. A bool per entry of `index` (dataset indices), computed on their device."""
    h = (index.long() * 0x9E3779B1 + ((seed * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF)) & 0xFFFFFFFF
    h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
    h = ((h ^ (h >> 12)) * 0x297A2D39) & 0xFFFFFFFF
    h = h ^ (h >> 15)
    return ((h >> 7) & 1).bool() ^ bool(epoch % 2)


def random_flip(x: torch.Tensor, generator: torch.Generator | None, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p."""
    return mirror(x, _uniform(x.shape[0], 0.0, 1.0, generator, x.device) < p)


def _box_draws(b: int, h: int, w: int, scale, ratio, generator, device, *, tries: int = 10):
    """torchvision's box candidates, vectorised: `tries` (area fraction, log-aspect) draws per image.

    Returns (wide, tall), each (b, tries): round(sqrt(area * r)) and round(sqrt(area / r)).
    """
    area = h * w * _uniform(b * tries, scale[0], scale[1], generator, device).view(b, tries)
    r = torch.exp(_uniform(b * tries, math.log(ratio[0]), math.log(ratio[1]), generator, device)).view(b, tries)
    return torch.sqrt(area * r).round().long(), torch.sqrt(area / r).round().long()


def _first_fit(ok: torch.Tensor, *candidates: torch.Tensor):
    """Per row, the candidates at the first column where `ok` holds, and whether any did."""
    found = ok.any(1)
    pick = torch.where(found, ok.float().argmax(1), torch.zeros_like(found, dtype=torch.long))[:, None]
    return (*(c.gather(1, pick)[:, 0] for c in candidates), found)


def random_resized_crop(x: torch.Tensor, scale, ratio, generator, size: int | None = None) -> torch.Tensor:
    """Crop a random area fraction `scale` and aspect ratio `ratio` per image, resize it to `size` (bilinear,
    averaging over the source pixels when shrinking, like an antialiased resize)."""
    b, c, h, w = x.shape
    size = size or h
    wide, tall = _box_draws(b, h, w, scale, ratio, generator, x.device)
    bw, bh, found = _first_fit((wide > 0) & (wide <= w) & (tall > 0) & (tall <= h), wide, tall)
    # torchvision's fallback after 10 misses: the whole image, cut to the nearest allowed aspect ratio.
    in_ratio = w / h
    if in_ratio < min(ratio):
        fw, fh = w, round(w / min(ratio))
    elif in_ratio > max(ratio):
        fh, fw = h, round(h * max(ratio))
    else:
        fw, fh = w, h
    bh = torch.where(found, bh, torch.full_like(bh, fh))
    bw = torch.where(found, bw, torch.full_like(bw, fw))
    top = torch.where(found, _randint_below(h - bh + 1, generator), (h - bh) // 2)
    left = torch.where(found, _randint_below(w - bw + 1, generator), (w - bw) // 2)
    boxes = torch.stack([torch.arange(b, device=x.device), left, top, left + bw, top + bh], 1).float()
    from torchvision.ops import roi_align  # imported here: torchvision takes seconds to import

    out = roi_align(x.float(), boxes, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return to_uint8(out.round_().clamp_(0, 255))


def _grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, as torchvision's rgb_to_grayscale: (B, 1, H, W)."""
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]) if x.shape[1] == 3 else x


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images in [0, 1] by `shift` (fractions of a turn, one per image) via HSV."""
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    v, delta = maxc, maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    d = delta.clamp_min(1e-12)
    hue = torch.where(maxc == r, (g - b) / d, torch.where(maxc == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))
    hue = (hue + shift[:, None, None]) % 1.0
    # HSV -> RGB: each channel is v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6.
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (n + hue * 6.0) % 6.0
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, 1)


def color_jitter(x: torch.Tensor, strength: float, hue: float, order: list[int], generator) -> torch.Tensor:
    """torchvision's ColorJitter per image: brightness, contrast, saturation factors in [1 - s, 1 + s] and a
    hue shift in [-hue, hue], applied in `order` (0..3; torchvision draws a new order per call)."""
    b = x.shape[0]
    y = x.float() / 255
    low = max(0.0, 1.0 - strength)
    factors = [_uniform(b, low, 1.0 + strength, generator, x.device)[:, None, None, None] for _ in range(3)]
    shift = _uniform(b, -hue, hue, generator, x.device)
    colour = x.shape[1] == 3
    for op in order:
        if op == 0 and strength > 0:
            y = (y * factors[0]).clamp(0, 1)
        elif op == 1 and strength > 0:
            mean = _grey(y).mean(dim=(1, 2, 3), keepdim=True)
            y = (factors[1] * y + (1 - factors[1]) * mean).clamp(0, 1)
        elif op == 2 and strength > 0 and colour:
            y = (factors[2] * y + (1 - factors[2]) * _grey(y)).clamp(0, 1)
        elif op == 3 and hue > 0 and colour:
            y = _shift_hue(y, shift)
    return to_uint8((y * 255).round_().clamp_(0, 255))


def _fill_boxes(x, top, left, bh, bw, fill: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Set the box [top, top + bh) x [left, left + bw) of each image where `apply` to `fill` (per channel)."""
    rows = torch.arange(x.shape[2], device=x.device)[None, :, None]
    cols = torch.arange(x.shape[3], device=x.device)[None, None, :]
    inside = (
        (rows >= top[:, None, None])
        & (rows < (top + bh)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + bw)[:, None, None])
        & apply[:, None, None]
    )
    return torch.where(inside[:, None], fill.view(1, -1, 1, 1).to(x.dtype), x)


def random_erasing(x: torch.Tensor, p: float, scale, ratio, fill: torch.Tensor, generator) -> torch.Tensor:
    """torchvision's RandomErasing per image: with probability p, a box of `scale` area and `ratio` aspect
    (height / width) set to `fill`; like torchvision, nothing is erased when 10 draws find no box that fits."""
    b, _, h, w = x.shape
    apply = _uniform(b, 0.0, 1.0, generator, x.device) < p
    wide, tall = _box_draws(b, h, w, scale, ratio, generator, x.device)
    bh, bw, found = _first_fit((wide < h) & (tall < w), wide, tall)  # here the height is sqrt(area r)
    top = _randint_below((h - bh + 1).clamp_min(1), generator)
    left = _randint_below((w - bw + 1).clamp_min(1), generator)
    return _fill_boxes(x, top, left, bh, bw, fill, apply & found)


def cutout(x: torch.Tensor, size: int, fill: torch.Tensor, generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor): a size x size square centred anywhere in the image (clipped at the edges)."""
    b, _, h, w = x.shape
    cy = _randint_below(torch.full((b,), h, device=x.device), generator)
    cx = _randint_below(torch.full((b,), w, device=x.device), generator)
    top, left = cy - size // 2, cx - size // 2
    return _fill_boxes(
        x,
        top,
        left,
        torch.full_like(top, size),
        torch.full_like(left, size),
        fill,
        torch.ones(b, dtype=torch.bool, device=x.device),
    )


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a whole uint8 image tensor once at load time (antialiased bilinear), in chunks to bound memory."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    chunks = [
        to_uint8(
            F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            .round_()
            .clamp_(0, 255)
        )
        for chunk in images.split(4096)
    ]
    return torch.cat(chunks)
