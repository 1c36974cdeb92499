"""Typed errors: every failure gradsal reports is a ``GradsalError`` and also the matching built-in.

Catch ``GradsalError`` to handle anything gradsal raises; catch ``ValueError``/``TypeError`` etc. where
the built-in meaning is what matters. Each message says what was wrong and how to fix it.
"""

from __future__ import annotations


class GradsalError(Exception):
    """Base class of every error gradsal raises on purpose."""


class InputError(GradsalError, ValueError):
    """An input array (x, baseline, cotangent, target) has a bad value or shape."""


class InputTypeError(GradsalError, TypeError):
    """An input has the wrong type or dtype (e.g. an integer image where floats are needed)."""


class TargetError(GradsalError, ValueError):
    """The ``target`` does not name a valid output (index out of range, wrong length, wrong shape)."""


class MissingCapabilityError(GradsalError, TypeError):
    """The backend lacks an optional capability (JVP, layers, ReLU rules) that the method needs."""


class UnsupportedModelError(GradsalError, TypeError):
    """No registered backend accepts this kind of model object."""


class MissingDependencyError(GradsalError, ImportError):
    """A backend needs a package that is not installed; the message names the pip extra."""


class ModelError(GradsalError, ValueError):
    """The model itself is unusable: a corrupt file, an unknown layer/output name, no input dependence."""


class UnsupportedOperatorError(GradsalError, NotImplementedError):
    """A model contains an operation gradsal cannot differentiate (names the operation and a way out)."""


class BackendError(GradsalError, RuntimeError):
    """The framework failed while running the model; the message carries the framework's reason."""
