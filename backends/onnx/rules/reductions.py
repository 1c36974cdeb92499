"""Rules of the Reduce* family: ``y = R(x)`` over groups of elements, one group per output element.

ReduceSum and ReduceMean are linear, ``y = (1/N) S x`` with ``S`` the summing matrix (``N`` = 1 for Sum, the
group size for Mean): the JVP is the reduction itself on the tangent, and the VJP broadcasts the cotangent
back over the reduced axes, ``S^T g / N``. The others have the Jacobian ``dy/dx = slope(x) * factor(y)``, an
x-shaped slope times a per-group factor: SumSquare ``2x``, L1 ``sign(x)``, L2 ``x / y``, LogSum
``1 / exp(y)``, LogSumExp ``exp(x - y)``, Max and Min ``[x == y] / #ties``. The VJP is ``slope * factor *
g`` broadcast back (multiplying by the x-shaped slope broadcasts for free), the JVP ``factor *
ReduceSum(slope * t)``. Ties of Max and Min share the cotangent equally, as ``torch.amax`` does, and the JVP
takes the mean of the tied tangents, so that <J u, v> = <u, J^T v> holds everywhere; without ties both are
the usual derivative. Axes are read from the attribute (ReduceSum < 13, the others < 18) or the input
(from then on); no axes means all of them unless ``noop_with_empty_axes`` asks for none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import emit
from .registry import RuleContext, jvp_rule, linear, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto

Names = emit.Names

_SLOPED = ("ReduceMax", "ReduceMin", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceL1", "ReduceLogSum")
# Over an empty set of axes (noop_with_empty_axes=1) onnxruntime still applies the elementwise part
# (ReduceSumSquare gives x^2, ReduceL2 |x|, ReduceLogSum log x); these are the identity there.
_IDENTITY_WHEN_NOOP = frozenset({"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceLogSumExp"})


@dataclass(frozen=True)
class _Reduction:
    axes: list[int]          # reduced axes, sorted, non-negative; empty: each element is its own group
    in_shape: tuple[int, ...]
    kept_shape: tuple[int, ...]  # the output shape with keepdims=1
    out_shape: tuple[int, ...]

    @property
    def count(self) -> int:
        return math.prod(self.in_shape[a] for a in self.axes)


def _reduction(ctx: RuleContext, node: NodeProto) -> _Reduction:
    in_shape = tuple(ctx.shape(node.input[0]))
    rank = len(in_shape)
    axes = ctx.attr(node, "axes")
    if axes is None and emit.optional_input(node, 1):
        axes = emit.constant(ctx, node, node.input[1], "axes").reshape(-1).tolist()
    if not axes:
        axes = [] if ctx.attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    axes = sorted({emit.positive_axis(int(a), rank) for a in axes})
    kept = tuple(1 if a in axes else d for a, d in enumerate(in_shape))
    return _Reduction(axes, in_shape, kept, tuple(ctx.shape(node.output[0])))


def _identity_or_empty(ctx: RuleContext, node: NodeProto, r: _Reduction, v: str, forward: bool) -> str | None:
    """The derivative where it needs no arithmetic: a reduction over no axes that is the identity there
    (``v`` reshaped), or an empty input (zeros); None otherwise."""
    x = node.input[0]
    source, target = (r.in_shape, r.out_shape) if forward else (r.out_shape, r.in_shape)
    if not r.axes and node.op_type in _IDENTITY_WHEN_NOOP:
        return emit.reshape(ctx, v, target, source)
    if math.prod(r.in_shape) == 0:
        return emit.zeros(ctx, target, x)
    return None


def _kept(ctx: RuleContext, r: _Reduction, name: str) -> str:
    """``name`` (output-shaped) viewed with the reduced axes kept as 1s, ready to broadcast against x."""
    return emit.reshape(ctx, name, r.kept_shape, r.out_shape)


# ------------------------------------------------------------------------------------- Sum and Mean


@linear("ReduceSum", "ReduceMean")
def sum_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Broadcast the cotangent back over the reduced axes (divided by the group size for the mean)."""
    x, r = node.input[0], _reduction(ctx, node)
    simple = _identity_or_empty(ctx, node, r, grads[0], forward=False)
    if simple is not None:
        return emit.padded([simple], len(node.input))
    gk = _kept(ctx, r, grads[0])
    if node.op_type == "ReduceMean":
        gk = ctx.emit1("Mul", [gk, ctx.const(1.0 / r.count, like=x)])
    return emit.padded([emit.expand(ctx, gk, r.in_shape, r.kept_shape)], len(node.input))


