"""Differentiation rules of ONNX operators, one file per operator family, and the registry they fill.

``registry`` holds the rule tables and the registrars (``vjp_rule``, ``jvp_rule``, ``diagonal``,
``linear``, ``bilinear``); ``emit`` is the one opset-aware emitter every rule writes nodes through. The
family modules register their rules when imported; :func:`load` imports them all. Importing this package
is cheap: the family modules need onnx and are imported only by :func:`load`.
"""

from __future__ import annotations

import importlib

FAMILIES = (
    "pointwise", "arithmetic", "matmul", "softmax", "normalisation",
    "convolution", "pooling", "padding", "resizing",
    "shape", "indexing", "reductions", "losses", "lstm",
)


def load() -> None:
    """Import every family module so that its rules register."""
    for family in FAMILIES:
        importlib.import_module(f"{__name__}.{family}")
