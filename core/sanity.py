"""Sanity checks for saliency maps, built on the backend protocol only (so they work for every backend).

- :func:`model_randomization_test` (Adebayo et al. 2018): an explanation of a model should change when
  the model's parameters are re-initialised; one that survives is flagged. Needs
  :class:`~gradsal.core.SupportsRandomization`.
- :func:`input_invariance` (Kindermans et al. 2017): on ``f'(x) = f(x - c)`` at ``x + c``, a model that
  computes exactly what ``f`` computes at ``x``, an explanation should not change. The vanilla gradient
  is invariant; gradient x input is not (it gains ``c * grad``); Integrated Gradients with a fixed zero
  baseline is not, with the baseline shifted by ``c`` as well it is.
- :func:`completeness`: Integrated Gradients' attributions should add up to ``S(x) - S(baseline)``.
- :func:`compare_methods`: one table of time, deletion / insertion AUC (:mod:`gradsal.core.faithfulness`)
  and randomisation correlation per method.

Similarity of maps: :func:`spearman_correlation` (rank correlation with average ranks for ties) and
:func:`ssim` (Wang et al. 2004), both in NumPy.

A ``method`` is a name (``"vanilla_gradient"``, ``"gradient_x_input"``, ``"smoothgrad"``,
``"integrated_gradients"``, ``"guided_backprop"``, ``"deconvnet"``, ``"grad_cam"``) or a callable
``method(backend, x, target, **method_kwargs) -> attributions`` (shaped like ``x``, or a per-pixel map
``(N, *spatial)``). The target is resolved once, on the original model and input, and passed to every
call as the cotangent array, so all runs explain the same output.
"""

from __future__ import annotations

import functools
import numbers
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from . import attribution
from ._validate import as_float_batch, call_backend, check_finite
from .batching import resolve_batch_size
from .errors import InputError, InputTypeError, MissingCapabilityError
from .faithfulness import PerturbationCurve, check_finite_map, deletion_curve, insertion_curve
from .protocol import GradientBackend, SupportsLayers, SupportsRandomization, SupportsReluRule
from .registry import as_backend
from .targets import target_cotangent

RandomizationMode = Literal["cascading", "independent"]
Window = Literal["gaussian", "uniform"]
Method = str | Callable[..., Any]
METHOD_NAMES = ("vanilla_gradient", "gradient_x_input", "smoothgrad", "integrated_gradients", "guided_backprop",
                "deconvnet", "grad_cam")
DEFAULT_METHODS = ("vanilla_gradient", "gradient_x_input", "smoothgrad", "integrated_gradients")
_SEEDED = ("smoothgrad", "integrated_gradients")


# ------------------------------------------------------------------------------------------ similarity
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
    return float(_ssim_batch(first[None], second[None], window, window_size, sigma, data_range)[0])


def _ssim_batch(a: np.ndarray, b: np.ndarray, window: str, window_size: int, sigma: float,
                data_range: float) -> np.ndarray:
    """SSIM per sample of two batches ``(N, ...)`` (axes 1.. are the map's axes)."""
    if window not in ("gaussian", "uniform"):
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
    unit_shape = (len(x), *x.shape[2:]) if x.ndim >= 3 else x.shape
    if array.shape not in (x.shape, unit_shape) or array.dtype.kind not in "fiu":
        raise InputError(f"The explanation has shape {array.shape} / dtype {array.dtype}, but x is {x.shape}: a "
                         f"method must return real attributions shaped like x or a map shaped {unit_shape}.")
    check_finite_map(array, "The explanation")
    magnitude = np.abs(array.astype(np.float64))
    return magnitude.max(axis=1) if array.shape == x.shape and x.ndim >= 3 else magnitude


def _minmax(maps: np.ndarray) -> np.ndarray:
    flat = maps.reshape(len(maps), -1)
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    scaled = np.divide(flat - low, span, out=np.zeros_like(flat), where=span > 0)
    return scaled.reshape(maps.shape)


