"""Spearman rank correlation and SSIM against independent references (scipy, a per-window loop, skimage)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from gradsal.core import InputError, InputTypeError
from gradsal.core.sanity import rank_average, spearman_correlation, ssim


def tied_values(size: int) -> st.SearchStrategy[np.ndarray]:
    """Floats drawn from a few levels, so ties are common (and the average-rank rule matters)."""
    return arrays(np.float64, size, elements=st.integers(-3, 3).map(float))


@given(st.integers(2, 40).flatmap(lambda n: st.tuples(tied_values(n), tied_values(n))))
def test_spearman_matches_scipy(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input, where both return NaN
        expected = stats.spearmanr(a, b).statistic
    got = spearman_correlation(a, b)
    if np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


@given(arrays(np.float64, st.integers(1, 30), elements=st.integers(-2, 2).map(float)))
def test_average_ranks_match_scipy(values: np.ndarray) -> None:
    np.testing.assert_allclose(rank_average(values), stats.rankdata(values, method="average"))


def test_spearman_of_2d_maps_flattens_and_is_invariant_to_monotone_maps() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((5, 7))
    assert spearman_correlation(a, np.exp(3 * a)) == pytest.approx(1.0)
    assert spearman_correlation(a, -a) == pytest.approx(-1.0)
    assert spearman_correlation(a, a.T.T) == pytest.approx(stats.spearmanr(a.ravel(), a.ravel()).statistic)


def ssim_by_windows(a: np.ndarray, b: np.ndarray, weights: np.ndarray, data_range: float = 1.0) -> float:
    """Wang et al. (2004), eqs. 14-16, written window by window with np.average: the independent reference."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    size = weights.shape[0]
    values = []
    for i in range(a.shape[0] - size + 1):
        for j in range(a.shape[1] - size + 1):
            pa, pb = a[i:i + size, j:j + size], b[i:i + size, j:j + size]
            mu_a, mu_b = np.average(pa, weights=weights), np.average(pb, weights=weights)
            var_a = np.average((pa - mu_a) ** 2, weights=weights)
            var_b = np.average((pb - mu_b) ** 2, weights=weights)
            cov = np.average((pa - mu_a) * (pb - mu_b), weights=weights)
            values.append((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                          / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def gaussian_window(size: int, sigma: float) -> np.ndarray:
    centre = (size - 1) / 2
    grid = np.add.outer((np.arange(size) - centre) ** 2, (np.arange(size) - centre) ** 2)
    return np.exp(-grid / (2 * sigma**2))


maps = st.tuples(st.integers(3, 9), st.integers(3, 9)).flatmap(
    lambda shape: st.tuples(arrays(np.float64, shape, elements=st.floats(0, 1)),
                            arrays(np.float64, shape, elements=st.floats(0, 1))))


@given(maps, st.sampled_from([3, 5]))
def test_ssim_uniform_window_matches_window_loop(pair: tuple[np.ndarray, np.ndarray], size: int) -> None:
    a, b = pair
    size = min(size, *a.shape) - (1 - min(size, *a.shape) % 2)
    expected = ssim_by_windows(a, b, np.ones((size, size)))
    assert ssim(a, b, window="uniform", window_size=size) == pytest.approx(expected, abs=1e-10)


@given(maps)
def test_ssim_gaussian_window_matches_window_loop(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    expected = ssim_by_windows(a, b, gaussian_window(3, 1.5))
    assert ssim(a, b, window="gaussian", window_size=3, sigma=1.5) == pytest.approx(expected, abs=1e-10)


def test_ssim_matches_scikit_image() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.random((24, 20))
    b = np.clip(a + 0.3 * rng.normal(size=a.shape), 0, 1)
    gaussian = metrics.structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False)
    uniform = metrics.structural_similarity(a, b, data_range=1.0, win_size=7, use_sample_covariance=False)
    assert ssim(a, b) == pytest.approx(gaussian, abs=1e-10)
    assert ssim(a, b, window="uniform", window_size=7) == pytest.approx(uniform, abs=1e-10)


@given(maps)
def test_ssim_is_one_on_identical_maps_symmetric_and_at_most_one(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)
    assert ssim(a, b) <= 1.0 + 1e-12


def test_ssim_of_inverted_structure_is_negative() -> None:
    a = np.random.default_rng(2).random((16, 16))
    assert ssim(a, 1 - a) < 0


@pytest.mark.parametrize(("a", "b", "error"), [
    (np.zeros((3, 3)), np.zeros((3, 4)), InputError),
    (np.zeros(1), np.zeros(1), InputError),
    (np.array(["a", "b"]), np.array(["a", "b"]), InputTypeError),
    (np.array([0.0, np.nan]), np.array([0.0, 1.0]), InputError),
])
def test_bad_maps_raise_typed_errors(a: np.ndarray, b: np.ndarray, error: type) -> None:
    with pytest.raises(error, match="pass"):
        spearman_correlation(a, b)
    with pytest.raises(error, match="pass"):
        ssim(a, b)


@pytest.mark.parametrize("options", [{"window": "box"}, {"window_size": 0}, {"sigma": -1.0}, {"data_range": 0}])
def test_bad_ssim_options_raise(options: dict) -> None:
    with pytest.raises(InputError):
        ssim(np.zeros((5, 5)), np.ones((5, 5)), **options)
