"""VJP rules of Conv and ConvTranspose; their JVPs come from :func:`~.registry.bilinear`.

``y = Conv(x, W) + B`` is bilinear in (x, W) plus a per-channel bias. The input gradient is the adjoint of
the correlation (:mod:`.correlation`, written as the strategy :func:`~.correlation.conv_input_strategy`
picks for the layer; a weight computed in the graph takes ConvTranspose). The weight gradient
``dW[m, c, j] = sum_{n, o} g[n, m, o] x[n, c, o*stride + j*dilation - pad]`` is itself a correlation of x
and the cotangent, with the batch summed as channels and the roles of stride and dilation exchanged; the
bias gradient sums the cotangent over every axis but the channels. ConvTranspose is the adjoint of a Conv
(Dumoulin and Visin 2016), so its input gradient is that Conv, and its weight gradient the same
correlation with x and the cotangent in swapped roles. Shapes are concrete: the window geometry and the
rearranged weights are worked out in NumPy at build time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import emit
from .correlation import conv_input_strategy, correlation_adjoint, transpose_adjoint
from .registry import RuleContext, bilinear
from .windows import Axis, window_attributes, window_axes

if TYPE_CHECKING:
    from onnx import NodeProto

Names = list[str | None]


def _conv_input_grad(ctx: RuleContext, g: str, weight_name: str, group: int, axes: Sequence[Axis],
                     x_shape: Sequence[int]) -> str:
    """The input gradient of ``y = Conv(x, W)`` (no bias) for the cotangent ``g``."""
    weight = ctx.value(weight_name)
    if weight is None:
        return transpose_adjoint(ctx, g, weight_name, group, axes, x_shape)
    weight = np.asarray(weight)
    depthwise = group > 1 and weight.shape[1] == 1
    strategy = conv_input_strategy(axes, group, x_shape[1], depthwise)
    return correlation_adjoint(ctx, g, weight, group, axes, x_shape, strategy, weight_name)


def _correlation(ctx: RuleContext, data: str, data_shape: Sequence[int], weight: str, group: int,
                 axes: Sequence[Axis]) -> str:
    """``Conv(data, weight)`` with explicit pads that make each spatial axis exactly ``axis.out`` long."""
    ends = [a.pad_end_needed for a in axes]
    cropped = emit.crop_or_pad(ctx, data, data_shape, [0, 0, *[min(a.pad_begin, 0) for a in axes]],
                               [0, 0, *[min(e, 0) for e in ends]])
    return ctx.emit1(
        "Conv", [cropped, weight], group=group, kernel_shape=[a.kernel for a in axes],
        strides=[a.stride for a in axes], dilations=[a.dilation for a in axes],
        pads=[max(a.pad_begin, 0) for a in axes] + [max(e, 0) for e in ends],
    )


def _weight_grad(ctx: RuleContext, data: str, cot: str, group: int, axes: Sequence[Axis]) -> str:
    """``dW[m, c, j] = sum_{n,o} cot[n, m, o] data[n, g*Cg + c, o*stride + j*dilation - pad]``, shaped (M, Cg, k...).

    It is itself a grouped correlation, with the batch axis as the channels being summed, the in-group
    channel of ``data`` as the batch, and the roles of stride and dilation exchanged.
    """
    d_shape, c_shape = ctx.shape(data), ctx.shape(cot)
    n_batch, channels, m_out = d_shape[0], d_shape[1], c_shape[1]
    cg, mg, n = channels // group, m_out // group, len(axes)
    spatial = list(range(3, 3 + n))
    lhs = emit.reshape(ctx, data, [n_batch, group, cg, *d_shape[2:]])
    lhs = ctx.emit1("Transpose", [lhs], perm=[2, 1, 0, *spatial])
    lhs = emit.reshape(ctx, lhs, [cg, group * n_batch, *d_shape[2:]])
    rhs = emit.reshape(ctx, cot, [n_batch, group, mg, *c_shape[2:]])
    rhs = ctx.emit1("Transpose", [rhs], perm=[1, 2, 0, *spatial])
    rhs = emit.reshape(ctx, rhs, [m_out, n_batch, *c_shape[2:]])
    swapped = [Axis(a.size, a.kernel, a.out, a.dilation, a.stride, a.pad_begin) for a in axes]
    result = _correlation(ctx, lhs, [cg, group * n_batch, *d_shape[2:]], rhs, group, swapped)
    return ctx.emit1("Transpose", [result], perm=[1, 0, *range(2, 2 + n)])


def _bias_tangent(ctx: RuleContext, node: NodeProto, tb: str) -> str:
    """The bias's tangent (C,) broadcast to the output's shape (it may be the only tangent term)."""
    y_shape = ctx.shape(node.output[0])
    per_channel = emit.reshape(ctx, tb, [1, -1, *[1] * (len(y_shape) - 2)])
    return emit.expand(ctx, per_channel, y_shape)


def _gradients(ctx: RuleContext, node: NodeProto, g: str, input_grad: str | None, weight_grad: str | None) -> Names:
    """The result list of a Conv-like VJP: the given input and weight gradients, and the bias's."""
    b = emit.optional_input(node, 2)
    bias_grad = emit.channel_total(ctx, g, len(ctx.shape(node.output[0]))) if b and ctx.needs_grad(b) else None
    return [input_grad, weight_grad, bias_grad][:len(node.input)]


