"""Optimizers (any torch.optim class via `_target_`), parameter groups, and learning-rate schedules.

Parameter groups come from the model's stages (input to output; the last one is the head), so that
per-part learning rates (`head_lr_mult`, `backbone_lr_mult`, `layer_decay`) and "no weight decay on norm
and bias parameters" (`decay_norm_bias: false`) are one mechanism. Schedules are stepped once per
optimizer step; `plateau` also listens to the validation metric once per epoch.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab import optim_muon
from cnnlab.errors import CnnlabError

# Containers whose children are the real stages (torchvision and cnnlab models use these names).
_STAGE_CONTAINERS = ("features", "layers", "blocks", "stages", "encoder")


def stage_modules(model: nn.Module) -> list[nn.Module]:
    """The model's stages, input to output, that hold parameters; the last one is the head.

    A model may define `stages()` returning its modules in order; otherwise its top-level children are
    the stages, with a `features`/`layers`/`blocks` container split into its own children.
    """
    if inspect.ismethod(getattr(model, "stages", None)):  # a method, not a submodule that happens to be callable
        modules = list(model.stages())
    else:
        modules = []
        for name, child in model.named_children():
            if name in _STAGE_CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)):
                modules += list(child.children())
            else:
                modules.append(child)
    return [m for m in modules if any(True for _ in m.parameters())]


def model_stages(model: nn.Module) -> list[list[nn.Parameter]]:
    """The parameters of each stage; parameters owned by no stage (e.g. ViT's class token) open the list."""
    stages = [list(m.parameters()) for m in stage_modules(model)]
    owned = {id(p) for s in stages for p in s}
    loose = [p for p in model.parameters() if id(p) not in owned]
    return [loose, *stages] if loose else stages


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    *,
    decay_norm_bias: bool = True,
    head_lr_mult: float = 1.0,
    backbone_lr_mult: float = 1.0,
    layer_decay: float = 1.0,
) -> list[dict]:
    """Parameter groups with their own lr and weight decay; each carries a `name` for logs and tests.

    The head (last stage) gets lr x head_lr_mult; stage i of S otherwise gets
    lr x backbone_lr_mult x layer_decay^(S-1-i). Norm weights and biases (1-d tensors) skip weight decay
    unless decay_norm_bias. Frozen parameters are included: they get no gradient, so the optimizer skips
    them until gradual unfreezing turns them on.
    """
    stages = model_stages(model)
    last = len(stages) - 1
    groups = []
    for i, stage in enumerate(stages):
        mult = head_lr_mult if i == last else backbone_lr_mult * layer_decay ** (last - i)
        stage_name = "head" if i == last else f"stage{i}"
        decay = [p for p in stage if decay_norm_bias or p.ndim > 1]
        no_decay = [p for p in stage if not decay_norm_bias and p.ndim <= 1]
        for params, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, "/no_decay")):
            if params:
                groups.append({"params": params, "lr": lr * mult, "weight_decay": wd, "name": stage_name + suffix})
    if len({g["lr"] for g in groups}) == 1:  # no per-part lr: at most two groups (fewer, larger fused steps)
        merged: dict[float, dict] = {}
        for g in groups:
            name = "no_decay" if g["name"].endswith("/no_decay") else "all"
            merged.setdefault(g["weight_decay"], {**g, "params": [], "name": name})["params"] += g["params"]
        groups = list(merged.values())
    return groups


# cnnlab's own optimizer keys: popped before the rest goes to the optimizer class.
OWN_KEYS = ("decay_norm_bias", "head_lr_mult", "backbone_lr_mult", "layer_decay")


