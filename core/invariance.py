"""Input invariance (Kindermans, Hooker, Adebayo, Alber, Schuett, Daehne, Erhan & Kim 2017, "The
(Un)reliability of Saliency Methods"): on ``f'(x) = f(x - c)`` at ``x + c``, a model that computes exactly
what ``f`` computes at ``x``, an explanation should not change.

The vanilla gradient is invariant; gradient x input is not (it gains ``c * grad``); Integrated Gradients
with a fixed zero baseline is not, with the baseline shifted by ``c`` as well it is. :func:`shifted_backend`
builds ``f'`` around any backend, keeping its layer and ReLU-rule capabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validate import as_float_batch, call_backend, check_finite
from .batching import resolve_batch_size
from .errors import InputError, InputTypeError
from .methods import Method, method_options, resolve_method, run_method
from .protocol import GradientBackend, SupportsLayers, SupportsReluRule
from .registry import as_backend
from .targets import target_cotangent


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
    options = method_options(method, method_kwargs, batch_size)
    shifted_options = options if shifted_method_kwargs is None else method_options(
        method, shifted_method_kwargs, batch_size)
    cotangent = target_cotangent(backend, x, target, resolve_batch_size(batch_size, x[0].nbytes))
    before = run_method(function, backend, x, cotangent, options).astype(np.float64)
    moved = x.astype(np.float64) + c  # float64, so that f'(x + c) = f(x) sees exactly x, whatever x's dtype
    after = run_method(function, shifted_backend(backend, c), moved, cotangent, shifted_options).astype(np.float64)
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
