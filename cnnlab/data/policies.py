"""AutoAugment, RandAugment and TrivialAugment on a whole uint8 batch, on its device.

torchvision's v2 policies pick an op and a magnitude per image and run it on that image alone. Here the
picks for the whole batch are drawn at once on the host (numpy: no device sync), the images are grouped
by the op they drew, and each op runs once per group with a per-image magnitude array (host values). The sampling
rules are torchvision's, the magnitude tables and sub-policies the published ones (policy_tables.py), and
every op computes what torchvision's per-image kernel computes (tests/test_augment.py compares them op by op
and policy by policy). Geometric ops fill with 0, as the v2 policies do by default.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from cnnlab.data.policy_tables import AUTOAUGMENT, SPACES
from cnnlab.data.transforms import to_uint8


# ------------------------------------------------------------------------------------------- the ops
def _on(x: torch.Tensor, values: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    """Per-image host values (float64, as torchvision's Python floats) as `dtype` on x's device, broadcasting
    over (B, C, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(values)).to(x.device, dtype).view(-1, 1, 1, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """torchvision's luma of a uint8 batch, floored as its uint8 kernels do: (B, 1, H, W) float."""
    if x.shape[1] == 1:
        return x.float()
    r, g, b = x.float().unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1).floor_()


def _blend(x: torch.Tensor, other: torch.Tensor, m: np.ndarray) -> torch.Tensor:
    """ratio x + (1 - ratio) other with ratio = 1 + m, clamped and truncated to uint8 (torchvision's _blend;
    both factors rounded from double precision, as its Python floats are)."""
    ratio = 1.0 + m
    out = torch.addcmul(x.float() * _on(x, ratio), other, _on(x, 1.0 - ratio))
    return to_uint8(out.clamp_(0, 255))


@functools.lru_cache(maxsize=8)
def _base_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """torchvision's _affine_grid base: (1, h w, 3) rows (x, y, 1) of pixel centres about the image centre."""
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=device)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=device)
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=device)], -1)
    return base.view(1, h * w, 3)


@functools.lru_cache(maxsize=512)
def _grid(matrix: bytes, h: int, w: int, device: torch.device) -> torch.Tensor:
    """torchvision's _affine_grid for one inverse affine matrix (its 2 x 3 float32 entries as bytes, in pixel
    units about the image centre): (h, w, 2), made as torchvision makes it, by one bmm (its rounding decides
    which pixel a sample lands on). Cached: a policy's matrices come from its magnitude tables (TrivialAugment
    draws from ~250 at one image size), and each bmm is a BLAS call of ~8 us."""
    theta = torch.from_numpy(np.frombuffer(matrix, np.float32).copy()).view(1, 2, 3).to(device)
    scale = torch.tensor([0.5 * w, 0.5 * h], device=device)
    return _base_grid(h, w, device).bmm(theta.transpose(1, 2) / scale).view(h, w, 2)


def _affine(x: torch.Tensor, a, b, c, d, e, f) -> torch.Tensor:
    """Nearest-neighbour resampling through the inverse affine matrices [a b c; d e f], each entry a number or a
    (B,) array, zero fill: torchvision's affine (_affine_grid + _apply_grid_transform), batched. The matrices are
    computed in double precision on the host and rounded to float32, as torchvision computes its matrix in
    Python floats; the images share few distinct matrices (one per magnitude bin and sign)."""
    n, _, h, w = x.shape
    theta = np.stack([np.broadcast_to(v, n) for v in (a, b, c, d, e, f)], 1).astype(np.float32)
    rows = theta.view(np.dtype((np.void, theta.itemsize * 6))).ravel()  # a matrix as one comparable value
    distinct, which = np.unique(rows, return_inverse=True)
    grids = torch.stack([_grid(row.tobytes(), h, w, x.device) for row in distinct])
    grid = grids.index_select(0, torch.from_numpy(which.ravel()).to(x.device))
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return to_uint8(out)  # nearest samples of integers (or the zero fill): nothing to round


def shear_x(x, m):  # torchvision: affine(shear=[degrees(atan(m)), 0], center=[0, 0]): x_in = x + m (y + h/2)
    return _affine(x, 1.0, m, m * x.shape[2] * 0.5, 0.0, 1.0, 0.0)


def shear_y(x, m):  # y_in = y + m (x + w/2)
    return _affine(x, 1.0, 0.0, 0.0, m, 1.0, m * x.shape[3] * 0.5)


def translate_x(x, m):  # torchvision translates by int(magnitude) pixels
    return _affine(x, 1.0, 0.0, -np.trunc(m), 0.0, 1.0, 0.0)


def translate_y(x, m):
    return _affine(x, 1.0, 0.0, 0.0, 0.0, 1.0, -np.trunc(m))


def rotate(x, m):  # m degrees counter-clockwise about the centre
    rad = np.deg2rad(m)
    cos, sin = np.cos(rad), np.sin(rad)
    return _affine(x, cos, -sin, 0.0, sin, cos, 0.0)