# ------------------------------------------------------------------------------------------ methods
def resolve_method(method: Method) -> tuple[str, Callable[..., np.ndarray]]:
    """A method's label and callable ``(backend, x, target, **kwargs) -> attributions`` from a name or callable."""
    if isinstance(method, str):
        if method not in METHOD_NAMES:
            raise InputError(f"Unknown method {method!r}: use one of {', '.join(METHOD_NAMES)}, or pass a callable "
                             "method(backend, x, target, **kwargs) returning attributions.")
        return method, getattr(attribution, method)
    if callable(method):
        return getattr(method, "__name__", type(method).__name__), method
    raise InputTypeError(f"method must be a method name or a callable, got {type(method).__name__}: e.g. "
                         "'vanilla_gradient', or lambda backend, x, target: my_attributions.")


def _method_kwargs(method: Method, kwargs: Mapping[str, Any] | None, batch_size: int | None) -> dict:
    options = dict(kwargs or {})
    if isinstance(method, str):
        options.setdefault("batch_size", batch_size)
        if method in _SEEDED:
            options.setdefault("seed", 0)  # the same noise for every run compared
    return options


def _explain(function: Callable[..., Any], backend: Any, x: np.ndarray, cotangent: np.ndarray,
             options: dict) -> np.ndarray:
    """``function(backend, x, cotangent, **options)`` as an array."""
    result = function(backend, x, cotangent, **options)
    return np.asarray(result)


def _check_layers(layers: Any) -> list[str]:
    names = [layers] if isinstance(layers, str) else layers
    if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) for n in names):
        raise InputError(f"layers must be a non-empty list of layer names (top to bottom for cascading), got "
                         f"{layers!r}: e.g. layers=['classifier', 'block3.0', 'block2.0'].")
    return list(names)


# ------------------------------------------------------------------------------------------ randomisation
@dataclass(frozen=True)
class RandomizationStep:
    """One randomised model: which layers were re-initialised, and how similar its map is to the original.

    ``spearman`` and ``ssim`` are per sample ``(N,)``; ``map`` is the randomised model's ``|map|``,
    min-max normalised per sample.
    """

    layer: str
    randomized_layers: tuple[str, ...]
    spearman: np.ndarray
    ssim: np.ndarray
    map: np.ndarray = field(repr=False)

    @property
    def mean_spearman(self) -> float:
        return float(np.nanmean(self.spearman)) if np.isfinite(self.spearman).any() else float("nan")

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim))


