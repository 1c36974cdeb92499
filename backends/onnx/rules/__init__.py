"""Differentiation rules of ONNX operators, one file per operator family, and the registry they fill.

``registry`` holds the rule tables and the registrars (``vjp_rule``, ``jvp_rule``, ``diagonal``,
``linear``, ``bilinear``); ``emit`` is the one opset-aware emitter every rule writes nodes through;
``forms`` holds the spellings onnxruntime runs faster, each beside its plain form. Every other module here
is a family of operators (pointwise, arithmetic, matmul, normalisation, convolution, pooling, ...) whose
rules register when it is imported; :func:`load` imports them all, so a new family file needs no entry
anywhere else. Importing this package is cheap: the family modules need onnx and only :func:`load`
imports them.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil


def families() -> list[str]:
    """The modules of this package, sorted (the families, and the helpers they share)."""
    return sorted(module.name for module in pkgutil.iter_modules(__path__))


@functools.cache
def load() -> None:
    """Import every module of this package, so that every family's rules register (once: each gradient
    graph build calls this)."""
    for name in families():
        importlib.import_module(f"{__name__}.{name}")
