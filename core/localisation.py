"""Localisation metrics: does a saliency map put its mass inside a region (an object mask or a box)?

Every metric takes one non-negative map ``R`` of shape ``(H, W)`` (what :func:`to_saliency_map` returns
with its default ``sign="abs"`` or with ``sign="positive"``; a Grad-CAM map) and a region ``M``: a binary
mask ``(H, W)`` (bool, or numbers that are all 0 or 1) or a box ``(row0, col0, row1, col1)``, half-open
pixel indices (rows ``row0 .. row1 - 1``, columns ``col0 .. col1 - 1``). Negative values are rejected
with an ``InputError`` rather than clipped or folded: whether evidence against the class counts as
"looking there" (``abs``) or not (``positive``) is the user's choice, made once in ``to_saliency_map``.
NaN and inf are rejected too. All metrics are invariant to scaling ``R`` by a positive constant. A map
that is zero everywhere has no mass: the mass-based metrics return NaN for it, and the rank and
pointing metrics, where every pixel ties, return the region's share of the image (chance level).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InputError, InputTypeError

Region = Any  # a binary mask (H, W) or a box (row0, col0, row1, col1)

__all__ = [
    "box_mask",
    "energy_pointing_game",
    "forbidden_share",
    "localisation_metrics",
    "pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
]


def relevance_mass_accuracy(saliency_map: Any, region: Region) -> float:
    """Share of the map's mass inside the region: ``sum_{p in M} R_p / sum_p R_p``, in [0, 1].

    Arras, Osman and Samek (2022), "CLEVR-XAI: A benchmark dataset for the ground truth evaluation of
    neural network explanations", Information Fusion 81 (their mass accuracy, with ``R >= 0``). NaN for
    a map that is zero everywhere.
    """
    values = check_map(saliency_map)
    mask = region_mask(region, values.shape)
    return _mass_share(values, mask)


def relevance_rank_accuracy(saliency_map: Any, region: Region) -> float:
    """Share of the ``K = |M|`` highest-ranked pixels that lie in the region: ``|top_K(R) & M| / K``.

    Arras, Osman and Samek (2022), "CLEVR-XAI" (their rank accuracy). Ties are shared, never broken by
    position: with ``t`` the K-th largest value, ``A = {R > t}`` and ``T = {R = t}``, the ``K - |A|``
    remaining places go to ``T`` in proportion, ``(|A & M| + (K - |A|) |T & M| / |T|) / K``. A constant
    map therefore scores ``|M| / (H W)``, the chance level.
    """
    values = check_map(saliency_map)
    mask = region_mask(region, values.shape)
    k = int(mask.sum())
    threshold = np.partition(values.ravel(), values.size - k)[values.size - k]
    above = values > threshold
    tied = values == threshold
    places = k - int(above.sum())
    in_region = int((above & mask).sum()) + places * int((tied & mask).sum()) / int(tied.sum())
    return float(in_region / k)


def pointing_game(saliency_map: Any, region: Region, *, tolerance: float = 0.0) -> float:
    """1.0 when the map's maximum lies in the region (or within ``tolerance`` pixels of it), else 0.0.

    Zhang, Bargal, Lin, Brandt, Shen and Sclaroff (2018), "Top-down neural attention by excitation
    backprop", IJCV 126 (they use a tolerance of 15 pixels). A hit is ``argmax R`` within Euclidean
    distance ``tolerance`` of a pixel of ``M``. When several pixels share the maximum, the score is the
    share of them that hit (so a constant map scores the dilated region's share of the image).
    """
    values = check_map(saliency_map)
    mask = region_mask(region, values.shape)
    tolerance = _check_tolerance(tolerance)
    target = _dilate(mask, tolerance) if tolerance > 0 else mask
    maxima = values == values.max()
    return float((maxima & target).sum() / maxima.sum())


def energy_pointing_game(saliency_map: Any, region: Region) -> float:
    """Share of the map's energy inside the region's bounding box: ``sum_{p in B} R_p / sum_p R_p``.

    Wang, Wang, Du, Yang, Zhang, Ding, Mardziel and Hu (2020), "Score-CAM: Score-weighted visual
    explanations for convolutional neural networks", CVPR workshops. ``B`` is the smallest box holding
    the mask (the box itself when a box is given); unlike :func:`relevance_mass_accuracy`, mass in the
    box but outside a non-rectangular object counts as a hit, as in the paper's bounding-box protocol.
    NaN for a map that is zero everywhere.
    """
    values = check_map(saliency_map)
    mask = region_mask(region, values.shape)
    rows, cols = np.nonzero(mask)
    box = box_mask(values.shape, (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1))
    return _mass_share(values, box)


def forbidden_share(saliency_map: Any, forbidden: Region) -> float:
    """Share of the map's mass on a region the model should ignore (markers, rulers, text):
    ``sum_{p in F} R_p / sum_p R_p``, in [0, 1]. The same formula as :func:`relevance_mass_accuracy`,
    read the other way round: high is bad. NaN for a map that is zero everywhere.
    """
    values = check_map(saliency_map)
    return _mass_share(values, region_mask(forbidden, values.shape, name="forbidden"))


def localisation_metrics(saliency_map: Any, region: Region, forbidden: Region | None = None) -> dict[str, float]:
    """Every metric above for one map: ``mass_accuracy``, ``rank_accuracy``, ``pointing_game``,
    ``energy_pointing_game`` and ``forbidden_share`` (NaN when no ``forbidden`` region is given)."""
    values = check_map(saliency_map)
    return {
        "mass_accuracy": relevance_mass_accuracy(values, region),
        "rank_accuracy": relevance_rank_accuracy(values, region),
        "pointing_game": pointing_game(values, region),
        "energy_pointing_game": energy_pointing_game(values, region),
        "forbidden_share": float("nan") if forbidden is None else forbidden_share(values, forbidden),
    }


def box_mask(shape: Sequence[int], box: Sequence[int]) -> np.ndarray:
    """A boolean ``shape`` mask that is True on ``box = (row0, col0, row1, col1)`` (half-open)."""
    height, width = (int(n) for n in shape)
    if len(box) != 4 or not all(isinstance(v, (int, np.integer)) for v in box):
        raise InputTypeError(f"a box is four integers (row0, col0, row1, col1), got {box!r}.")
    row0, col0, row1, col1 = (int(v) for v in box)
    if not (0 <= row0 < row1 <= height and 0 <= col0 < col1 <= width):
        raise InputError(f"box {tuple(box)} is empty or outside the {height}x{width} map: it needs "
                         f"0 <= row0 < row1 <= {height} and 0 <= col0 < col1 <= {width} (half-open).")
    mask = np.zeros((height, width), dtype=bool)
    mask[row0:row1, col0:col1] = True
    return mask


def check_map(saliency_map: Any) -> np.ndarray:
    """The map as float64 ``(H, W)``, after checking it is real, finite and non-negative."""
    if isinstance(saliency_map, (str, bytes)) or saliency_map is None:
        raise InputTypeError(f"saliency_map must be a NumPy array (H, W), got {type(saliency_map).__name__}.")
    values = np.asarray(saliency_map)
    if values.dtype.kind not in "fiu":
        raise InputTypeError(f"saliency_map has dtype {values.dtype}: pass a real-valued map (H, W).")
    if values.ndim != 2 or values.size == 0:
        raise InputError(f"saliency_map has shape {values.shape}; one map (H, W) is needed (for a batch, pass "
                         "maps[i]; reduce channels with to_saliency_map first).")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise InputError("saliency_map holds NaN or inf: the method failed on this input; check the model's "
                         "output and gradient there.")
    if (values < 0).any():
        raise InputError("saliency_map has negative values: pass a non-negative map, e.g. "
                         "to_saliency_map(a, sign='abs') or sign='positive' (say which evidence counts).")
    return values


def region_mask(region: Region, shape: tuple[int, ...], name: str = "region") -> np.ndarray:
    """``region`` (a binary mask of ``shape`` or a box) as a boolean mask with at least one pixel."""
    if isinstance(region, (tuple, list)) and len(region) == 4 and np.ndim(region) == 1:
        return box_mask(shape, region)
    if isinstance(region, (str, bytes)) or region is None:
        raise InputTypeError(f"{name} must be a binary mask (H, W) or a box (row0, col0, row1, col1), got "
                             f"{type(region).__name__}.")
    mask = np.asarray(region)
    if mask.dtype.kind not in "biuf":
        raise InputTypeError(f"{name} has dtype {mask.dtype}: pass a boolean mask or one of 0s and 1s.")
    if mask.shape != shape:
        raise InputError(f"{name} has shape {mask.shape} but the saliency map has shape {shape}: resize one "
                         "to the other (a map computed at the model's input size belongs at the image's size).")
    if mask.dtype.kind != "b":
        if not np.isin(mask, (0, 1)).all():
            raise InputError(f"{name} holds values other than 0 and 1: threshold it first, e.g. mask > 0.")
        mask = mask.astype(bool)
    if not mask.any():
        raise InputError(f"{name} is empty (no pixel set): a metric needs at least one pixel in the region.")
    return mask


def _mass_share(values: np.ndarray, mask: np.ndarray) -> float:
    total = values.sum()
    return float(values[mask].sum() / total) if total > 0 else float("nan")


def _check_tolerance(tolerance: Any) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating)):
        raise InputTypeError(f"tolerance must be a number of pixels, got {tolerance!r}.")
    if not np.isfinite(tolerance) or tolerance < 0:
        raise InputError(f"tolerance must be a finite number of pixels >= 0, got {tolerance!r}.")
    return float(tolerance)


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within Euclidean distance ``radius`` of the mask (OR of the mask shifted over a disc)."""
    reach = int(np.floor(radius))
    height, width = mask.shape
    grown = mask.copy()
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if dy * dy + dx * dx > radius * radius or (dy == 0 and dx == 0):
                continue
            grown[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] |= \
                mask[max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return grown
