"""The `cnnlab` entry point: picks the command, hands the rest of argv to Hydra.

Every command is a module with `run(cfg)` and a primary config `configs/<command>.yaml`. User mistakes
(CnnlabError, or a config Hydra cannot compose) print one line and exit 2; bugs keep their traceback.
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys

from cnnlab.paths import config_dir

# command -> (module with run(cfg), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("cnnlab.commands.train", "train a model; best/last checkpoints, TensorBoard, metrics.json"),
    "eval": ("cnnlab.commands.evaluate", "evaluate a checkpoint: top-1/5, precision/recall/F1, confusion matrix"),
    "summary": ("cnnlab.commands.summary", "per-layer shapes, parameters, MACs and receptive field of a model"),
    "compare": ("cnnlab.commands.compare", "one table (CSV, markdown) and plots over run and sweep directories"),
    "predict": ("cnnlab.commands.predict", "classify image files with a checkpoint: a table and predictions.json"),
    "features": ("cnnlab.commands.features", "feature maps, first-layer filters and Grad-CAM for one image"),
    "export": ("cnnlab.commands.export", "export a checkpoint to ONNX or TorchScript, parity-checked"),
    "preview": ("cnnlab.commands.preview", "a PNG grid of augmented training images"),
}

USAGE = """usage: cnnlab <command> [hydra overrides] [--help] [--cfg job] [-m]

commands:
{commands}

examples:
  cnnlab train                                   # lenet5 on the embedded digits, CPU, < 1 minute
  cnnlab train model=vgg16 data=cifar10          # any model x any dataset
  cnnlab train -m optimizer.lr=0.1,0.01          # a sweep: outputs/multirun/<date>/<time>/<n>/
  cnnlab train --cfg job                         # print the composed config
  cnnlab eval checkpoint=outputs/<date>/<time>/checkpoints/best.pt   # -> outputs/<date>/<time>/eval/test/
  cnnlab predict checkpoint=.../best.pt inputs='photos/*.png' topk=3
  cnnlab features checkpoint=.../best.pt input=digit.png    # feature maps, filters, Grad-CAM
  cnnlab export checkpoint=.../best.pt format=onnx          # parity-checked against PyTorch
  cnnlab preview data=cifar10 augment=[basic,cutout]        # what the model sees in training
  cnnlab <command> --help                        # config groups and options of a command
