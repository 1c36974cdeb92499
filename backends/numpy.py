"""NumPy backend: any Python function mapping a NumPy batch to a NumPy batch.

``FunctionBackend(f)`` differentiates ``f`` by central finite differences: it is the black-box
reference (no framework, no assumptions about ``f``) and slow, two evaluations of ``f`` per input
coordinate. Give ``grad`` (and optionally ``jvp``) to make it exact and fast::

    W = np.random.default_rng(0).normal(size=(10, 3))
    backend = FunctionBackend(lambda x: x @ W, grad=lambda x, v: v @ W.T)
    gradsal.core.vanilla_gradient(backend, x)

``f`` must treat the rows of a batch independently (no batch statistics) and return one row per input
row. Plain callables are wrapped automatically: ``vanilla_gradient(my_function, x)`` works too.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from ..core.batching import default_batch_size
from ..core.errors import BackendError, GradsalError, InputError, InputTypeError
from ..core.registry import BackendPlugin, module_type_matches

ArrayFunction = Callable[[np.ndarray], Any]
PairFunction = Callable[[np.ndarray, np.ndarray], Any]

# relative finite-difference steps ~ cube root of the machine epsilon (balances truncation and rounding)
_DEFAULT_STEPS = {np.dtype(np.float64): 6e-6, np.dtype(np.float32): 5e-3, np.dtype(np.float16): 5e-2}


class FunctionBackend:
    """A :class:`~gradsal.core.GradientBackend` (with ``jvp``) around a NumPy function of a batch.

    ``f(x) -> outputs``: ``(N, ...)`` to ``(N, ...)``. ``grad(x, cotangent) -> J(x)^T cotangent`` (shaped
    like ``x``) makes ``vjp`` exact; without it ``vjp`` uses central differences per coordinate,
    ``dS/dx_j ~ (S(x + h e_j) - S(x - h e_j)) / 2h`` with ``S = <f, cotangent>`` and
    ``h = eps * max(1, |x_j|)`` (``eps`` default: about the cube root of the dtype's machine epsilon).
    ``jvp(x, tangent) -> J(x) tangent`` makes ``jvp`` exact; without it ``jvp`` is a central difference
    along the tangent. ``f``, ``grad`` and ``jvp`` get copies, so they cannot change the caller's arrays.
    """

    def __init__(self, f: ArrayFunction, grad: PairFunction | None = None, *, jvp: PairFunction | None = None,
                 eps: float | None = None) -> None:
        for name, function in (("f", f), ("grad", grad), ("jvp", jvp)):
            if function is not None and not callable(function):
                raise InputTypeError(f"FunctionBackend: {name} must be callable, got {type(function).__name__}.")
        if f is None:
            raise InputTypeError("FunctionBackend needs a function f mapping a NumPy batch (N, ...) to outputs.")
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < 1):
            raise InputError(f"FunctionBackend: eps must be a relative step in (0, 1), got {eps!r}: e.g. eps=1e-6.")
        self.f = f
        self.grad = grad
        self.jvp_function = jvp
        self.eps = None if eps is None else float(eps)

    def __repr__(self) -> str:
        mode = "exact grad" if self.grad is not None else "finite differences"
        return f"FunctionBackend({getattr(self.f, '__name__', type(self.f).__name__)}, {mode})"

    # ----------------------------------------------------------------- protocol
    def forward(self, x: np.ndarray) -> np.ndarray:
        """``f(x)``, checked to be a float array with one row per sample of ``x``."""
        x = _check_input(x)
        return self._call_f(x)

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(f(x), J(x)^T cotangent)``: from ``grad`` if given, else by central differences per coordinate."""
        x = _check_input(x)
        outputs = self._call_f(x)
        cotangent = _check_like(cotangent, outputs.shape, "cotangent", "the outputs f(x)")
        if self.grad is not None:
            grads = self._call("grad", self.grad, x.copy(), cotangent.copy())
            return outputs, _check_result(grads, x.shape, "grad", "J(x)^T cotangent, shaped like x")
        return outputs, self._finite_difference_vjp(x, cotangent)

    def jvp(self, x: np.ndarray, tangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(f(x), J(x) tangent)``: from ``jvp`` if given, else a central difference along the tangent."""
        x = _check_input(x)
        outputs = self._call_f(x)
        tangent = _check_like(tangent, x.shape, "tangent", "x")
        if self.jvp_function is not None:
            product = self._call("jvp", self.jvp_function, x.copy(), tangent.copy())
            return outputs, _check_result(product, outputs.shape, "jvp", "J(x) tangent, shaped like f(x)")
        return outputs, self._finite_difference_jvp(x, tangent)

    # ----------------------------------------------------------------- finite differences
    def _step(self, dtype: np.dtype) -> float:
        return self.eps if self.eps is not None else _DEFAULT_STEPS.get(np.dtype(dtype), 5e-3)

    def _finite_difference_vjp(self, x: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        n, size = len(x), x[0].size
        flat = x.reshape(n, size)
        plus = (flat + self._step(x.dtype) * np.maximum(1.0, np.abs(flat))).astype(x.dtype)
        minus = (flat - self._step(x.dtype) * np.maximum(1.0, np.abs(flat))).astype(x.dtype)
        taken = plus.astype(np.float64) - minus  # the step after rounding to x's dtype
        grads = np.empty((n, size))
        per_call = max(1, default_batch_size(x[0].nbytes) // (2 * n))
        for start in range(0, size, per_call):
            coords = np.arange(start, min(size, start + per_call))
            pairs = np.arange(len(coords))
            batch = np.repeat(flat[None], 2 * len(coords), axis=0)  # (2k, n, size): x + h e_j, x - h e_j, ...
            batch[2 * pairs, :, coords] = plus[:, coords].T
            batch[2 * pairs + 1, :, coords] = minus[:, coords].T
            values = self._explained(batch.reshape(-1, *x.shape[1:]), np.tile(cotangent, (2 * len(coords),) +
                                                                              (1,) * (cotangent.ndim - 1)))
            values = values.reshape(len(coords), 2, n)
            grads[:, coords] = ((values[:, 0] - values[:, 1]) / taken[:, coords].T).T
        return grads.reshape(x.shape).astype(x.dtype)

    def _finite_difference_jvp(self, x: np.ndarray, tangent: np.ndarray) -> np.ndarray:
        n = len(x)
        flat_x = x.reshape(n, -1).astype(np.float64)
        flat_t = tangent.reshape(n, -1).astype(np.float64)
        size = np.abs(flat_t).max(axis=1)
        scale = np.maximum(1.0, np.abs(flat_x).max(axis=1))
        h = np.divide(self._step(x.dtype) * scale, size, out=np.zeros(n), where=size > 0).reshape(n, 1)
        both = np.concatenate([flat_x + h * flat_t, flat_x - h * flat_t]).astype(x.dtype)
        outputs = self._call_f(both.reshape(2 * n, *x.shape[1:])).astype(np.float64)
        difference = (outputs[:n] - outputs[n:]).reshape(n, -1)
        product = np.divide(difference, 2 * h, out=np.zeros_like(difference), where=h > 0)
        dtype = np.result_type(outputs.dtype if outputs.dtype != np.float64 else x.dtype, np.float32)
        return product.reshape(n, *outputs.shape[1:]).astype(dtype)

    def _explained(self, batch: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        outputs = self._call_f(batch)
        return (outputs.astype(np.float64) * cotangent).reshape(len(batch), -1).sum(axis=1)

    # ----------------------------------------------------------------- calling user code
    def _call_f(self, x: np.ndarray) -> np.ndarray:
        outputs = self._call("f", self.f, x.copy())
        try:
            array = np.asarray(outputs)
        except Exception as exc:
            raise BackendError(f"FunctionBackend: f returned a {type(outputs).__name__}, not an array: make f "
                               "return a NumPy array (N, ...).") from exc
        if array.dtype.kind not in "fiu" or array.dtype.kind == "b":
            raise BackendError(f"FunctionBackend: f returned dtype {array.dtype}; it must return real numbers "
                               "(float scores, logits or regression values).")
        if array.ndim == 0 or array.shape[0] != len(x):
            raise BackendError(
                f"FunctionBackend: f returned shape {array.shape} for a batch of {len(x)} sample(s); f must map a "
                f"batch (N, ...) to outputs (N, ...), one row per sample (did it sum or average over the batch?)."
            )
        return array if array.dtype.kind == "f" else array.astype(np.float64)

    @staticmethod
    def _call(name: str, function: Callable[..., Any], *args: np.ndarray) -> Any:
        try:
            return function(*args)
        except (GradsalError, MemoryError):  # the core turns MemoryError into advice on batch_size
            raise
        except Exception as exc:
            shapes = ", ".join(str(a.shape) for a in args)
            raise BackendError(f"FunctionBackend: {name} raised {type(exc).__name__}: {exc} (called with arrays of "
                               f"shape {shapes}; {name} must accept a NumPy float batch).") from exc


def _check_input(x: Any) -> np.ndarray:
    array = np.asarray(x)
    if array.dtype.kind != "f":
        raise InputTypeError(f"FunctionBackend: x has dtype {array.dtype}; pass floats, e.g. x.astype(np.float32).")
    if array.ndim < 1 or len(array) == 0:
        raise InputError(f"FunctionBackend: x has shape {array.shape}; pass a non-empty batch (N, ...).")
    return array


def _check_like(value: Any, shape: tuple[int, ...], name: str, like: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.dtype.kind == "b":
        raise InputTypeError(f"{name} has dtype {array.dtype}; pass a float array shaped like {like} {shape}.")
    if array.shape != shape:
        raise InputError(f"{name} has shape {array.shape} but must be shaped like {like}, {shape}: build it with "
                         f"np.zeros_like of {like} and set the entries to explain.")
    return array


def _check_result(value: Any, shape: tuple[int, ...], name: str, what: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception as exc:
        raise BackendError(f"FunctionBackend: {name} returned a {type(value).__name__}, not an array.") from exc
    if array.shape != shape or array.dtype.kind not in "fiu":
        raise BackendError(f"FunctionBackend: {name} returned {array.dtype} shape {array.shape}; it must return "
                           f"{what} {shape}.")
    return array if array.dtype.kind == "f" else array.astype(np.float64)


def _accepts(model: Any) -> bool:
    """A plain Python callable: not a class, not a torch module (checked without importing torch)."""
    if not callable(model) or isinstance(model, type):
        return False
    return not (module_type_matches(model, "torch.nn", "Module") or module_type_matches(model, "torch.jit",
                                                                                        "ScriptFunction"))


plugin = BackendPlugin(
    name="numpy",
    accepts=_accepts,
    create=FunctionBackend,
    accepts_text="a Python callable mapping a NumPy batch to a NumPy batch (finite differences)",
    extra=None,
    priority=100,
)