@bilinear("Conv", bias=2, bias_tangent=_bias_tangent)
def conv_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Input gradient: the adjoint correlation (flipped-kernel Conv or ConvTranspose); weight: a correlation of
    x and g."""
    g: str = grads[0]  # type: ignore[assignment]
    x, w = node.input[0], node.input[1]
    group = int(ctx.attr(node, "group", 1))  # type: ignore[arg-type]
    kernel = ctx.attr(node, "kernel_shape", None) or ctx.shape(w)[2:]
    axes = window_axes(ctx, node, x, node.output[0], list(kernel), pool=False)  # type: ignore[arg-type]
    input_grad = _conv_input_grad(ctx, g, w, group, axes, ctx.shape(x)) if ctx.needs_grad(x) else None
    weight_grad = _weight_grad(ctx, x, g, group, axes) if ctx.needs_grad(w) else None
    return _gradients(ctx, node, g, input_grad, weight_grad)


def _conv_transpose_axes(ctx: RuleContext, node: NodeProto, x: str, y: str, kernel: Sequence[int]) -> list[Axis]:
    """Geometry of the Conv whose adjoint the ConvTranspose is (it maps y's shape to x's shape).

    Pads as onnxruntime resolves them: with ``output_shape`` or SAME_* auto_pad the total padding
    ``stride*(in-1) + output_padding + extent - out`` goes mostly to the end for SAME_UPPER and mostly
    to the start otherwise.
    """
    x_shape, y_shape = ctx.shape(x), ctx.shape(y)
    n = len(kernel)
    strides, dilations, pads, auto_pad = window_attributes(ctx, node, n)
    output_padding = list(ctx.attr(node, "output_padding", None) or [0] * n)
    derived = bool(ctx.attr(node, "output_shape", None)) or auto_pad in ("SAME_UPPER", "SAME_LOWER")
    axes = []
    for a in range(n):
        size, out = y_shape[a + 2], x_shape[a + 2]
        extent = dilations[a] * (kernel[a] - 1) + 1
        if derived:
            total = strides[a] * (out - 1) + output_padding[a] + extent - size
            pad_begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        elif auto_pad == "VALID":
            pad_begin = 0
        else:
            pad_begin = pads[a]
        axes.append(Axis(size, out, int(kernel[a]), strides[a], dilations[a], pad_begin))
    return axes


@bilinear("ConvTranspose", bias=2, bias_tangent=_bias_tangent)
def conv_transpose_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """ConvTranspose is the adjoint of a Conv, so its input gradient is that Conv (same W, strides, pads)."""
    g: str = grads[0]  # type: ignore[assignment]
    x, w = node.input[0], node.input[1]
    group = int(ctx.attr(node, "group", 1))  # type: ignore[arg-type]
    kernel = ctx.attr(node, "kernel_shape", None) or ctx.shape(w)[2:]
    axes = _conv_transpose_axes(ctx, node, x, node.output[0], list(kernel))  # type: ignore[arg-type]
    input_grad = _correlation(ctx, g, ctx.shape(g), w, group, axes) if ctx.needs_grad(x) else None
    weight_grad = _weight_grad(ctx, g, x, group, axes) if ctx.needs_grad(w) else None
    return _gradients(ctx, node, g, input_grad, weight_grad)
