"""What a resume may change, checked before anything is written, and the schedule re-planned when it may.

A checkpoint continues the experiment it belongs to: the settings that define it (model, optimizer, data,
split, augmentation, seed, ...) must be the same, or the optimizer state, the validation set and the best
metric would silently mean something else. Continuing a run in its own directory also keeps its length.
Training a checkpoint longer (or shorter) is a new run in a new directory: the schedule is re-planned for
the new length and fast-forwarded to the step the checkpoint reached.
"""

from __future__ import annotations

import warnings

from cnnlab.errors import CnnlabError

# Settings that define the experiment; a key absent from an (older) checkpoint's config is not checked.
# `augment` is compared leaf by leaf.
FIXED = (
    "seed",
    "model._target_",
    "optimizer._target_",
    "optimizer.lr",
    "optimizer.weight_decay",
    "scheduler.name",
    "trainer.monitor",
    "trainer.precision",
    "trainer.accumulate",
    "trainer.ema_decay",
    "data.name",
    "data.batch_size",
    "data.val_split",
    "data.val_fraction",
    "data.subset",
    "data.image_size",
    "data.eval_subset",
    "data.classes",
    "augment",
)
# Also fixed when a run continues in its own directory: its .hydra/config.yaml and its schedule say them.
SAME_RUN = ("trainer.epochs", "trainer.max_steps")
_ABSENT = object()


def _get(config, dotted: str):
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return _ABSENT
        config = config[part]
    return config


def _leaves(value, prefix: str) -> dict:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _leaves(sub, f"{prefix}.{key}").items()}
    return {prefix: value}


def conflicts(stored: dict, current: dict, keys=FIXED) -> list[str]:
    """'key was OLD, now NEW' for each of `keys` (or a leaf below it) that differs between the two configs."""
    found = []
    for key in keys:
        old, new = _get(stored, key), _get(current, key)
        if old is _ABSENT:
            continue
        old_leaves, new_leaves = _leaves(old, key), _leaves(None if new is _ABSENT else new, key)
        for leaf in sorted(old_leaves.keys() | new_leaves.keys()):
            a, b = old_leaves.get(leaf), new_leaves.get(leaf)
            if a != b:
                found.append(f"{leaf} was {a!r}, now {b!r}")
    return found


def _count(fit: dict, key: str) -> int:
    value = fit.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def check(path, state: dict, current: dict, same_run: bool) -> None:
    """Refuse, in one line, a resume that changes the experiment, or (into a new run dir) has nothing left to
    train. `same_run`: the checkpoint is the run dir's own, continued there."""
    stored = state.get("config") if isinstance(state.get("config"), dict) else {}
    problems = conflicts(stored, current, FIXED + (SAME_RUN if same_run else ()))
    if problems:
        advice = (
            "Continue it with the settings it started with, or train it longer into a new hydra.run.dir"
            if same_run
            else "Resume with the same settings, or start a new run from its weights (model.weights_path / finetune)"
        )
        raise CnnlabError(f"cannot resume from {path}: {'; '.join(problems)}. {advice}")
    if same_run:
        return
    fit = state.get("fit") if isinstance(state.get("fit"), dict) else {}
    done, step = _count(fit, "epoch"), _count(fit, "step")
    epochs, max_steps = _get(current, "trainer.epochs"), _get(current, "trainer.max_steps")
    complete = fit.get("finished") is True and not replanned(stored, current)  # e.g. stopped early
    if complete or done >= epochs or (isinstance(max_steps, int) and max_steps and step >= max_steps):
        limit = f"trainer.epochs={epochs}" + (f", trainer.max_steps={max_steps}" if max_steps else "")
        raise CnnlabError(
            f"nothing left to train: {path} has trained {done} epoch(s), {step} steps, and this run asks for "
            f"{limit}; raise trainer.epochs to train it longer"
        )


def replanned(stored: dict, current: dict) -> bool:
    """Whether this run's length differs from the checkpoint's (its schedule is then re-planned)."""
    return any(_get(stored, key) not in (_ABSENT, _get(current, key)) for key in SAME_RUN)


def continue_schedule(schedule, stored: dict, path) -> None:
    """Continue a checkpoint's schedule under this run's plan: the freshly built `schedule` (planned for this
    run's length) is fast-forwarded to the optimizer step the checkpoint reached. A plateau schedule does not
    depend on the length: its state is loaded as it is. Call after the optimizer state is loaded."""
    if schedule.plateau is not None:
        schedule.load_state_dict(stored)
        return
    per_step = stored.get("per_step") if isinstance(stored.get("per_step"), dict) else {}
    reached = per_step.get("last_epoch")
    if not isinstance(reached, int) or isinstance(reached, bool) or reached < 0:
        raise CnnlabError(f"{path} cannot be used to resume: its scheduler state has no step count")
    schedule.steps = stored.get("steps", reached)
    with warnings.catch_warnings():  # torch warns when a schedule steps before the optimizer ever did
        warnings.simplefilter("ignore", UserWarning)
        schedule.per_step.last_epoch = reached - 1
        schedule.per_step.step()  # sets the lr (and onecycle's momentum) of step `reached` under the new plan
