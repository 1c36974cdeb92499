"""The one table of attribution methods: each method's name in gradsal.core and on the command line, and
what the sanity checks and the commands need to know about it.

Every place that lists methods reads :data:`METHODS`: the sanity checks (:func:`resolve_method`, the
methods :func:`~gradsal.core.compare_methods` runs by default, which ones get a fixed seed), and the
``gradsal`` commands (their ``--method`` choices, the options they pass, Grad-CAM's layer, the demo's
figure titles). To add a method, write it in :mod:`gradsal.core.attribution` as
``method(model, x, target, **options)`` and add a row here. A ``method`` given to a sanity check is a
name from this table or a callable ``method(backend, x, target, **method_kwargs) -> attributions``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import attribution
from .errors import InputError, InputTypeError

Method = str | Callable[..., Any]


@dataclass(frozen=True)
class MethodInfo:
    """One attribution method and what its users read about it.

    ``function``: its name in :mod:`gradsal.core`; ``cli_name``: its ``--method`` name (None: not offered
    on the command line); ``title``: how figures name it. ``seeded``: it takes a ``seed`` (SmoothGrad's
    noise, IG's random baseline), fixed so that compared runs draw alike. ``compared_by_default``: one of
    :func:`~gradsal.core.compare_methods`' default methods. ``needs_layer``: it explains a layer's
    activations (Grad-CAM) and needs a layer name; ``returns_map``: it returns one map per sample
    ``(N, *spatial)`` rather than attributions shaped like ``x``. ``many_rows_per_input``: it runs each
    input as many rows (noisy copies, points on a path), so a fixed-batch model cannot take a whole batch.
    ``for_text``: ``gradsal explain-text`` offers it (it needs only gradients at the embedding).
    ``cli_options``: the keyword arguments ``gradsal explain`` and ``gradsal audit`` set from their flags.
    """

    function: str
    cli_name: str | None
    title: str
    seeded: bool = False
    compared_by_default: bool = False
    needs_layer: bool = False
    returns_map: bool = False
    many_rows_per_input: bool = False
    for_text: bool = False
    cli_options: tuple[str, ...] = ()


METHODS: tuple[MethodInfo, ...] = (
    MethodInfo("vanilla_gradient", "vanilla", "Vanilla gradient", compared_by_default=True, for_text=True,
               cli_options=("batch_size",)),
    MethodInfo("gradient_x_input", "gradxinput", "Gradient x input", compared_by_default=True, for_text=True,
               cli_options=("batch_size",)),
    MethodInfo("smoothgrad", "smoothgrad", "SmoothGrad", seeded=True, compared_by_default=True,
               many_rows_per_input=True, for_text=True, cli_options=("n_samples", "noise_level", "seed", "batch_size")),
    MethodInfo("integrated_gradients", "ig", "Integrated gradients", seeded=True, compared_by_default=True,
               many_rows_per_input=True, for_text=True, cli_options=("n_steps", "batch_size")),
    MethodInfo("guided_backprop", "guided", "Guided backprop"),
    MethodInfo("deconvnet", None, "Deconvnet"),
    MethodInfo("grad_cam", "gradcam", "Grad-CAM", needs_layer=True, returns_map=True, cli_options=("layer",)),
)
METHOD_NAMES = tuple(method.function for method in METHODS)
DEFAULT_METHODS = tuple(method.function for method in METHODS if method.compared_by_default)
SEEDED_METHODS = tuple(method.function for method in METHODS if method.seeded)


def cli_names(where: Callable[[MethodInfo], bool] = lambda method: True) -> tuple[str, ...]:
    """The command-line names of the methods that have one and satisfy ``where``, in the table's order."""
    return tuple(method.cli_name for method in METHODS if method.cli_name is not None and where(method))


def by_cli_name(name: str) -> MethodInfo:
    """The row whose command-line name is ``name``."""
    for method in METHODS:
        if method.cli_name == name:
            return method
    raise InputError(f"Unknown method {name!r}: use one of {', '.join(cli_names())}.")


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


def method_options(method: Method, kwargs: Mapping[str, Any] | None, batch_size: int | None) -> dict:
    """The keyword arguments a sanity check calls ``method`` with: ``kwargs``, and for a named method the
    check's ``batch_size`` and, when it is seeded, ``seed=0`` unless given."""
    options = dict(kwargs or {})
    if isinstance(method, str):
        options.setdefault("batch_size", batch_size)
        if method in SEEDED_METHODS:
            options.setdefault("seed", 0)  # the same noise for every run compared
    return options



def run_method(function: Callable[..., Any], backend: Any, x: np.ndarray, cotangent: np.ndarray,
               options: dict) -> np.ndarray:
    """``function(backend, x, cotangent, **options)`` as an array."""
    result = function(backend, x, cotangent, **options)
    return np.asarray(result)
