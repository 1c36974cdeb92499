"""Gradient attribution methods, batched and framework-agnostic.

Each method takes a backend (or anything :func:`~gradsal.core.as_backend` accepts: a torch module, an
ONNX file, a NumPy callable), a float batch ``x`` shaped ``(N, ...)`` and a ``target`` (see
:mod:`gradsal.core.targets`: None = the predicted class, an int, N ints, or a float cotangent), and
explains the scalar ``S_i(x_i) = <f(x_i), v_i>`` per sample. All methods except Grad-CAM return an array
shaped like ``x`` in ``x``'s dtype. ``x`` is never modified.

Rows (samples, SmoothGrad's noisy copies, IG's path points) go to the backend in chunks of at most
``batch_size`` rows (None: sized from :func:`~gradsal.core.set_memory_budget`). Chunking never changes a
result, and a seeded run is bit-identical to the next.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from ._validate import (
    as_float_batch,
    backend_array,
    call_backend,
    check_axis,
    check_choice,
    check_finite,
    check_nonnegative_float,
    check_positive_int,
    unpack_pair,
)
from .batching import Segment, resolve_batch_size, row_chunks, stacked_chunks
from .errors import BackendError, InputError, InputTypeError, MissingCapabilityError
from .protocol import GradientBackend, ReluRule, SupportsJVP, SupportsLayers, SupportsReluRule
from .registry import as_backend
from .targets import forward_batch, target_cotangent

SmoothGradKind = Literal["smoothgrad", "smoothgrad_sq", "vargrad"]
IntegrationMethod = Literal["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
SMOOTHGRAD_KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")
INTEGRATION_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
BASELINE_NAMES = ("blur", "uniform")

_CAPABILITIES: dict[type, tuple[str, str]] = {
    SupportsReluRule: ("with_relu_rule(rule)", "TorchBackend (gradsal.backends.torch) and OnnxBackend "
                                               "(gradsal.backends.onnx)"),
    SupportsLayers: ("layer_vjp(x, layer, cotangent)", "TorchBackend (gradsal.backends.torch) and OnnxBackend "
                                                        "(gradsal.backends.onnx)"),
    SupportsJVP: ("jvp(x, tangent)", "TorchBackend, OnnxBackend and FunctionBackend"),
}


# ----------------------------------------------------------------------------- shared machinery
def require_capability(backend: Any, capability: type, method: str) -> None:
    """Raise :class:`MissingCapabilityError` unless ``backend`` implements the ``capability`` protocol."""
    if isinstance(backend, capability):
        return
    signature, which = _CAPABILITIES.get(capability, ("its methods", "see gradsal.core.protocol"))
    raise MissingCapabilityError(
        f"{method} needs a backend with the {capability.__name__} capability ({signature}), and "
        f"{type(backend).__name__} does not have it. Backends that have it: {which}. Pass your model to one of "
        f"them (e.g. a torch.nn.Module or an .onnx file), or implement {signature} on your backend."
    )


def _prepare(model: Any, x: Any, batch_size: int | None) -> tuple[GradientBackend, np.ndarray, int]:
    backend = as_backend(model)
    array = as_float_batch(x)
    return backend, array, resolve_batch_size(batch_size, array[0].nbytes)


def backend_vjp(backend: GradientBackend, rows: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
    """``J^T cotangent`` for ``rows`` from ``backend.vjp``, checked to be shaped like ``rows``."""
    _, grads = unpack_pair(call_backend(backend, "vjp", rows, cotangent), "vjp", backend)
    grads = backend_array(grads, "a gradient", len(rows), backend)
    if grads.shape != rows.shape:
        raise BackendError(f"{type(backend).__name__}.vjp returned a gradient of shape {grads.shape} for an input "
                           f"of shape {rows.shape}; the gradient must be shaped like the input.")
    return grads


def _stacked_vjp(
    backend: GradientBackend,
    cotangent: np.ndarray,
    n_copies: int,
    batch_size: int,
    make_rows: Callable[[Segment], np.ndarray],
    consume: Callable[[Segment, np.ndarray], None],
) -> None:
    """Pull ``cotangent`` back through ``n_copies`` stacked copies of the batch, chunk by chunk.

    ``make_rows(segment)`` builds the input rows of a segment and ``consume(segment, grads)`` receives
    their gradients; both are called segment by segment in copy-major order, whatever ``batch_size`` is.
    """
    for segments in stacked_chunks(len(cotangent), n_copies, batch_size):
        rows = _join([make_rows(s) for s in segments])
        cot = _join([cotangent[s.start:s.stop] for s in segments])
        grads = backend_vjp(backend, rows, cot)
        offset = 0
        for segment in segments:
            consume(segment, grads[offset:offset + segment.rows])
            offset += segment.rows


def _join(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _gradients(backend: GradientBackend, x: np.ndarray, cotangent: np.ndarray, batch_size: int) -> np.ndarray:
    out = np.empty(x.shape, dtype=x.dtype)

    def consume(segment: Segment, grads: np.ndarray) -> None:
        out[segment.start:segment.stop] = grads

    _stacked_vjp(backend, cotangent, 1, batch_size, lambda s: x[s.start:s.stop], consume)
    return out


# ----------------------------------------------------------------------------- plain gradients
def vanilla_gradient(model: Any, x: np.ndarray, target: Any = None, *, batch_size: int | None = None) -> np.ndarray:
    """The input gradient ``dS_i/dx_i = J(x_i)^T v_i`` of the explained output (a saliency map).

    Simonyan, Vedaldi & Zisserman (2013), "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps". Shaped like ``x``; pass it to
    :func:`~gradsal.core.to_saliency_map` for the paper's max-over-channels of ``|grad|``.
    """
    backend, x, rows = _prepare(model, x, batch_size)
    cotangent = target_cotangent(backend, x, target, rows)
    return _gradients(backend, x, cotangent, rows)


def gradient_x_input(model: Any, x: np.ndarray, target: Any = None, *, batch_size: int | None = None) -> np.ndarray:
    """Gradient times input, ``x_i * dS_i/dx_i`` elementwise.

    Shrikumar, Greenside, Shcherbina & Kundaje (2016), "Not Just a Black Box: Learning Important Features
    Through Propagating Activation Differences". For a linear model it is each feature's contribution
    ``w * x``; it equals Integrated Gradients with a zero baseline when the model is linear.
    """
    backend, x, rows = _prepare(model, x, batch_size)
    cotangent = target_cotangent(backend, x, target, rows)
    return (_gradients(backend, x, cotangent, rows) * x).astype(x.dtype, copy=False)


# ----------------------------------------------------------------------------- SmoothGrad
class _Moments:
    """Per-sample reduction of SmoothGrad's gradients over the noisy copies, in float64, in a fixed order.

    ``smoothgrad`` and ``smoothgrad_sq`` keep a running sum (of ``g`` and of ``g**2``, terms that cannot
    cancel in the second) and divide by the number of copies at the end. ``vargrad`` keeps Welford's
    running mean and sum of squared deviations: no cancellation, and exactly 0 when every copy has the
    same gradient. Segments come copy by copy, so the additions happen in one order for any chunking.
    """

    def __init__(self, kind: str, shape: tuple[int, ...]) -> None:
        self.kind = kind
        self.first = np.zeros(shape)  # the sum of g or g**2; the running mean for vargrad
        self.m2 = np.zeros(shape) if kind == "vargrad" else None

    def add(self, segment: Segment, grads: np.ndarray) -> None:
        rows = slice(segment.start, segment.stop)
        first = self.first[rows]  # views: updated in place
        if self.kind == "smoothgrad":
            first += grads
            return
        values = grads.astype(np.float64)  # a fresh float64 array, worked on in place below
        if self.kind == "smoothgrad_sq":
            values *= values
            first += values
            return
        delta = values - first
        first += delta / (segment.copy + 1)
        values -= first
        values *= delta
        self.m2[rows] += values

    def result(self, n_samples: int) -> np.ndarray:
        return (self.m2 if self.kind == "vargrad" else self.first) / n_samples


def smoothgrad(
    model: Any,
    x: np.ndarray,
    target: Any = None,
    *,
    n_samples: int = 50,
    noise_level: float = 0.15,
    kind: SmoothGradKind = "smoothgrad",
    seed: int | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """SmoothGrad: the gradient averaged over noisy copies of each sample.

    ``smoothgrad = mean_k g(x + e_k)``, ``smoothgrad_sq = mean_k g(x + e_k)^2``, ``vargrad = var_k g(x + e_k)``
    (population variance), with ``e_k ~ N(0, sigma_i^2)`` and ``sigma_i = noise_level * (max(x_i) - min(x_i))``
    per sample. Smilkov, Thorat, Kim, Viégas & Wattenberg (2017), "SmoothGrad: removing noise by adding
    noise"; VarGrad: Adebayo et al. (2018), "Local Explanation Methods for Deep Neural Networks Lack
    Sensitivity to Parameter Values". The target is resolved once on the clean ``x``. ``seed`` makes the
    noise (and so the result) reproducible bit for bit; ``noise_level=0`` gives the vanilla gradient.
    The noise is drawn and added in float32 for float32 (and float16) ``x``, else in float64.
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    noise_level = check_nonnegative_float(noise_level, "noise_level")
    kind = check_choice(kind, "kind", SMOOTHGRAD_KINDS)
    backend, x, rows = _prepare(model, x, batch_size)
    cotangent = target_cotangent(backend, x, target, rows)
    flat = x.reshape(len(x), -1)
    sigma = noise_level * (flat.max(axis=1).astype(np.float64) - flat.min(axis=1))
    noise_dtype = np.dtype(np.float32 if x.dtype.itemsize <= 4 else np.float64)
    sigma = sigma.astype(noise_dtype).reshape(-1, *([1] * (x.ndim - 1)))
    rng = np.random.default_rng(seed)
    moments = _Moments(kind, x.shape)

    def noisy(segment: Segment) -> np.ndarray:
        noise = rng.standard_normal((segment.rows, *x.shape[1:]), dtype=noise_dtype)
        noise *= sigma[segment.start:segment.stop]
        clean = x[segment.start:segment.stop]
        if x.dtype != noise_dtype:  # float16, long double: added in the wider type, then cast
            return (clean + noise).astype(x.dtype)
        noise += clean  # now the noisy input x + e
        return noise

    _stacked_vjp(backend, cotangent, n_samples, rows, noisy, moments.add)
    return moments.result(n_samples).astype(x.dtype)


