"""Seeds as an axis of a sweep: runs that differ only in `seed` form one arm, reported as mean ± std over
its n seeds, and a rule that says which differences between arms exceed the seed noise.

The noise rule: arms a and b differ when the difference of their means is larger than twice its standard
error, se = s_p * sqrt(1/n_a + 1/n_b), where s_p is the pooled standard deviation of the two arms' seeds,
s_p^2 = ((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2). With one seed in an arm there is no noise
estimate, and no difference is called. It is a reading aid, not a significance test (for 3 + 3 seeds a
two-sided t-test at 5% would ask for 2.78 se).

Pure: plain numbers and dicts in, plain numbers and text out; the report and the plots call it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SEED = "seed"
NOISE_FACTOR = 2.0  # a difference counts when |mean_a - mean_b| > NOISE_FACTOR x its standard error


@dataclass(frozen=True)
class Stat:
    """The mean, sample standard deviation (n - 1; 0 for one value) and count of an arm's values."""

    mean: float
    std: float
    n: int

    def __float__(self) -> float:
        return self.mean


def stat(values) -> Stat | None:
    """Mean, sample std and n of the numbers in `values` (None entries skipped); None when there are none."""
    xs = [float(v) for v in values if v is not None and not isinstance(v, bool)]
    if not xs:
        return None
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return Stat(mean, std, n)


def pooled_se(a: Stat, b: Stat) -> float | None:
    """The standard error of mean_a - mean_b from the pooled std; None when an arm has a single seed."""
    if a.n < 2 or b.n < 2:
        return None
    pooled_var = ((a.n - 1) * a.std**2 + (b.n - 1) * b.std**2) / (a.n + b.n - 2)
    return math.sqrt(pooled_var * (1 / a.n + 1 / b.n))


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) for one column, with its standard error (None: no noise estimate)."""

    a: str
    b: str
    diff: float
    se: float | None
    n_a: int
    n_b: int

    @property
    def exceeds_noise(self) -> bool:
        return self.se is not None and abs(self.diff) > NOISE_FACTOR * self.se

    def seeds(self) -> str:
        return f"{self.n_a} seeds" if self.n_a == self.n_b else f"{self.n_a} and {self.n_b} seeds"

    def __str__(self) -> str:
        if self.se is None:
            return f"{self.a} vs {self.b}: {self.diff:+.1f} points (one seed: no noise estimate)"
        if self.exceeds_noise:
            hi, lo = (self.a, self.b) if self.diff > 0 else (self.b, self.a)
            return f"{hi} > {lo} by {abs(self.diff):.1f} ± {self.se:.1f} points ({self.seeds()})"
        return f"{self.a} ≈ {self.b}: {self.diff:+.1f} ± {self.se:.1f} points, within the noise ({self.seeds()})"


def difference(name_a: str, a: Stat, name_b: str, b: Stat) -> Difference:
    return Difference(name_a, name_b, a.mean - b.mean, pooled_se(a, b), a.n, b.n)


# ------------------------------------------------------------------------------------------------ arms
@dataclass
class Arm:
    """The runs that share every varied key but the seed, in the order they came."""

    name: str  # the other keys' values as a reader names the arm: "batch", or "model=vgg11, optimizer.lr=0.1"
    values: dict  # key -> value of the other varied keys
    indices: list[int] = field(default_factory=list)  # positions of its runs in the report


def other_keys(keys: list[str]) -> list[str]:
    return [k for k in keys if k != SEED]


def group(rows: list[dict], keys: list[str], fmt=str) -> list[Arm]:
    """Rows grouped by every varied key but `seed`, arms in the order first seen (the sweep's order of values).
    `fmt` turns a value into the text of the arm's name."""
    others = other_keys(keys)
    arms: dict[str, Arm] = {}
    for i, row in enumerate(rows):
        values = {k: row.get(k) for k in others}
        if len(others) == 1:
            name = fmt(values[others[0]])
        else:
            name = ", ".join(f"{k}={fmt(v)}" for k, v in values.items()) or "all runs"
        arms.setdefault(name, Arm(name, values)).indices.append(i)
    return list(arms.values())


def arm_stat(arm: Arm, rows: list[dict], column: str, ok: list[bool]) -> Stat | None:
    """The column's statistics over the arm's finished runs."""
    return stat(rows[i].get(column) for i in arm.indices if ok[i])


def ranked_differences(arms: list[Arm], stats: list[Stat | None]) -> list[Difference]:
    """Arms ranked by mean (highest first), each compared with the next one down."""
    ranked = sorted(((s, a) for a, s in zip(arms, stats) if s is not None), key=lambda sa: -sa[0].mean)
    return [difference(a.name, s, b.name, t) for (s, a), (t, b) in zip(ranked, ranked[1:])]


def mean_curve(histories: list[list[dict]], value) -> tuple[list[int], list[float], list[float]]:
    """Per epoch present in every history: (epochs, mean, std) of value(row) over the histories."""
    per_run = [{row["epoch"]: value(row) for row in h if value(row) is not None} for h in histories]
    epochs = sorted(set.intersection(*(set(r) for r in per_run))) if per_run else []
    stats = [stat(r[e] for r in per_run) for e in epochs]
    return epochs, [s.mean for s in stats], [s.std for s in stats]


# ---------------------------------------------------------------------------------------------- verdict
def _same(name: str, wanted: str) -> bool:
    """An arm's name against a name in a claim: equal text, or equal numbers (0 and 0.0)."""
    if name == wanted:
        return True
    try:
        return float(name) == float(wanted)
    except ValueError:
        return False


def verdict(claim: dict, arms: list[Arm], stats: list[Stat | None]) -> str:
    """One line: the claim, and whether this run shows it.

    `claim` (a study's `study:` block) holds `text` (the chapter's sentence), `metric` (a summary column) and
    `expect`, a list of "a > b" (the arms' names, e.g. "batch > none"). Each expectation is shown when
    mean(a) - mean(b) exceeds the noise rule, contradicted when mean(b) - mean(a) does; the claim is shown
    when every expectation is, contradicted when any is, and otherwise not shown (within the noise, or one
    seed)."""
    by_name = dict(zip((a.name for a in arms), stats))
    parts, outcomes = [], []
    for expectation in claim.get("expect") or []:
        left, _, right = (s.strip() for s in str(expectation).partition(">"))
        a = next((n for n in by_name if _same(n, left)), None)
        b = next((n for n in by_name if _same(n, right)), None)
        if a is None or b is None or by_name[a] is None or by_name[b] is None:
            outcomes.append("missing")
            parts.append(f"{expectation}: no finished run of {left if a is None or by_name[a] is None else right}")
            continue
        d = difference(a, by_name[a], b, by_name[b])
        outcomes.append("shown" if d.exceeds_noise and d.diff > 0 else "contradicted" if d.exceeds_noise else "open")
        parts.append(str(d))
    if not outcomes:
        return ""
    if all(o == "shown" for o in outcomes):
        result = "shown"
    elif "contradicted" in outcomes:
        result = "contradicted"
    else:
        result = "not shown"
    metric = claim.get("metric", "?")
    return f"verdict: {claim.get('text', '').strip()} [{metric}]: {result.upper()}: " + "; ".join(parts)
