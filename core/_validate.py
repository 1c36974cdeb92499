"""Input checks shared by every method: each failure is a typed gradsal error whose message says the fix.

The helpers never modify what they are given; they return a NumPy view or, where a conversion is
needed, a new array.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import BackendError, GradsalError, InputError, InputTypeError

FLOAT_KINDS = "f"


def as_float_batch(x: Any, name: str = "x") -> np.ndarray:
    """``x`` as a floating NumPy batch ``(N, ...)`` with N >= 1 and only finite values.

    Rejects integer, boolean and complex dtypes (a uint8 image must be scaled and cast by the user,
    since gradsal cannot know the model's preprocessing), rank < 2, empty batches, NaN and inf.
    """
    if isinstance(x, (str, bytes)) or x is None:
        raise InputTypeError(f"{name} must be a NumPy array of floats shaped (N, ...), got {type(x).__name__}.")
    try:
        array = np.asarray(x)
    except Exception as exc:
        raise InputTypeError(f"{name} could not be converted to a NumPy array ({exc}); pass a float array "
                             "shaped (N, ...).") from exc
    check_float_dtype(array, name)
    check_batch_rank(array, name)
    check_not_empty(array, name)
    check_finite(array, name)
    return array


def check_float_dtype(array: np.ndarray, name: str = "x") -> None:
    """Raise ``InputTypeError`` unless ``array`` holds real floats."""
    if array.dtype.kind not in FLOAT_KINDS:
        if array.dtype.kind in "ui":  # pixel values, or integers the model takes as they are (ids, bytes)
            raise InputTypeError(
                f"{name} has dtype {array.dtype}, but gradients need floating-point input. Pixel values: pass "
                f"{name}.astype(np.float32) scaled as the model was trained (e.g. / 255). Token ids, bytes or "
                "category codes (a model that takes integers) have no gradient: differentiate at their embedding "
                "with gradsal.backends.at_tensor(model, inputs), then pass its .value (README: 'Models that take "
                "integers')."
            )
        raise InputTypeError(
            f"{name} has dtype {array.dtype}, but gradients need floating-point input: pass {name}.astype(np.float32)."
        )


def check_batch_rank(array: np.ndarray, name: str = "x", min_rank: int = 2) -> None:
    """Raise ``InputError`` unless ``array`` has a batch axis and at least one per-sample axis."""
    if array.ndim < min_rank:
        raise InputError(
            f"{name} has shape {array.shape}, but a batch shaped (N, ...) with at least {min_rank} axes is "
            f"needed: for a single sample pass {name}[None], for N scalar features pass {name}[:, None]."
        )


def check_not_empty(array: np.ndarray, name: str = "x") -> None:
    """Raise ``InputError`` for a batch without samples or samples without elements."""
    if array.size == 0:
        raise InputError(f"{name} is empty (shape {array.shape}): pass at least one sample with at least one "
                         "element.")


def check_finite(array: np.ndarray, name: str = "x") -> None:
    """Raise ``InputError`` naming the first non-finite position of ``array``."""
    finite = np.isfinite(array)
    if not finite.all():
        where = tuple(int(i) for i in np.argwhere(~finite)[0])
        count = int((~finite).sum())
        raise InputError(
            f"{name} contains {count} NaN or infinite value(s), the first at index {where} "
            f"(value {array[where]}): gradients there are undefined; clean the input, e.g. "
            f"np.nan_to_num({name}), or drop those samples."
        )


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (``InputTypeError`` for non-integers, ``InputError`` if too small)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise InputError(f"{name} must be at least {minimum}, got {value}: pass {name}={minimum} or more.")
    return int(value)


def check_nonnegative_float(value: Any, name: str) -> float:
    """``value`` as a finite float >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name} must be a real number >= 0, got {value!r} ({type(value).__name__}).")
    result = float(value)
    if not np.isfinite(result) or result < 0:
        raise InputError(f"{name} must be a finite number >= 0, got {value}: pass e.g. {name}=0.15.")
    return result


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``; else ``InputError`` listing them."""
    if isinstance(value, str) and value in choices:
        return value
    if value is None and None in choices:
        return value
    listed = ", ".join(repr(c) for c in choices)
    raise InputError(f"{name}={value!r} is not supported: use one of {listed}.")


def check_axis(axis: Any, ndim: int, name: str = "channel_axis") -> int:
    """A valid non-negative axis index for an array of rank ``ndim`` (the batch axis 0 is not allowed)."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise InputTypeError(f"{name} must be an integer axis, got {axis!r}.")
    resolved = int(axis) + ndim if axis < 0 else int(axis)
    if not 1 <= resolved < ndim:
        raise InputError(f"{name}={axis} is not a per-sample axis of an array with {ndim} axes: use an axis "
                         f"between 1 and {ndim - 1} (or -1).")
    return resolved


def backend_array(value: Any, what: str, rows: int, backend: Any) -> np.ndarray:
    """An array a backend returned, checked to be a NumPy-convertible batch of ``rows`` samples."""
    try:
        array = np.asarray(value)
    except Exception as exc:
        raise BackendError(f"{type(backend).__name__} returned {what} that is not an array ({exc}); a backend "
                           "must return NumPy arrays.") from exc
    if array.ndim == 0 or array.shape[0] != rows:
        raise BackendError(
            f"{type(backend).__name__} returned {what} of shape {array.shape} for a batch of {rows} sample(s); "
            "a backend must return one row per input sample (batch axis first)."
        )
    return array


def unpack_pair(result: Any, method: str, backend: Any) -> tuple[Any, Any]:
    """The two arrays of a ``vjp``/``jvp``/``layer_vjp`` result, or a ``BackendError`` saying what came back."""
    if not isinstance(result, tuple) or len(result) != 2:
        raise BackendError(f"{type(backend).__name__}.{method} must return a pair (outputs, gradient), got "
                           f"{type(result).__name__}.")
    return result


def call_backend(backend: Any, method: str, *args: Any) -> Any:
    """``backend.<method>(*args)``, with any failure that is not already a gradsal error wrapped in a
    :class:`BackendError` naming the backend and method (the original stays attached as ``__cause__``)."""
    try:
        return getattr(backend, method)(*args)
    except GradsalError:
        raise
    except Exception as exc:
        name = f"{type(backend).__name__}.{method}"
        shapes = ", ".join(str(np.shape(a)) for a in args if isinstance(a, np.ndarray))
        if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
            raise BackendError(
                f"{name} ran out of memory on arrays of shape {shapes}: pass a smaller batch_size, or lower the "
                "memory budget with gradsal.core.set_memory_budget(nbytes)."
            ) from exc
        raise BackendError(f"{name} failed on arrays of shape {shapes}: {type(exc).__name__}: {exc}") from exc