# ----------------------------------------------------------------------------- Integrated Gradients
def integration_rule(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Path positions ``alpha_k`` in [0, 1] and weights ``w_k`` (summing to 1) of an IG quadrature rule.

    ``riemann_left/right/middle``: ``n`` equal cells, evaluated at the left/right end or the middle;
    ``riemann_trapezoid``: ``n`` points including both ends, end weights halved (needs ``n >= 2``);
    ``gausslegendre``: Gauss-Legendre nodes mapped to [0, 1]. The weights are normalised to sum to 1, so
    every rule is exact (up to rounding) when the gradient is constant along the path, i.e. for a
    linear model.
    """
    method = check_choice(method, "method", INTEGRATION_METHODS)
    n = check_positive_int(n_steps, "n_steps", minimum=2 if method == "riemann_trapezoid" else 1)
    alphas, weights = _integration_rule(method, n)
    return alphas.copy(), weights.copy()


@functools.lru_cache(maxsize=32)
def _integration_rule(method: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    steps = np.arange(n, dtype=np.float64)
    weights = np.ones(n)
    if method == "riemann_left":
        alphas = steps / n
    elif method == "riemann_right":
        alphas = (steps + 1) / n
    elif method == "riemann_middle":
        alphas = (steps + 0.5) / n
    elif method == "riemann_trapezoid":
        alphas = steps / (n - 1)
        weights[[0, -1]] = 0.5
    else:
        nodes, weights = np.polynomial.legendre.leggauss(n)
        alphas = (nodes + 1) / 2
    return alphas, weights / weights.sum()


def integrated_gradients(
    model: Any,
    x: np.ndarray,
    target: Any = None,
    *,
    baseline: float | np.ndarray | Literal["blur", "uniform"] = 0.0,
    n_steps: int = 50,
    method: IntegrationMethod = "gausslegendre",
    batch_size: int | None = None,
    return_delta: bool = False,
    seed: int | None = None,
    blur_sigma: float | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Integrated Gradients: ``(x - b) * integral_0^1 g(b + a (x - b)) da``, by quadrature.

    Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep Networks". The integral is
    ``sum_k w_k g(b + alpha_k (x - b))`` over the ``n_steps`` points of ``method`` (see
    :func:`integration_rule`; weights sum to 1, so every rule is exact on a linear model). Completeness:
    ``sum(attr_i) = S_i(x_i) - S_i(b_i)`` up to the quadrature error; ``return_delta=True`` also returns
    that gap per sample (float64), ``delta_i = sum(attr_i) - <f(x_i) - f(b_i), v_i>``.

    ``baseline``: a scalar; an array broadcastable to ``x`` (shaped like ``x``, like one sample, or e.g.
    ``(1, C, 1, 1)`` per channel); ``"blur"``: ``x`` blurred by a Gaussian of std ``blur_sigma`` pixels
    (default a tenth of the smallest spatial size) over the spatial axes (axes 2.. of ``(N, C, ...)``,
    or axis 1 of ``(N, D)``); ``"uniform"``: uniform noise in each sample's ``[min(x_i), max(x_i)]``,
    drawn with ``seed``.
    """
    alphas, weights = integration_rule(method, n_steps)
    backend, x, rows = _prepare(model, x, batch_size)
    base = make_baseline(baseline, x, seed=seed, blur_sigma=blur_sigma)
    cotangent = target_cotangent(backend, x, target, rows)
    difference = x.astype(np.float64) - base
    integral = np.zeros(x.shape)

    def path_point(segment: Segment) -> np.ndarray:
        part = slice(segment.start, segment.stop)
        return (base[part] + alphas[segment.copy] * difference[part]).astype(x.dtype)

    def consume(segment: Segment, grads: np.ndarray) -> None:
        integral[segment.start:segment.stop] += weights[segment.copy] * grads.astype(np.float64)

    _stacked_vjp(backend, cotangent, len(alphas), rows, path_point, consume)
    attributions = difference * integral
    if not return_delta:
        return attributions.astype(x.dtype)
    gain = forward_batch(backend, x, rows).astype(np.float64) - forward_batch(backend, base.astype(x.dtype), rows)
    explained = (gain * cotangent).reshape(len(x), -1).sum(axis=1)
    delta = attributions.reshape(len(x), -1).sum(axis=1) - explained
    return attributions.astype(x.dtype), delta


def make_baseline(baseline: Any, x: np.ndarray, *, seed: int | None = None,
                  blur_sigma: float | None = None) -> np.ndarray:
    """The IG baseline for ``x`` as a float64 array shaped like ``x`` (see :func:`integrated_gradients`)."""
    if isinstance(baseline, str):
        name = check_choice(baseline, "baseline", BASELINE_NAMES)
        if name == "blur":
            return gaussian_blur(x, blur_sigma)
        flat = x.reshape(len(x), -1).astype(np.float64)
        low = flat.min(axis=1).reshape(-1, *([1] * (x.ndim - 1)))
        high = flat.max(axis=1).reshape(low.shape)
        return low + (high - low) * np.random.default_rng(seed).random(x.shape)
    if isinstance(baseline, bool) or baseline is None:
        raise InputTypeError(f"baseline={baseline!r} is not a baseline: pass a number, an array broadcastable to "
                             f"x {x.shape}, 'blur' or 'uniform'.")
    if isinstance(baseline, numbers.Real):
        array = np.full(x.shape, float(baseline))
    else:
        array = np.asarray(baseline)
        if array.dtype.kind not in "fiu":
            raise InputTypeError(f"baseline has dtype {array.dtype}: pass a real-valued array broadcastable to x "
                                 f"{x.shape}, a number, 'blur' or 'uniform'.")
        if not _broadcasts_to(array.shape, x.shape):
            raise InputError(
                f"baseline has shape {array.shape}, which does not broadcast to x's shape {x.shape}: pass an array "
                f"shaped like x {x.shape}, like one sample {x.shape[1:]}, a per-channel array such as "
                f"{(1, x.shape[1], *([1] * (x.ndim - 2)))}, or a number."
            )
        array = np.broadcast_to(array.astype(np.float64), x.shape).copy()
    check_finite(array, "baseline")
    return array


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == target
    except ValueError:
        return False


def gaussian_blur(x: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """``x`` (float64) blurred by a Gaussian of std ``sigma`` over its spatial axes (NumPy only).

    Spatial axes are 2.. for ``(N, C, ...)`` inputs and axis 1 for ``(N, D)``; the kernel is truncated at
    3 sigma and the edges are mirrored. ``sigma`` None: a tenth of the smallest spatial size (at least 1).
    """
    axes = tuple(range(2, x.ndim)) if x.ndim >= 3 else (1,)
    if sigma is None:
        sigma = max(1.0, min(x.shape[a] for a in axes) / 10)
    sigma = check_nonnegative_float(sigma, "blur_sigma")
    result = x.astype(np.float64)
    if sigma == 0:
        return result
    radius = int(np.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in axes:
        result = _convolve_axis(result, kernel, axis, radius)
    return result


def _convolve_axis(array: np.ndarray, kernel: np.ndarray, axis: int, radius: int) -> np.ndarray:
    pad = [(0, 0)] * array.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(array, pad, mode="symmetric")
    length = array.shape[axis]
    out = np.zeros_like(array)
    for offset, weight in enumerate(kernel):
        window = [slice(None)] * array.ndim
        window[axis] = slice(offset, offset + length)
        out += weight * padded[tuple(window)]
    return out


# ----------------------------------------------------------------------------- modified backprop
def guided_backprop(model: Any, x: np.ndarray, target: Any = None, *, batch_size: int | None = None) -> np.ndarray:
    """Guided backpropagation: the gradient with ReLU's backward pass replaced by ``g * [a > 0] * [g > 0]``.

    Springenberg, Dosovitskiy, Brox & Riedmiller (2015), "Striving for Simplicity: The All Convolutional
    Net". Needs a backend with ``SupportsReluRule`` (rule ``"guided"``); shaped like ``x``.
    """
    return _relu_rule_gradient(model, x, target, "guided", "guided_backprop", batch_size)


def deconvnet(model: Any, x: np.ndarray, target: Any = None, *, batch_size: int | None = None) -> np.ndarray:
    """DeconvNet: the gradient with ReLU's backward pass replaced by ``g * [g > 0]``.

    Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks", in the form of
    Springenberg et al. (2015). Needs a backend with ``SupportsReluRule`` (rule ``"deconvnet"``).
    """
    return _relu_rule_gradient(model, x, target, "deconvnet", "deconvnet", batch_size)


def _relu_rule_gradient(model: Any, x: Any, target: Any, rule: ReluRule, method: str,
                        batch_size: int | None) -> np.ndarray:
    backend, x, rows = _prepare(model, x, batch_size)
    require_capability(backend, SupportsReluRule, method)
    ruled = call_backend(backend, "with_relu_rule", rule)
    cotangent = target_cotangent(backend, x, target, rows)
    return _gradients(ruled, x, cotangent, rows)


# ----------------------------------------------------------------------------- Grad-CAM
def grad_cam(
    model: Any,
    x: np.ndarray,
    target: Any = None,
    *,
    layer: str,
    channel_axis: int = 1,
    batch_size: int | None = None,
) -> np.ndarray:
    """Grad-CAM: ``ReLU(sum_k w_k A_k)`` with ``w_k = mean over space of dS/dA_k``, upsampled to the input.

    Selvaraju et al. (2017), "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization". ``A`` is the activation of ``layer`` (a backend-specific name; needs ``SupportsLayers``),
    laid out with its channels on ``channel_axis`` (NCHW: 1). Unlike the other methods the result is a
    per-pixel map, not shaped like ``x``: ``(N, *spatial)``, e.g. ``(N, H, W)`` for ``x`` of shape
    ``(N, C, H, W)`` (the input's channels are on the same ``channel_axis``), bilinearly upsampled
    (half-pixel centres) from the layer's resolution. Values are >= 0 and not normalised; use
    ``to_saliency_map(cam, reduce=None)`` for [0, 1].
    """
    backend, x, rows = _prepare(model, x, batch_size)
    require_capability(backend, SupportsLayers, "grad_cam")
    if not isinstance(layer, str):
        raise InputTypeError(f"layer must be the name of a layer (a string), got {layer!r}.")
    axis = check_axis(channel_axis, x.ndim, "channel_axis")
    spatial = tuple(n for i, n in enumerate(x.shape) if i not in (0, axis))
    cotangent = target_cotangent(backend, x, target, rows)
    maps = [_cam_chunk(backend, x[part], layer, cotangent[part], channel_axis) for part in row_chunks(len(x), rows)]
    cams = np.concatenate(maps)
    if cams.ndim - 1 != len(spatial):
        raise InputError(
            f"Layer {layer!r} has {cams.ndim - 1} spatial axes but x {x.shape} has {len(spatial)} (after removing "
            f"the batch and channel_axis={channel_axis}): give x a channel axis, or pick a layer of the same layout."
        )
    return resize_linear(cams, spatial).astype(x.dtype)


def _cam_chunk(backend: Any, rows: np.ndarray, layer: str, cotangent: np.ndarray, channel_axis: int) -> np.ndarray:
    activation, grad = unpack_pair(call_backend(backend, "layer_vjp", rows, layer, cotangent), "layer_vjp",
                                   backend)
    activation = backend_array(activation, f"the activation of {layer!r}", len(rows), backend)
    grad = backend_array(grad, f"the gradient at {layer!r}", len(rows), backend)
    if activation.shape != grad.shape:
        raise BackendError(f"{type(backend).__name__}.layer_vjp returned an activation {activation.shape} and a "
                           f"gradient {grad.shape} of different shapes.")
    if activation.ndim < 3:
        raise InputError(
            f"Layer {layer!r} has activations of shape {activation.shape}, without spatial axes: Grad-CAM needs a "
            "convolutional layer (N, C, H, W), typically the last one before pooling."
        )
    axis = check_axis(channel_axis, activation.ndim, "channel_axis")
    activation = np.moveaxis(activation.astype(np.float64), axis, 1)
    grad = np.moveaxis(grad.astype(np.float64), axis, 1)
    weights = grad.mean(axis=tuple(range(2, grad.ndim)))
    cam = np.einsum("nk,nk...->n...", weights, activation)
    return np.maximum(cam, 0.0)


def resize_linear(maps: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Resize ``maps`` ``(N, *spatial)`` to ``(N, *size)`` by separable linear interpolation.

    Half-pixel centres, edges clamped (as ``align_corners=False`` bilinear resizing in PyTorch and OpenCV):
    output pixel ``j`` samples the input at ``(j + 0.5) * n_in / n_out - 0.5``.
    """
    result = np.asarray(maps, dtype=np.float64)
    for axis, n_out in enumerate(size, start=1):
        n_in = result.shape[axis]
        if n_in == n_out:
            continue
        source = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.floor(source).astype(np.intp)
        high = np.minimum(low + 1, n_in - 1)
        frac = (source - low).reshape(-1, *([1] * (result.ndim - axis - 1)))
        result = np.take(result, low, axis=axis) * (1 - frac) + np.take(result, high, axis=axis) * frac
    return result
