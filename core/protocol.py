"""The backend contract: what a framework must provide for gradsal to explain its models.

A backend maps NumPy batches to NumPy batches. ``vjp`` is all the gradient methods need: the
vector-Jacobian product ``J(x)^T v`` of the model output with respect to the input, per sample, where
``v`` (the cotangent) selects what to explain (a one-hot class, a weighted region, a regression value).
Optional capabilities are separate small protocols so that a minimal backend stays two methods long.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np

ReluRule = Literal["standard", "guided", "deconvnet"]


@runtime_checkable
class GradientBackend(Protocol):
    """A model that can run forward and pull a cotangent back to its input.

    ``forward(x)`` takes a batch ``(N, ...)`` and returns the outputs ``(N, ...)``.
    ``vjp(x, cotangent)`` returns ``(outputs, grad_x)`` with ``grad_x[i] = J_i(x_i)^T cotangent[i]``,
    shaped like ``x``; ``cotangent`` is shaped like the outputs.
    """

    def forward(self, x: np.ndarray) -> np.ndarray: ...

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class SupportsJVP(Protocol):
    """Forward mode: ``jvp(x, tangent) -> (outputs, J(x) tangent)``, tangent shaped like ``x``."""

    def jvp(self, x: np.ndarray, tangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class SupportsLayers(Protocol):
    """Gradients at an inner layer: ``layer_vjp(x, layer, cotangent) -> (activation, grad_activation)``.

    ``layer`` is a backend-specific name (a dotted module name in PyTorch, a tensor name in ONNX);
    ``cotangent`` is shaped like the model output, and the gradient is that of ``<outputs, cotangent>``
    with respect to the layer's activation. Used by Grad-CAM.
    """

    def layer_vjp(
        self, x: np.ndarray, layer: str, cotangent: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class SupportsReluRule(Protocol):
    """A copy of the backend whose backward pass through ReLUs follows another rule.

    ``"guided"`` passes only positive gradients through positive activations, ``"deconvnet"`` passes
    positive gradients regardless of the activation (Springenberg et al. 2015); ``"standard"`` is the
    true gradient. The original backend is not changed.
    """

    def with_relu_rule(self, rule: ReluRule) -> GradientBackend: ...


@runtime_checkable
class SupportsRandomization(Protocol):
    """A copy of the backend with the named layers' parameters re-initialised (Adebayo et al. 2018)."""

    def randomized(self, layers: list[str], seed: int) -> GradientBackend: ...


@runtime_checkable
class SupportsFloat64(Protocol):
    """A float64 copy of the model, for checks as strict as ``torch.autograd.gradcheck``.

    ``float64()`` returns a backend computing the same function in float64, or None where the model cannot
    (an operator without a double kernel). The original backend is not changed.
    """

    def float64(self) -> GradientBackend | None: ...

