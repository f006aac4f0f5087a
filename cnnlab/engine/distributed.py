"""Distributed helpers: PyTorch's own engine (torchrun + DistributedDataParallel), nothing home-made.

A launcher describes the job in environment variables: torchrun (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT), or submitit's SLURM tasks (hydra-submitit-launcher with tasks_per_node > 1), which
`init()` translates into the same variables. Without either every call here is a no-op for rank 0.

Backends: NCCL for CUDA tensors, gloo for CPU tensors ("cpu:gloo,cuda:nccl" when CUDA exists), so a
CPU-only job, a GPU job and the small host-side agreements of a GPU job (stop votes, object broadcasts)
each use the right transport. Each rank uses the GPU of its LOCAL_RANK.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from cnnlab.errors import CnnlabError

_CPU_GROUP = None  # a gloo group for host-side agreement (votes, objects), apart from DDP's gradient traffic


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the only process that prints, logs and writes files."""
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier(group=_CPU_GROUP)


# ------------------------------------------------------------------------------------------------- setup
def launched() -> bool:
    """Whether a launcher started this process as one rank of several (torchrun, or submitit's SLURM tasks)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return True
    return _submitit_tasks() > 1


def _submitit_tasks() -> int:
    """Tasks of the submitit job this process runs in (hydra-submitit-launcher), 0 outside one."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return 0
    try:
        from submitit import JobEnvironment

        return JobEnvironment().num_tasks
    except (ImportError, KeyError, RuntimeError, ValueError):  # not inside a job after all
        return 0


def init(timeout_minutes: float = 30.0) -> bool:
    """Join the process group the launcher described (once; later calls do nothing). True when distributed."""
    global _CPU_GROUP
    if is_initialized():
        return True
    if not launched():
        return False
    if "RANK" not in os.environ and _submitit_tasks() > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    backend = "gloo"
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise CnnlabError(
                f"this node runs more ranks than it has GPUs (LOCAL_RANK {local}, "
                f"{torch.cuda.device_count()} GPU(s)): start one process per GPU "
                f"(torchrun --nproc_per_node={torch.cuda.device_count()})"
            )
        torch.cuda.set_device(local)
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    _CPU_GROUP = dist.new_group(backend="gloo")
    return True


def shutdown() -> None:
    """Leave the process group (at the end of the process)."""
    global _CPU_GROUP
    if is_initialized():
        dist.destroy_process_group()
    _CPU_GROUP = None


def device_for(device: torch.device) -> torch.device:
    """This rank's device: `cuda` becomes cuda:LOCAL_RANK; one explicit GPU for every rank is a user error."""
    if not is_initialized() or world_size() == 1:
        return device
    if device.type == "cuda":
        if device.index is not None and device.index != local_rank():
            raise CnnlabError(
                f"trainer.device={device} under torchrun: each rank uses the GPU of its LOCAL_RANK; "
                f"use trainer.device=auto or cuda"
            )
        return torch.device("cuda", local_rank())
    if device.type == "mps":
        raise CnnlabError("trainer.device=mps cannot be used by several ranks; use trainer.device=cpu")
    return device


# ---------------------------------------------------------------------------------------------- transfers
def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum each tensor across ranks, in place (on its own device: NCCL for CUDA, gloo for CPU)."""
    if world_size() == 1:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def all_true(flag: torch.Tensor) -> torch.Tensor:
    """A boolean device tensor that is true only where it is true on every rank (no host sync)."""
    if world_size() == 1:
        return flag
    t = flag.to(torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.bool()


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on any rank (a host-side agreement: every rank gets the same answer)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_CPU_GROUP)
    return bool(t.item())


def broadcast_object(obj=None, src: int = 0):
    """Rank `src`'s picklable `obj` on every rank (e.g. the run dir, a resume decision)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_CPU_GROUP)
    return box[0]


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank `src`'s parameters and buffers (e.g. after rank 0 alone read a checkpoint)."""
    if world_size() == 1:
        return
    for t in (*module.parameters(), *module.buffers()):
        dist.broadcast(t.data, src=src)


class StopVote:
    """Ranks agree on stopping (a signal, the time limit) at the same optimizer step.

    Each step's local flags are all-reduced (MAX) on the host through gloo in the background and read at the
    next step, by when the exchange is long done: no rank waits and no device sync happens. A stop is
    therefore taken one step after a rank first sees its reason, at the same step on every rank.
    """

    def __init__(self, size: int = 2):
        self.size = size
        self._pending: tuple | None = None

    def __call__(self, *flags: bool) -> tuple[bool, ...]:
        """This step's local flags in; the agreed flags of the previous vote out (all false at the first)."""
        agreed = self.flush()
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
        self._pending = (t, dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_CPU_GROUP, async_op=True))
        return agreed

    def flush(self) -> tuple[bool, ...]:
        """Wait for the vote in flight (if any) and return its outcome."""
        if self._pending is None:
            return (False,) * self.size
        t, work = self._pending
        work.wait()
        self._pending = None
        return tuple(bool(v) for v in t.tolist())


def sharded(loader) -> bool:
    """Whether `loader` (or the loader a debug wrapper holds) is one rank's share of a split, whose evaluation
    sums must therefore be added across ranks (cnnlab.data.sharding)."""
    while loader is not None:
        shard = getattr(loader, "shard", None)
        if shard is not None:
            return shard.world > 1
        loader = getattr(loader, "loader", None)
    return False


def wrap(model: torch.nn.Module, device: torch.device, *, changing_trainables: bool = False) -> torch.nn.Module:
    """The model to step with: DistributedDataParallel over `model`, which stays the module that is saved
    (no "module." prefix: a checkpoint from N ranks loads in 1) and evaluated. One rank: `model` itself.

    `changing_trainables`: parameters are frozen or unfrozen during the run (fine-tuning). DDP then looks for
    parameters without gradients every step (find_unused_parameters): every parameter stays in its reducer,
    so one unfrozen later is still averaged across ranks (without it DDP fails, or skips that parameter).
    """
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=changing_trainables)


def no_sync(model: torch.nn.Module):
    """DDP's no_sync (gradients accumulate locally, no all-reduce) for a micro-batch that is not the last of its
    accumulation group; a plain (or torch.compile'd plain) model: nothing to skip."""
    from torch.nn.parallel import DistributedDataParallel

    inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    return inner.no_sync() if isinstance(inner, DistributedDataParallel) else contextlib.nullcontext()


def convert_sync_bn(model: torch.nn.Module) -> torch.nn.Module:
    """trainer.sync_bn: BatchNorm statistics over the global batch (all ranks) instead of each rank's share."""
    if world_size() == 1:
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
