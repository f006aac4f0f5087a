"""Distributed helpers (torchrun + DistributedDataParallel). Without torchrun every call is a no-op for rank 0."""

from __future__ import annotations

import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the only process that prints, logs and writes files."""
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()
