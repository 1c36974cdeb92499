"""VJP and JVP rules of inference BatchNormalization and InstanceNormalization (moving to their own family).

Convolution, pooling, Pad and Resize live in ``convolution``, ``pooling``, ``padding`` and ``resizing``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ....core.errors import UnsupportedOperatorError
from .registry import RuleContext, jvp_rule, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto

Names = list[str | None]

_FALLBACK_HINT = "or pass OnnxBackend(..., fallback='finite_differences') to differentiate it numerically."


# --------------------------------------------------------------------------------------------- helpers


def _padded(values: Sequence[str | None], length: int) -> Names:
    return [*values, *[None] * (length - len(values))]


def _unsupported(ctx: RuleContext, node: NodeProto, why: str) -> UnsupportedOperatorError:
    label = f"{node.op_type} node {node.name or '(unnamed)'!r} (opset {ctx.opset})"
    return UnsupportedOperatorError(
        f"{label} lies between the input and the explained output, but {why}. "
        f"Explain a tensor before it (output_name=...), {_FALLBACK_HINT}"
    )


def _reshape(ctx: RuleContext, name: str, shape: Sequence[int]) -> str:
    return ctx.emit1("Reshape", [name, ctx.const([int(d) for d in shape])])


def _reduce_sum(ctx: RuleContext, name: str, axes: Sequence[int], keepdims: int = 1) -> str:
    if ctx.opset >= 13:
        return ctx.emit1("ReduceSum", [name, ctx.const(list(axes))], keepdims=keepdims)
    return ctx.emit1("ReduceSum", [name], axes=list(axes), keepdims=keepdims)


def _reduce_mean(ctx: RuleContext, name: str, axes: Sequence[int]) -> str:
    if ctx.opset >= 18:
        return ctx.emit1("ReduceMean", [name, ctx.const(list(axes))], keepdims=1)
    return ctx.emit1("ReduceMean", [name], axes=list(axes), keepdims=1)


def _bias_grad(ctx: RuleContext, g: str, rank: int) -> str:
    """Sum over every axis but the channels (axis 1) of a rank-``rank`` tensor."""
    return _reduce_sum(ctx, g, [0, *range(2, rank)], keepdims=0)


def _bias_tangent(ctx: RuleContext, tb: str, y: str) -> str:
    rank = len(ctx.shape(y))
    return _reshape(ctx, tb, [1, -1, *[1] * (rank - 2)])


def _tangent_sum(ctx: RuleContext, terms: list[str], bias: str | None, y: str) -> str:
    """Sum of the tangent terms of a linear layer; a bias tangent alone is broadcast to y's shape."""
    if bias is not None:
        if not terms:
            return ctx.emit1("Expand", [bias, ctx.const(list(ctx.shape(y)))])
        terms = [*terms, bias]
    total = terms[0]
    for term in terms[1:]:
        total = ctx.emit1("Add", [total, term])
    return total


# ------------------------------------------------------------------------------------ normalisation


def _channel_shape(ctx: RuleContext, x: str) -> list[int]:
    """(C, 1, ..., 1): a per-channel vector that broadcasts against x = (N, C, spatial...)."""
    rank = len(ctx.shape(x))
    return [-1, *[1] * (rank - 2)]


def _batch_norm_factor(ctx: RuleContext, node: NodeProto) -> str:
    """``scale / sqrt(var + epsilon)`` as one per-channel constant shaped (C, 1, ..., 1)."""
    x, scale, var = node.input[0], node.input[1], node.input[4]
    epsilon = float(ctx.attr(node, "epsilon", 1e-5))  # type: ignore[arg-type]
    scale_value, var_value = ctx.value(scale), ctx.value(var)
    if scale_value is not None and var_value is not None:
        factor = np.asarray(scale_value, np.float64) / np.sqrt(np.asarray(var_value, np.float64) + epsilon)
        return ctx.const(factor.astype(ctx.dtype(x)).reshape(_channel_shape(ctx, x)))
    denominator = ctx.emit1("Sqrt", [ctx.emit1("Add", [var, ctx.const(epsilon, like=var)])])
    return _reshape(ctx, ctx.emit1("Div", [scale, denominator]), _channel_shape(ctx, x))


def _check_inference_batch_norm(ctx: RuleContext, node: NodeProto) -> None:
    if int(ctx.attr(node, "training_mode", 0)) or any(node.output[1:]):  # type: ignore[arg-type]
        raise _unsupported(ctx, node, "it runs in training mode (batch statistics); gradsal differentiates "
                                      "the inference form only (export the model in eval mode)")
    for name in node.input[1:5]:
        if ctx.needs_grad(name):
            raise _unsupported(ctx, node, f"its parameter {name!r} depends on the input")