def brightness(x, m):
    return to_uint8((x.float() * _on(x, 1.0 + m)).clamp_(0, 255))


def color(x, m):  # saturation
    return x if x.shape[1] == 1 else _blend(x, _grey(x), m)


def contrast(x, m):
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), m)


def sharpness(x, m):
    b, c, h, w = x.shape
    if h <= 2 or w <= 2:
        return x
    out = x.float()
    # torchvision's 3x3 kernel (1/13 around, 5/13 in the centre) as an exact integer sum (separable 3x3 box sums:
    # 5-8x faster than avg_pool2d on the CPU): the blurred values are k/13, never within rounding error of a .5
    # tie, so rounding gives torchvision's pixels.
    rows = out[..., :-2] + out[..., 1:-1] + out[..., 2:]
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    blurred = box.add_(out[..., 1:-1, 1:-1], alpha=4.0).div_(13.0).round_()
    inner = out[..., 1:-1, 1:-1]
    inner.addcmul_(blurred - inner, _on(x, -m))  # factor 1 + m; the border keeps its pixels
    return to_uint8(out.clamp_(0, 255))


def posterize(x, m):  # keep the top int(m) bits
    bits = _on(x, m, torch.long)
    mask = (((1 << bits) - 1) << (8 - bits)).to(torch.uint8)
    return x & mask.view(-1, 1, 1, 1)


def solarize(x, m):
    """Invert the pixels at or above 255 m. torchvision compares the uint8 image with the threshold in float32
    (255 m rounded to float32: 255 * float32(0.2) is 51.0000008, 51.0 in float32), so the integer pixels
    inverted are those at or above ceil(float32(255 m))."""
    threshold = _on(x, np.clip(np.ceil((255.0 * m).astype(np.float32)), 0, 256), torch.int16)
    # 255 where x >= threshold, else 0, in integer arithmetic: the sign of x - threshold, negated (comparisons
    # into bool and torch.where are several times slower on the CPU)
    above = x.to(torch.int16).sub_(threshold).bitwise_right_shift_(8).bitwise_not_().to(torch.uint8)
    return x ^ above


def autocontrast(x, m):
    f = x.float()
    low, high = f.amin(dim=(2, 3), keepdim=True), f.amax(dim=(2, 3), keepdim=True)
    flat = high == low
    scale = torch.where(flat, torch.ones_like(high), (high - low) * (1.0 / 255))
    return to_uint8(((f - torch.where(flat, torch.zeros_like(low), low)) / scale).clamp_(0, 255))


def equalize(x, m):
    """torchvision's equalize_image (PIL's look-up table per channel) with one histogram and one look-up for the
    whole batch. The table is float32 arithmetic on counts: below 2**24 pixels an image's counts and the
    numerators are exact integers, and a quotient's rounding error (< quotient / 2**24) is smaller than
    1 / divisor, its distance to the next integer, so floor(a / b) is integer division (a plain divide and
    floor is ~6x faster than div(rounding_mode="floor") on the CPU). No torch.where on pixels, no int64
    pixels, no integer tensors in the table (each several times slower on the CPU)."""
    b, c, h, w = x.shape
    n = b * c
    offsets = torch.arange(0, n * 256, 256, dtype=torch.int32, device=x.device)[:, None]
    index = x.reshape(n, h * w).int().add_(offsets).view(-1)  # (channel, value) -> its bin
    hist = torch.bincount(index, minlength=n * 256).view(n, 256).float()
    cum = hist.cumsum(1)
    top = hist.gather(1, x.reshape(n, h * w).amax(1, keepdim=True).long())  # the count of the channel's largest value
    step = (h * w - top).div_(255).floor_()
    lut = (cum[:, :-1] + step.div(2).floor_()).div_(step.clamp(min=1)).floor_().clamp_(0, 255)
    identity = torch.arange(256.0, device=x.device)
    lut = torch.where(step == 0, identity, F.pad(lut, (1, 0)))  # nothing to equalize: the identity table
    return to_uint8(lut).view(-1).index_select(0, index).view(b, c, h, w)


def invert(x, m):
    return 255 - x


OPS = {
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Rotate": rotate,
    "Brightness": brightness,
    "Color": color,
    "Contrast": contrast,
    "Sharpness": sharpness,
    "Posterize": posterize,
    "Solarize": solarize,
    "AutoContrast": autocontrast,
    "Equalize": equalize,
    "Invert": invert,
}