# ------------------------------------------------------------------------------ the sloped reductions


def _extreme_mask(ctx: RuleContext, node: NodeProto, r: _Reduction) -> tuple[str, str]:
    """(``[x == y]`` in x's type, the number of ties in each reduced group, in the keepdims shape)."""
    x = node.input[0]
    mask = emit.mask(ctx, emit.equal(ctx, x, _kept(ctx, r, node.output[0])), x)
    return mask, emit.reduce_sum(ctx, mask, r.axes, keepdims=1)


def _local_slope(ctx: RuleContext, node: NodeProto, r: _Reduction) -> tuple[str | None, str | None]:
    """``dy/dx`` as (an x-shaped slope or None for 1, a per-group factor in the keepdims shape or None
    for 1)."""
    x, op = node.input[0], node.op_type
    if op == "ReduceSumSquare":
        return ctx.emit1("Add", [x, x]), None
    if op == "ReduceL1":  # sign(x); 0 at 0, a subgradient
        return ctx.emit1("Sign", [x]), None
    if op == "ReduceLogSum":  # 1 / sum x = exp(-y)
        return None, ctx.emit1("Exp", [ctx.emit1("Neg", [_kept(ctx, r, node.output[0])])])
    if op == "ReduceL2":  # x / y; a zero group (x = 0 throughout) gets 0, not 0/0
        tiny = emit.scalar(ctx, float(np.finfo(ctx.dtype(x)).tiny), x)
        return x, ctx.emit1("Reciprocal", [ctx.emit1("Max", [_kept(ctx, r, node.output[0]), tiny])])
    if op == "ReduceLogSumExp":  # softmax over the group: exp(x - y)
        return ctx.emit1("Exp", [ctx.emit1("Sub", [x, _kept(ctx, r, node.output[0])])]), None
    mask, ties = _extreme_mask(ctx, node, r)  # ReduceMax, ReduceMin
    return mask, ctx.emit1("Reciprocal", [ties])


@vjp_rule(*_SLOPED, differentiable=(0,))
def sloped_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """``slope * factor * g``, the cotangent broadcast back over the reduced axes."""
    r = _reduction(ctx, node)
    simple = _identity_or_empty(ctx, node, r, grads[0], forward=False)
    if simple is not None:
        return emit.padded([simple], len(node.input))
    gk = _kept(ctx, r, grads[0])
    slope, factor = _local_slope(ctx, node, r)
    if factor is not None:
        gk = ctx.emit1("Mul", [gk, factor])
    # multiplying by the x-shaped slope broadcasts gk back over the reduced axes for free
    back = emit.expand(ctx, gk, r.in_shape, r.kept_shape) if slope is None else ctx.emit1("Mul", [slope, gk])
    return emit.padded([back], len(node.input))


@jvp_rule(*_SLOPED)
def sloped_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """``factor * ReduceSum(slope * t)``, in the output's shape."""
    t, r = tangents[0], _reduction(ctx, node)
    simple = _identity_or_empty(ctx, node, r, t, forward=True)
    if simple is not None:
        return [simple]
    slope, factor = _local_slope(ctx, node, r)
    summed = emit.reduce_sum(ctx, t if slope is None else ctx.emit1("Mul", [slope, t]), r.axes, keepdims=1)
    if factor is not None:
        summed = ctx.emit1("Mul", [summed, factor])
    return [emit.reshape(ctx, summed, r.out_shape, r.kept_shape)]