@vjp_rule("BatchNormalization", differentiable=(0, 1, 2, 3, 4))
def batch_norm_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Inference BatchNormalization is a per-channel affine map: ``x_grad = g * scale / sqrt(var + eps)``."""
    _check_inference_batch_norm(ctx, node)
    g = grads[0]
    if g is None:
        return _padded([], len(node.input))
    return _padded([ctx.emit1("Mul", [g, _batch_norm_factor(ctx, node)])], len(node.input))


@jvp_rule("BatchNormalization")
def batch_norm_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    _check_inference_batch_norm(ctx, node)
    return _padded([ctx.emit1("Mul", [tangents[0], _batch_norm_factor(ctx, node)])], len(node.output))


@dataclass(frozen=True)
class _Normalized:
    """Per-(sample, channel) statistics over the spatial axes: ``xhat = (x - mean) * rstd``."""

    xhat: str
    rstd: str
    axes: list[int]


def _instance_statistics(ctx: RuleContext, node: NodeProto) -> _Normalized:
    x = node.input[0]
    axes = list(range(2, len(ctx.shape(x))))
    epsilon = float(ctx.attr(node, "epsilon", 1e-5))  # type: ignore[arg-type]
    centered = ctx.emit1("Sub", [x, _reduce_mean(ctx, x, axes)])
    variance = _reduce_mean(ctx, ctx.emit1("Mul", [centered, centered]), axes)
    rstd = ctx.emit1("Reciprocal", [ctx.emit1("Sqrt", [ctx.emit1("Add", [variance, ctx.const(epsilon, like=x)])])])
    return _Normalized(ctx.emit1("Mul", [centered, rstd]), rstd, axes)


def _normalization_jacobian(ctx: RuleContext, stats: _Normalized, v: str) -> str:
    """``rstd * (v - mean(v) - xhat * mean(v * xhat))``: the (symmetric) Jacobian of x -> xhat applied to v."""
    centered = ctx.emit1("Sub", [v, _reduce_mean(ctx, v, stats.axes)])
    projection = _reduce_mean(ctx, ctx.emit1("Mul", [v, stats.xhat]), stats.axes)
    inner = ctx.emit1("Sub", [centered, ctx.emit1("Mul", [stats.xhat, projection])])
    return ctx.emit1("Mul", [inner, stats.rstd])


@vjp_rule("InstanceNormalization", differentiable=(0, 1, 2))
def instance_norm_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """``y = scale * xhat + B`` per (sample, channel); x's gradient is J_xhat^T (scale * g) (Ulyanov 2016)."""
    result = _padded([], len(node.input))
    g = grads[0]
    if g is None:
        return result
    x, scale, bias = node.input[:3]
    stats = _instance_statistics(ctx, node) if ctx.needs_grad(x) or ctx.needs_grad(scale) else None
    if ctx.needs_grad(x):
        scaled = ctx.emit1("Mul", [g, _reshape(ctx, scale, _channel_shape(ctx, x))])
        result[0] = _normalization_jacobian(ctx, stats, scaled)  # type: ignore[arg-type]
    if ctx.needs_grad(scale):
        result[1] = _bias_grad(ctx, ctx.emit1("Mul", [g, stats.xhat]), len(ctx.shape(x)))  # type: ignore[union-attr]
    if ctx.needs_grad(bias):
        result[2] = _bias_grad(ctx, g, len(ctx.shape(node.output[0])))
    return result


@jvp_rule("InstanceNormalization")
def instance_norm_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    u, t_scale, t_bias = _padded(tangents, 3)[:3]
    x, scale = node.input[:2]
    stats = _instance_statistics(ctx, node) if u is not None or t_scale is not None else None
    terms = []
    if u is not None:
        normalized = _normalization_jacobian(ctx, stats, u)  # type: ignore[arg-type]
        terms.append(ctx.emit1("Mul", [normalized, _reshape(ctx, scale, _channel_shape(ctx, x))]))
    if t_scale is not None:
        terms.append(ctx.emit1("Mul", [stats.xhat, _reshape(ctx, t_scale, _channel_shape(ctx, x))]))  # type: ignore[union-attr]
    bias = None if t_bias is None else _bias_tangent(ctx, t_bias, node.output[0])
    return _padded([_tangent_sum(ctx, terms, bias, node.output[0])], len(node.output))
