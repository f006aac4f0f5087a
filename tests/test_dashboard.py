"""What TensorBoard shows of a run, read with TensorBoard's own backend: the HParams tab opens on the answer
(metric columns best val acc, test acc, val acc, val loss first; overridden keys first; a readable trial name)
and the point-only numbers sort after the curves in Time Series."""

from __future__ import annotations

import pytest
from conftest import cli, read_json
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TINY = ["trainer.epochs=2", "trainer.image_grid=0", "data.subset=40", "trainer.progress=plain"]


def hparams_tab(logdir):
    """The experiment, and the session groups as the HParams tab lists them (TensorBoard's own handlers)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(
        logdir=str(logdir), multiplexer=mux, data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir))
    )
    ctx = backend_context.Context(tb)
    experiment = get_experiment.Handler(context.RequestContext(), ctx, "", api_pb2.GetExperimentRequest()).run()
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=100, include_metrics=True, allowed_statuses=[api_pb2.STATUS_UNKNOWN]
    )
    groups = list_session_groups.Handler(context.RequestContext(), ctx, "", request).run().session_groups
    return experiment, groups


def check_metric_columns(experiment):
    names = [m.name.tag for m in experiment.metric_infos]
    titles = [m.display_name for m in experiment.metric_infos]
    assert names[:4] == ["~final/best_val_acc", "~final/test_acc", "val/acc", "val/loss"]
    assert titles[:4] == ["best val acc", "test acc", "val acc", "val loss"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("dash")
    result = cli("train", "optimizer.lr=0.02", "seed=3", *TINY, "hydra.run.dir=run", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd / "run"


def test_single_run_hparams_tab_opens_on_the_answer(run):
    experiment, groups = hparams_tab(run / "tb")
    check_metric_columns(experiment)
    names = [h.name for h in experiment.hparam_infos]
    # the overridden keys first (TensorBoard orders each part by name); then the keys every comparison needs
    set_keys = ["data.subset", "optimizer.lr", "seed", "trainer.epochs", "trainer.image_grid", "trainer.progress"]
    assert names[:6] == set_keys and all(h.differs for h in experiment.hparam_infos[:6])
    assert {"model", "data", "data.batch_size"} <= set(names)
    (group,) = groups
    assert group.name == " ".join(["optimizer.lr=0.02", "seed=3", *TINY])  # what the run set, not a hash
    assert group.hparams["optimizer.lr"].number_value == pytest.approx(0.02)
    values = {m.name.tag: m.value for m in group.metric_values}
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    assert values["~final/test_acc"] == pytest.approx(events.Scalars("~final/test_acc")[-1].value)
    assert values["val/acc"] == pytest.approx(events.Scalars("val/acc")[-1].value)


def test_point_only_numbers_sort_after_the_curves(run):
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    assert not [t for t in tags if t.startswith(("hparam/", "val/test", "val/best"))]
    last_step = read_json(run / "metrics.json")["steps"]
    for tag in ("best_val_acc", "test_acc", "test_top5", "test_loss"):
        (point,) = events.Scalars(f"~final/{tag}")
        assert point.step == last_step
    # Time Series sorts groups by plain character order and opens the first two
    groups = sorted({t.split("/")[0] for t in tags})
    assert groups[:2] == ["train", "val"] and groups[-1] == "~final"


def test_one_x_axis_the_optimizer_step(run):
    """Like Lightning's TensorBoardLogger: the epoch's numbers at the optimizer step that ends the epoch, and
    train/epoch there to map steps to epochs."""
    history = read_json(run / "metrics.json")["history"]
    ends = [row["step"] for row in history]
    assert ends[0] > 1 and ends[1] == 2 * ends[0]  # steps, not epochs
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    for tag in ("train/loss", "train/acc", "val/acc", "val/loss", "train/epoch_seconds", "train/eval_acc"):
        assert [e.step for e in events.Scalars(tag)] == ends, tag
    assert [(e.step, e.value) for e in events.Scalars("train/epoch")] == [(ends[0], 1), (ends[1], 2)]
    assert [e.value for e in events.Scalars("val/acc")] == pytest.approx([row["val_acc"] for row in history])
