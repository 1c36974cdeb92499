"""From attributions to displayable maps and feature rankings (NumPy only; no colours or images here).

The two recipes from the literature are one call each::

    to_saliency_map(grad)                                  # Simonyan et al. 2013: max_c |grad|, in [0, 1]
    to_saliency_map(grad, sign="positive")                 # positive gradients, max over channels, in [0, 1]
    to_saliency_map(ig, sign="signed", reduce="sum")       # signed IG per pixel, in [-1, 1]
    to_saliency_map(cam, reduce=None)                      # a Grad-CAM map (N, H, W) scaled to [0, 1]

For tabular models, :func:`rank_features` lists features by the size of their attribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from ._validate import (
    check_axis,
    check_batch_rank,
    check_choice,
    check_finite,
    check_not_empty,
    check_positive_int,
)
from .errors import InputError, InputTypeError

Sign = Literal["abs", "positive", "negative", "signed", "square"]
Reduce = Literal["max", "mean", "sum", "l2", "max_abs"]
Normalize = Literal["minmax", "percentile", "symmetric"]
SIGNS = ("abs", "positive", "negative", "signed", "square")
REDUCTIONS = ("max", "mean", "sum", "l2", "max_abs", None)
NORMALIZATIONS = ("minmax", "percentile", "symmetric", None)


def to_saliency_map(
    attributions: np.ndarray,
    *,
    sign: Sign = "abs",
    reduce: Reduce | None = "max",
    channel_axis: int = 1,
    normalize: Normalize | None = "minmax",
    percentile: float = 99.0,
) -> np.ndarray:
    """One map per sample: ``normalize(reduce_over_channels(sign(attributions)))``, e.g. ``(N, C, H, W) -> (N, H, W)``.

    ``sign``: ``abs`` ``|a|``; ``positive`` ``max(a, 0)``; ``negative`` ``max(-a, 0)`` (evidence against);
    ``signed`` ``a``; ``square`` ``a^2``. ``reduce`` over ``channel_axis``: ``max``, ``mean``, ``sum``,
    ``l2`` (``sqrt(sum a^2)``), ``max_abs`` (the entry of largest magnitude, sign kept), or None (the
    attributions are already one value per pixel, e.g. Grad-CAM's ``(N, H, W)``). ``normalize`` per
    sample: ``minmax`` ``(m - min) / (max - min)``; ``percentile`` ``(m - min) / (P - min)`` clipped, with
    ``P`` the ``percentile``-th percentile (outliers saturate, as in Smilkov et al. 2017); ``symmetric``
    ``m / max|m|``; None: unscaled. Results lie in [0, 1]; with ``sign="signed"`` every normalisation
    keeps zero at zero and the sign, scaling by ``max|m|`` (or the percentile of ``|m|``) into [-1, 1].
    A constant map becomes zeros, never NaN. Float32 input gives float32 output, else float64.
    """
    array = _as_real_batch(attributions, "attributions")
    sign = check_choice(sign, "sign", SIGNS)
    reduce = check_choice(reduce, "reduce", REDUCTIONS)
    normalize = check_choice(normalize, "normalize", NORMALIZATIONS)
    percentile = _check_percentile(percentile)
    dtype = np.float32 if array.dtype == np.float32 else np.float64
    maps = _apply_sign(array.astype(np.float64), sign)
    if reduce is not None:
        maps = _reduce(maps, reduce, check_axis(channel_axis, array.ndim, "channel_axis"))
    if normalize is not None:
        maps = _normalize_signed(maps, normalize, percentile) if sign == "signed" else \
            _normalize_unsigned(maps, normalize, percentile)
    return maps.astype(dtype)


def _as_real_batch(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind not in "fiu":
        raise InputTypeError(f"{name} has dtype {array.dtype}: pass a real-valued array (N, ...) such as a "
                             "method's output.")
    check_batch_rank(array, name)
    check_not_empty(array, name)
    check_finite(array, name)
    return array


def _check_percentile(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputTypeError(f"percentile must be a number in (0, 100], got {value!r}.")
    if not 0 < float(value) <= 100:
        raise InputError(f"percentile must be in (0, 100], got {value}: e.g. percentile=99.0.")
    return float(value)


def _apply_sign(values: np.ndarray, sign: str) -> np.ndarray:
    if sign == "abs":
        return np.abs(values)
    if sign == "positive":
        return np.maximum(values, 0.0)
    if sign == "negative":
        return np.maximum(-values, 0.0)
    if sign == "square":
        return np.square(values)
    return values


def _reduce(values: np.ndarray, how: str, axis: int) -> np.ndarray:
    if how == "max":
        return values.max(axis=axis)
    if how == "mean":
        return values.mean(axis=axis)
    if how == "sum":
        return values.sum(axis=axis)
    if how == "l2":
        return np.sqrt(np.square(values).sum(axis=axis))
    index = np.expand_dims(np.abs(values).argmax(axis=axis), axis)
    return np.take_along_axis(values, index, axis=axis).squeeze(axis)


def _per_sample(values: np.ndarray, function: Any) -> np.ndarray:
    """``function`` over each sample's flattened map, shaped to broadcast against ``values``."""
    return function(values.reshape(len(values), -1), axis=1).reshape(-1, *([1] * (values.ndim - 1)))


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    denominator = np.broadcast_to(denominator, numerator.shape)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _normalize_unsigned(maps: np.ndarray, how: str, percentile: float) -> np.ndarray:
    low = _per_sample(maps, np.min)
    if how == "symmetric":
        return _safe_divide(maps, _per_sample(np.abs(maps), np.max))
    high = _per_sample(maps, np.max)
    if how == "percentile":
        top = _per_sample(maps, lambda m, axis: np.percentile(m, percentile, axis=axis))
        high = np.where(top > low, top, high)  # a percentile at the minimum: fall back to the max
    return np.clip(_safe_divide(maps - low, high - low), 0.0, 1.0)


def _normalize_signed(maps: np.ndarray, how: str, percentile: float) -> np.ndarray:
    size = np.abs(maps)
    scale = _per_sample(size, np.max)
    if how == "percentile":
        top = _per_sample(size, lambda m, axis: np.percentile(m, percentile, axis=axis))
        scale = np.where(top > 0, top, scale)
    return np.clip(_safe_divide(maps, scale), -1.0, 1.0)


class FeatureScore(NamedTuple):
    """One feature's attribution, as returned by :func:`rank_features` (unpacks as ``(name, value)``)."""

    name: str
    value: float


def rank_features(attributions: np.ndarray, names: Sequence[str], top_k: int | None = None) -> list[FeatureScore]:
    """Features sorted by the size of their attribution, largest first: ``[(name, value), ...]``.

    ``attributions`` is one sample ``(D,)`` (or ``(1, D)``), ranked by ``|value|`` with the signed value
    reported; or a batch ``(N, D)``, ranked by the mean absolute attribution over the samples (a global
    importance), which is the value reported. Ties keep the order of ``names``. ``top_k`` keeps the first k.
    """
    array = np.asarray(attributions)
    if array.dtype.kind not in "fiu":
        raise InputTypeError(f"attributions has dtype {array.dtype}: pass a real-valued array (D,) or (N, D).")
    if array.ndim == 2 and len(array) == 1:
        array = array[0]
    if array.ndim not in (1, 2) or array.size == 0:
        raise InputError(f"attributions has shape {array.shape}: rank_features needs one sample (D,) or a batch "
                         "(N, D) of tabular attributions; flatten other inputs first.")
    check_finite(array, "attributions")
    names = list(names)
    if len(names) != array.shape[-1]:
        raise InputError(f"{len(names)} names for {array.shape[-1]} features: pass exactly one name per feature "
                         "(column) of the attributions.")
    values = array.astype(np.float64) if array.ndim == 1 else np.abs(array.astype(np.float64)).mean(axis=0)
    order = sorted(range(len(names)), key=lambda j: -abs(values[j]))
    if top_k is not None:
        order = order[:check_positive_int(top_k, "top_k")]
    return [FeatureScore(str(names[j]), float(values[j])) for j in order]
