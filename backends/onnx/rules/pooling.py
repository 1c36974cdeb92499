"""VJP and JVP rules of the pooling operators: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.

MaxPool is piecewise linear: ``y[o] = x[argmax of window o]``, so its VJP sends each window's cotangent to
its argmax, the first maximum in scan order (torch's rule and onnxruntime's ``Indices``), and its JVP
gathers the tangent there. The exact graph reads the pooling ``Indices`` and scatters (MaxUnpool, or
ScatterElements, adding where windows overlap). For float32 2-D windows that tile the input the rule
speculates instead (:meth:`~.registry.RuleContext.guard`): the cotangent, upsampled, times the mask
``[x == its window's maximum]``, which is the argmax rule wherever each window has one maximum and runs in
onnxruntime's blocked layout; a guard output reports a window with two, and the backend then reruns on
the exact graph. AveragePool is linear: ``y = (window sum of x) / divisor``, whose adjoint scales the
cotangent by ``1 / divisor`` and spreads it over each window (:mod:`.correlation`, all-ones kernel);
GlobalAveragePool's adjoint is the cotangent divided by the area, broadcast; GlobalMaxPool's sends it to
the first maximum of each (sample, channel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import product
from typing import TYPE_CHECKING

import numpy as np

from ....core.errors import UnsupportedOperatorError
from . import emit, forms
from .correlation import correlation_adjoint, transpose_adjoint, window_sum_strategy
from .registry import RuleContext, jvp_rule, linear, vjp_rule
from .windows import Axis, overlapping, window_axes

if TYPE_CHECKING:
    from onnx import NodeProto

Names = list[str | None]


def _pool_axes(ctx: RuleContext, node: NodeProto) -> list[Axis]:
    kernel = list(ctx.attr(node, "kernel_shape"))
    return window_axes(ctx, node, node.input[0], node.output[0], kernel, pool=True)


# -------------------------------------------------------------------------------------------- MaxPool


def _max_pool_indices(ctx: RuleContext, node: NodeProto) -> str:
    """Row-major flat argmax of every window (onnxruntime: the first maximum in scan order wins a tie)."""
    if len(node.output) > 1 and node.output[1] and int(ctx.attr(node, "storage_order", 0)) == 0:  # type: ignore[arg-type]
        return node.output[1]
    return ctx.emit("MaxPool", [node.input[0]], 2, **emit.node_attributes(ctx, node, storage_order=0))[1]


def _scatter_add(ctx: RuleContext, g: str, indices: str, x_shape: Sequence[int], axes: Sequence[Axis]) -> str:
    """``x_grad.flat[indices] += g`` for every window.

    Windows that never share a cell: one MaxUnpool (float32) or ScatterElements. Overlapping windows:
    one ScatterElements with ``reduction="add"`` (opset 16+), or before that one plain scatter per set
    of windows ``ceil(extent / stride)`` apart (such windows never overlap), summed.
    """
    size = math.prod(x_shape)
    if ctx.opset < 11:
        raise UnsupportedOperatorError(
            f"MaxPool's gradient needs ScatterElements (opset >= 11; the model has {ctx.opset}): convert the "
            f"model to opset 11 or later, or {emit.FALLBACK_HINT}"
        )
    if not overlapping(axes) and np.dtype(ctx.dtype(g)) == np.float32:  # MaxUnpool: float only, and faster
        # its pads only have to keep the shape it infers, (out-1)*stride + kernel - pads, within x's
        excess = [max((a.out - 1) * a.stride + a.kernel - a.size, 0) for a in axes]
        ends = [min(e, a.kernel - 1) for e, a in zip(excess, axes, strict=True)]
        begins = [e - end for e, end in zip(excess, ends, strict=True)]
        return ctx.emit1("MaxUnpool", [g, indices, ctx.const(list(x_shape))], kernel_shape=[a.kernel for a in axes],
                         strides=[a.stride for a in axes], pads=begins + ends)
    zeros = emit.zeros(ctx, [size], g)

    def scatter(values: str, where: str, **attrs: object) -> str:
        flat_values, flat_where = emit.reshape(ctx, values, [-1]), emit.reshape(ctx, where, [-1])
        return ctx.emit1("ScatterElements", [zeros, flat_where, flat_values], axis=0, **attrs)

    if not overlapping(axes):
        flat = scatter(g, indices)
    elif ctx.opset >= 16:
        flat = scatter(g, indices, reduction="add")
    else:  # windows `ceil(extent / stride)` apart never overlap: scatter each such phase and add them up
        g_shape = ctx.shape(g)
        period = [-(-a.extent // a.stride) for a in axes]
        terms = []
        for phase in product(*(range(min(p, a.out)) for p, a in zip(period, axes, strict=True))):
            spatial = list(range(2, 2 + len(axes)))
            ends = [int(d) for d in g_shape[2:]]
            terms.append(scatter(emit.slice_axes(ctx, g, spatial, list(phase), ends, period),
                                 emit.slice_axes(ctx, indices, spatial, list(phase), ends, period)))
        flat = emit.total(ctx, terms)
    return emit.reshape(ctx, flat, x_shape, from_shape=[size])


@vjp_rule("MaxPool", differentiable=(0,))
def max_pool_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Each window's cotangent goes to its argmax, the first maximum in scan order (the pooling Indices):
    MaxUnpool or ScatterElements; for tiled float32 2-D windows, speculatively a mask, guarded for ties."""
    g = grads[0]
    if g is None:  # only the Indices output is on the path: integers carry no gradient
        return emit.nothing(node)
    axes = _pool_axes(ctx, node)
    if _takes_mask(ctx, node):
        masked, ties = _max_pool_mask(ctx, node, g, axes)
        ctx.guard(ties, "a max-pooling window has two maxima")
        return [masked]
    return [_scatter_add(ctx, g, _max_pool_indices(ctx, node), ctx.shape(node.input[0]), axes)]


