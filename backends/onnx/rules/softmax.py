"""Rules of Softmax and LogSoftmax over their normalised axes.

``y = softmax(x)`` has the symmetric Jacobian ``diag(y) - y y^T`` per slice, so both products are
``y (v - sum(v y))``; ``y = log softmax(x)`` has ``I - 1 softmax(x)^T``, so ``J^T g = g - softmax sum(g)``
and ``J t = t - sum(t softmax)``, with softmax read back as ``exp(y)``. Before opset 13 the input is
coerced to 2-D at ``axis`` (the operator spans every axis from it on); from 13 it spans one axis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import emit
from .emit import Names
from .registry import RuleContext, jvp_rule, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto


def _softmax_axes(ctx: RuleContext, node: NodeProto) -> list[int]:
    """The axes one softmax runs over (none when a coerced [N, 1] input makes the output constant)."""
    rank = len(ctx.shape(node.input[0]))
    if ctx.opset >= 13:
        return [int(ctx.attr(node, "axis", -1)) % rank]
    axis = int(ctx.attr(node, "axis", 1))
    return list(range(axis + rank if axis < 0 else axis, rank))


def _softmax_product(ctx: RuleContext, node: NodeProto, v: str) -> str | None:
    """J v = J^T v = y (v - sum(v y)) over the softmax axes."""
    axes, y = _softmax_axes(ctx, node), node.output[0]
    if not axes:  # coerced to [N, 1]: the output is constantly 1
        return None
    total = emit.reduce_sum(ctx, ctx.emit1("Mul", [v, y]), axes)
    return ctx.emit1("Mul", [y, ctx.emit1("Sub", [v, total])])


# The Jacobian is symmetric: one product serves as the VJP and the JVP.
@vjp_rule("Softmax")
@jvp_rule("Softmax")
def softmax_product(ctx: RuleContext, node: NodeProto, seeds: Names) -> Names:
    return [_softmax_product(ctx, node, seeds[0])]  # type: ignore[arg-type]


def _log_softmax_product(ctx: RuleContext, node: NodeProto, v: str, transposed: bool) -> str | None:
    axes = _softmax_axes(ctx, node)
    return log_softmax_product(ctx, node.output[0], v, axes, transposed) if axes else None


def log_softmax_product(ctx: RuleContext, log_probabilities: str, v: str, axes: list[int], transposed: bool) -> str:
    """J^T v = v - p sum(v) or J v = v - sum(v p) over ``axes`` for the log-softmax y, with p = exp(y)."""
    probabilities = ctx.emit1("Exp", [log_probabilities])
    if transposed:
        return ctx.emit1("Sub", [v, ctx.emit1("Mul", [probabilities, emit.reduce_sum(ctx, v, axes)])])
    return ctx.emit1("Sub", [v, emit.reduce_sum(ctx, ctx.emit1("Mul", [v, probabilities]), axes)])


@vjp_rule("LogSoftmax")
def log_softmax_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    return [_log_softmax_product(ctx, node, grads[0], transposed=True)]  # type: ignore[arg-type]


@jvp_rule("LogSoftmax")
def log_softmax_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    return [_log_softmax_product(ctx, node, tangents[0], transposed=False)]  # type: ignore[arg-type]
