"""Outputs whose batch axis is not the first one, for :class:`~.backend.OnnxBackend`'s ``output_batch_axis``.

gradsal's methods see every output batch-first, ``(N, ...)``. A model may put the batch elsewhere (a CTC
recogniser returns ``(T, N, C)``: ``output_batch_axis=1``), or have none at all (a model exported with a
fixed batch of 1 whose output is ``(C,)``: ``output_batch_axis=None``, one sample per call). The backend
moves its results to batch-first with :func:`to_batch_first` and the cotangents it is given back to the
model's layout with :func:`to_model_layout`; both are views, never copies of the caller's arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...core.errors import InputError, InputTypeError


def check_axis(axis: Any) -> int | None:
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, (int, np.integer))):
        raise InputTypeError(f"output_batch_axis must be an int (the output's batch axis) or None (the output "
                             f"has no batch axis: one sample), got {axis!r}.")
    return None if axis is None else int(axis)


def _resolved(axis: int, ndim: int, output: str) -> int:
    if not -ndim <= axis < ndim:
        raise InputError(f"output_batch_axis={axis}, but the output {output!r} has rank {ndim}: name one of its axes "
                         "(or None when it has no batch axis).")
    return axis % ndim


def to_batch_first(array: np.ndarray, axis: int | None, output: str) -> np.ndarray:
    """A model output (or a JVP) in the batch-first layout the methods expect."""
    if axis is None:
        return array[np.newaxis]
    if axis == 0:  # the default: whatever the output's rank (a scalar loss included), nothing to move
        return array
    axis = _resolved(axis, array.ndim, output)
    return np.moveaxis(array, axis, 0) if axis else array


def to_model_layout(seed: Any, axis: int | None, output: str, what: str) -> Any:
    """A batch-first cotangent in the output's own layout (anything not an array is left for the checks)."""
    if axis is None or axis == 0:
        if axis is None:
            array = np.asarray(seed)
            if array.ndim == 0 or array.shape[0] != 1:
                raise InputError(f"the {what} has shape {array.shape}, but the output {output!r} has no batch axis "
                                 "(output_batch_axis=None): pass one sample, shaped (1, *output shape).")
            return array[0]
        return seed
    array = np.asarray(seed)
    return np.moveaxis(array, 0, _resolved(axis, array.ndim, output)) if array.ndim else array


def check_one_sample(x: np.ndarray, axis: int | None) -> None:
    if axis is None and (x.ndim == 0 or x.shape[0] != 1):
        raise InputError(f"x has shape {x.shape}, but the explained output has no batch axis "
                         "(output_batch_axis=None): the model explains one sample at a time; pass x with one row.")
