"""token_scores: the documented reductions over the embedding axis, and its errors."""

from __future__ import annotations

import numpy as np
import pytest

import gradsal.core as gs


def test_sum_and_l2_over_the_embedding_axis() -> None:
    a = np.array([[[3.0, -4.0], [1.0, 1.0], [0.0, 0.0]]])  # (1, 3 tokens, 2 dims)
    np.testing.assert_array_equal(gs.token_scores(a), [[-1.0, 2.0, 0.0]])
    np.testing.assert_allclose(gs.token_scores(a, "l2"), [[5.0, np.sqrt(2.0), 0.0]])
    np.testing.assert_array_equal(gs.token_scores(a.transpose(0, 2, 1), axis=1), [[-1.0, 2.0, 0.0]])


def test_bad_arguments_are_typed_errors() -> None:
    with pytest.raises(gs.InputError, match="reduce='mean'"):
        gs.token_scores(np.ones((1, 2, 3)), "mean")
    with pytest.raises(gs.InputError, match=r"\(N, L, D\)"):
        gs.token_scores(np.ones(3))
    with pytest.raises(gs.InputTypeError, match="dtype"):
        gs.token_scores(np.array([["a"]]))
