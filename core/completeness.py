"""Completeness of Integrated Gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep
Networks"): the attributions of a sample add up to ``S(x) - S(baseline)``, the change of the explained
output from the baseline to the input. A large gap means too few integration steps for the model's
curvature, or a gradient that is wrong somewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import attribution
from .errors import InputError


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
