"""Helpers for the tests that start from a trained run or check a command's one-line errors."""

from __future__ import annotations

from pathlib import Path


def one_error_line(result) -> str:
    """The single `error: ...` line of a failed command (exit 2), or an assertion error. RESULT is a subprocess's
    CompletedProcess or run_main's (exit code, stderr)."""
    code, err = result if isinstance(result, tuple) else (result.returncode, result.stderr)
    assert code == 2, (code, err[-1500:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-1500:]
    return lines[0]


def compose(command: str, *overrides: str):
    """The config `cnnlab <command> OVERRIDES` would run, composed in-process (the public API)."""
    import cnnlab

    return cnnlab.compose(overrides, config_name=command)


def train_in_process(where: Path, *overrides: str) -> Path:
    """`cnnlab train` on the defaults (LeNet-5 on the bundled digits at 32x32), 2 epochs, in this process (no
    interpreter start-up): a few seconds. Returns the run dir, where/run."""
    from cnnlab.commands import train

    run_dir = where / "run"
    train.run(compose("train", "trainer.epochs=2", "trainer.progress=plain", *overrides), run_dir=run_dir)
    return run_dir


def loaders_of(trained):
    """A loaded checkpoint's (cnnlab.commands.trained.load_trained) own data, unaugmented, on the CPU: its config,
    seed and normalisation statistics, as eval and export's parity check load them."""
    import torch

    from cnnlab.data import build

    stats = (trained.spec.mean, trained.spec.std)
    return build(trained.config.data, None, torch.device("cpu"), seed=trained.config.seed, stats=stats)