def build_optimizer(opt_cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    cfg = OmegaConf.to_container(opt_cfg, resolve=True)
    own = {k: cfg.pop(k) for k in OWN_KEYS if k in cfg}
    if "lr" not in cfg:
        raise CnnlabError("optimizer.lr is missing")
    if cfg.get("_target_") == optim_muon.TARGET:  # two optimizers over two kinds of parameters (optim_muon.py)
        return optim_muon.muon_with_other(model, **{k: v for k, v in cfg.items() if k != "_target_"}, **own)
    groups = param_groups(model, cfg["lr"], cfg.get("weight_decay", 0.0), **own)
    try:
        return instantiate(cfg, _partial_=True)(groups)
    except (InstantiationException, TypeError, ValueError) as ex:
        raise CnnlabError(f"cannot build optimizer {cfg.get('_target_')}: {ex.__cause__ or ex}") from None


# --------------------------------------------------------------------------------------------- schedules
def _epochs_to_steps(value: float, steps_per_epoch: int) -> int:
    return round(value * steps_per_epoch)


def _warmup_steps(sched_cfg: DictConfig, steps_per_epoch: int) -> int:
    """scheduler.warmup_steps when set (optimizer steps), else scheduler.warmup_epochs in steps."""
    steps = sched_cfg.get("warmup_steps")
    if steps is None:
        return _epochs_to_steps(sched_cfg.get("warmup_epochs", 0), steps_per_epoch)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise CnnlabError(f"scheduler.warmup_steps must be an integer >= 0, got {steps!r}")
    return steps


@dataclass(frozen=True)
class Plan:
    """What a schedule is planned over: optimizer steps per epoch, in all, and of warmup."""

    steps_per_epoch: int
    total: int
    warmup: int

    def epoch_of(self, step: int) -> int:
        return step // max(1, self.steps_per_epoch)


@dataclass(frozen=True)
class ScheduleKind:
    """One `scheduler.name`: the keys it reads (configs/scheduler/<name>.yaml sets the same, with defaults) and
    `base(sched_cfg, plan)` -> (step -> lr multiplier, run after the warmup as a LambdaLR), and/or `build(sched_cfg,
    optimizer, steps_per_epoch, total_steps)` -> Schedule for one that is more than a multiplier (onecycle,
    plateau)."""

    keys: tuple[str, ...]
    base: Callable | None = None
    build: Callable | None = None


SCHEDULES: dict[str, ScheduleKind] = {}


def register(name: str, *keys: str, base: Callable | None = None, build: Callable | None = None) -> None:
    SCHEDULES[name] = ScheduleKind(("name", "warmup_epochs", *keys), base, build)


def schedule(name: str, *keys: str):
    """Registers the decorated function as schedule `name`'s `base`: a new schedule is this and one YAML."""

    def add(base: Callable) -> Callable:
        register(name, *keys, base=base)
        return base

    return add


@schedule("none")
def _constant(sched_cfg: DictConfig, plan: Plan):
    return lambda step: 1.0


def _floor_after_warmup(sched_cfg: DictConfig, plan: Plan, shape):
    floor = sched_cfg.get("min_lr_ratio", 0.0)

    def base(step):
        progress = min(1.0, max(0, step - plan.warmup) / max(1, plan.total - plan.warmup))
        return floor + (1 - floor) * shape(progress)

    return base


@schedule("cosine", "min_lr_ratio")
def _cosine(sched_cfg: DictConfig, plan: Plan):
    return _floor_after_warmup(sched_cfg, plan, lambda progress: 0.5 * (1 + math.cos(math.pi * progress)))


@schedule("linear", "min_lr_ratio")
def _linear(sched_cfg: DictConfig, plan: Plan):  # airbench: straight down to min_lr_ratio x lr at the last step
    return _floor_after_warmup(sched_cfg, plan, lambda progress: 1 - progress)


@schedule("step", "step_size", "gamma")
def _step(sched_cfg: DictConfig, plan: Plan):
    size, gamma = sched_cfg.step_size, sched_cfg.gamma
    if not isinstance(size, int) or size < 1:
        raise CnnlabError(f"scheduler.step_size must be an integer >= 1 (epochs), got {size!r}")
    return lambda step: gamma ** (plan.epoch_of(step) // size)


@schedule("multistep", "warmup_steps", "warmup_factor", "milestones", "unit", "gamma")
def _multistep(sched_cfg: DictConfig, plan: Plan):
    milestones, gamma = sorted(sched_cfg.milestones), sched_cfg.gamma
    unit = sched_cfg.get("unit", "epochs")
    if unit not in ("epochs", "steps"):
        raise CnnlabError(f"scheduler.unit must be epochs or steps (of the milestones), got {unit!r}")
    position = (lambda step: step) if unit == "steps" else plan.epoch_of
    return lambda step: gamma ** sum(position(step) >= m for m in milestones)


@schedule("exponential", "gamma")
def _exponential(sched_cfg: DictConfig, plan: Plan):  # per epoch, as torch's ExponentialLR stepped once an epoch
    gamma = sched_cfg.gamma
    return lambda step: gamma ** plan.epoch_of(step)


def schedule_factor(sched_cfg: DictConfig, steps_per_epoch: int, total_steps: int):
    """A function step -> lr multiplier: warmup, then the named schedule's `base` (onecycle has none).

    The warmup ramps linearly, or holds lr x scheduler.warmup_factor when that is set (He et al.'s ResNet-110:
    lr 0.01 for 400 iterations, then 0.1). multistep's milestones count epochs, or steps with `unit: steps`.
    """
    name = sched_cfg.get("name", "none")
    warmup = _warmup_steps(sched_cfg, steps_per_epoch)
    hold = sched_cfg.get("warmup_factor")
    if hold is not None and (isinstance(hold, bool) or not isinstance(hold, (int, float)) or not 0 < hold <= 1):
        raise CnnlabError(f"scheduler.warmup_factor must be null (linear warmup) or a number in (0, 1], got {hold!r}")
    kind = SCHEDULES.get(name) if isinstance(name, str) else None
    if kind is None or kind.base is None:
        raise CnnlabError(f"scheduler.name '{name}' is unknown; choose from: {', '.join(SCHEDULES)}")
    base = kind.base(sched_cfg, Plan(steps_per_epoch, max(1, total_steps), warmup))

    def factor(step: int) -> float:
        if step >= warmup:
            return base(step)
        return (hold if hold is not None else (step + 1) / warmup) * base(step)

    return factor


class Schedule:
    """One interface for the trainer: `step()` after every optimizer step, `epoch_end(metric)` after validation.

    Most schedules are a LambdaLR of `schedule_factor`; onecycle is torch's OneCycleLR (it also cycles
    momentum); plateau is torch's ReduceLROnPlateau on the monitored metric, after the optional warmup.
    """

    def __init__(self, per_step, plateau=None, warmup_steps: int = 0):
        self.per_step, self.plateau, self.warmup_steps = per_step, plateau, warmup_steps
        self.steps = 0

    def step(self) -> None:
        if self.plateau is None or self.steps < self.warmup_steps:  # after warmup, plateau owns the lr
            self.per_step.step()
        self.steps += 1

    def epoch_end(self, metric: float) -> None:
        """`metric`: higher is better (val accuracy, or minus the val loss)."""
        if self.plateau is not None and self.steps >= self.warmup_steps:
            self.plateau.step(metric)

    def state_dict(self) -> dict:
        return {
            "per_step": self.per_step.state_dict(),
            "steps": self.steps,
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.per_step.load_state_dict(state["per_step"])
        self.steps = state["steps"]
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])


def _onecycle(sched_cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int):
    if sched_cfg.get("warmup_epochs", 0) or sched_cfg.get("warmup_steps"):
        raise CnnlabError("scheduler=onecycle has its own warm-up (scheduler.pct_start); set warmup_epochs=0")
    one = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=max(2, total_steps),
        pct_start=sched_cfg.get("pct_start", 0.3),
        div_factor=sched_cfg.get("div_factor", 25.0),
        final_div_factor=sched_cfg.get("final_div_factor", 1e4),
        anneal_strategy=sched_cfg.get("anneal_strategy", "cos"),
        cycle_momentum=sched_cfg.get("cycle_momentum", True) and _has_momentum(optimizer),
    )
    return Schedule(one)


