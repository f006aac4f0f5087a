"""Distributed training on CPU with gloo and 2 processes: shards, reductions, torchrun runs, eval and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import REPO, Batches, cli, cli_env, read_json
from omegaconf import OmegaConf

from cnnlab import data
from cnnlab.data import Shard
from cnnlab.schema.common import AugmentConfig, DataConfig

CPU = torch.device("cpu")
# 512 training and 512 validation images: a 0.5-point band is 2.5 validation images.
RUN = [
    "data=synthetic",
    "data.num_samples=1024",
    "data.val_split=0.5",
    "model=lenet5",
    "trainer.epochs=3",
    "trainer.device=cpu",
    "trainer.progress=none",
    "trainer.image_grid=0",
    "optimizer=adam",
    "scheduler=none",
    "seed=3",
]


def data_cfg(**kw):
    return OmegaConf.merge(
        OmegaConf.structured(DataConfig), {"name": "synthetic", "num_samples": 204, "val_split": 0.2, **kw}
    )


def augment_cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(AugmentConfig), kw)


def bundles(world: int, **kw):
    return [
        data.build(data_cfg(**kw), augment_cfg(crop_padding=2, flip=True), CPU, seed=5, shard=Shard(r, world))
        for r in range(world)
    ]


# --------------------------------------------------------------------------------------------- shards
@pytest.mark.parametrize("loader", ["device", "dataloader"])
def test_train_shares_cover_every_sample_once_in_the_global_batches(loader):
    """2 ranks: every training sample once per epoch (n // 2 x 2 of them; n odd leaves one out, a different one
    each epoch), equal batch counts, and the union of the ranks' i-th batches is the 1-process run's i-th batch
    at twice the batch size. The loaders really yield the indices they report."""
    two = bundles(2, loader=loader, batch_size=8, num_workers=0)
    (one,) = bundles(1, loader=loader, batch_size=16, num_workers=0)
    n = len(two[0].train.labels)
    assert n % 2 == 1 and len(two[0].train) == len(two[1].train) == (n // 2) // 8
    left_out = set()
    for epoch in (0, 1):
        for b in (*two, one):
            b.train.set_epoch(epoch)
        shares = [b.train.indices() for b in two]
        union = torch.cat(shares)
        assert len(set(union.tolist())) == len(union) == 2 * 8 * len(two[0].train)  # no sample twice
        per_batch = [s.view(-1, 8) for s in shares]
        single = one.train.indices().view(-1, 16)
        for i in range(len(single)):
            assert set(torch.cat([per_batch[0][i], per_batch[1][i]]).tolist()) == set(single[i].tolist())
        for b, share in zip(two, shares):  # what iteration yields: the labels of these indices, in order
            labels = torch.cat([y for _, y in b.train])
            assert torch.equal(labels, b.train.labels[share])
        left_out.add(frozenset(range(n)) - frozenset(union.tolist()))
    assert len(left_out) == 2  # the left-out samples change with the epoch


def test_even_split_covers_everything():
    two = bundles(2, num_samples=200, val_split=0.2, batch_size=10)  # 160 training images: 80 per rank
    union = torch.cat([b.train.indices() for b in two])
    assert sorted(union.tolist()) == list(range(160))


@pytest.mark.parametrize("loader", ["device", "dataloader"])
def test_eval_shares_are_disjoint_contiguous_and_unpadded(loader):
    two = bundles(2, loader=loader, batch_size=4, num_workers=0)
    for split in ("val", "test"):
        shares = [getattr(b, split).indices() for b in two]
        n = len(getattr(two[0], split).labels)
        assert torch.equal(torch.cat(shares), torch.arange(n))  # every image once, none padded
        for b, share in zip(two, shares):
            labels = torch.cat([y for _, y in getattr(b, split)])
            assert torch.equal(labels, getattr(b, split).labels[share])


def test_augmentation_seeds_differ_per_rank_and_rank0_keeps_the_single_process_stream():
    seeds = [Shard(r, 4).augment_seed(1234) for r in range(4)]
    assert seeds[0] == 1234 == Shard().augment_seed(1234) and len(set(seeds)) == 4
    a, b = bundles(2, batch_size=8)
    a.train.set_epoch(0)
    b.train.set_epoch(0)
    assert a.train.augment_seed != b.train.augment_seed
    # same shuffle on every rank: each rank's share is its slice of one permutation (checked above), and a
    # rank's batches depend only on (seed, epoch, shard): drawn twice, identical
    x1 = next(iter(b.train))[0]
    x2 = next(iter(b.train))[0]
    assert torch.equal(x1, x2)


# ------------------------------------------------------------------------------- collectives, in-process
def _ranks(rank: int, world: int, port: int, out) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from cnnlab.engine import distributed
    from cnnlab.engine.metrics import evaluate
    from cnnlab.models.lenet import LeNet5

    assert distributed.init() and distributed.world_size() == world and distributed.rank() == rank
    result = {}
    t = torch.tensor([rank + 1.0])
    distributed.all_reduce_sum(t)
    result["sum"] = float(t)
    result["any"] = (distributed.any_rank(rank == 1), distributed.any_rank(False))
    result["object"] = distributed.broadcast_object({"dir": "/runs/x"} if rank == 0 else None)
    vote = distributed.StopVote()
    outcomes = [vote(rank == 1 and step == 3, False) for step in range(6)]
    result["stop_step"] = next(step for step, (signalled, _) in enumerate(outcomes) if signalled)
    # evaluation over the 2 shards, summed, equals evaluation of the whole split in one process
    torch.manual_seed(0)
    model = LeNet5(num_classes=10, in_channels=3)
    sharded = data.build(data_cfg(batch_size=8), None, CPU, seed=1, shard=Shard(rank, world))
    whole = data.build(data_cfg(batch_size=8), None, CPU, seed=1, shard=Shard())
    result["eval"] = evaluate(model, sharded.val, 10)
    result["eval_whole"] = evaluate(model, whole.val, 10)
    # SyncBatchNorm conversion keeps the parameter objects (the optimizer built before it stays valid)
    bn_model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    params = list(bn_model.parameters())
    converted = distributed.convert_sync_bn(bn_model)
    result["sync_bn"] = (type(converted[1]).__name__, all(p is q for p, q in zip(params, converted.parameters())))
    # fine-tuning under DDP: a stage frozen at first and unfrozen later is still averaged across ranks
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    ddp = distributed.wrap(net, CPU, changing_trainables=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(rank)  # different data on each rank
    for frozen in (True, False):
        net[0].requires_grad_(not frozen)
        for _ in range(2):
            ddp(torch.randn(8, 4, generator=g)).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    weights = torch.cat([q.detach().flatten() for q in net.parameters()])
    gathered = [torch.zeros_like(weights) for _ in range(world)]
    torch.distributed.all_gather(gathered, weights)
    result["finetune_in_sync"] = all(torch.equal(gathered[0], w) for w in gathered)
    distributed.barrier()
    distributed.shutdown()
    out.put((rank, result))


@pytest.mark.slow
def test_gloo_helpers_votes_and_sharded_evaluation_on_two_processes():
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = 29_500 + os.getpid() % 1000
    procs = [ctx.Process(target=_ranks, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    for r in results.values():
        assert r["sum"] == 3.0 and r["any"] == (True, False) and r["object"] == {"dir": "/runs/x"}
        assert r["stop_step"] == 4  # rank 1 saw a reason at step 3: both ranks stop together, one step later
        whole, summed = r["eval_whole"], r["eval"]
        assert summed["count"] == whole["count"] == 41
        assert summed["top1"] == whole["top1"] and abs(summed["loss"] - whole["loss"]) < 1e-6
        assert torch.equal(summed["confusion"], whole["confusion"])
        assert r["sync_bn"] == ("SyncBatchNorm", True)
        assert r["finetune_in_sync"]


# --------------------------------------------------------------------------------- accumulation under DDP
def _rank_batches(rank: int) -> list:
    """8 micro-batches of 4-d points, different on each rank."""
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(8 * 6, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return [(x[i : i + 6], y[i : i + 6]) for i in range(0, len(x), 6)]


def _accumulating_rank(rank: int, world: int, port: int, run_dir: str, out) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from cnnlab.data import DataBundle, DataSpec
    from cnnlab.engine import distributed
    from cnnlab.engine.trainer import Trainer
    from cnnlab.optim import Schedule
    from cnnlab.schema.train import TrainerConfig

    assert distributed.init()
    reductions, real_wrap = [], distributed.wrap

    def counting_wrap(model, device, **kwargs):  # counts DDP's gradient all-reduces (one bucket here)
        ddp = real_wrap(model, device, **kwargs)

        def hook(state, bucket):
            reductions.append(bucket.index())
            return allreduce_hook(None, bucket)

        ddp.register_comm_hook(None, hook)
        return ddp

    distributed.wrap = counting_wrap
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    schedule = Schedule(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    batches = _rank_batches(rank)
    data = DataBundle(Batches(batches), Batches(batches[:1]), Batches(batches[:1]), DataSpec(2, 1, 2, ["a", "b"]))
    cfg = OmegaConf.merge(
        OmegaConf.structured(TrainerConfig),
        {"epochs": 1, "accumulate": 4, "precision": "fp32", "device": "cpu", "progress": "none"},
    )
    Trainer(cfg, Path(run_dir), CPU).fit(model, data, optimizer, schedule)
    out.put((rank, len(reductions), [q.detach().clone() for q in model.parameters()]))
    distributed.barrier()
    distributed.shutdown()


@pytest.mark.slow
def test_accumulation_under_ddp_all_reduces_once_per_optimizer_step(tmp_path):
    """2 ranks, 8 micro-batches each, accumulate=4: 2 all-reduces (no_sync for the others), and the weights of
    plain SGD on the average over ranks of each group's mean loss."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = 29_500 + (os.getpid() + 7) % 1000
    procs = [ctx.Process(target=_accumulating_rank, args=(r, 2, port, str(tmp_path), out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((rank, rest) for rank, *rest in (out.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    torch.manual_seed(0)
    ref = torch.nn.Linear(4, 2)
    per_rank = [_rank_batches(r) for r in range(2)]
    for group in (slice(0, 4), slice(4, 8)):
        loss = sum(F.cross_entropy(ref(x), y) for b in per_rank for x, y in b[group]) / 8
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        with torch.no_grad():
            for q, g in zip(ref.parameters(), grads):
                q -= 0.5 * g
    for count, weights in results.values():
        assert count == 2
        assert all(torch.allclose(w, q, atol=1e-6) for w, q in zip(weights, ref.parameters()))


# ---------------------------------------------------------------------------------------- torchrun runs
def torchrun(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cnnlab", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def only_run_dir(cwd: Path) -> Path:
    (run_dir,) = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]  # one dir for all ranks (Hydra #2070)
    return run_dir


def train_run(launch, batch: int, cwd: Path) -> Path:
    result = launch("train", *RUN, f"data.batch_size={batch}", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run_dir(cwd)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The same training twice: 2 ranks x batch 16, and 1 process x batch 32 (the same global batch)."""
    return {
        "ddp": train_run(torchrun, 16, tmp_path_factory.mktemp("ddp")),
        "same_global": train_run(cli, 32, tmp_path_factory.mktemp("same_global")),
    }


@pytest.mark.slow
def test_two_ranks_take_half_the_steps_of_one_process_at_the_same_per_rank_batch(runs, tmp_path):
    same_per_rank = read_json(train_run(cli, 16, tmp_path) / "metrics.json")
    ddp = read_json(runs["ddp"] / "metrics.json")
    assert ddp["steps"] == same_per_rank["steps"] // 2 == 3 * 16


@pytest.mark.slow  # the `runs` fixture trains twice (torchrun + one process): ~20 s
def test_two_ranks_match_the_single_process_run_at_the_same_global_batch(runs):
    ddp, same_global = (read_json(runs[k] / "metrics.json") for k in ("ddp", "same_global"))
    assert ddp["world_size"] == 2 and ddp["global_batch"] == 32 and same_global["world_size"] == 1
    assert ddp["steps"] == same_global["steps"] == 3 * 16  # half the 96 steps of 1 process at batch 16
    assert abs(ddp["best_val_acc"] - same_global["best_val_acc"]) <= 0.5
    assert abs(ddp["history"][-1]["val_acc"] - same_global["history"][-1]["val_acc"]) <= 0.5
    assert ddp["best_val_acc"] > 50  # it learned something (10 classes)


@pytest.mark.slow  # the `runs` fixture trains twice (torchrun + one process): ~20 s
def test_only_rank_zero_writes(runs):
    run_dir = runs["ddp"]
    log = (run_dir / "train.log").read_text()
    assert log.count("epoch 1/3") == 1 and "x 2 ranks" in log
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow  # the `runs` fixture trains twice (torchrun + one process): ~20 s
def test_ddp_checkpoint_evaluates_in_one_process(runs, tmp_path):
    ckpt = runs["ddp"] / "checkpoints" / "best.pt"
    state = torch.load(ckpt, weights_only=True)
    assert not any(k.startswith("module.") for k in state["model"])  # the unwrapped model was saved
    result = cli("eval", f"checkpoint={ckpt}", f"output={tmp_path / 'eval.json'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = read_json(runs["ddp"] / "metrics.json")
    assert read_json(tmp_path / "eval.json")["top1"] == pytest.approx(trained["test_acc"])  # the shards summed


@pytest.mark.slow
def test_stop_and_resume_with_two_ranks_ends_with_the_uninterrupted_weights(runs, tmp_path):
    """trainer.time_limit stops both ranks at the same step mid-epoch (last.pt unfinished); resume=auto in the
    same run dir with 2 ranks finishes, bit-identical to the uninterrupted 2-rank run."""
    first = torchrun("train", *RUN, "data.batch_size=16", "trainer.time_limit=0.001", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    stopped = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert not stopped["fit"]["finished"] and stopped["fit"]["batch"] > 0 and stopped["step"] < 3 * 16
    again = torchrun(
        "train", *RUN, "data.batch_size=16", f"hydra.run.dir={run_dir}", "trainer.resume=auto", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr[:6000]
    assert only_run_dir(tmp_path) == run_dir
    resumed = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    straight = torch.load(runs["ddp"] / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["fit"]["finished"] and resumed["step"] == straight["step"] == 3 * 16
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key


@pytest.mark.slow
def test_sync_bn_on_cpu_is_one_clear_line(tmp_path):
    result = torchrun("train", *RUN, "trainer.epochs=1", "trainer.sync_bn=true", cwd=tmp_path)
    assert result.returncode != 0
    assert "error: trainer.sync_bn=true needs CUDA" in result.stderr
    assert str(REPO / "cnnlab") not in result.stderr  # no rank shows a traceback (torchrun reports its own failure)


# ---------------------------------------------------------------------------------------- SLURM sweeps
def test_slurm_launcher_composes_with_one_task_per_gpu():
    """configs/hydra/launcher/slurm.yaml with tasks_per_node = gpus_per_node: each sweep job is one SLURM job
    running one DDP process per GPU (Hydra #2231: tasks, not gpus_per_node alone, make the processes)."""
    from hydra import compose, initialize_config_dir

    from cnnlab.paths import config_dir
    from cnnlab.schema import register

    register()
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        cfg = compose(
            "train",
            [
                "hydra/launcher=slurm",
                "hydra.launcher.gpus_per_node=4",
                "hydra.launcher.tasks_per_node=4",
                "hydra.launcher.nodes=2",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)


@pytest.mark.slow
def test_submitit_job_with_two_tasks_trains_one_ddp_model(tmp_path):
    """The same launcher plugin's local executor: a -m job with tasks_per_node=2 is one 2-rank DDP run in one
    job dir, and only rank 0 writes its log."""
    result = cli(
        "train",
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        "hydra.launcher.timeout_min=10",
        *RUN,
        "trainer.epochs=1",
        "data.batch_size=16",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (job,) = [p.parent for p in (tmp_path / "outputs" / "multirun").glob("*/*/0/metrics.json")]
    metrics = read_json(job / "metrics.json")
    assert metrics["world_size"] == 2 and metrics["steps"] == 16
    assert (job / "train.log").read_text().count("epoch 1/1") == 1


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_both_ranks_at_one_step_and_resume_finishes(tmp_path):
    """A real kill: SIGTERM to torchrun reaches both ranks; they agree on one step, rank 0 saves last.pt and
    prints the torchrun resume command; resuming with 2 ranks finishes the run."""
    args = [*RUN, "data.batch_size=16", "trainer.epochs=100"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "cnnlab",
            "train",
            *args,
        ],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not any("epoch 1/" in p.read_text() for p in tmp_path.glob("outputs/*/*/train.log")):
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not start training"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert "terminated (SIGTERM)" in stderr and "torchrun --nproc_per_node=2 -m cnnlab train" in stderr
    run_dir = only_run_dir(tmp_path)
    stopped = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert not stopped["fit"]["finished"]
    # its own dir keeps its 100 epochs: a shorter run from its last.pt goes into a new dir (schedule re-planned)
    epochs = stopped["fit"]["epoch"] + 2
    args[-1] = f"trainer.epochs={epochs}"
    refused = torchrun("train", *args, f"hydra.run.dir={run_dir}", "trainer.resume=auto", cwd=tmp_path)
    assert refused.returncode != 0 and f"trainer.epochs was 100, now {epochs}" in refused.stderr
    shorter = tmp_path / "shorter"
    resume = f"trainer.resume={run_dir / 'checkpoints' / 'last.pt'}"
    again = torchrun("train", *args, f"hydra.run.dir={shorter}", resume, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "a new run of" in again.stdout and "re-planned" in again.stdout
    resumed = torch.load(shorter / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["fit"]["finished"] and resumed["step"] == epochs * 16


@pytest.mark.slow
def test_a_sweep_under_torchrun_runs_each_job_on_both_ranks(tmp_path):
    """torchrun ... -m: rank 0's Hydra runs the jobs one after another and the other rank follows each."""
    result = torchrun("train", "-m", "seed=0,1", *RUN[:-1], "trainer.epochs=1", "data.batch_size=32", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted((tmp_path / "outputs" / "multirun").glob("*/*/[0-9]/metrics.json"))
    assert len(jobs) == 2 and all(read_json(j)["world_size"] == 2 for j in jobs)
    assert len(list((tmp_path / "outputs" / "multirun").glob("*/*"))) == 1  # one sweep dir
