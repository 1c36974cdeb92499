"""Checking a value given in ``constant_inputs`` against the model input it fixes.

The value becomes a constant of gradsal's copy of the model, where onnxruntime would never see a wrong
shape or dtype (an initializer is taken as it is, then broadcast or cast by the nodes that read it): so it
is checked here as onnxruntime checks a fed input. Rank and fixed sizes must match (a symbolic size is a
hint); the values must be numbers of the declared kind (no strings; no floats for an integer input,
whose fraction would be dropped; integers within the declared type's range); booleans only for a bool input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...core.errors import InputError, InputTypeError
from . import _model_io as io


def checked_constant(value: Any, value_info: Any, label: str) -> np.ndarray:
    """``value`` as a fresh array in the declared dtype of the input ``value_info``, after checking it."""
    name = value_info.name
    declared_dtype = io.declared_dtype(value_info)
    shape = io.declared_shape(value_info)
    declared = f"{label}'s input {io.describe_input(value_info)}"
    if declared_dtype is None:
        raise InputTypeError(f"constant_inputs[{name!r}]: {declared} has an element type gradsal cannot "
                             "build from NumPy (bfloat16, float8, strings ...).")
    try:
        array = np.asarray(value)
    except Exception as exc:
        raise InputTypeError(f"constant_inputs[{name!r}] must be an array for {declared}: {exc}") from exc
    wanted = declared_dtype.kind
    allowed = {"f": "fiu", "i": "iub", "u": "iub", "b": "b"}.get(wanted, wanted)
    if array.dtype.kind not in allowed:
        raise InputTypeError(
            f"constant_inputs[{name!r}] has dtype {array.dtype}, but {declared}: pass "
            f"{declared_dtype.name} values, e.g. np.asarray(value, dtype=np.{declared_dtype.name})."
        )
    if shape is not None:
        fixed_mismatch = any(isinstance(d, int) and d != s for d, s in zip(shape, array.shape, strict=False))
        if array.ndim != len(shape) or fixed_mismatch:
            raise InputError(
                f"constant_inputs[{name!r}] has shape {array.shape}, but {declared}: pass an array of that "
                "shape (gradsal does not broadcast it)."
            )
    converted = np.array(array, dtype=declared_dtype, copy=True)
    if wanted in "iu" and array.dtype.kind in "iu" and not np.array_equal(converted, array):
        raise InputError(f"constant_inputs[{name!r}] has values outside the range of {declared}.")
    return converted
