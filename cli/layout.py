"""A channels-last model seen as a channels-first one, so the command line works in (N, C, H, W) throughout.

Keras / TensorFlow exports and Caffe ports often take ``(N, H, W, C)``. :class:`ChannelsLast` wraps such a
backend: every array the methods pass in is transposed to NHWC at the model's door and every gradient
with respect to the input is transposed back, so maps, overlays and Grad-CAM's upsampling see the
familiar NCHW layout. Layer activations are passed through untouched (they are the model's own tensors;
convolutions inside ONNX exports of such models run NCHW between Transposes). Optional capabilities
(layers, ReLU rules, randomisation, JVPs) exist on the wrapper exactly when the wrapped backend has them;
its other attributes (``input_name``, ``output_name``, ...) are the wrapped backend's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_OPTIONAL = ("jvp", "layer_vjp", "layer_names", "with_relu_rule", "randomized", "float64")


def _to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(np.asarray(x), 1, -1))


def _to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1))


class ChannelsLast:
    """``backend`` (which takes NHWC) as a backend that takes NCHW."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def __repr__(self) -> str:
        return f"ChannelsLast({self.backend!r})"

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The model's outputs for NCHW ``x``."""
        return self.backend.forward(_to_nhwc(x))

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(outputs, cotangent pulled back to x)``, the latter NCHW like ``x``."""
        outputs, grad = self.backend.vjp(_to_nhwc(x), cotangent)
        return outputs, _to_nchw(grad)

    def __getattr__(self, name: str) -> Any:
        if name == "backend" or name.startswith("__"):
            raise AttributeError(name)
        found = getattr(self.backend, name)  # AttributeError when the wrapped backend lacks it
        return getattr(self, "_" + name) if name in _OPTIONAL else found  # other attributes: the model's own

    def _jvp(self, x: np.ndarray, tangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.backend.jvp(_to_nhwc(x), _to_nhwc(tangent))

    def _layer_vjp(self, x: np.ndarray, layer: str, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.backend.layer_vjp(_to_nhwc(x), layer, cotangent)

    def _layer_names(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.backend.layer_names(*args, **kwargs)

    def _with_relu_rule(self, rule: str) -> ChannelsLast:
        return ChannelsLast(self.backend.with_relu_rule(rule))

    def _randomized(self, layers: Any, seed: int) -> ChannelsLast:
        return ChannelsLast(self.backend.randomized(layers, seed))

    def _float64(self) -> ChannelsLast | None:
        double = self.backend.float64()
        return None if double is None else ChannelsLast(double)
