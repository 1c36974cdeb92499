"""From ``target`` to the cotangent ``v`` that selects what a gradient explains.

Every method explains the scalar ``<f(x_i), v_i>`` per sample, i.e. its gradient is ``J(x_i)^T v_i``.
``target`` picks ``v``:

- ``None``: the predicted output per sample: a one-hot at ``argmax f(x_i)`` (the model runs once over
  the batch to find it). For a model returning one value per sample (outputs ``(N,)``, a regression)
  ``None`` explains that value itself: ``v = 1``.
- an ``int`` ``k``: the same output for every sample; for outputs ``(N, C)`` it is class ``k``. For
  outputs with more axes ``(N, d1, d2, ...)`` ``k`` indexes the flattened per-sample output (C order);
  to explain a region of a segmentation map pass a float array instead.
- a sequence (or integer array) of ``N`` ints: one output index per sample, as above.
- a float array shaped like the outputs ``(N, ...)``, or like one sample's output (shared by all
  samples): the cotangent itself, which explains any weighted output: a regression value, a
  segmentation region (a mask), the difference of two logits (``+1`` and ``-1``).

Gradients of softmax probabilities saturate (they are near zero wherever the model is confident), so a
:class:`ProbabilityOutputWarning` is raised when the outputs look like probabilities: explain the logits.
"""

from __future__ import annotations

import numbers
import warnings
import weakref
from typing import Any

import numpy as np

from ._validate import backend_array, call_backend, check_finite
from .batching import row_chunks
from .errors import BackendError, InputError, TargetError
from .protocol import GradientBackend

PROBABILITY_SUM_TOLERANCE = 1e-3


class ProbabilityOutputWarning(UserWarning):
    """The model's outputs look like probabilities (rows in [0, 1] summing to 1); explain logits instead."""


def forward_batch(backend: GradientBackend, x: np.ndarray, batch_size: int) -> np.ndarray:
    """``backend.forward`` over ``x`` in chunks of ``batch_size`` rows, checked to be a float batch."""
    parts = []
    for rows in row_chunks(len(x), batch_size):
        chunk = x[rows]
        parts.append(check_outputs(call_backend(backend, "forward", chunk), len(chunk), backend))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def check_outputs(outputs: Any, rows: int, backend: Any) -> np.ndarray:
    """A backend's outputs as a floating batch of ``rows`` samples (``BackendError`` otherwise)."""
    array = backend_array(outputs, "outputs", rows, backend)
    if array.dtype.kind != "f":
        raise BackendError(
            f"{type(backend).__name__} returned outputs of dtype {array.dtype}; gradients need real-valued "
            "scores (logits, regression values), not labels: return the scores before any argmax or rounding."
        )
    return array


def looks_like_probabilities(outputs: np.ndarray) -> bool:
    """True when ``outputs`` is ``(N, C)`` with C >= 2, every entry in [0, 1] and every row summing to 1."""
    if outputs.ndim != 2 or outputs.shape[1] < 2 or not np.isfinite(outputs).all():
        return False
    if outputs.min() < 0 or outputs.max() > 1:
        return False
    return bool(np.all(np.abs(outputs.sum(axis=1, dtype=np.float64) - 1.0) <= PROBABILITY_SUM_TOLERANCE))


def warn_if_probabilities(outputs: np.ndarray, stacklevel: int = 5) -> None:
    """Raise a :class:`ProbabilityOutputWarning` when ``outputs`` look like softmax probabilities."""
    if looks_like_probabilities(outputs):
        _warn_probabilities(stacklevel)


def _warn_probabilities(stacklevel: int) -> None:
    warnings.warn(
        "The model's outputs look like probabilities (each row in [0, 1], summing to 1). Gradients of "
        "softmax outputs saturate and mix in every other class; explain the logits instead (drop the "
        "final softmax).", ProbabilityOutputWarning, stacklevel=stacklevel)


def target_cotangent(backend: GradientBackend, x: np.ndarray, target: Any, batch_size: int) -> np.ndarray:
    """The cotangent ``(N, *output_shape)`` for ``target`` (see the module docstring), in the outputs' dtype.

    Runs the model over the whole batch when ``target`` is None (to find the argmax), otherwise on one
    sample only, to learn the output shape.
    """
    if target is None:
        outputs = forward_batch(backend, x, batch_size)
        warn_if_probabilities(outputs)
        return predicted_cotangent(outputs)
    output_shape, dtype, probabilities = _output_spec(backend, x)
    if probabilities:
        _warn_probabilities(stacklevel=4)
    return cotangent_from_target(target, len(x), output_shape, dtype)


