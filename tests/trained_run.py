"""A tiny trained run for the tests that start from a checkpoint (eval, predict, features, export)."""

from __future__ import annotations

from pathlib import Path

from conftest import cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def train_tiny(where: Path, *overrides: str) -> Path:
    """`cnnlab train` on the defaults (LeNet-5 on the bundled digits at 32x32), 2 epochs: a few seconds."""
    run_dir = where / "run"
    result = cli(
        "train",
        "trainer.epochs=2",
        "trainer.progress=plain",
        f"hydra.run.dir={run_dir}",
        *overrides,
        cwd=where,
        env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return run_dir


def one_error_line(result) -> str:
    """The single `error: ...` line of a failed command (exit 2), or an assertion error."""
    assert result.returncode == 2, (result.returncode, result.stdout[-1500:], result.stderr[-1500:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-1500:]
    return lines[0]


def compose(command: str, *overrides: str):
    """The config `cnnlab <command> OVERRIDES` would run, composed in-process (the public API)."""
    import cnnlab

    return cnnlab.compose(overrides, config_name=command)


def train_in_process(where: Path, *overrides: str) -> Path:
    """train_tiny without a subprocess (saves the interpreter start-up and imports)."""
    from cnnlab.commands import train

    run_dir = where / "run"
    train.run(compose("train", "trainer.epochs=2", "trainer.progress=plain", *overrides), run_dir=run_dir)
    return run_dir
