"""Faithfulness by ablation: deletion and insertion curves (Petsiuk, Das & Saenko 2018, RISE).

A saliency map ranks the input's pixels. The *deletion* curve replaces the most salient pixels by a
baseline, a fraction ``step`` more at a time, and records the explained score ``S_i = <f(x_i), v_i>``
(the same target semantics as the attribution methods: None = the class predicted for the unperturbed
input); a faithful map makes the score fall fast, so a *lower* deletion AUC is better. The *insertion*
curve starts from the baseline and reveals the most salient pixels first; a *higher* AUC is better.
Both need only ``forward``: every step of every sample goes through the backend in chunks of at most
``batch_size`` rows.

Units: for ``x`` shaped ``(N, C, *spatial)`` a unit is a pixel (all ``C`` channels together) and a map is
``(N, *spatial)``; for tabular ``x`` shaped ``(N, F)`` a unit is a feature and a map is ``(N, F)``.
A map shaped like the units is ranked by its values (largest first, ties in index order), as
:func:`~gradsal.core.to_saliency_map` returns it; an array shaped like ``x`` is taken as raw attributions
and ranked by ``max over channels of |a|`` (Simonyan's recipe; ``|a|`` for tabular input). ``absolute``
overrides that choice.

:func:`plot_curves` draws the mean curves of one or several methods into a PNG (needs pillow).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._validate import as_float_batch, call_backend, check_choice
from .attribution import make_baseline
from .batching import resolve_batch_size, stacked_chunks
from .errors import InputError, InputTypeError
from .protocol import GradientBackend
from .registry import as_backend
from .targets import check_outputs, target_cotangent

CurveKind = Literal["deletion", "insertion"]
Score = Literal["explained", "probability"]
SCORES = ("explained", "probability")
BASELINES = ("zero", "blur", "mean", "uniform")


@dataclass(frozen=True)
class PerturbationCurve:
    """A deletion or insertion curve per sample.

    ``fractions`` ``(K,)``: the share of units replaced (deletion) or revealed (insertion) at each step,
    from 0 to 1 (steps that would move the same whole number of units are merged, so ``K`` can be
    smaller than ``1 / step + 1`` for small inputs). ``scores`` ``(N, K)``: the score at each step,
    ``<f(x_k), v>`` (``score="explained"``) or ``<softmax(f(x_k)), v>`` (``"probability"``).
    ``auc`` ``(N,)``: the trapezoid area under ``scores`` over ``fractions``.
    """

    kind: CurveKind
    fractions: np.ndarray
    scores: np.ndarray
    auc: np.ndarray
    baseline: str
    score: str = "explained"

    @property
    def mean_auc(self) -> float:
        """The AUC averaged over the samples."""
        return float(np.mean(self.auc))

    def mean_scores(self) -> np.ndarray:
        """The curve averaged over the samples, ``(K,)``."""
        return self.scores.mean(axis=0)

    def as_dict(self) -> dict[str, Any]:
        """Plain Python values (lists and floats), e.g. for JSON."""
        return {"kind": self.kind, "baseline": self.baseline, "score": self.score, "fractions": self.fractions.tolist(),
                "scores": self.scores.tolist(), "auc": self.auc.tolist(), "mean_auc": self.mean_auc}


def deletion_curve(
    model: Any,
    x: np.ndarray,
    saliency: np.ndarray,
    target: Any = None,
    *,
    step: float = 0.05,
    baseline: str | float | np.ndarray = "zero",
    absolute: bool | None = None,
    score: Score = "explained",
    batch_size: int | None = None,
    blur_sigma: float | None = None,
    seed: int | None = None,
) -> PerturbationCurve:
    """Deletion curve: ``S(x_k)`` with the ``k * step`` most salient units of ``x`` set to the baseline.

    Petsiuk, Das & Saenko (2018), "RISE: Randomized Input Sampling for Explanation of Black-box Models".
    ``x_k = where(m_k, b, x)`` with ``m_k`` the mask of the top ``round(k * step * P)`` of the ``P`` units
    (all channels of a pixel together). ``baseline``: ``"zero"``; ``"blur"`` (``x`` blurred, std
    ``blur_sigma`` pixels); ``"mean"`` (each image's per-channel mean; for tabular ``(N, F)`` input the
    batch's per-feature mean); ``"uniform"`` (noise in each sample's value range, drawn with ``seed``);
    a number; or an array broadcastable to ``x``. Lower AUC = more faithful. See the module docstring for
    the map's shape and ranking.
    """
    return _curve("deletion", model, x, saliency, target, step, baseline, absolute, score, batch_size, blur_sigma,
                  seed)


def insertion_curve(
    model: Any,
    x: np.ndarray,
    saliency: np.ndarray,
    target: Any = None,
    *,
    step: float = 0.05,
    baseline: str | float | np.ndarray = "blur",
    absolute: bool | None = None,
    score: Score = "explained",
    batch_size: int | None = None,
    blur_sigma: float | None = None,
    seed: int | None = None,
) -> PerturbationCurve:
    """Insertion curve: ``S(x_k)`` starting from the baseline with the ``k * step`` most salient units of ``x``.

    Petsiuk, Das & Saenko (2018), RISE. ``x_k = where(m_k, x, b)`` with ``m_k`` as in
    :func:`deletion_curve`; the default baseline is a blurred copy of ``x``, as in the paper (pixels
    revealed into a blank image form edges a CNN reacts to). Higher AUC = more faithful.
    """
    return _curve("insertion", model, x, saliency, target, step, baseline, absolute, score, batch_size, blur_sigma,
                  seed)


def _curve(kind: CurveKind, model: Any, x: Any, saliency: Any, target: Any, step: Any, baseline: Any,
           absolute: bool | None, score: Any, batch_size: int | None, blur_sigma: float | None,
           seed: int | None) -> PerturbationCurve:
    backend = as_backend(model)
    x = as_float_batch(x)
    step = _check_step(step)
    score = check_choice(score, "score", SCORES)
    rank = unit_ranks(saliency, x, absolute)
    base = perturbation_baseline(baseline, x, blur_sigma=blur_sigma, seed=seed).astype(x.dtype)
    rows = resolve_batch_size(batch_size, x[0].nbytes)
    cotangent = target_cotangent(backend, x, target, rows)
    counts = _step_counts(step, rank.shape[1])
    scores = _perturbed_scores(backend, x, base, rank, counts, cotangent, rows, kind, score)
    fractions = counts / rank.shape[1]
    auc = np.trapezoid(scores, fractions, axis=1)
    return PerturbationCurve(kind, fractions, scores, auc, _baseline_name(baseline), score)


def _check_step(step: Any) -> float:
    if isinstance(step, bool) or not isinstance(step, numbers.Real):
        raise InputTypeError(f"step must be a fraction in (0, 1], got {step!r}: e.g. step=0.05 for 5% per step.")
    if not 0 < float(step) <= 1:
        raise InputError(f"step={step} is not a fraction in (0, 1]: pass e.g. step=0.05 (5% of the pixels per step).")
    return float(step)


def _step_counts(step: float, n_units: int) -> np.ndarray:
    n_steps = int(np.ceil(1 / step - 1e-9))
    fractions = np.minimum(np.arange(n_steps + 1) * step, 1.0)
    return np.unique(np.rint(fractions * n_units).astype(np.intp))


def unit_ranks(saliency: Any, x: np.ndarray, absolute: bool | None = None) -> np.ndarray:
    """Per sample, each unit's position in the saliency order ``(N, P)``: 0 = the most salient unit.

    ``saliency`` is a map shaped like the units (``(N, *spatial)`` for ``(N, C, *spatial)`` input) or an
    array shaped like ``x``; ``absolute`` None ranks a map by its values and x-shaped attributions by
    ``|a|`` (max over channels). Ties keep index order (a stable sort), so the ranking is deterministic.
    """
    values = _unit_values(saliency, x, absolute)
    order = np.argsort(-values, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(values.shape[1])[None].repeat(len(values), axis=0), axis=1)
    return rank


def unit_shape(x: np.ndarray) -> tuple[int, ...]:
    """The shape of a batch's maps: ``(N, *spatial)`` for ``x`` shaped ``(N, C, *spatial)``, else ``x``'s own."""
    return (len(x), *x.shape[2:]) if x.ndim >= 3 else x.shape


def _unit_values(saliency: Any, x: np.ndarray, absolute: bool | None) -> np.ndarray:
    array = np.asarray(saliency)
    if array.dtype.kind not in "fiu":
        raise InputTypeError(f"The saliency map has dtype {array.dtype}: pass a real-valued map such as "
                             "to_saliency_map(attributions) or a method's output.")
    units = unit_shape(x)
    if array.shape not in (units, x.shape):
        raise InputError(f"The saliency map has shape {array.shape}, but x is {x.shape}: pass a map shaped "
                         f"{units} (one value per pixel, e.g. to_saliency_map(attr)) or attributions shaped "
                         f"like x {x.shape}.")
    check_finite_map(array, "The saliency map")
    values = array.astype(np.float64)
    raw = array.shape == x.shape
    if absolute if absolute is not None else raw:
        values = np.abs(values)
    if raw and x.ndim >= 3:
        values = values.max(axis=1)
    return values.reshape(len(x), -1)


def check_finite_map(array: np.ndarray, name: str) -> None:
    """Raise ``InputError`` when a map (attributions, saliency) holds NaN or infinity."""
    bad = ~np.isfinite(array)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{name} contains {int(bad.sum())} NaN or infinite value(s), the first at {where}: pass "
                         "finite values (check the model's gradients with gradsal.core.check_gradients).")


def perturbation_baseline(baseline: Any, x: np.ndarray, *, blur_sigma: float | None = None,
                          seed: int | None = None) -> np.ndarray:
    """The replacement values for :func:`deletion_curve` / :func:`insertion_curve`, float64 shaped like ``x``."""
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise InputError(f"baseline={baseline!r} is not supported: use one of "
                             f"{', '.join(repr(b) for b in BASELINES)}, a number or an array broadcastable to x.")
        if baseline == "zero":
            return np.zeros(x.shape)
        if baseline == "mean":
            return _mean_baseline(x)
    return make_baseline(baseline, x, seed=seed, blur_sigma=blur_sigma)


def _mean_baseline(x: np.ndarray) -> np.ndarray:
    if x.ndim >= 3:
        axes = tuple(range(2, x.ndim))
        return np.broadcast_to(x.mean(axis=axes, keepdims=True, dtype=np.float64), x.shape).copy()
    if len(x) < 2:
        raise InputError("baseline='mean' for tabular input (N, F) is the batch's mean of each feature, which needs "
                         "N >= 2: pass baseline=feature_means (e.g. of the training set) instead.")
    return np.broadcast_to(x.mean(axis=0, keepdims=True, dtype=np.float64), x.shape).copy()


def _baseline_name(baseline: Any) -> str:
    if isinstance(baseline, str):
        return baseline
    if isinstance(baseline, numbers.Real):
        return f"constant {float(baseline):g}"
    return "array"


def _perturbed_scores(backend: GradientBackend, x: np.ndarray, base: np.ndarray, rank: np.ndarray,
                      counts: np.ndarray, cotangent: np.ndarray, batch_size: int, kind: CurveKind,
                      score: str) -> np.ndarray:
    """``<f(x_k), v>`` for every step ``k`` (copy-major stacked rows) and every sample, ``(N, K)`` float64."""
    n = len(x)
    mask_shape = (-1, 1, *x.shape[2:]) if x.ndim >= 3 else (-1, x.shape[1])
    scores = np.empty((n, len(counts)))
    for segments in stacked_chunks(n, len(counts), batch_size):
        parts = []
        for s in segments:
            chosen = (rank[s.start:s.stop] < counts[s.copy]).reshape(mask_shape)
            inside, outside = (base, x) if kind == "deletion" else (x, base)
            parts.append(np.where(chosen, inside[s.start:s.stop], outside[s.start:s.stop]))
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
        outputs = check_outputs(call_backend(backend, "forward", batch), len(batch), backend).astype(np.float64)
        if score == "probability":
            outputs = _softmax(outputs)
        offset = 0
        for s in segments:
            part = outputs[offset:offset + s.rows] * cotangent[s.start:s.stop]
            scores[s.start:s.stop, s.copy] = part.reshape(s.rows, -1).sum(axis=1)
            offset += s.rows
    return scores


def _softmax(outputs: np.ndarray) -> np.ndarray:
    if outputs.ndim < 2 or outputs.shape[1] < 2:
        raise InputError(f"score='probability' needs class scores (N, C, ...) with C >= 2 on axis 1, but the model "
                         f"returns {outputs.shape}: use score='explained'.")
    shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------ plotting
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
_PANEL = (360, 260)
_MARGIN = (56, 28, 16, 40)  # left, top, right, bottom


def plot_curves(results: Any, path: str | Path) -> Path:
    """Draw deletion and insertion curves (mean over samples) into a PNG at ``path``; returns the path.

    ``results``: a :class:`PerturbationCurve`; a sequence of them; a mapping ``{label: curve}`` or
    ``{label: (deletion, insertion)}``; or anything with a ``curves()`` method returning such a mapping
    (:class:`~gradsal.core.sanity.MethodComparison`). Deletion curves go in the left panel, insertion
    curves in the right, one colour per label, the AUC in the legend. Needs pillow (the ``viz`` extra).
    """
    from .visualize import _font, _pil

    image_module, draw_module, _ = _pil()
    panels = _group_curves(results)
    kinds = [k for k in ("deletion", "insertion") if panels[k]]
    width, height = _PANEL[0] * len(kinds), _PANEL[1] + 18 * max(len(panels[k]) for k in kinds)
    canvas = image_module.new("RGB", (width, height), "white")
    draw = draw_module.Draw(canvas)
    font = _font(11)
    for index, kind in enumerate(kinds):
        _draw_panel(draw, font, panels[kind], kind, index * _PANEL[0])
    target = Path(path)
    try:
        canvas.save(target, format="PNG")
    except OSError as exc:
        raise InputError(f"Could not write the plot to {str(target)!r} ({exc}): pass a writable path.") from exc
    return target


def _group_curves(results: Any) -> dict[str, list[tuple[str, PerturbationCurve]]]:
    if hasattr(results, "curves") and callable(results.curves):
        results = results.curves()
    if isinstance(results, PerturbationCurve):
        items: list[tuple[str, Any]] = [(results.kind, results)]
    elif isinstance(results, Mapping):
        items = [(str(label), value) for label, value in results.items()]
    elif isinstance(results, Sequence) and not isinstance(results, (str, bytes)):
        items = [(f"{i}", value) for i, value in enumerate(results)]
    else:
        raise InputTypeError(f"plot_curves needs PerturbationCurve objects, got {type(results).__name__}: pass a "
                             "curve, a list of curves, a dict {label: curve} or compare_methods(...)'s result.")
    panels: dict[str, list[tuple[str, PerturbationCurve]]] = {"deletion": [], "insertion": []}
    for label, value in items:
        for curve in value if isinstance(value, (tuple, list)) else [value]:
            if not isinstance(curve, PerturbationCurve):
                raise InputTypeError(f"plot_curves: {label!r} holds a {type(curve).__name__}, not a PerturbationCurve "
                                     "(from deletion_curve or insertion_curve).")
            panels[curve.kind].append((label, curve))
    if not panels["deletion"] and not panels["insertion"]:
        raise InputError("plot_curves got no curves to draw: pass at least one deletion or insertion curve.")
    return panels


def _draw_panel(draw: Any, font: Any, curves: list[tuple[str, PerturbationCurve]], kind: str, left: int) -> None:
    m_left, m_top, m_right, m_bottom = _MARGIN
    box = (left + m_left, m_top, left + _PANEL[0] - m_right, _PANEL[1] - m_bottom)
    means = [c.mean_scores() for _, c in curves]
    low = min(float(m.min()) for m in means)
    high = max(float(m.max()) for m in means)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    pad = 0.05 * (high - low)
    low, high = low - pad, high + pad
    draw.rectangle(box, outline="black")
    draw.text((left + m_left, 6), f"{kind} (mean over samples)", fill="black", font=font)
    for value in (low + pad, high - pad):
        y = _to_pixel(value, low, high, box[3], box[1])
        draw.line((box[0] - 4, y, box[0], y), fill="black")
        draw.text((left + 4, y - 6), f"{value:.3g}", fill="black", font=font)
    for fraction in (0.0, 0.5, 1.0):
        x = _to_pixel(fraction, 0.0, 1.0, box[0], box[2])
        draw.line((x, box[3], x, box[3] + 4), fill="black")
        draw.text((x - 8, box[3] + 6), f"{fraction:g}", fill="black", font=font)
    draw.text(((box[0] + box[2]) // 2 - 40, box[3] + 20), "fraction of pixels", fill="black", font=font)
    for index, ((label, curve), mean) in enumerate(zip(curves, means, strict=True)):
        colour = _PALETTE[index % len(_PALETTE)]
        points = [(_to_pixel(f, 0.0, 1.0, box[0], box[2]), _to_pixel(s, low, high, box[3], box[1]))
                  for f, s in zip(curve.fractions, mean, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        legend_y = _PANEL[1] + 18 * index
        draw.line((left + m_left, legend_y + 6, left + m_left + 20, legend_y + 6), fill=colour, width=3)
        draw.text((left + m_left + 26, legend_y), f"{label}: AUC {curve.mean_auc:.4g}", fill="black", font=font)


def _to_pixel(value: float, low: float, high: float, start: int, stop: int) -> float:
    return start + (float(value) - low) / (high - low) * (stop - start)
