"""The model parameter randomisation test (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim 2018, "Sanity
Checks for Saliency Maps"): an explanation of a model should change when the model's parameters are
re-initialised; one that survives is flagged.

Each map ``m = max_c |attributions|`` of a randomised model is compared with the trained model's map by
Spearman's rank correlation and by SSIM on min-max normalised maps (:mod:`gradsal.core.similarity`), per
sample. Needs a backend with ``randomized(layers, seed)`` (:class:`~gradsal.core.SupportsRandomization`).
"""

from __future__ import annotations

import functools
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ._validate import as_float_batch, call_backend
from .batching import resolve_batch_size
from .errors import InputError, MissingCapabilityError
from .methods import Method, method_options, resolve_method, run_method
from .protocol import SupportsRandomization
from .registry import as_backend
from .similarity import WINDOWS, Window, explanation_map, minmax_per_sample, spearman_per_sample, ssim_per_sample
from .targets import target_cotangent

RandomizationMode = Literal["cascading", "independent"]
MODES = ("cascading", "independent")


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
    names = check_layers(layers)
    if mode not in MODES:
        raise InputError(f"mode={mode!r} is not supported: use 'cascading' or 'independent'.")
    if window not in WINDOWS:
        raise InputError(f"window={window!r} is not supported: use 'gaussian' or 'uniform'.")
    threshold = check_threshold(threshold)
    label, function = resolve_method(method)
    options = method_options(method, method_kwargs, batch_size)
    cotangent = target_cotangent(backend, x, target, resolve_batch_size(batch_size, x[0].nbytes))
    original = explanation_map(run_method(function, backend, x, cotangent, options), x)
    explain = functools.partial(run_method, function, x=x, cotangent=cotangent, options=options)
    steps = randomized_steps(backend, explain, x, original, names, mode, seed, window)
    return randomization_result(label, mode, threshold, original, steps)


def randomized_steps(backend: Any, explain: Callable[..., np.ndarray], x: np.ndarray, original: np.ndarray,
                     names: list[str], mode: str, seed: int, window: str) -> list[RandomizationStep]:
    """One :class:`RandomizationStep` per layer: ``explain(randomised backend)`` compared with ``original``."""
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


def check_layers(layers: Any) -> list[str]:
    """``layers`` as a non-empty list of names (one name alone is a list of one)."""
    names = [layers] if isinstance(layers, str) else layers
    if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) for n in names):
        raise InputError(f"layers must be a non-empty list of layer names (top to bottom for cascading), got "
                         f"{layers!r}: e.g. layers=['classifier', 'block3.0', 'block2.0'].")
    return list(names)


def check_threshold(threshold: Any) -> float:
    """``threshold`` as a float, refused unless it is a correlation in ``[-1, 1]``."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not -1 <= threshold <= 1:
        raise InputError(f"threshold must be a correlation in [-1, 1], got {threshold!r}: e.g. 0.5.")
    return float(threshold)


def _compare_maps(layer: str, chosen: tuple[str, ...], original: np.ndarray, new_map: np.ndarray,
                  window: str) -> RandomizationStep:
    spearman = spearman_per_sample(original, new_map)
    normal_original, normal_new = minmax_per_sample(original), minmax_per_sample(new_map)
    similarity = ssim_per_sample(normal_original, normal_new, window, 11, 1.5, 1.0)
    return RandomizationStep(layer, chosen, spearman, similarity, normal_new)


def randomization_result(label: str, mode: RandomizationMode, threshold: float, original: np.ndarray,
                         steps: list[RandomizationStep]) -> RandomizationResult:
    """The verdict on ``steps``; warns (at the caller's caller) when some maps are constant."""
    means = [s.mean_spearman for s in steps]
    if not all(np.isfinite(means)):
        warnings.warn("Some maps are constant (e.g. all-zero gradients), so their rank correlation is undefined "
                      "(NaN); such steps are not counted as surviving randomisation.", RuntimeWarning, stacklevel=3)
    summary = means[-1] if mode == "cascading" else float(np.min(means))  # NaN stays NaN: never flagged
    flagged = bool(np.isfinite(summary) and summary > threshold)
    return RandomizationResult(label, mode, threshold, minmax_per_sample(original), tuple(steps), float(summary),
                               flagged)
