"""Sweep pictures: every run's validation curve on one axis, and accuracy against parameters."""

from __future__ import annotations

from pathlib import Path

from cnnlab.analysis.figures import new_figure, save
from cnnlab.experiments import seeds
from cnnlab.experiments.readings import train_eval_gap
from cnnlab.experiments.report import Report, _fmt


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _lines(report: Report) -> list[tuple[str, list, tuple, tuple]]:
    """(label, epochs, (val mean, std), (gap mean, std)) per run, or per arm over seeds when `seed` varies."""
    if seeds.SEED in report.keys:
        arms = seeds.group(report.rows, report.keys, _fmt)
        groups = [(f"{a.name} ({len(a.indices)} seeds)", [report.runs[i] for i in a.indices]) for a in arms]
    else:
        groups = [(lab, [r]) for r, lab in zip(report.runs, report.labels())]
    out = []
    for lab, runs in groups:
        histories = [r.history for r in runs if r.history]
        if histories:
            epochs, val, val_sd = seeds.mean_curve(histories, lambda h: h.get("val_acc"))
            _, gap, gap_sd = seeds.mean_curve(histories, train_eval_gap)
            out.append((lab, epochs, (val, val_sd), (gap, gap_sd)))
    return out


def _band(ax, epochs, mean_sd, color, label=None):
    """The mean as a line; over seeds, ± one std as a band around it."""
    mean, sd = mean_sd
    ax.plot(epochs, mean, marker="o", ms=3, color=color, label=label)
    if any(sd):
        ax.fill_between(
            epochs, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)], color=color, alpha=0.2
        )


def curves(report: Report, path: str | Path, title: str = "") -> Path | None:
    """Validation accuracy per epoch (left) and the train-minus-val accuracy gap (right), one line per run, or
    per arm over seeds (the mean, with a band of ± one std) when `seed` varies."""
    runs = _lines(report)
    if not runs:
        return None
    fig = new_figure(13, 5.2 + 0.22 * max(0, len(runs) - 4))
    acc_ax, gap_ax = fig.subplots(1, 2)
    for (lab, epochs, val, gap), color in zip(runs, _colors(len(runs))):
        _band(acc_ax, epochs, val, color, lab)
        _band(gap_ax, epochs, gap, color)
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    gap_ax.set(
        xlabel="epoch",
        ylabel="train acc (eval mode, fixed sample) - val acc (points)",
        title="train-val gap (over 0: fits train better than val)",
    )
    gap_ax.axhline(0, color="grey", lw=0.8)
    first = min(e for _, epochs, _, _ in runs for e in epochs)
    last = max(e for _, epochs, _, _ in runs for e in epochs)
    for ax in (acc_ax, gap_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if last - first < 2:  # one or two epochs: whole epochs half a step apart, not 0.96 ... 1.04
            ax.set_xlim(first - 0.5, last + 0.5)
            ax.set_xticks(range(first, last + 1))
    fig.legend(
        loc="outside lower center",
        ncols=min(3, len(runs)),
        fontsize=9,
        title=(
            ", ".join(seeds.other_keys(report.keys)) + (" (mean, band ± 1 std)" if seeds.SEED in report.keys else "")
        )
        or None,
    )
    fig.suptitle(title or "validation curves", fontsize=13)
    out = save(fig, path)
    return out


def accuracy_vs_params(report: Report, path: str | Path, title: str = "") -> Path | None:
    """Best validation and test accuracy against the parameter count (log axis), each run labelled."""
    points = [
        (row, lab) for run, row, lab in zip(report.runs, report.rows, report.labels()) if run.ok and row.get("params")
    ]
    if len({row["params"] for row, _ in points}) < 2:  # one size: a vertical strip says nothing (the table does)
        return None
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    fig = new_figure(9, 6)
    ax = fig.subplots()
    sizes = [row["params"] for row, _ in points]
    middle = (min(sizes) * max(sizes)) ** 0.5  # the middle of the log axis
    for (row, lab), color in zip(points, _colors(len(points))):
        ax.scatter(row["params"], row["best val acc"], color=color, s=50, zorder=3)
        if row.get("test acc") is not None:
            ax.scatter(row["params"], row["test acc"], facecolors="none", edgecolors=color, s=50, zorder=3)
        right = row["params"] > middle  # labels point inwards, so they stay inside the axes
        ax.annotate(
            lab,
            (row["params"], row["best val acc"]),
            textcoords="offset points",
            xytext=(-6 if right else 6, 4),
            ha="right" if right else "left",
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1, 2, 5 per decade: labelled, never crowded
    ax.xaxis.set_major_formatter(EngFormatter())  # 1.2M, not 1.2 x 10^6
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="parameters (log scale)", ylabel="accuracy (%)", title=title or "accuracy vs parameters")
    ax.scatter([], [], color="black", label="best val acc")
    ax.scatter([], [], facecolors="none", edgecolors="black", label="test acc (best.pt)")
    ax.legend(loc="best", fontsize=9)
    ax.margins(x=0.15, y=0.12)
    ax.grid(alpha=0.3, which="both")
    return save(fig, path)


def write(report: Report, out_dir: str | Path, title: str = "") -> list[Path]:
    """curves.png and accuracy_vs_params.png in `out_dir` (those that have data to show)."""
    out_dir = Path(out_dir)
    made = [
        curves(report, out_dir / "curves.png", title),
        accuracy_vs_params(report, out_dir / "accuracy_vs_params.png", title),
    ]
    return [p for p in made if p is not None]
