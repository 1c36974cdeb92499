"""Group statistics of an audit: per-group means with bootstrap confidence intervals, and gaps between groups.

Percentile bootstrap (Efron and Tibshirani 1993, ch. 13): the interval for a mean is the
``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the means of ``n_boot`` resamples drawn with
replacement; the gap ``mean(A) - mean(B)`` resamples A and B independently. Images whose metric is NaN
(an all-zero map, or no forbidden mask) are left out of that metric and counted. One
``numpy.random.default_rng(seed)`` drives every resample in a fixed order, so a report is reproducible.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .audit_pipeline import METRICS

RESAMPLES_PER_CHUNK = 64  # bounds the index matrix at 64 x n integers


@dataclass
class Interval:
    """An estimate with its bootstrap interval (NaN when there is no value to estimate from)."""

    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


@dataclass
class GroupMetric:
    """One metric over one group: the values' summary, a histogram on [0, 1] and the mean's interval."""

    n: int
    n_missing: int
    mean: Interval
    histogram: list[int] = field(default_factory=list)


def bootstrap_mean(values: np.ndarray, rng: np.random.Generator, n_boot: int = 2000,
                   level: float = 0.95) -> Interval:
    """The mean of ``values`` and its percentile bootstrap interval."""
    if len(values) == 0:
        return Interval(math.nan, math.nan, math.nan)
    means = _resampled_means(values, rng, n_boot)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(values.mean()), float(low), float(high))


def bootstrap_gap(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n_boot: int = 2000,
                  level: float = 0.95) -> Interval:
    """``mean(a) - mean(b)`` and its percentile bootstrap interval (each group resampled on its own)."""
    if len(a) == 0 or len(b) == 0:
        return Interval(math.nan, math.nan, math.nan)
    gaps = _resampled_means(a, rng, n_boot) - _resampled_means(b, rng, n_boot)
    low, high = np.quantile(gaps, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(a.mean() - b.mean()), float(low), float(high))


def _resampled_means(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    means = np.empty(n_boot)
    for start in range(0, n_boot, RESAMPLES_PER_CHUNK):
        count = min(RESAMPLES_PER_CHUNK, n_boot - start)
        means[start:start + count] = values[rng.integers(0, len(values), size=(count, len(values)))].mean(axis=1)
    return means


def read_rows(path: Path) -> Iterable[dict[str, Any]]:
    """The rows of a results JSONL file, one at a time."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def collect_metrics(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """group -> metric -> values (NaN where missing), in image-name order whatever the rows' order (so the
    bootstrap draws the same resamples for any engine): a few floats per image, never the maps."""
    named: dict[str, list[tuple[str, list[float]]]] = {}
    for row in rows:
        values = [math.nan if row.get(m) is None else float(row[m]) for m in METRICS]
        named.setdefault(str(row["group"]), []).append((str(row["image"]), values))
    groups: dict[str, dict[str, list[float]]] = {}
    for group, entries in sorted(named.items()):
        table = [values for _, values in sorted(entries)]
        groups[group] = {metric: [values[k] for values in table] for k, metric in enumerate(METRICS)}
    return groups


def summarise(groups: dict[str, dict[str, list[float]]], seed: int = 0, n_boot: int = 2000,
              level: float = 0.95, bins: int = 10) -> dict[str, Any]:
    """Per group and metric a :class:`GroupMetric`; per metric and pair of groups the gap's interval."""
    rng = np.random.default_rng(seed)
    per_group: dict[str, dict[str, GroupMetric]] = {}
    present: dict[str, dict[str, np.ndarray]] = {}
    for group, metrics in groups.items():
        per_group[group], present[group] = {}, {}
        for metric, raw in metrics.items():
            values = np.asarray(raw, dtype=np.float64)
            kept = values[~np.isnan(values)]
            present[group][metric] = kept
            histogram = np.histogram(np.clip(kept, 0, 1), bins=bins, range=(0.0, 1.0))[0].tolist()
            per_group[group][metric] = GroupMetric(len(values), int(len(values) - len(kept)),
                                                   bootstrap_mean(kept, rng, n_boot, level), histogram)
    gaps: dict[str, dict[str, Interval]] = {metric: {} for metric in METRICS}
    for first, second in itertools.combinations(groups, 2):
        for metric in METRICS:
            gaps[metric][f"{first} - {second}"] = bootstrap_gap(present[first][metric], present[second][metric],
                                                               rng, n_boot, level)
    return {"level": level, "n_boot": n_boot, "seed": seed, "groups": per_group, "gaps": gaps}


def summary_as_json(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary with its dataclasses as plain dicts and NaN as None (strict JSON)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (Interval, GroupMetric)):
            return plain(value.__dict__)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, float) and math.isnan(value):
            return None
        return value

    return plain(summary)