def _plateau(sched_cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int):
    lam = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(sched_cfg, steps_per_epoch, total_steps))
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="max",
        factor=sched_cfg.get("factor", 0.1),
        patience=sched_cfg.get("patience", 5),
        min_lr=sched_cfg.get("min_lr", 0.0),
    )
    return Schedule(lam, plateau, _warmup_steps(sched_cfg, steps_per_epoch))


register(
    "onecycle", "pct_start", "div_factor", "final_div_factor", "anneal_strategy", "cycle_momentum", build=_onecycle
)
register("plateau", "factor", "patience", "min_lr", base=_constant, build=_plateau)


def build_scheduler(
    sched_cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int
) -> Schedule:
    warm = sched_cfg.get("warmup_epochs", 0)
    if isinstance(warm, bool) or not isinstance(warm, (int, float)) or warm < 0:
        raise CnnlabError(f"scheduler.warmup_epochs must be a number >= 0, got {warm!r}")
    name = sched_cfg.get("name", "none")
    kind = SCHEDULES.get(name) if isinstance(name, str) else None
    if kind is not None and kind.build is not None:
        return kind.build(sched_cfg, optimizer, steps_per_epoch, total_steps)
    return Schedule(
        torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(sched_cfg, steps_per_epoch, total_steps))
    )


def _has_momentum(optimizer: torch.optim.Optimizer) -> bool:
    defaults = optimizer.defaults
    return defaults.get("momentum", 0) > 0 or "betas" in defaults


def build(opt_cfg: DictConfig, sched_cfg: DictConfig, model: nn.Module, steps_per_epoch: int, total_steps: int):
    optimizer = build_optimizer(opt_cfg, model)
    return optimizer, build_scheduler(sched_cfg, optimizer, steps_per_epoch, total_steps)