"""


# OS errors that mean "this path cannot be written", not a bug: one line for the user.
USER_OS_ERRORS = (
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EFBIG,
    errno.EDQUOT,
    errno.ENAMETOOLONG,
    errno.ENOTDIR,
    errno.EEXIST,
)


def _fail(message: str) -> None:
    rank = os.environ.get("RANK", "0")  # torchrun: say which rank, unless it is rank 0
    print(f"error: {'' if rank == '0' else f'[rank {rank}] '}{message}", file=sys.stderr)
    sys.exit(2)


def _fail_job(message: str, cfg, job=None) -> None:
    """A job's user error: one line and exit 2, except in a -m sweep, where the job is recorded as failed
    (failed.json, shown in the sweep's summary) and the sweep goes on; it exits 1 at the end. The job's dir
    is removed when this start made it, else the line goes into its log too (a cluster job says why it failed)."""
    from cnnlab.experiments.sweep import record_failed_job

    if not record_failed_job(message, cfg):
        if job is not None:
            job.refused(message)
        _fail(message)
    if job is not None:  # a sweep job: failed.json marks its row, and its log says why
        job.log_error(message)
    print(f"error: {message}", file=sys.stderr)


def _crashed_job(ex: Exception, cfg) -> bool:
    """In a -m sweep, a job that crashed on a bug: its traceback is printed, failed.json marks its row, the sweep
    goes on (and exits 1 at the end). Outside a sweep: False, the exception propagates as usual."""
    import traceback

    from cnnlab.experiments.sweep import record_failed_job

    first = (str(ex).strip().splitlines() or [""])[0][:200]
    if not record_failed_job(f"crashed: {type(ex).__name__}: {first}", cfg):
        return False
    traceback.print_exc()
    return True


def _one_line(ex: BaseException) -> str:
    """Condense a (possibly multi-line, chained) Hydra/OmegaConf error into one readable line."""
    from hydra.errors import MissingConfigException

    if isinstance(ex, MissingConfigException) and ex.options is not None and ex.missing_cfg_file:
        group, _, name = ex.missing_cfg_file.rpartition("/")
        if group:
            return f"unknown {group} '{name}'; choose from: {', '.join(sorted(ex.options))}"
    parts = []
    for e in (ex, ex.__cause__):
        if e is None:
            continue
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # OmegaConf appends "full_key: ..., object_type=..." lines: keep only the message.
        lines = [line for line in lines if not line.startswith(("full_key:", "object_type", "reference_type"))]
        lines = [line for line in lines if not line.startswith("To append to your config")]
        if lines and lines[0] not in parts:
            parts.append(" ".join(lines[:2]))
    return " ".join(parts) or ex.__class__.__name__


def _unknown_model_key(ex: BaseException, command: str, overrides: list[str]) -> str | None:
    """Hydra's "Key 'x' is not in struct" for model.x, as one line naming the keys that model accepts."""
    key = str(getattr(ex.__cause__, "full_key", None) or "")
    if not key.startswith("model.") or "not in struct" not in str(ex.__cause__):
        return None
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cnnlab.models import unknown_knob_message

    keep = [o for o in overrides if "=" in o and not o.startswith("-") and not o.lstrip("+~").startswith("model.")]
    GlobalHydra.instance().clear()
    try:  # which model the other overrides pick
        with initialize_config_dir(config_dir=config_dir(), version_base=None):
            target = compose(command, overrides=keep).model._target_
    except Exception:  # noqa: BLE001 - any failure here just means the plain message
        return None
    return unknown_knob_message(target, key.split(".", 1)[1])


def _unknown_key(ex: BaseException, command: str) -> str | None:
    """Hydra's "Key 'epoch' not in 'TrainerConfig'" for trainer.epoch=2, with the nearest key of the schema."""
    from cnnlab.schema import unknown_key_message

    key = str(getattr(ex.__cause__, "full_key", None) or "")
    return unknown_key_message(command, key) if key else None


class _StartUp:
    """Ctrl-C during start-up (imports, composing the config) is held until the command is about to run, then raised
    as KeyboardInterrupt ('interrupted', exit 130). Raised where it lands, it can break a library half-way through its
    import (numpy's lazy submodules then recurse) or vanish inside an import-lock callback, and the run goes on."""

    def __init__(self):
        self.pending = False
        self.previous = None

    def hold(self) -> None:
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:  # ignored (nohup) or someone else's
            return
        try:
            self.previous = signal.signal(signal.SIGINT, self._record)
        except ValueError:  # not the main thread: signals go elsewhere anyway
            self.previous = None

    def _record(self, signum, frame) -> None:
        self.pending = True

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def release(self) -> None:
        self.restore()
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


_start_up = _StartUp()


def _task(module_name: str):
    def task(cfg) -> None:
        from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

        from cnnlab import launch
        from cnnlab.engine import checkpoint, rundir
        from cnnlab.engine.trainer import Interrupted
        from cnnlab.errors import CnnlabError

        # Caught here, inside the job, because Hydra logs its own multi-line report for errors that escape it.

        job = rundir.JobDir.of_this_job()  # what Hydra made for this job: a refused start removes it again
        try:
            launch.enter_job(cfg)  # several ranks: torchrun's others run this job too, submitit's join the group
            module = importlib.import_module(module_name)
            _start_up.release()  # a Ctrl-C held since start-up stops here, before the command does anything
            result = module.run(cfg)
            # A sweeper (Optuna) optimises what the task returns: the command's objective, where it has one.
            return module.objective(cfg, result) if hasattr(module, "objective") else result
        except Interrupted as ex:  # last.pt is saved; the message says how to continue
            if os.environ.get("RANK", "0") == "0":
                print(str(ex), file=sys.stderr)
            sys.exit(128 + ex.signum)
        except CnnlabError as ex:
            _fail_job(str(ex), cfg, job)
        except InterpolationResolutionError as ex:  # e.g. an unset ${oc.env:VAR} in the user's config
            _fail_job(f"cannot resolve {ex.full_key}: {str(ex).strip().splitlines()[0]}", cfg, job)
        except MissingMandatoryValue as ex:  # a `???` value the user did not give
            _fail_job(f"{ex.full_key} is required: add {ex.full_key}=...", cfg, job)
        except OSError as ex:  # a full disk, a read-only dir, no permission: the user's to fix
            if ex.errno not in USER_OS_ERRORS:
                raise
            _fail_job(f"cannot write {ex.filename or job.path}: {ex.strerror}", cfg, job)
        except RuntimeError as ex:  # torch.save on a full disk raises RuntimeError, not OSError
            if not checkpoint.write_failure(ex):
                raise
            _fail_job(f"cannot write into {job.path}: {checkpoint.write_failure(ex)}", cfg, job)
        except KeyboardInterrupt:  # Ctrl-C before training started: nothing to keep
            job.discard_if_unused()
            raise
        except Exception as ex:  # a bug: it keeps its traceback, but a sweep records the job and goes on
            if not _crashed_job(ex, cfg):
                raise

    return task


def main(argv: list[str] | None = None) -> None:
    _start_up.hold()
    try:
        _main(argv)
        _start_up.release()  # --help, --cfg and refused starts end before a command runs
    except KeyboardInterrupt:  # Ctrl-C during start-up (imports, loading data, building): nothing to save
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        _start_up.restore()  # an error line or --help ended start-up: Ctrl-C as usual again
        _forget_hydra_job()


def _forget_hydra_job() -> None:
    """Hydra keeps the job's config after --cfg, --help or a refused start; the job ends with the command, so a
    later call in this process (a test, a notebook's cnnlab.train) must not read its overrides as its own."""
    hydra_config = sys.modules.get("hydra.core.hydra_config")
    if hydra_config is not None:
        hydra_config.HydraConfig.instance().cfg = None


def _main(argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    listing = "\n".join(f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items())
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(commands=listing))
        return
    if argv[0] in ("-V", "--version"):
        from cnnlab import __version__

        print(f"cnnlab {__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        _fail(f"unknown command '{command}'; choose from: {', '.join(COMMANDS)}")
    if command == "compare":  # `cnnlab compare DIR... [key=value]`: the directories become paths=[...]
        from cnnlab.commands.compare import paths_override
        from cnnlab.errors import CnnlabError

        try:
            rest = paths_override(rest)
        except CnnlabError as ex:
            _fail(str(ex))

    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import InterpolationResolutionError

    from cnnlab.errors import CnnlabError
    from cnnlab.schema import register

    register()
    if {"-h", "--help"} & set(rest):  # answered here: Hydra's own help takes seconds (cnnlab/help.py)
        from cnnlab.help import command_help

        try:
            print(command_help(command, rest, config_dir()))
        except (HydraException, CnnlabError) as ex:
            _fail(_one_line(ex))
        return
    # Make Hydra re-raise instead of printing its own multi-line report, so that we can print one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"  # whatever the user's environment says
    from cnnlab import launch

    try:
        following = launch.start()  # torchrun: join the process group; ranks > 0 follow rank 0's Hydra
    except CnnlabError as ex:
        _fail(str(ex))
    if following:
        sys.exit(launch.follow(_task(COMMANDS[command][0])))
    sys.argv = [f"cnnlab {command}", *rest]
    run = hydra.main(version_base=None, config_path=config_dir(), config_name=command)(_task(COMMANDS[command][0]))
    try:
        run()
    except (HydraException, CnnlabError) as ex:  # composition errors: the user's overrides
        _fail(_unknown_model_key(ex, command, rest) or _unknown_key(ex, command) or _one_line(ex))
    except InterpolationResolutionError as ex:  # `--cfg job --resolve` with an interpolation that fails
        _fail(f"cannot resolve {ex.full_key or 'the config'}: {str(ex).strip().splitlines()[0]}")
    except OSError as ex:  # Hydra creating the run dir or its log file: read-only, full, name too long
        if ex.errno not in USER_OS_ERRORS:
            raise
        _fail(f"cannot write {ex.filename or 'the output directory'}: {ex.strerror}")
    finally:
        launch.release()  # torchrun: the other ranks stop following
