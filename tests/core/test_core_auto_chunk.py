"""rows_within_budget: the largest chunk whose peak memory, predicted from two probe steps, fits a budget."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gradsal.core as gs
from gradsal.backends.numpy import FunctionBackend
from gradsal.core.batching import rows_within_budget


def linear(fixed: int, per_row: int, calls: list[int] | None = None):
    def measure(rows: int) -> int:
        if calls is not None:
            calls.append(rows)
        return fixed + per_row * rows
    return measure


def test_picks_the_largest_chunk_within_the_budget() -> None:
    calls: list[int] = []
    assert rows_within_budget(2050, linear(1000, 100, calls)) == 10  # 1000 + 10 * 100 <= 2050 < 1000 + 1100
    assert calls == [1, 2]
    assert rows_within_budget(2000, linear(1000, 100)) == 10  # exactly full
    assert rows_within_budget(1999, linear(1000, 100)) == 9


@given(fixed=st.integers(0, 10**9), per_row=st.integers(1, 10**8), budget=st.integers(1, 10**11))
def test_prediction_is_exact_for_linear_costs(fixed: int, per_row: int, budget: int) -> None:
    rows = rows_within_budget(budget, linear(fixed, per_row))
    assert rows >= 1
    if rows > 1 or fixed + per_row <= budget:
        assert fixed + per_row * rows <= budget
    assert fixed + per_row * (rows + 1) > budget


def test_cap_and_degenerate_probes() -> None:
    calls: list[int] = []
    assert rows_within_budget(10**9, linear(0, 10), max_rows=7) == 7
    assert rows_within_budget(10**9, linear(0, 10, calls), max_rows=1) == 1 and calls == []
    assert rows_within_budget(50, linear(1000, 100)) == 1  # not even one row fits: one row per step
    # a probe that does not grow (allocator rounding) is no promise of free rows: min_row_bytes per row
    assert rows_within_budget(8000, lambda rows: 1000, min_row_bytes=100) == 71  # (8000 - 900) // 100
    assert rows_within_budget(10**6, lambda rows: 0) == 10**6  # nothing measurable: one byte per row
    assert rows_within_budget(2050, linear(1000, 100), min_row_bytes=150) == 7  # (2050 - 950) // 150
    calls.clear()
    assert rows_within_budget(10**9, linear(0, 10, calls), probe_rows=(4, 8), max_rows=6) == 6
    assert calls == [4, 6]


@pytest.mark.parametrize("probe_rows", [(0, 2), (3, 3)])
def test_bad_probe_rows(probe_rows: tuple[int, int]) -> None:
    with pytest.raises(gs.InputError):
        rows_within_budget(100, linear(0, 1), probe_rows=probe_rows)


@pytest.mark.parametrize("budget, error", [(0, gs.InputError), (1.5, gs.InputTypeError), (True, gs.InputTypeError)])
def test_bad_budget(budget: object, error: type) -> None:
    with pytest.raises(error):
        rows_within_budget(budget, linear(0, 1))


def test_a_chunk_from_the_budget_gives_the_same_result_as_that_explicit_batch_size() -> None:
    """The core's results never depend on the chunk; a probed chunk is one more explicit batch_size."""
    weights = np.random.default_rng(0).normal(size=(12, 3))
    backend = FunctionBackend(lambda z: np.tanh(z.reshape(len(z), -1) @ weights),
                              grad=lambda z, v: ((v * (1 - np.tanh(z.reshape(len(z), -1) @ weights) ** 2))
                                                 @ weights.T).reshape(z.shape))
    x = np.random.default_rng(1).normal(size=(5, 3, 2, 2))
    rows = rows_within_budget(7 * 96 + 500, linear(500, 96))
    assert rows == 7
    chunked = gs.smoothgrad(backend, x, 1, n_samples=6, seed=0, batch_size=rows)
    np.testing.assert_array_equal(chunked, gs.smoothgrad(backend, x, 1, n_samples=6, seed=0, batch_size=30))