def _takes_mask(ctx: RuleContext, node: NodeProto) -> bool:
    """Whether this MaxPool's VJP takes the speculative mask form (:func:`_max_pool_mask`)."""
    return ctx.speculative and _tiles(ctx, node.input[0], _pool_axes(ctx, node))


def _tiles(ctx: RuleContext, x: str, axes: Sequence[Axis]) -> bool:
    """2-D float32 windows that tile x exactly: stride = kernel, no padding or dilation, nothing left over."""
    return (ctx.opset >= 11 and len(axes) == 2 and np.dtype(ctx.dtype(x)) == np.float32
            and all(a.stride == a.kernel and a.dilation == 1 and a.pad_begin == 0 and a.size == a.out * a.kernel
                    for a in axes))


def _relu_masks_cotangent(ctx: RuleContext, x: str) -> bool:
    """True when ``x`` is a Relu's output whose VJP multiplies x's cotangent by ``[x > 0]`` (the standard
    and guided rules; not deconvnet's, and no Relu VJP runs when x is the tensor differentiated)."""
    producer = ctx.producer(x)
    return producer is not None and producer.op_type == "Relu" and ctx.relu_rule != "deconvnet"


def _max_pool_mask(ctx: RuleContext, node: NodeProto, g: str, axes: Sequence[Axis]) -> tuple[str, str]:
    """``g`` upsampled times ``[x == max of its window]``, and whether some window has two maxima.

    The mask sends a window's cotangent to every maximum, so it is the argmax rule only where each window
    has one; where a window has more, the guard makes the backend run the graph built with the Indices.
    Every op here runs in onnxruntime's blocked NCHWc layout (nearest Resize, the per-channel multiply +
    Add + steep HardSigmoid fused into one Conv, AveragePool), where MaxPool with Indices is a scalar NCHW
    kernel that costs several passes over x (a cotangent that reaches y through a view enters that
    layout at the view: :func:`blocked_cotangent`). When x is a ReLU's output (and the ReLU's VJP masks
    by ``[x > 0]``), the windows whose maximum is 0 hold only zeros, and what any of them receives the
    ReLU zeroes: their maximum is compared as 1 instead (``y + [y <= 0]``, on the pooled tensor), so that
    the mask is 0 there, their ties do not count, and the result is already zero wherever x is 0: the
    ReLU's VJP then passes it on without a second full-size mask (:meth:`~.registry.RuleContext.mark_masked`).
    """
    x, y = node.input[0], node.output[0]
    after_relu = _relu_masks_cotangent(ctx, x)
    top = ctx.emit1("Add", [y, forms.off(ctx, y)]) if after_relu else y
    kernel = [a.kernel for a in axes]
    scales = ctx.const(np.array([1.0, 1.0, *kernel], dtype=np.float32))
    roi = ctx.const(np.zeros(0, dtype=np.float32))

    def upsample(name: str) -> str:
        up = ctx.emit1("Resize", [name, roi, scales], mode="nearest", coordinate_transformation_mode="asymmetric",
                       nearest_mode="floor")
        ctx.record(up, x)
        return up

    gap = ctx.emit1("Add", [forms.scale(ctx, upsample(top), -1.0, like=x), x])  # x - max <= 0, 0 at a maximum
    at_max = forms.at_top(ctx, gap)
    masked = ctx.emit1("Mul", [upsample(g), at_max])
    if after_relu:
        ctx.mark_masked(masked, x)
    share = ctx.emit1("AveragePool", [at_max], kernel_shape=kernel, strides=kernel)
    most = ctx.emit1("ReduceMax", [share], keepdims=0)
    # not (most < threshold) rather than most > threshold: a NaN (inf - inf at an infinite maximum) flags too
    below = ctx.emit1("Less", [most, ctx.const(np.array(1.5 / math.prod(kernel), dtype=np.float32))])
    return masked, ctx.emit1("Not", [below])


