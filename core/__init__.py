"""gradsal.core: the framework-agnostic saliency engine (NumPy only).

Attribution methods, post-processing and the gradient checker, all built on the small
:class:`GradientBackend` protocol. Nothing here imports a deep-learning framework.
"""

from .errors import (
    BackendError,
    GradsalError,
    InputError,
    InputTypeError,
    MissingCapabilityError,
    MissingDependencyError,
    ModelError,
    TargetError,
    UnsupportedModelError,
    UnsupportedOperatorError,
)
from .protocol import (
    GradientBackend,
    ReluRule,
    SupportsJVP,
    SupportsLayers,
    SupportsRandomization,
    SupportsReluRule,
)
from .registry import BackendPlugin, as_backend, available_backends, register_backend, unregister_backend

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendPlugin",
    "GradientBackend",
    "GradsalError",
    "InputError",
    "InputTypeError",
    "MissingCapabilityError",
    "MissingDependencyError",
    "ModelError",
    "ReluRule",
    "SupportsJVP",
    "SupportsLayers",
    "SupportsRandomization",
    "SupportsReluRule",
    "TargetError",
    "UnsupportedModelError",
    "UnsupportedOperatorError",
    "__version__",
    "as_backend",
    "available_backends",
    "register_backend",
    "unregister_backend",
]
