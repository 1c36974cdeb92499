"""gradsal.backends.onnx: gradient saliency for ONNX models, differentiated graph-to-graph, run by onnxruntime.

``OnnxBackend("model.onnx")`` is a :class:`~gradsal.core.GradientBackend`; ``plugin`` registers it in the
``gradsal.backends`` entry-point group, so ``vanilla_gradient("model.onnx", x)`` works. Importing this
package is cheap: onnx and onnxruntime are imported when a backend is created, and the per-operator rule
modules (``rules/``) when a backend is created or a gradient graph built.
"""

from __future__ import annotations

from typing import Any

from ...core.registry import BackendPlugin, module_type_matches
from ._straight_through import StraightThroughWarning
from .backend import FiniteDifferenceWarning, LogitsWarning, OnnxBackend, OutputChoiceWarning, is_onnx_path, load_rules


def supported_operators() -> list[str]:
    """ONNX operators gradsal can differentiate (those with a reverse-mode rule), sorted."""
    load_rules()
    from .rules.registry import supported_operators as registered

    return registered()


def _accepts(model: Any) -> bool:
    return is_onnx_path(model) or module_type_matches(model, "onnx", "ModelProto")


plugin = BackendPlugin(
    name="onnx",
    accepts=_accepts,
    create=OnnxBackend,
    accepts_text="an ONNX model: a path to a .onnx file, its bytes, or an onnx.ModelProto",
    extra="onnx",
    priority=20,
)

__all__ = [
    "FiniteDifferenceWarning",
    "LogitsWarning",
    "OnnxBackend",
    "OutputChoiceWarning",
    "StraightThroughWarning",
    "load_rules",
    "plugin",
    "supported_operators",
]
