"""Rules of BatchNormalization (inference), InstanceNormalization and LayerNormalization.

Inference BatchNormalization is a per-channel affine map, ``y = x scale / sqrt(var + eps) + const``, so
both products multiply by one per-channel factor. Instance (Ulyanov et al. 2016) and Layer normalisation
(Ba, Kiros & Hinton 2016) standardise x over some axes, ``x_hat = (x - mu) r`` with ``r = 1/sqrt(var + eps)``,
then ``y = x_hat scale + B``. The map ``x -> x_hat`` has one symmetric Jacobian, written once here
(:func:`_normalisation_jacobian`): ``J v = r (v - mean(v) - x_hat mean(v x_hat))``, the means over the
normalised axes; x's cotangent is ``J (g scale)`` and its tangent contribution ``scale J t``. The scale and
the bias are linear: their cotangents are ``g x_hat`` and ``g`` summed over the axes they broadcast along.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from . import emit
from .emit import Names
from .registry import RuleContext, jvp_rule, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto


def _mul(ctx: RuleContext, a: str, b: str) -> str:
    return ctx.emit1("Mul", [a, b])



# --------------------------------------------------------------------- the normalisation Jacobian


@dataclass(frozen=True)
class _Normalised:
    """``x_hat = (x - mean) r`` over ``axes``, and ``r = 1/sqrt(var + eps)`` (in x's element type)."""

    x_hat: str
    inv_std: str
    axes: list[int]


class _Projection(NamedTuple):
    product: str  # J v
    mean: str  # mean(v) over the axes
    mean_along: str  # mean(v x_hat) over the axes


def _normalisation_jacobian(ctx: RuleContext, stats: _Normalised, v: str) -> _Projection:
    """``J v = r (v - mean(v) - x_hat mean(v x_hat))``: the (symmetric) Jacobian of x -> x_hat applied to v."""
    mean = emit.reduce(ctx, "ReduceMean", v, stats.axes)
    mean_along = emit.reduce(ctx, "ReduceMean", _mul(ctx, v, stats.x_hat), stats.axes)
    centred = ctx.emit1("Sub", [ctx.emit1("Sub", [v, mean]), _mul(ctx, stats.x_hat, mean_along)])
    return _Projection(_mul(ctx, stats.inv_std, centred), mean, mean_along)


# ------------------------------------------------------------------------- BatchNormalization


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
    return emit.reshape(ctx, ctx.emit1("Div", [scale, denominator]), _channel_shape(ctx, x))


def _check_inference_batch_norm(ctx: RuleContext, node: NodeProto) -> None:
    if int(ctx.attr(node, "training_mode", 0)) or any(node.output[1:]):  # type: ignore[arg-type]
        raise emit.unsupported(ctx, node, "it runs in training mode (batch statistics); gradsal differentiates "
                                          "the inference form only (export the model in eval mode)")
    for name in node.input[1:5]:
        if ctx.needs_grad(name):
            raise emit.unsupported(ctx, node, f"its parameter {name!r} depends on the input")


@vjp_rule("BatchNormalization", differentiable=(0, 1, 2, 3, 4))
def batch_norm_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Inference BatchNormalization is a per-channel affine map: ``x_grad = g * scale / sqrt(var + eps)``."""
    _check_inference_batch_norm(ctx, node)
    return emit.padded([_mul(ctx, grads[0], _batch_norm_factor(ctx, node))], len(node.input))  # type: ignore[arg-type]


@jvp_rule("BatchNormalization")
def batch_norm_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    _check_inference_batch_norm(ctx, node)
    return emit.padded([_mul(ctx, tangents[0], _batch_norm_factor(ctx, node))], len(node.output))  # type: ignore[arg-type]


# ---------------------------------------------------------------------- InstanceNormalization


def _instance_statistics(ctx: RuleContext, node: NodeProto) -> _Normalised:
    """x_hat and r per (sample, channel), over the spatial axes."""
    x = node.input[0]
    axes = list(range(2, len(ctx.shape(x))))
    epsilon = float(ctx.attr(node, "epsilon", 1e-5))  # type: ignore[arg-type]
    centred = ctx.emit1("Sub", [x, emit.reduce(ctx, "ReduceMean", x, axes)])
    variance = emit.reduce(ctx, "ReduceMean", _mul(ctx, centred, centred), axes)
    inv_std = ctx.emit1("Reciprocal", [ctx.emit1("Sqrt", [ctx.emit1("Add", [variance, ctx.const(epsilon, like=x)])])])
    return _Normalised(_mul(ctx, centred, inv_std), inv_std, axes)


def _per_channel(ctx: RuleContext, vector: str, x: str) -> str:
    """A (C,) vector (scale, bias or their tangents) shaped to broadcast against x = (N, C, spatial...)."""
    return emit.reshape(ctx, vector, _channel_shape(ctx, x))


@vjp_rule("InstanceNormalization", differentiable=(0, 1, 2))
def instance_norm_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """``y = scale * x_hat + B`` per (sample, channel): gx = J (scale g), g_scale = sum(g x_hat), g_B = sum(g)."""
    g, (x, scale, bias) = grads[0], node.input[:3]
    result = emit.nothing(node)
    rank = len(ctx.shape(x))
    stats = _instance_statistics(ctx, node) if ctx.needs_grad(x) or ctx.needs_grad(scale) else None
    if stats is not None and ctx.needs_grad(x):
        scaled = _mul(ctx, g, _per_channel(ctx, scale, x))  # type: ignore[arg-type]
        result[0] = _normalisation_jacobian(ctx, stats, scaled).product
    if stats is not None and ctx.needs_grad(scale):
        result[1] = emit.channel_total(ctx, _mul(ctx, g, stats.x_hat), rank)  # type: ignore[arg-type]
    if ctx.needs_grad(bias):
        result[2] = emit.channel_total(ctx, g, rank)  # type: ignore[arg-type]
    return result


@jvp_rule("InstanceNormalization")
def instance_norm_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """t_y = scale J t + t_scale x_hat + t_B (the last two per channel)."""
    t, t_scale, t_bias = emit.padded(tangents, 3)[:3]
    x, scale = node.input[:2]
    terms = []
    if t is not None or t_scale is not None:
        stats = _instance_statistics(ctx, node)
        if t is not None:
            terms.append(_mul(ctx, _normalisation_jacobian(ctx, stats, t).product, _per_channel(ctx, scale, x)))
        if t_scale is not None:
            terms.append(_mul(ctx, stats.x_hat, _per_channel(ctx, t_scale, x)))
    if t_bias is not None:
        bias = emit.reshape(ctx, t_bias, [1, -1, *[1] * (len(ctx.shape(x)) - 2)])
        terms.append(bias if terms else ctx.emit1("Expand", [bias, ctx.const(list(ctx.shape(node.output[0])))]))
    return emit.padded([emit.total(ctx, terms)], len(node.output))


# ------------------------------------------------------------------------- LayerNormalization


def _layer_norm_statistics(ctx: RuleContext, node: NodeProto) -> tuple[_Normalised, int]:
    """x_hat and r over the trailing axes from ``axis``, and the element type U of the node's Mean and
    InvStdDev outputs. One LayerNormalization with unit scale and no bias yields x_hat and r in a single
    fused kernel."""
    x = node.input[0]
    shape = ctx.shape(x)
    axis = int(ctx.attr(node, "axis", -1)) % len(shape)
    stash = int(ctx.attr(node, "stash_type", 1))
    ones = ctx.const(np.ones(shape[axis:], dtype=np.dtype(ctx.dtype(x))))
    x_hat, _, inv_std = ctx.emit(
        "LayerNormalization", [x, ones], 3, axis=axis, epsilon=float(ctx.attr(node, "epsilon", 1e-5)),
        stash_type=stash,
    )
    inv_std = emit.cast(ctx, inv_std, emit.elem_type(ctx, x), stash)
    return _Normalised(x_hat, inv_std, list(range(axis, len(shape)))), stash


@vjp_rule("LayerNormalization")
def layer_norm_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """y = x_hat scale + B over the trailing axes: gx = J (g scale) (plus the terms of the Mean output,
    d mu/dx = 1/N, and of the InvStdDev output, d r/dx = -r^2 x_hat / N), g_scale = g x_hat, g_B = g."""
    x, scale, bias = node.input[0], node.input[1], emit.optional_input(node, 2)
    x_shape = ctx.shape(x)
    stats, stash = _layer_norm_statistics(ctx, node)
    g, g_mean, g_inv_std = emit.padded(grads, 3)[:3]
    result: Names = emit.nothing(node)
    elem = emit.elem_type(ctx, x)
    if ctx.needs_grad(x):
        terms = []
        if g is not None:
            terms.append(_normalisation_jacobian(ctx, stats, _mul(ctx, g, scale)).product)
        count = float(np.prod([x_shape[a] for a in stats.axes]))
        if g_mean is not None:
            share = _mul(ctx, emit.cast(ctx, g_mean, elem, stash), emit.scalar(ctx, 1.0 / count, x))
            terms.append(emit.expand(ctx, share, x_shape, from_shape=ctx.shape(node.output[1])))
        if g_inv_std is not None:
            inv_std = stats.inv_std
            g_r = _mul(ctx, emit.cast(ctx, g_inv_std, elem, stash), _mul(ctx, inv_std, inv_std))
            terms.append(_mul(ctx, _mul(ctx, g_r, stats.x_hat), emit.scalar(ctx, -1.0 / count, x)))
        result[0] = emit.total(ctx, terms)
    if g is not None and ctx.needs_grad(scale):
        result[1] = ctx.unbroadcast(_mul(ctx, g, stats.x_hat), scale, x_shape)
    if g is not None and bias and ctx.needs_grad(bias):
        result[2] = ctx.unbroadcast(g, bias, x_shape)
    return result


@jvp_rule("LayerNormalization")
def layer_norm_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """t_y = scale J t + t_scale x_hat + t_B; the Mean output's tangent is mean(t), InvStdDev's
    -r^2 mean(t x_hat)."""
    x, scale, bias = node.input[0], node.input[1], emit.optional_input(node, 2)
    stats, stash = _layer_norm_statistics(ctx, node)
    t, t_scale, t_bias = emit.padded(tangents, 3)[:3]
    outputs: Names = emit.padded([], len(node.output))
    terms = []
    if t is not None:
        projection = _normalisation_jacobian(ctx, stats, t)
        terms.append(_mul(ctx, projection.product, scale))
        elem = emit.elem_type(ctx, x)
        if len(node.output) > 1 and node.output[1]:
            outputs[1] = emit.cast(ctx, projection.mean, stash, elem)
        if len(node.output) > 2 and node.output[2]:
            minus_r2 = ctx.emit1("Neg", [_mul(ctx, stats.inv_std, stats.inv_std)])
            outputs[2] = emit.cast(ctx, _mul(ctx, minus_r2, projection.mean_along), stash, elem)
    if t_scale is not None:
        terms.append(_mul(ctx, stats.x_hat, t_scale))
    if t_bias is not None:
        terms.append(t_bias if terms else emit.expand(ctx, t_bias, ctx.shape(x), from_shape=ctx.shape(bias)))
    outputs[0] = emit.total(ctx, terms)
    return outputs