def blocked_cotangent(ctx: RuleContext, y: str, g: str) -> str:
    """``g``, the cotangent of ``y`` as a view (Reshape, Flatten) hands it back, in onnxruntime's blocked
    layout (:func:`~.forms.blocked`) where ``y`` is a MaxPool output whose VJP takes the mask form: that
    VJP's upsampling of ``g`` and its products with the blocked masks then stay blocked, where an NCHW
    ``g`` makes onnxruntime reorder those larger results to NCHW and back. Otherwise ``g`` itself (a
    cotangent from a Conv's VJP is blocked already)."""
    producer = ctx.producer(y)
    if producer is None or producer.op_type != "MaxPool" or not _takes_mask(ctx, producer):
        return g
    return forms.blocked(ctx, g, y)


@jvp_rule("MaxPool")
def max_pool_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """The tangent at each window's argmax (the pooling Indices)."""
    flat = emit.reshape(ctx, tangents[0], [-1])  # type: ignore[arg-type]
    return emit.padded([ctx.emit1("Gather", [flat, _max_pool_indices(ctx, node)], axis=0)], len(node.output))


# ---------------------------------------------------------------------------------------- AveragePool


def _valid_counts(axis: Axis) -> np.ndarray:
    """Per output position, the number of window taps that fall inside the input."""
    taps = np.arange(axis.out)[:, None] * axis.stride + np.arange(axis.kernel)[None, :] * axis.dilation
    taps -= axis.pad_begin
    return ((taps >= 0) & (taps < axis.size)).sum(axis=1)


def _average_pool_weights(ctx: RuleContext, node: NodeProto, axes: Sequence[Axis]) -> str:
    """1 / (the divisor of each output), shaped (1, 1, O...).

    Without ``count_include_pad`` the divisor is the number of taps inside the input. With it, the
    divisor's treatment of windows that overhang the padding (ceil_mode) differs between onnxruntime's
    kernels, so it is read off the operator itself: AveragePool(ones) / (number of taps inside).
    """
    x = node.input[0]
    counts = np.ones([1, 1], dtype=np.float64)
    for axis in axes:
        counts = counts[..., None] * _valid_counts(axis)
    counts = np.maximum(counts, 1)
    if not int(ctx.attr(node, "count_include_pad", 0)):  # type: ignore[arg-type]
        return ctx.const((1.0 / counts).astype(ctx.dtype(x)))
    ones = emit.expand(ctx, ctx.const(np.ones([1] * (2 + len(axes)), dtype=ctx.dtype(x))),
                       [1, 1, *[a.size for a in axes]])
    pooled = ctx.emit1("AveragePool", [ones], **emit.node_attributes(ctx, node))
    return ctx.emit1("Div", [pooled, ctx.const(counts.astype(ctx.dtype(x)))])


