"""`cnnlab train`: wire data, model, optimizer and scheduler into the Trainer. No logic of its own."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cnnlab import data as data_lib
from cnnlab import models, optim
from cnnlab.callbacks.build import build as build_callbacks
from cnnlab.callbacks.build import check as check_callbacks
from cnnlab.data.augment import check as check_augment
from cnnlab.engine import checkpoint, distributed, resume_checks, rundir
from cnnlab.engine.device import resolve_device
from cnnlab.engine.progress import make_console, say
from cnnlab.engine.trainer import Trainer, planned_steps
from cnnlab.errors import CnnlabError
from cnnlab.experiments.hparams import session_of
from cnnlab.experiments.runs import objective as best_monitored
from cnnlab.finetune import Finetune, model_config, optimizer_config
from cnnlab.finetune import prepare as finetune_prepare
from cnnlab.schema.train import validate as validate_train


def objective(cfg: DictConfig, metrics: dict) -> float | None:
    """What a sweeper (Optuna) optimises; cli.py returns it from the Hydra task: the best monitored metric."""
    return best_monitored(metrics, cfg.trainer.monitor)


def _hydra():
    return HydraConfig.get() if HydraConfig.initialized() else None


def resume_command(run_dir: Path) -> str:
    """The command line that continues this run where it stopped."""
    hydra = _hydra()
    skip = ("trainer.resume=", "trainer.overwrite=", "hydra.run.dir=")
    overrides = [o for o in (hydra.overrides.task if hydra else []) if not o.startswith(skip)]
    launcher = ["cnnlab"]
    if distributed.world_size() > 1:  # the same ranks again
        launcher = ["torchrun", f"--nproc_per_node={distributed.world_size()}", "-m", "cnnlab"]
    return shlex.join([*launcher, "train", *overrides, f"hydra.run.dir={run_dir}", "trainer.resume=auto"])


def save_hydra_files(run_dir: Path, cfg: DictConfig) -> None:
    """Hydra's .hydra/ files, written here (train.yaml sets hydra.output_subdir=null) once the run dir is ours,
    so that a refused start never replaces the config of the run already in that directory."""
    hydra = _hydra()
    if hydra is None:
        return
    out = run_dir / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hydra, resolve=False)}), out / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra.overrides.task)), out / "overrides.yaml")


def validate(cfg: DictConfig) -> None:
    """A train config's checks: the schema's (schema/train.py), each augmentation op's own keys, and that
    every callback imports and takes its keywords (before the run dir is claimed)."""
    validate_train(cfg)
    check_augment(cfg)
    check_callbacks(cfg.get("callbacks"))


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Train as configured; `run_dir` defaults to Hydra's output dir (so that no live HydraConfig is needed)."""
    validate(cfg)
    run_dir = Path(run_dir) if run_dir is not None else Path(HydraConfig.get().runtime.output_dir)
    try:
        claim = _claim(cfg, run_dir)
    except rundir.RunFinished as finished:
        if distributed.is_main():
            say(make_console(), str(finished))
        metrics = run_dir / "metrics.json"
        return json.loads(metrics.read_text()) if metrics.is_file() else {"finished": True}
    try:
        if claim.fresh and distributed.is_main():
            save_hydra_files(run_dir, cfg)
        return _train(cfg, run_dir, claim)
    finally:
        claim.release()


def _claim(cfg: DictConfig, run_dir: Path) -> rundir.Claim:
    """Rank 0 claims the run dir (lock, resume decision) and sends the other ranks its decision, checkpoint
    included: they hold no lock, read no file and need no shared filesystem."""
    current = OmegaConf.to_container(cfg, resolve=True)

    def accept(path, state, same_run):
        resume_checks.check(path, state, current, same_run)

    if distributed.world_size() == 1:
        return rundir.claim(run_dir, cfg.trainer.resume, cfg.trainer.overwrite, accept)
    outcome = None
    if distributed.is_main():
        try:
            claim = rundir.claim(run_dir, cfg.trainer.resume, cfg.trainer.overwrite, accept)
            outcome = rundir.Claim(run_dir, claim.resume_from, claim.resume_state, claim.fresh)  # without the lock
        except (rundir.RunFinished, CnnlabError) as ex:
            outcome = ex
    shared = distributed.broadcast_object(outcome)
    if distributed.is_main():
        if isinstance(outcome, Exception):
            raise outcome
        return claim
    if isinstance(shared, CnnlabError):
        raise SystemExit(2)  # rank 0 prints the line
    if isinstance(shared, Exception):
        raise shared
    return shared


def _train(cfg: DictConfig, run_dir: Path, claim: rundir.Claim) -> dict:
    torch.manual_seed(cfg.seed)
    if cfg.trainer.threads:  # on busy shared cores fewer threads can be many times faster
        torch.set_num_threads(cfg.trainer.threads)
    device = distributed.device_for(resolve_device(cfg.trainer.device))
    data = data_lib.build(cfg.data, cfg.augment, device, seed=cfg.seed)
    model = models.build(model_config(cfg), data.spec)  # finetune=scratch: without its pretrained weights
    model, data = finetune_prepare(cfg, model, data, device)  # feature_extract: cached features, head-only model
    if distributed.world_size() > 1:  # DDP gives every rank rank 0's weights; dropout draws differ per rank
        torch.manual_seed(cfg.seed + 1_000_003 * distributed.rank())
    finetune = Finetune(cfg.finetune, model)
    opt_cfg = optimizer_config(cfg.finetune, cfg.optimizer)
    steps_per_epoch, total_steps = planned_steps(cfg.trainer, len(data.train))
    optimizer, scheduler = optim.build(opt_cfg, cfg.scheduler, model, steps_per_epoch, total_steps)
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("callbacks", None)  # never stored: a resume builds the callbacks of its own command line
    config["model_class"], config["model"] = checkpoint.stored_model(config["model"])  # eval builds by this name
    config["data_spec"] = data.spec.as_dict()
    ranks = f" x {distributed.world_size()} ranks" if distributed.world_size() > 1 else ""
    if distributed.is_main():
        say(
            make_console(),
            f"cnnlab train: {cfg.model._target_.rsplit('.', 1)[-1]} on {cfg.data.name} "
            f"({len(data.train.labels):,} train / {len(data.val.labels):,} val / {len(data.test.labels):,} test) "
            f"on {device}{ranks}; run dir {run_dir}",
        )
    trainer = Trainer(
        cfg.trainer,
        run_dir,
        device,
        seed=cfg.seed,
        config=config,
        hparams=session_of(cfg, run_dir),
        finetune=finetune,
        callbacks=build_callbacks(cfg.get("callbacks")),
        resume_hint=resume_command(run_dir),
    )
    resume = (claim.resume_from, claim.resume_state) if claim.resume_from is not None else None
    return trainer.fit(model, data, optimizer, scheduler, resume=resume)
