"""What a sweep's report concludes: its runs grouped over seeds (one row per arm, numbers as mean ± std), the
arms' differences against the seed noise, and a study's verdict on its chapter's claim.

A study states its claim in its YAML (configs/experiment/study_*.yaml), read back from each run's stored
config as data:

    study:
      text: BatchNorm trains to a higher accuracy than no normalisation at the same budget
      metric: test acc          # a summary column: test acc, best val acc, train acc, train-val gap
      expect: [batch > none]    # arms by name (the swept value); each a > b must exceed the noise

The statistics and the noise rule are experiments/seeds.py's.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cnnlab.experiments import seeds
from cnnlab.experiments.readings import norms_text
from cnnlab.experiments.report import Report, _fmt

STAT_COLUMNS = (
    "best val acc",
    "best epoch",
    "test acc",
    "train acc",
    "train-val gap",
    "steps to level",
    "s/epoch",
    "load",
    "total s",
)
CLAIM_METRICS = ("test acc", "best val acc", "train acc", "train-val gap")


def arms_of(report: Report) -> list[seeds.Arm]:
    return seeds.group(report.rows, report.keys, _fmt)


def _mean_norms(report: Report, indices: list[int]) -> str | None:
    """The arm's mean gradient norm per stage (stages by name, as every arm names them alike)."""
    per_run = [(report.runs[i].metrics or {}).get("grad_norms") for i in indices if report.runs[i].ok]
    per_run = [n for n in per_run if isinstance(n, dict) and n]
    if not per_run:
        return None
    stages = list(dict.fromkeys(k for n in per_run for k in n))
    return norms_text({k: seeds.stat(n.get(k) for n in per_run).mean for k in stages})


def by_seed(report: Report) -> Report | None:
    """When `seed` varies: one row per arm (the other varied keys), each number its mean ± std over the arm's
    finished seeds, `seeds` its n. None when the seed does not vary."""
    if seeds.SEED not in report.keys:
        return None
    ok = [r.ok for r in report.runs]
    rows = []
    arms = arms_of(report)
    for arm in arms:
        first = report.rows[arm.indices[0]]
        done = sum(ok[i] for i in arm.indices)
        row = {**arm.values, "seeds": done}
        row.update({c: first.get(c) for c in ("model", "params", "MACs")})
        row.update({c: seeds.arm_stat(arm, report.rows, c, ok) for c in STAT_COLUMNS})
        row["grad norm per stage"] = _mean_norms(report, arm.indices)
        bad = sorted({report.rows[i]["status"] for i in arm.indices if not ok[i]})
        row["status"] = "ok" if not bad else f"{done} ok; " + "; ".join(bad)
        rows.append(row)
    keys = [*seeds.other_keys(report.keys), "seeds"]
    return Report([report.runs[a.indices[0]] for a in arms], keys, rows, report.monitor, report.level)


def claim_of(report: Report) -> dict | None:
    """The study's `study:` block from the runs' stored configs (plain data), if any."""
    for run in report.runs:
        found = OmegaConf.select(run.config, "study", default=None) if run.config is not None else None
        if isinstance(found, DictConfig):
            return OmegaConf.to_container(found, resolve=False)
    return None


def lines(report: Report) -> list[str]:
    """The verdict on the study's claim (if it has one) and, with seeds, the ranked arms against the noise."""
    claim = claim_of(report)
    has_test = any(r.get("test acc") is not None for r in report.rows)
    column = (claim or {}).get("metric") or ("test acc" if has_test else "best val acc")
    out = []
    if column not in CLAIM_METRICS:
        return [f"verdict: study.metric '{column}' is not one of {', '.join(CLAIM_METRICS)}"]
    arms = arms_of(report)
    ok = [r.ok for r in report.runs]
    stats = [seeds.arm_stat(a, report.rows, column, ok) for a in arms]
    if claim:
        verdict = seeds.verdict(claim, arms, stats)
        if verdict:
            out.append(verdict)
    if seeds.SEED in report.keys and len(arms) > 1:
        out.append(
            f"{column} by arm, highest first, each against the next "
            f"(a difference counts when over {seeds.NOISE_FACTOR:g} x its pooled standard error):"
        )
        out += [f"  {d}" for d in seeds.ranked_differences(arms, stats)]
    return out