# (per-sample input shape, dtype) -> (per-sample output shape, dtype, looks like probabilities), per backend
_OUTPUT_SPECS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[tuple[int, ...], np.dtype, bool]]] = (
    weakref.WeakKeyDictionary())


def _output_spec(backend: GradientBackend, x: np.ndarray) -> tuple[tuple[int, ...], np.dtype, bool]:
    """The output's per-sample shape and dtype, from a one-row forward pass; remembered per backend object
    and input shape, so that repeated calls (a benchmark loop, a sweep over images) skip the probe."""
    key = (x.shape[1:], x.dtype.str)
    try:
        known = _OUTPUT_SPECS.setdefault(backend, {})
    except TypeError:  # a backend that cannot be weakly referenced: probe every time
        known = {}
    if key not in known:
        probe = forward_batch(backend, x[:1], 1)
        known[key] = (probe.shape[1:], probe.dtype, looks_like_probabilities(probe))
    return known[key]


def predicted_cotangent(outputs: np.ndarray) -> np.ndarray:
    """One-hot at the per-sample argmax of ``outputs`` (ones for one output per sample)."""
    if outputs.ndim == 1:
        return np.ones_like(outputs)
    flat = outputs.reshape(len(outputs), -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        raise BackendError(
            f"The model returned NaN or infinite outputs for sample(s) {np.flatnonzero(bad)[:10].tolist()}, so "
            "the predicted class (target=None) is undefined: check those inputs, or pass an explicit target."
        )
    return _one_hot(flat.argmax(axis=1), outputs.shape, outputs.dtype)


def cotangent_from_target(target: Any, n: int, output_shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The cotangent ``(n, *output_shape)`` for an explicit ``target`` (int, ints, or float array)."""
    if isinstance(target, (bool, np.bool_)):
        raise TargetError(f"target={target!r} is a boolean: pass an output index (int), N indices, or a float "
                          "cotangent array shaped like the outputs.")
    if isinstance(target, numbers.Integral):
        return _index_cotangent(np.full(n, int(target)), n, output_shape, dtype)
    try:
        array = np.asarray(target)
    except Exception as exc:
        raise TargetError(f"target could not be read as an array ({exc}): pass an int, N ints, or a float array "
                          "shaped like the outputs.") from exc
    if array.dtype.kind in "iu":
        if array.ndim != 1:
            raise TargetError(f"target has integer shape {array.shape}: pass one output index per sample, a "
                              f"1-D sequence of {n} ints (or a float cotangent array for weighted outputs).")
        return _index_cotangent(array, n, output_shape, dtype)
    if array.dtype.kind == "f":
        return _array_cotangent(array, n, output_shape, dtype)
    hint = " (a region mask: pass mask.astype(np.float32))" if array.dtype.kind == "b" else ""
    raise TargetError(f"target of type {type(target).__name__} / dtype {array.dtype} is not understood{hint}: "
                      "pass None (predicted class), an int, N ints, or a float cotangent shaped like the outputs.")


def _index_cotangent(indices: np.ndarray, n: int, output_shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    if not output_shape:
        raise TargetError(
            "The model returns one value per sample (outputs shaped (N,)), so there is no output to index: use "
            "target=None to explain that value, or a float array of N weights."
        )
    if len(indices) != n:
        raise TargetError(f"target has {len(indices)} indices for a batch of {n} sample(s): pass exactly one "
                          "output index per sample, or a single int for all of them.")
    size = int(np.prod(output_shape))
    bad = (indices < 0) | (indices >= size)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        what = f"{size} classes" if len(output_shape) == 1 else f"{size} outputs per sample {output_shape}"
        raise TargetError(f"target {int(indices[first])} (sample {first}) is out of range: the model has {what}, "
                          f"so a target must be between 0 and {size - 1}.")
    return _one_hot(indices.astype(np.intp), (n, *output_shape), dtype)


def _array_cotangent(array: np.ndarray, n: int, output_shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    full_shape = (n, *output_shape)
    if array.shape not in (full_shape, tuple(output_shape)):
        raise TargetError(
            f"The target cotangent has shape {array.shape}, but the model's outputs are {full_shape}: pass an "
            f"array shaped {full_shape} (one per sample) or {tuple(output_shape)} (shared by every sample)."
        )
    try:
        check_finite(array, "the target cotangent")
    except InputError as exc:
        raise TargetError(str(exc)) from None
    return np.array(np.broadcast_to(array, full_shape), dtype=dtype)


def _one_hot(indices: np.ndarray, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    cotangent = np.zeros((shape[0], int(np.prod(shape[1:]))), dtype=dtype)
    cotangent[np.arange(shape[0]), indices] = 1
    return cotangent.reshape(shape)
