"""How alike two saliency maps are: Spearman's rank correlation, Pearson's r and SSIM, in NumPy.

:func:`spearman_correlation` is Pearson's r of the two maps' ranks, tied values sharing the average of
their ranks (as ``scipy.stats.spearmanr``). :func:`ssim` is the mean structural similarity of Wang,
Bovik, Sheikh & Simoncelli (2004), ``(2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 +
s_b^2 + C2))`` over local windows. The ``*_per_sample`` forms compare two batches ``(N, ...)`` row by row
and take maps already checked, as the sanity checks hold them. :func:`explanation_map` turns a method's
attributions into the map that is compared: ``max_c |attributions|`` per unit (pixel or feature).
"""

from __future__ import annotations

import numbers
from typing import Any, Literal

import numpy as np

from .errors import InputError, InputTypeError
from .faithfulness import check_finite_map, unit_shape

Window = Literal["gaussian", "uniform"]
WINDOWS = ("gaussian", "uniform")


def rank_average(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, tied values sharing the average of their ranks (float64)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    _, inverse, counts = np.unique(array, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return (last - (counts - 1) / 2.0)[inverse]


def spearman_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two arrays of the same shape (flattened): Pearson's r of their ranks.

    Ties get average ranks (as ``scipy.stats.spearmanr``). NaN when either array is constant, since a
    constant has no ranking.
    """
    first, second = _same_shape(a, b, "spearman_correlation")
    return _pearson(rank_average(first), rank_average(second))


def spearman_per_sample(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of each pair of rows of two checked batches of maps ``(N, ...)``: ``(N,)``."""
    return np.array([_pearson(rank_average(a), rank_average(b)) for a, b in zip(first, second, strict=True)])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    da, db = a - a.mean(), b - b.mean()
    denominator = np.sqrt(np.dot(da, da) * np.dot(db, db))
    if denominator == 0:
        return float("nan")
    return float(np.clip(np.dot(da, db) / denominator, -1.0, 1.0))


def _same_shape(a: Any, b: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    first, second = np.asarray(a), np.asarray(b)
    for array, which in ((first, "first"), (second, "second")):
        if array.dtype.kind not in "fiub":
            raise InputTypeError(f"{name}: the {which} array has dtype {array.dtype}; pass real-valued maps.")
        check_finite_map(array, f"The {which} map")
    if first.shape != second.shape or first.size < 2:
        raise InputError(f"{name} compares two maps of the same shape with at least 2 values, got {first.shape} "
                         f"and {second.shape}: pass maps of one sample each, e.g. maps[i] and other[i].")
    return first.astype(np.float64), second.astype(np.float64)


def ssim(a: np.ndarray, b: np.ndarray, *, window: Window = "gaussian", window_size: int = 11, sigma: float = 1.5,
         data_range: float = 1.0) -> float:
    """Mean structural similarity of two maps (any number of axes, e.g. ``(H, W)``), Wang et al. (2004).

    ``SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))`` with local
    weighted means, variances and covariance over a window (weights summing to 1), ``C1 = (0.01 L)^2``,
    ``C2 = (0.03 L)^2``, ``L = data_range``, averaged over every position where the window fits inside the
    map (no padding, as the paper's reference code). ``window``: ``"gaussian"`` (std ``sigma``) or
    ``"uniform"``, ``window_size`` wide along each axis, shrunk to the axis length (and to odd) on small maps.
    Compare min-max normalised maps with ``data_range=1``, as :func:`model_randomization_test` does.
    """
    first, second = _same_shape(a, b, "ssim")
    return float(ssim_per_sample(first[None], second[None], window, window_size, sigma, data_range)[0])


def ssim_per_sample(a: np.ndarray, b: np.ndarray, window: str, window_size: int, sigma: float,
                    data_range: float) -> np.ndarray:
    """SSIM per sample of two batches ``(N, ...)`` (axes 1.. are the map's axes)."""
    if window not in WINDOWS:
        raise InputError(f"window={window!r} is not supported: use 'gaussian' or 'uniform'.")
    if isinstance(window_size, bool) or not isinstance(window_size, numbers.Integral) or window_size < 1:
        raise InputError(f"window_size must be a positive integer, got {window_size!r}: e.g. 11 (Wang et al.).")
    if not (isinstance(sigma, numbers.Real) and sigma > 0 and isinstance(data_range, numbers.Real) and data_range > 0):
        raise InputError(f"sigma and data_range must be positive numbers, got sigma={sigma!r}, "
                         f"data_range={data_range!r}: e.g. sigma=1.5, data_range=1.0 for maps in [0, 1].")
    weights = [_window_weights(min(window_size, n), window, float(sigma)) for n in a.shape[1:]]

    def local_mean(values: np.ndarray) -> np.ndarray:
        for axis, w in enumerate(weights, start=1):
            values = np.lib.stride_tricks.sliding_window_view(values, len(w), axis=axis) @ w
        return values

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov = local_mean(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return index.reshape(len(a), -1).mean(axis=1)


def _window_weights(size: int, window: str, sigma: float) -> np.ndarray:
    size = size if size % 2 == 1 else size - 1
    if window == "uniform":
        return np.full(size, 1.0 / size)
    offsets = np.arange(size) - (size - 1) / 2
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def explanation_map(attributions: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``|attributions|`` as one value per unit: max over channels for ``x`` shaped ``(N, C, *spatial)``.

    Attributions already shaped ``(N, *spatial)`` (Grad-CAM) and tabular ``(N, F)`` ones keep their shape.
    """
    array = np.asarray(attributions)
    units = unit_shape(x)
    if array.shape not in (x.shape, units) or array.dtype.kind not in "fiu":
        raise InputError(f"The explanation has shape {array.shape} / dtype {array.dtype}, but x is {x.shape}: a "
                         f"method must return real attributions shaped like x or a map shaped {units}.")
    check_finite_map(array, "The explanation")
    magnitude = np.abs(array.astype(np.float64))
    return magnitude.max(axis=1) if array.shape == x.shape and x.ndim >= 3 else magnitude


def minmax_per_sample(maps: np.ndarray) -> np.ndarray:
    """Each map of a batch ``(N, ...)`` scaled to ``[0, 1]`` (a constant map becomes all zeros)."""
    flat = maps.reshape(len(maps), -1)
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    scaled = np.divide(flat - low, span, out=np.zeros_like(flat), where=span > 0)
    return scaled.reshape(maps.shape)