# ---------------------------------------------------------------------------------------- the policies
class BatchedPolicy:
    """One of torchvision's v2 policies (`reference`), applied to a whole batch: `policy(x, rng)`.

    A policy is a few stages; in each stage every image draws (op, magnitude, applied?) the way the
    reference draws them for one image. The draws come from the numpy generator (host, per batch).
    """

    def __init__(self, reference: v2.Transform):
        self.reference = reference
        kind = {v2.AutoAugment: "autoaugment", v2.RandAugment: "randaugment"}.get(type(reference), "trivialaugment")
        self.space = SPACES[kind]  # op name -> (magnitudes(bins, h, w), signed)
        self._magnitude_tables: dict = {}  # (op name, bins, h, w) -> its magnitudes (or None)
        self._stage_tables: dict = {}  # (AutoAugment policy, stage) -> that stage's sub-policy arrays

    def _magnitudes(self, name: str, bins: int, h: int, w: int) -> np.ndarray | None:
        """The magnitude table of an op, computed once per image size (numpy, on the host)."""
        key = (name, bins, h, w)
        if key not in self._magnitude_tables:
            table = self.space[name][0](bins, h, w)
            self._magnitude_tables[key] = None if table is None else table.double().numpy()
        return self._magnitude_tables[key]

    def _sub_policy_stage(self, policy: str, stage: int):
        """One stage of AutoAugment's sub-policies as arrays (computed once): the stage's op names, and per
        sub-policy its op's index among them, its probability and its magnitude bin."""
        key = (policy, stage)
        if key not in self._stage_tables:
            steps = [sub_policy[stage] for sub_policy in AUTOAUGMENT[policy]]
            names = sorted({name for name, _, _ in steps})
            self._stage_tables[key] = (
                names,
                np.array([names.index(name) for name, _, _ in steps]),
                np.array([prob for _, prob, _ in steps]),
                np.array([level or 0 for _, _, level in steps]),
            )
        return self._stage_tables[key]

    def stages(self, n: int, h: int, w: int, rng: np.random.Generator):
        """Yield per stage (op names, chosen op index per image (-1: none), magnitude per image)."""
        ref = self.reference
        names = list(self.space)
        if isinstance(ref, v2.AutoAugment):
            pick = rng.integers(len(AUTOAUGMENT[ref.policy.value]), size=n)
            for stage in range(2):
                stage_names, ops, probs, levels = self._sub_policy_stage(ref.policy.value, stage)
                op = np.where(rng.random(n) <= probs[pick], ops[pick], -1)
                mag = self._drawn(stage_names, op, levels[pick], 10, h, w)
                yield stage_names, op, self._signed(stage_names, op, mag, rng)
        elif isinstance(ref, v2.RandAugment):
            for _ in range(ref.num_ops):
                op = rng.integers(len(names), size=n)
                mag = self._drawn(names, op, ref.magnitude, ref.num_magnitude_bins, h, w)
                yield names, op, self._signed(names, op, mag, rng)
        else:  # TrivialAugmentWide: one op, one magnitude bin, both uniform
            op = rng.integers(len(names), size=n)
            level = rng.integers(ref.num_magnitude_bins, size=n)
            yield names, op, self._signed(names, op, self._drawn(names, op, level, ref.num_magnitude_bins, h, w), rng)

    def _drawn(self, names, op: np.ndarray, level, bins: int, h: int, w: int) -> np.ndarray:
        """Each image's magnitude: its op's table (of `bins` levels) at its level (a number or one per image);
        0 for ops without a magnitude and images without an op."""
        mag = np.zeros(len(op))
        for i, name in enumerate(names):
            table = self._magnitudes(name, bins, h, w)
            if table is not None:
                mag = np.where(op == i, table[level], mag)
        return mag

    def _signed(self, names, op: np.ndarray, mag: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        signed = np.array([self.space[name][1] for name in names])
        flip = signed[np.maximum(op, 0)] & (op >= 0) & (rng.random(len(op)) <= 0.5)
        return np.where(flip, -mag, mag)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        held = np.arange(n)  # x[k] is image held[k] of the batch: a stage leaves the batch in the order it sorted
        for names, op, mag in self.stages(n, h, w, rng):
            active = np.array([name != "Identity" for name in names] + [False])  # op -1: none
            if not active[op].any():
                continue
            # sorted by the op each image drew (none first) with one gather into a new tensor; each group is then a
            # slice, which its op overwrites
            order = np.argsort(op, kind="stable")
            position = np.empty(n, dtype=np.int64)
            position[held] = np.arange(n)
            x, held = x.index_select(0, torch.from_numpy(position[order]).to(x.device)), order
            bounds = np.cumsum(np.bincount(op + 1, minlength=len(names) + 1))
            for i, name in enumerate(names):
                group = slice(bounds[i], bounds[i + 1])
                if active[i] and bounds[i] < bounds[i + 1]:
                    x[group] = OPS[name](x[group], mag[order[group]])
        # back in batch order with one gather (index_copy_ per group is several times slower on the CPU)
        if (held != np.arange(n)).any():
            x = x.index_select(0, torch.from_numpy(np.argsort(held)).to(x.device))
        return x


def reference_policy(name: str, autoaugment_policy: str = "imagenet", n: int = 2, m: int = 9) -> v2.Transform:
    """torchvision's per-image v2 policy of that name (the DataLoader path uses it as it is)."""
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy(autoaugment_policy))
    if name == "randaugment":
        return v2.RandAugment(num_ops=n, magnitude=m)
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    raise ValueError(f"unknown policy {name!r}")
