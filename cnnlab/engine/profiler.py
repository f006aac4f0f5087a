"""debug=profile: a torch.profiler trace of a few training steps, written where TensorBoard finds it."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch


class _NoProfiler(nullcontext):
    """Stands in for torch.profiler.profile when not profiling."""

    def __enter__(self):
        return self

    def step(self) -> None:
        pass


def profiler_for(enabled: bool, device: torch.device, run_dir: Path):
    """A context manager whose `step()` the loop calls after every batch (a no-op unless `enabled`)."""
    if not enabled:
        return _NoProfiler()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
        on_trace_ready=torch.profiler.tensorboard_trace_handler(str(run_dir / "tb" / "profile")),
        record_shapes=True,
        profile_memory=True,
    )
