"""How strong is the gradient check on this model? Run it on deliberately wrong gradients.

A check that passes a correct gradient says little unless it also fails wrong ones at the same input.
:func:`gradient_check_power` runs :func:`~gradsal.core.check_gradients` once on the backend as it is and
once per corruption of its ``vjp``: all zeros, negated, scaled by 0.9 and by 1.1, 10% of the entries with
flipped sign, the gradient of another class, shifted by one pixel, one channel zeroed. A check with power
passes the first and fails every other (the corruptions are the usual ways a hand-written or exported
gradient goes wrong: a lost cotangent, a sign convention, a missing constant factor, a wrong mask, the
wrong output, an off-by-one index, a dropped channel).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._validate import as_float_batch, check_axis
from .attribution import backend_vjp
from .errors import InputError
from .gradcheck import GradientCheckReport, check_gradients, working_float64
from .protocol import GradientBackend, SupportsFloat64
from .registry import as_backend

Corruption = Callable[[np.ndarray, np.ndarray, np.ndarray, Any], np.ndarray]


def _flip_tenth(x: np.ndarray, cotangent: np.ndarray, grad: np.ndarray, layout: Any) -> np.ndarray:
    flipped = np.random.default_rng(0).random(grad.shape) < 0.1
    return np.where(flipped, -grad, grad)


def _other_class(x: np.ndarray, cotangent: np.ndarray, grad: np.ndarray, layout: Any) -> np.ndarray:
    flat = cotangent.reshape(len(cotangent), -1)
    other = np.roll(flat, 1, axis=1).reshape(cotangent.shape)  # the next class (cyclically)
    return backend_vjp(layout.backend, x, other.astype(cotangent.dtype))


def _shifted(x: np.ndarray, cotangent: np.ndarray, grad: np.ndarray, layout: Any) -> np.ndarray:
    return np.roll(grad, 1, axis=layout.width_axis)


def _channel_zeroed(x: np.ndarray, cotangent: np.ndarray, grad: np.ndarray, layout: Any) -> np.ndarray:
    zeroed = grad.copy()
    index = [slice(None)] * grad.ndim
    index[layout.channel_axis] = 0
    zeroed[tuple(index)] = 0
    return zeroed


CORRUPTIONS: dict[str, Corruption] = {
    "all zeros": lambda x, v, g, layout: np.zeros_like(g),
    "negated": lambda x, v, g, layout: -g,
    "scaled by 0.9": lambda x, v, g, layout: 0.9 * g,
    "scaled by 1.1": lambda x, v, g, layout: 1.1 * g,
    "10% signs flipped": _flip_tenth,
    "another class": _other_class,
    "shifted one pixel": _shifted,
    "one channel zeroed": _channel_zeroed,
}


class _Layout:
    def __init__(self, backend: GradientBackend, channel_axis: int, width_axis: int) -> None:
        self.backend, self.channel_axis, self.width_axis = backend, channel_axis, width_axis


class _Corrupted:
    """The backend with ``vjp`` replaced by a corruption of its own gradient (forward unchanged)."""

    def __init__(self, layout: _Layout, corruption: Corruption) -> None:
        self.layout, self.corruption = layout, corruption

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.layout.backend.forward(x)

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs, grad = self.layout.backend.vjp(x, cotangent)
        grad = np.asarray(grad)
        return outputs, self.corruption(x, cotangent, grad, self.layout).astype(grad.dtype)


def gradient_check_power(model: Any, x: np.ndarray, target: Any = None, *, channel_axis: int = 1,
                         width_axis: int = -1, corruptions: list[str] | None = None,
                         **check_options: Any) -> dict[str, GradientCheckReport]:
    """``check_gradients`` on the correct gradient (key ``"correct"``) and on each corruption.

    ``channel_axis`` and ``width_axis`` index ``x`` (batch axis included): NCHW images take the defaults
    (1, -1), NHWC images ``channel_axis=-1, width_axis=-2``. ``corruptions`` picks names from
    :data:`CORRUPTIONS` (default: all). Other keywords go to :func:`check_gradients`; every check runs at
    one precision (float64 where the backend offers it, unless ``precision="model"``). The corrupted
    backends have no ``jvp``, so that the finite differences alone judge them; the correct one is checked
    as it is.
    """
    backend = as_backend(model)
    x = as_float_batch(x)
    axes = check_axis(channel_axis, x.ndim, "channel_axis"), check_axis(width_axis, x.ndim, "width_axis")
    names = list(CORRUPTIONS) if corruptions is None else corruptions
    unknown = sorted(set(names) - set(CORRUPTIONS))
    if unknown:
        raise InputError(f"Unknown corruptions {unknown}: choose from {sorted(CORRUPTIONS)}.")
    if check_options.pop("precision", "auto") == "auto" and isinstance(backend, SupportsFloat64):
        double = working_float64(backend, x)  # every check at one precision, the corrupted ones included
        if double is not None:
            backend, x = double, x.astype(np.float64)
    layout = _Layout(backend, *axes)
    reports = {"correct": check_gradients(backend, x, target, precision="model", **check_options)}
    for name in names:
        reports[name] = check_gradients(_Corrupted(layout, CORRUPTIONS[name]), x, target, precision="model",
                                        **check_options)
    return reports
