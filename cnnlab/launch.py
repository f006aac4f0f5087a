"""torchrun under Hydra: rank 0 composes the config and owns the run dir; the other ranks follow it.

Hydra resolves `${now:...}` and cnnlab's run-id suffix in every process, so N ranks started by torchrun
would make N run dirs (Hydra #2070), each with its own .hydra/ and log file. Instead, only rank 0 runs
Hydra. For every job it runs (one, or each job of a `--multirun` sweep, in order) it sends the other ranks
the job's config, unresolved (so that `${oc.env:...}` follows each node's environment), and Hydra's runtime
config with the run and sweep dirs resolved; they set that as their HydraConfig and run the same command.
No other rank composes a config, creates a directory or writes a file, and every rank runs the identical
config. (Chosen over deriving the dir from the environment, e.g. TORCHELASTIC_RUN_ID: that is "none" under
a static rendezvous, and would not cover the random run-id suffix or a user's own dir pattern.)

hydra-submitit-launcher with tasks_per_node > 1 is the other way in: there every task is a Hydra job of its
own (submitit runs the job function, not `cnnlab`), all tasks resolve the same sweep dir (Hydra copies the
launching process's resolver cache into each job), and `cnnlab.engine.distributed.init` joins the group.
"""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig, OmegaConf

from cnnlab.engine import distributed

_leading = False  # this process group was joined before Hydra ran (torchrun): rank 0 shares every job


def start() -> bool:
    """In `cnnlab <command>`, before Hydra: join a torchrun job's process group. True on the ranks that
    follow rank 0 (they must not run Hydra themselves, see `follow`)."""
    global _leading
    if not distributed.launched() or distributed.is_initialized():
        return False
    distributed.init()
    _leading = True
    return not distributed.is_main()


def enter_job(cfg: DictConfig) -> None:
    """At the start of every Hydra job. torchrun, rank 0: send the job's config and Hydra's runtime config to
    the other ranks. submitit tasks: join the job's process group."""
    if not _leading:
        distributed.init()  # a no-op unless submitit started this job as one of several tasks
        if not distributed.is_main():  # every submitit task is a Hydra job: only rank 0 writes the job's log
            for handler in logging.getLogger().handlers[:]:
                logging.getLogger().removeHandler(handler)
                handler.close()
        return
    if not (distributed.is_main() and distributed.world_size() > 1):
        return
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    runtime = OmegaConf.to_container(hydra, resolve=False)
    for key in ("run", "sweep"):  # the dirs rank 0 resolved: timestamps and run ids must not resolve again
        runtime[key]["dir"] = str(hydra[key].dir)
    distributed.broadcast_object(("job", OmegaConf.to_container(cfg, resolve=False), runtime))


def release() -> None:
    """Rank 0, after Hydra returned or failed (call it in a `finally`): tell the other ranks there is no further
    job, with the exit status in flight."""
    if not (_leading and distributed.is_main() and distributed.world_size() > 1):
        return
    ex = sys.exc_info()[1]
    status = 0 if ex is None else ex.code if isinstance(ex, SystemExit) and isinstance(ex.code, int) else 1
    try:
        distributed.broadcast_object(("done", status))
    except RuntimeError:  # a rank already left (its own error line is printed; torchrun reports the rest)
        return
    distributed.shutdown()


def follow(task) -> int:
    """The other ranks: run `task(cfg)` for each job rank 0 shares, with rank 0's HydraConfig; returns
    rank 0's exit status once it says it is done."""
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig

    while True:
        try:
            message = distributed.broadcast_object(None)
        except RuntimeError:  # rank 0 left without a word: it failed, and printed why
            return 1
        if message[0] == "done":
            distributed.shutdown()
            return message[1]
        _, cfg, runtime = message
        node = OmegaConf.structured(HydraConf)
        OmegaConf.set_struct(node, False)  # plugins may add keys the schema does not list
        HydraConfig.instance().set_config(OmegaConf.create({"hydra": OmegaConf.merge(node, runtime)}))
        task(OmegaConf.create(cfg))
