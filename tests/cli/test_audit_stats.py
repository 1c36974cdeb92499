"""The audit's group statistics: bootstrap intervals against the normal approximation, and independence
from the order in which rows arrive (the Ray engine delivers them in any order)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from gradsal.cli.audit_stats import bootstrap_gap, bootstrap_mean, collect_metrics, summarise, summary_as_json


def test_the_mean_interval_is_close_to_the_normal_one() -> None:
    values = np.random.default_rng(0).normal(3.0, 2.0, size=400)
    interval = bootstrap_mean(values, np.random.default_rng(1), n_boot=4000)
    half_width = 1.959964 * values.std(ddof=1) / math.sqrt(len(values))
    assert interval.estimate == pytest.approx(values.mean())
    assert interval.low == pytest.approx(values.mean() - half_width, abs=0.1 * half_width)
    assert interval.high == pytest.approx(values.mean() + half_width, abs=0.1 * half_width)


def test_the_gap_interval_is_close_to_the_normal_one() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.6, 0.1, size=300), rng.normal(0.5, 0.2, size=500)
    interval = bootstrap_gap(a, b, np.random.default_rng(3), n_boot=4000)
    half_width = 1.959964 * math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert interval.estimate == pytest.approx(a.mean() - b.mean())
    assert interval.low == pytest.approx(interval.estimate - half_width, abs=0.1 * half_width)
    assert interval.high == pytest.approx(interval.estimate + half_width, abs=0.1 * half_width)
    assert interval.excludes_zero()


def test_the_summary_does_not_depend_on_the_rows_order() -> None:
    rng = np.random.default_rng(4)
    rows = [{"image": f"{i}.png", "group": "AB"[i % 2], "mass_accuracy": float(rng.random()),
             "rank_accuracy": float(rng.random()), "pointing_game": float(rng.integers(2)),
             "energy_pointing_game": float(rng.random()), "forbidden_share": None} for i in range(50)]
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    first = summary_as_json(summarise(collect_metrics(rows), seed=5, n_boot=300))
    second = summary_as_json(summarise(collect_metrics(shuffled), seed=5, n_boot=300))
    assert first == second
    assert first["groups"]["A"]["forbidden_share"]["n_missing"] == 25
    assert first["groups"]["A"]["forbidden_share"]["mean"]["estimate"] is None