@dataclass(frozen=True)
class RandomizationResult:
    """The outcome of :func:`model_randomization_test`.

    ``summary_spearman`` is the statistic compared with ``threshold``: the mean Spearman correlation at the
    last cascading step (every listed layer randomised), or in independent mode the smallest mean over
    the layers (the map survives every single randomisation). ``flagged`` is True when it exceeds the
    threshold: the explanation does not depend on the model's parameters.
    """

    method: str
    mode: RandomizationMode
    threshold: float
    original_map: np.ndarray = field(repr=False)
    steps: tuple[RandomizationStep, ...]
    summary_spearman: float
    flagged: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain Python values, e.g. for JSON."""
        return {"method": self.method, "mode": self.mode, "threshold": self.threshold,
                "summary_spearman": self.summary_spearman, "flagged": self.flagged,
                "steps": [{"layer": s.layer, "randomized_layers": list(s.randomized_layers),
                           "mean_spearman": s.mean_spearman, "mean_ssim": s.mean_ssim,
                           "spearman": s.spearman.tolist(), "ssim": s.ssim.tolist()} for s in self.steps]}

    def to_text(self) -> str:
        """A small table: one line per randomised layer, then the verdict."""
        lines = [f"Model randomisation test ({self.mode}) of {self.method}",
                 f"{'layer':<30} {'Spearman':>9} {'SSIM':>7}"]
        lines += [f"{s.layer:<30} {s.mean_spearman:>9.4f} {s.mean_ssim:>7.4f}" for s in self.steps]
        verdict = "FLAGGED: the map survives randomisation" if self.flagged else "passed: the map changes"
        lines.append(f"{verdict} (Spearman {self.summary_spearman:.4f} vs threshold {self.threshold:g})")
        return "\n".join(lines)


def model_randomization_test(
    model: Any,
    x: np.ndarray,
    method: Method = "vanilla_gradient",
    target: Any = None,
    *,
    layers: Sequence[str] | str,
    mode: RandomizationMode = "cascading",
    seed: int = 0,
    threshold: float = 0.5,
    method_kwargs: Mapping[str, Any] | None = None,
    window: Window = "gaussian",
    batch_size: int | None = None,
) -> RandomizationResult:
    """Model parameter randomisation test: compare the map of the trained model with randomised models' maps.

    Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim (2018), "Sanity Checks for Saliency Maps".
    ``mode="cascading"``: ``layers`` (names as the backend knows them, listed from the output towards the
    input) are re-initialised cumulatively, step ``k`` randomising ``layers[:k+1]``; ``"independent"``:
    one layer at a time. Each map ``m = max_c |attributions|`` is compared with the original by Spearman's
    rank correlation and by SSIM (``window``, on min-max normalised maps), per sample. The explanation
    is flagged when the map survives randomisation (see :class:`RandomizationResult`); an explanation
    that ignores the model, such as an edge detector applied to the input, always is. Needs a backend
    with ``randomized(layers, seed)`` (:class:`~gradsal.core.SupportsRandomization`).
    """
    backend = as_backend(model)
    _require_randomization(backend)
    x = as_float_batch(x)
    names = _check_layers(layers)
    if mode not in ("cascading", "independent"):
        raise InputError(f"mode={mode!r} is not supported: use 'cascading' or 'independent'.")
    if window not in ("gaussian", "uniform"):
        raise InputError(f"window={window!r} is not supported: use 'gaussian' or 'uniform'.")
    threshold = _check_threshold(threshold)
    label, function = resolve_method(method)
    options = _method_kwargs(method, method_kwargs, batch_size)
    cotangent = target_cotangent(backend, x, target, resolve_batch_size(batch_size, x[0].nbytes))
    original = explanation_map(_explain(function, backend, x, cotangent, options), x)
    explain = functools.partial(_explain, function, x=x, cotangent=cotangent, options=options)
    steps = _randomized_steps(backend, explain, x, original, names, mode, seed, window)
    return _randomization_result(label, mode, threshold, original, steps)


def _randomized_steps(backend: Any, explain: Callable[..., np.ndarray], x: np.ndarray, original: np.ndarray,
                      names: list[str], mode: str, seed: int, window: str) -> list[RandomizationStep]:
    steps = []
    for index, layer in enumerate(names):
        chosen = tuple(names[:index + 1]) if mode == "cascading" else (layer,)
        randomized = call_backend(backend, "randomized", list(chosen), int(seed))
        steps.append(_compare_maps(layer, chosen, original, explanation_map(explain(randomized), x), window))
    return steps


def _require_randomization(backend: Any) -> None:
    if not isinstance(backend, SupportsRandomization):
        raise MissingCapabilityError(
            f"model_randomization_test needs a backend with the SupportsRandomization capability "
            f"(randomized(layers, seed)), and {type(backend).__name__} does not have it. Backends that have it: "
            "TorchBackend (gradsal.backends.torch) and OnnxBackend (gradsal.backends.onnx); or implement "
            "randomized(layers, seed) on your backend, returning a copy with those layers re-initialised."
        )


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not -1 <= threshold <= 1:
        raise InputError(f"threshold must be a correlation in [-1, 1], got {threshold!r}: e.g. 0.5.")
    return float(threshold)


def _compare_maps(layer: str, chosen: tuple[str, ...], original: np.ndarray, new_map: np.ndarray,
                  window: str) -> RandomizationStep:
    spearman = np.array([_pearson(rank_average(a), rank_average(b)) for a, b in zip(original, new_map, strict=True)])
    normal_original, normal_new = _minmax(original), _minmax(new_map)
    similarity = _ssim_batch(normal_original, normal_new, window, 11, 1.5, 1.0)
    return RandomizationStep(layer, chosen, spearman, similarity, normal_new)


def _randomization_result(label: str, mode: RandomizationMode, threshold: float, original: np.ndarray,
                          steps: list[RandomizationStep]) -> RandomizationResult:
    means = [s.mean_spearman for s in steps]
    if not all(np.isfinite(means)):
        warnings.warn("Some maps are constant (e.g. all-zero gradients), so their rank correlation is undefined "
                      "(NaN); such steps are not counted as surviving randomisation.", RuntimeWarning, stacklevel=3)
    summary = means[-1] if mode == "cascading" else float(np.min(means))  # NaN stays NaN: never flagged
    flagged = bool(np.isfinite(summary) and summary > threshold)
    return RandomizationResult(label, mode, threshold, _minmax(original), tuple(steps), float(summary), flagged)


# ------------------------------------------------------------------------------------------ input invariance
class _ShiftedBackend:
    """``f'(x) = f(x - shift)``: the wrapped model behind a first layer that undoes a constant input shift."""

    def __init__(self, backend: GradientBackend, shift: np.ndarray) -> None:
        self.backend = backend
        self.shift = shift

    def _unshift(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.shift).astype(np.asarray(x).dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return call_backend(self.backend, "forward", self._unshift(x))

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return call_backend(self.backend, "vjp", self._unshift(x), cotangent)


class _ShiftedLayers(_ShiftedBackend):
    def layer_vjp(self, x: np.ndarray, layer: str, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return call_backend(self.backend, "layer_vjp", self._unshift(x), layer, cotangent)


class _ShiftedRelu(_ShiftedBackend):
    def with_relu_rule(self, rule: str) -> GradientBackend:
        return shifted_backend(call_backend(self.backend, "with_relu_rule", rule), self.shift)


class _ShiftedLayersRelu(_ShiftedLayers, _ShiftedRelu):
    pass


def shifted_backend(backend: Any, shift: Any) -> GradientBackend:
    """A backend computing ``f(x - shift)`` (Kindermans et al. 2017), keeping the layer and ReLU-rule capabilities."""
    backend = as_backend(backend)
    layers, relu = isinstance(backend, SupportsLayers), isinstance(backend, SupportsReluRule)
    kind = {(False, False): _ShiftedBackend, (True, False): _ShiftedLayers, (False, True): _ShiftedRelu,
            (True, True): _ShiftedLayersRelu}[(layers, relu)]
    return kind(backend, np.asarray(shift, dtype=np.float64))


@dataclass(frozen=True)
class InvarianceResult:
    """The outcome of :func:`input_invariance`: how much the explanation moved under the input shift.

    ``per_sample`` ``(N,)`` and ``max_abs_difference``: ``max |A'(x + c) - A(x)|``; ``scale``: ``max |A(x)|``;
    ``invariant``: ``max_abs_difference <= atol + rtol * scale``.
    """

    method: str
    max_abs_difference: float
    per_sample: np.ndarray
    scale: float
    invariant: bool
    rtol: float
    atol: float

    @property
    def relative_difference(self) -> float:
        if self.scale > 0:
            return self.max_abs_difference / self.scale
        return 0.0 if self.max_abs_difference == 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "max_abs_difference": self.max_abs_difference, "scale": self.scale,
                "relative_difference": self.relative_difference, "invariant": self.invariant,
                "per_sample": self.per_sample.tolist(), "rtol": self.rtol, "atol": self.atol}


def input_invariance(
    model: Any,
    x: np.ndarray,
    method: Method = "vanilla_gradient",
    target: Any = None,
    *,
    shift: float | np.ndarray = 1.0,
    method_kwargs: Mapping[str, Any] | None = None,
    shifted_method_kwargs: Mapping[str, Any] | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-7,
    batch_size: int | None = None,
) -> InvarianceResult:
    """Input invariance (Kindermans et al. 2017, "The (Un)reliability of Saliency Methods").

    Explains ``f`` at ``x`` and ``f'(x) = f(x - c)`` at ``x + c`` (``c = shift``, a number or an array
    broadcastable to one sample, e.g. a per-channel ``(C, 1, 1)``): both models compute the same outputs
    and have the same gradients, so a reliable method gives the same attributions. Invariant: the vanilla
    gradient, guided backprop, Grad-CAM, and SmoothGrad for a scalar shift (its noise scale is each sample's
    value range, which a per-channel shift can change); not invariant: gradient x input
    (``(x + c) * g``), Integrated Gradients with a fixed baseline such as zero. IG is invariant when its
    baseline moves with the input: pass ``shifted_method_kwargs={"baseline": baseline + c}``
    (``shifted_method_kwargs`` defaults to ``method_kwargs``). ``x + c`` is formed in float64 and the
    shifted model subtracts ``c`` in float64, so a float32 model sees exactly ``x`` again: rounding of the
    shift cannot move a ReLU or a max-pooling choice and pass for a lack of invariance.
    """
    backend = as_backend(model)
    x = as_float_batch(x)
    c = _check_shift(shift, x)
    label, function = resolve_method(method)
    options = _method_kwargs(method, method_kwargs, batch_size)
    shifted_options = options if shifted_method_kwargs is None else _method_kwargs(
        method, shifted_method_kwargs, batch_size)
    cotangent = target_cotangent(backend, x, target, resolve_batch_size(batch_size, x[0].nbytes))
    before = _explain(function, backend, x, cotangent, options).astype(np.float64)
    moved = x.astype(np.float64) + c  # float64, so that f'(x + c) = f(x) sees exactly x, whatever x's dtype
    after = _explain(function, shifted_backend(backend, c), moved, cotangent, shifted_options).astype(np.float64)
    per_sample = np.abs(after - before).reshape(len(x), -1).max(axis=1)
    difference, scale = float(per_sample.max()), float(np.abs(before).max())
    return InvarianceResult(label, difference, per_sample, scale, difference <= atol + rtol * scale, rtol, atol)


def _check_shift(shift: Any, x: np.ndarray) -> np.ndarray:
    array = np.asarray(shift)
    if array.dtype.kind not in "fiu":
        raise InputTypeError(f"shift must be a number or a real array, got {type(shift).__name__}.")
    try:
        np.broadcast_shapes(array.shape, x.shape[1:])
    except ValueError:
        raise InputError(f"shift has shape {array.shape}, which does not broadcast to one sample {x.shape[1:]}: pass "
                         f"a number, an array shaped {x.shape[1:]}, or per channel e.g. "
                         f"{(x.shape[1], *([1] * (x.ndim - 2)))}.") from None
    check_finite(array, "shift")
    return array.astype(np.float64)


# ------------------------------------------------------------------------------------------ completeness
@dataclass(frozen=True)
class CompletenessResult:
    """Integrated Gradients' completeness per sample: ``sum(attr_i)`` against ``S(x_i) - S(b_i)``.

    ``delta = attribution_sum - output_gain``; ``relative_gap = |delta| / |output_gain|``; ``passed`` when
    every ``|delta| <= atol + rtol * |output_gain|``.
    """

    delta: np.ndarray
    attribution_sum: np.ndarray
    output_gain: np.ndarray
    passed: bool
    rtol: float
    atol: float

    @property
    def relative_gap(self) -> np.ndarray:
        gain = np.abs(self.output_gain)
        return np.divide(np.abs(self.delta), gain, out=np.full(gain.shape, np.inf), where=gain > 0)

    def as_dict(self) -> dict[str, Any]:
        return {"delta": self.delta.tolist(), "attribution_sum": self.attribution_sum.tolist(),
                "output_gain": self.output_gain.tolist(), "relative_gap": self.relative_gap.tolist(),
                "passed": self.passed, "rtol": self.rtol, "atol": self.atol}


def completeness(model: Any, x: np.ndarray, target: Any = None, *, rtol: float = 1e-2, atol: float = 1e-6,
                 **ig_kwargs: Any) -> CompletenessResult:
    """Completeness of Integrated Gradients (Sundararajan et al. 2017): ``sum(attr) = S(x) - S(baseline)``.

    Runs :func:`~gradsal.core.integrated_gradients` with ``return_delta=True`` (``ig_kwargs``: baseline,
    n_steps, method, batch_size, ...). A large gap means too few steps for the model's curvature (raise
    ``n_steps``) or a gradient that is wrong somewhere (run :func:`~gradsal.core.check_gradients`).
    """
    if "return_delta" in ig_kwargs:
        raise InputError("completeness sets return_delta itself: drop return_delta from the arguments.")
    attributions, delta = attribution.integrated_gradients(model, x, target, return_delta=True, **ig_kwargs)
    total = attributions.reshape(len(attributions), -1).sum(axis=1, dtype=np.float64)
    delta = np.asarray(delta, dtype=np.float64)
    gain = total - delta
    passed = bool(np.all(np.abs(delta) <= atol + rtol * np.abs(gain)))
    return CompletenessResult(delta, total, gain, passed, float(rtol), float(atol))


# ------------------------------------------------------------------------------------------ comparison
@dataclass(frozen=True)
class MethodScores:
    """One method's row of :class:`MethodComparison`."""

    method: str
    seconds: float
    deletion: PerturbationCurve
    insertion: PerturbationCurve
    randomization: RandomizationResult | None = None

    def as_dict(self) -> dict[str, Any]:
        rand = self.randomization
        return {"method": self.method, "time_s": self.seconds, "deletion_auc": self.deletion.mean_auc,
                "insertion_auc": self.insertion.mean_auc,
                "randomization_spearman": None if rand is None else rand.summary_spearman,
                "randomization_flagged": None if rand is None else rand.flagged}


@dataclass(frozen=True)
class MethodComparison:
    """The table of :func:`compare_methods`: ``rows`` per method, and ``notes`` (e.g. a skipped check)."""

    rows: tuple[MethodScores, ...]
    step: float
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain Python values (per method: time_s, deletion_auc, insertion_auc, randomization_spearman)."""
        return {"step": self.step, "methods": [row.as_dict() for row in self.rows], "notes": list(self.notes)}

    def curves(self) -> dict[str, tuple[PerturbationCurve, PerturbationCurve]]:
        """``{method: (deletion, insertion)}``, as :func:`~gradsal.core.faithfulness.plot_curves` takes it."""
        return {row.method: (row.deletion, row.insertion) for row in self.rows}

    def to_text(self) -> str:
        """The table as fixed-width text."""
        header = ("method", "time (s)", "deletion AUC (lower better)", "insertion AUC (higher better)",
                  "randomisation Spearman")
        body = [(row.method, f"{row.seconds:.3f}", f"{row.deletion.mean_auc:.4g}", f"{row.insertion.mean_auc:.4g}",
                 _randomization_cell(row.randomization)) for row in self.rows]
        widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                           enumerate(zip(line, widths, strict=True))) for line in (header, *body)]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def _randomization_cell(result: RandomizationResult | None) -> str:
    if result is None:
        return "-"
    return f"{result.summary_spearman:.3f}" + (" FLAGGED" if result.flagged else "")


def compare_methods(
    model: Any,
    x: np.ndarray,
    target: Any = None,
    *,
    methods: Sequence[Method] | Mapping[str, Method] = DEFAULT_METHODS,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    step: float = 0.05,
    deletion_baseline: Any = "zero",
    insertion_baseline: Any = "blur",
    layers: Sequence[str] | None = None,
    randomization: RandomizationMode = "cascading",
    threshold: float = 0.5,
    seed: int = 0,
    random_reference: bool = True,
    score: Literal["explained", "probability"] = "explained",
    batch_size: int | None = None,
) -> MethodComparison:
    """Time, deletion AUC, insertion AUC and (optionally) randomisation correlation of several methods.

    ``methods``: names or callables (labelled by name), or a mapping ``{label: method}``; ``method_kwargs``
    ``{label: {...}}`` per method. Each map is ``max_c |attributions|``; the curves use ``step``,
    ``deletion_baseline``, ``insertion_baseline`` and ``score`` (see :func:`~gradsal.core.deletion_curve`). When
    ``layers`` are given and the backend supports randomisation, :func:`model_randomization_test`
    (``randomization`` mode) adds its summary Spearman correlation (lower is better); otherwise a note
    says why the column is empty. ``random_reference`` adds a row ranking the pixels at random (seeded),
    the level a useful map must beat. The target is resolved once, on the original model.
    """
    backend = as_backend(model)
    x = as_float_batch(x)
    cotangent = target_cotangent(backend, x, target, resolve_batch_size(batch_size, x[0].nbytes))
    labelled = _labelled_methods(methods)
    randomize = layers is not None and isinstance(backend, SupportsRandomization)
    notes = [] if layers is None or randomize else [
        f"randomisation skipped: {type(backend).__name__} lacks randomized(layers, seed)"]
    names = _check_layers(layers) if randomize else []
    threshold = _check_threshold(threshold)
    if randomization not in ("cascading", "independent"):
        raise InputError(f"randomization={randomization!r} is not supported: use 'cascading' or 'independent'.")
    curves = functools.partial(_curves, backend, x, cotangent, deletion_baseline, insertion_baseline,
                               {"step": step, "batch_size": batch_size, "seed": seed, "score": score})
    results = []
    for label, method in labelled:
        name, function = resolve_method(method)
        options = _method_kwargs(method, (method_kwargs or {}).get(label), batch_size)
        start = time.perf_counter()
        unit_map = explanation_map(_explain(function, backend, x, cotangent, options), x)
        seconds = time.perf_counter() - start
        rand = None
        if randomize:
            explain = functools.partial(_explain, function, x=x, cotangent=cotangent, options=options)
            steps = _randomized_steps(backend, explain, x, unit_map, names, randomization, seed, "gaussian")
            rand = _randomization_result(name, randomization, threshold, unit_map, steps)
        results.append(MethodScores(label, seconds, *curves(unit_map), rand))
    if random_reference:
        unit_shape = (len(x), *x.shape[2:]) if x.ndim >= 3 else x.shape
        results.append(MethodScores("random ranking", 0.0, *curves(np.random.default_rng(seed).random(unit_shape))))
    return MethodComparison(tuple(results), float(step), tuple(notes))


def _curves(backend: Any, x: np.ndarray, cotangent: np.ndarray, deletion_baseline: Any, insertion_baseline: Any,
            options: dict, unit_map: np.ndarray) -> tuple[PerturbationCurve, PerturbationCurve]:
    deletion = deletion_curve(backend, x, unit_map, cotangent, baseline=deletion_baseline, **options)
    insertion = insertion_curve(backend, x, unit_map, cotangent, baseline=insertion_baseline, **options)
    return deletion, insertion


def _labelled_methods(methods: Any) -> list[tuple[str, Method]]:
    if isinstance(methods, Mapping):
        pairs = [(str(label), method) for label, method in methods.items()]
    elif isinstance(methods, (str, bytes)) or callable(methods):
        pairs = [(resolve_method(methods)[0], methods)]
    elif isinstance(methods, Sequence) and methods:
        pairs = [(resolve_method(method)[0], method) for method in methods]
    else:
        raise InputError(f"methods must be a non-empty list of method names or callables, or a dict {{label: "
                         f"method}}, got {methods!r}: e.g. methods=['vanilla_gradient', 'integrated_gradients'].")
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise InputError(f"methods have repeated labels {labels}: pass a dict {{label: method}} to name them apart.")
    return pairs
