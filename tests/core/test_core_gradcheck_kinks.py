"""check_gradients at kinks: checks whose one-sided differences disagree are set aside, not failed."""

from __future__ import annotations

import numpy as np

from gradsal.backends.numpy import FunctionBackend
from gradsal.core import check_gradients


def tied_max(x: np.ndarray) -> np.ndarray:
    """max(x_0, x_1) + sum of squares of the rest: a kink wherever x_0 == x_1."""
    return (np.maximum(x[:, 0], x[:, 1]) + (x[:, 2:] ** 2).sum(axis=1))[:, None]


def tied_max_grad(x: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
    grad = np.zeros_like(x)
    first = x[:, 0] >= x[:, 1]  # the first maximum wins a tie, as max-pooling does
    grad[:, 0], grad[:, 1] = first, ~first
    grad[:, 2:] = 2 * x[:, 2:]
    return grad * cotangent[:, :1]


def test_a_tie_is_set_aside_and_the_smooth_coordinates_still_checked() -> None:
    x = np.array([[0.5, 0.5, 0.3, -0.7]])
    report = check_gradients(FunctionBackend(tied_max, tied_max_grad), x, target=0)
    assert report.passed, report
    assert report.n_nonsmooth == 2  # coordinates 0 and 1 cross the kink; 2 and 3 are smooth
    assert "set aside" in str(report)


def test_a_wrong_gradient_on_the_smooth_part_still_fails() -> None:
    x = np.array([[0.5, 0.5, 0.3, -0.7]])

    def wrong(x: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        grad = tied_max_grad(x, cotangent)
        grad[:, 3] *= 1.5
        return grad

    report = check_gradients(FunctionBackend(tied_max, wrong), x, target=0)
    assert not report.passed and not report.inconclusive
    assert "coordinate 3" in report.worst


def test_every_check_on_a_kink_is_inconclusive_and_a_nudged_input_passes() -> None:
    x = np.zeros((1, 2))  # every coordinate crosses max(x_0, x_1)'s kink

    def pair_max(x: np.ndarray) -> np.ndarray:
        return np.maximum(x[:, 0], x[:, 1])[:, None]

    def pair_max_grad(x: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        return tied_max_grad(np.concatenate([x, np.zeros((len(x), 0))], axis=1), cotangent)

    backend = FunctionBackend(pair_max, pair_max_grad)
    report = check_gradients(backend, x, target=0)
    assert report.inconclusive and not report.passed
    assert "nudged input" in report.worst and "INCONCLUSIVE" in str(report)
    nudged = x + 1e-3 * np.random.default_rng(0).standard_normal(x.shape)
    assert check_gradients(backend, nudged, target=0).passed


def test_smooth_curvature_is_not_mistaken_for_a_kink() -> None:
    x = np.random.default_rng(1).standard_normal((3, 40)).astype(np.float32)

    def smooth(x: np.ndarray) -> np.ndarray:
        return np.tanh(3 * x).sum(axis=1, keepdims=True) + (x ** 2).sum(axis=1, keepdims=True)

    def smooth_grad(x: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        return (3 * (1 - np.tanh(3 * x) ** 2) + 2 * x) * cotangent[:, :1]

    report = check_gradients(FunctionBackend(smooth, smooth_grad), x, target=0)
    assert report.passed and report.n_nonsmooth == 0, report
