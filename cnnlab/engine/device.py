"""Device and precision selection: cuda > mps > cpu; autocast in bf16 where supported."""

from __future__ import annotations

import os
from contextlib import nullcontext
from functools import partial

import torch

from cnnlab.errors import CnnlabError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CnnlabError(f"trainer.device '{name}' is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnlabError(f"trainer.device={name} but CUDA is not available here; use trainer.device=auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CnnlabError(f"trainer.device={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CnnlabError(f"trainer.device={name} but MPS is not available here")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. `auto`: bf16 on CUDA where supported, else fp16; fp32 elsewhere.
    `bf16_native`: bf16 where the hardware computes it natively (CUDA with bf16, a CPU with AVX512-BF16 or
    AMX), fp32 elsewhere: on a CPU without them bf16 is emulated and slower than fp32."""
    if name == "fp32":
        return None
    if name == "bf16_native":
        return torch.bfloat16 if native_bf16(device) else None
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp16" and device.type != "cuda":
        raise CnnlabError(f"trainer.precision=fp16 needs CUDA (device is {device}); use bf16 or fp32")
    return torch.bfloat16 if name == "bf16" else torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """What a resolved autocast dtype is called in metrics.json and eval reports."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware. torch.cpu's feature checks are private: absent, the answer
    is no (fp32 is always correct, only slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def autocast_for(device: torch.device, dtype: torch.dtype | None):
    """A zero-argument context factory: autocast in `dtype`, or nothing for fp32."""
    if dtype is None:
        return nullcontext
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


def set_deterministic(on: bool) -> None:
    """trainer.deterministic: deterministic kernels (cuDNN, cuBLAS, scatter); warns where none exists."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(on, warn_only=True)