def _window_sum_adjoint(ctx: RuleContext, g: str, axes: Sequence[Axis], x_shape: Sequence[int]) -> str:
    """Adjoint of ``y[o] = sum of x over window o``: spread each cotangent over its window, as
    :func:`~.correlation.window_sum_strategy` picks ("transpose": a one-channel all-ones ConvTranspose over
    the N*C images; "conv": the depthwise all-ones case of the Conv adjoint)."""
    if window_sum_strategy(axes) == "conv":
        ones = np.ones([x_shape[1], 1, *[a.kernel for a in axes]], dtype=ctx.dtype(g))
        return correlation_adjoint(ctx, g, ones, x_shape[1], axes, x_shape, "conv")
    n_batch, channels = x_shape[:2]
    images = emit.reshape(ctx, g, [n_batch * channels, 1, *[a.out for a in axes]])
    ones = ctx.const(np.ones([1, 1, *[a.kernel for a in axes]], dtype=ctx.dtype(g)))
    flat_shape = [n_batch * channels, 1, *x_shape[2:]]
    summed = transpose_adjoint(ctx, images, ones, 1, axes, flat_shape)
    return emit.reshape(ctx, summed, x_shape, from_shape=flat_shape)


@linear("AveragePool")
def average_pool_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """``y = (window sum of x) / divisor``: scale the cotangent by 1/divisor, then spread it over each window."""
    axes = _pool_axes(ctx, node)
    scaled = ctx.emit1("Mul", [grads[0], _average_pool_weights(ctx, node, axes)])  # type: ignore[list-item]
    return [_window_sum_adjoint(ctx, scaled, axes, ctx.shape(node.input[0]))]


@linear("GlobalAveragePool")
def global_average_pool_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """The cotangent divided by the area, left as (N, C, 1, 1)."""
    x = node.input[0]
    # the builder broadcasts it when it adds up x's cotangent (no full-sized Expand)
    return [forms.scale(ctx, grads[0], 1.0 / math.prod(ctx.shape(x)[2:]), like=x)]  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------- GlobalMaxPool


def _global_argmax(ctx: RuleContext, x: str) -> tuple[str, list[int]]:
    """Flat spatial argmax per (sample, channel), shaped (N, C, 1), and x's shape as (N, C, positions)."""
    x_shape = ctx.shape(x)
    flat_shape = [x_shape[0], x_shape[1], math.prod(x_shape[2:])]
    return ctx.emit1("ArgMax", [emit.reshape(ctx, x, flat_shape)], axis=2, keepdims=1), flat_shape


@vjp_rule("GlobalMaxPool", differentiable=(0,))
def global_max_pool_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """The cotangent goes to the first maximum of each (sample, channel) (ArgMax's tie rule)."""
    x = node.input[0]
    argmax, flat_shape = _global_argmax(ctx, x)
    values = emit.reshape(ctx, grads[0], [*flat_shape[:2], 1])  # type: ignore[arg-type]
    scattered = ctx.emit1("ScatterElements", [emit.zeros(ctx, flat_shape, values), argmax, values], axis=2)
    return [emit.reshape(ctx, scattered, ctx.shape(x), from_shape=flat_shape)]


@jvp_rule("GlobalMaxPool")
def global_max_pool_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """The tangent at the first maximum of each (sample, channel)."""
    x = node.input[0]
    argmax, flat_shape = _global_argmax(ctx, x)
    picked = ctx.emit1("GatherElements", [emit.reshape(ctx, tangents[0], flat_shape), argmax], axis=2)  # type: ignore[arg-type]
    return [emit.reshape(ctx, picked, ctx.shape(node.output[0]), from_shape=[*flat_shape[:2], 1])]
