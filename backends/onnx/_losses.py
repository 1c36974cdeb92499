"""Differentiation rule of NegativeLogLikelihoodLoss.

ONNX defines, for input ``x`` of shape (N, C, d...), integer targets ``t`` of shape (N, d...) and optional
class weights ``w`` (C,): ``l[n, d] = -x[n, t[n, d], d] w[t[n, d]]``, 0 where ``t = ignore_index``; the
output is ``l`` (reduction "none"), its sum, or its weighted mean ``sum l / W`` with ``W = sum w[t]`` over
the elements not ignored. Writing ``e[n, c, d] = [c = t[n, d]]`` (the one-hot of the targets) and
``m = [t != ignore_index]``:

- input: ``dL/dx = -e (w[t] m) g'``, with ``g' = g`` (none, sum) or ``g / W`` (mean);
- weight: ``dL/dw_c = sum over t = c of -x[t] m g`` (none, sum) or ``(-x[t] - L) m g / W`` (mean: the
  quotient rule, ``L`` the output).

The rules emit the one-hot as an Equal of the reshaped targets with ``0 .. C-1`` (targets that are ignored
are first replaced by 0, so a negative ``ignore_index`` never wraps around).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._rules import RuleContext, jvp_rule, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto

Names = list[str | None]


class _Parts:
    """The tensors both rules share, emitted once per rule call."""

    def __init__(self, ctx: RuleContext, node: NodeProto) -> None:
        x, target = node.input[0], node.input[1]
        self.weight = node.input[2] if len(node.input) > 2 and node.input[2] else None
        self.x_shape = tuple(ctx.shape(x))
        self.batch_shape = (self.x_shape[0], *self.x_shape[2:])
        self.reduction = str(ctx.attr(node, "reduction", "mean"))
        ignore = ctx.attr(node, "ignore_index", None)
        float_elem = _elem(ctx, x)
        if ignore is None:
            safe, self.mask = target, None
        else:
            ignored = ctx.emit1("Equal", [target, ctx.const(np.array(ignore, dtype=ctx.dtype(target)))])
            safe = ctx.emit1("Where", [ignored, ctx.const(np.array(0, dtype=ctx.dtype(target))), target])
            self.mask = ctx.emit1("Cast", [ctx.emit1("Not", [ignored])], to=float_elem)
        self.safe_target = safe
        classes = np.arange(self.x_shape[1], dtype=ctx.dtype(target)).reshape(1, -1, *[1] * (len(self.x_shape) - 2))
        per_class = ctx.emit1("Reshape", [safe, ctx.const([self.x_shape[0], 1, *self.x_shape[2:]])])
        self.one_hot = ctx.emit1("Cast", [ctx.emit1("Equal", [per_class, ctx.const(classes)])], to=float_elem)
        gathered = ctx.emit1("Gather", [self.weight, safe], axis=0) if self.weight else None
        # w[t] m: the weight of each element (1 without weights), 0 where ignored
        if gathered is not None and self.mask is not None:
            self.element_weight = ctx.emit1("Mul", [gathered, self.mask])
        else:
            self.element_weight = gathered or self.mask
        self.total_weight = None
        if self.reduction == "mean":
            counted = self.element_weight or ctx.const(np.ones(self.batch_shape, dtype=ctx.dtype(x)))
            self.total_weight = _sum_all(ctx, counted, len(self.batch_shape))

    def per_class(self, ctx: RuleContext, name: str) -> str:
        """(N, d...) -> (N, 1, d...), to broadcast against the one-hot."""
        return ctx.emit1("Reshape", [name, ctx.const([self.x_shape[0], 1, *self.x_shape[2:]])])

    def picked(self, ctx: RuleContext, name: str) -> str:
        """``name[n, t[n, d], d]``: the one-hot-weighted sum over the class axis."""
        return _reduce(ctx, ctx.emit1("Mul", [self.one_hot, name]), [1])


def _elem(ctx: RuleContext, name: str) -> int:
    from onnx import helper

    return int(helper.np_dtype_to_tensor_dtype(np.dtype(ctx.dtype(name))))


def _reduce(ctx: RuleContext, name: str, axes: list[int]) -> str:
    if ctx.opset >= 13:
        return ctx.emit1("ReduceSum", [name, ctx.const(axes)], keepdims=0)
    return ctx.emit1("ReduceSum", [name], axes=axes, keepdims=0)


def _sum_all(ctx: RuleContext, name: str, rank: int) -> str:
    return _reduce(ctx, name, list(range(rank)))


@vjp_rule("NegativeLogLikelihoodLoss", differentiable=(0, 2))
def nll_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    g = grads[0]
    result: Names = [None] * len(node.input)
    if g is None:
        return result
    parts = _Parts(ctx, node)
    scaled = ctx.emit1("Div", [g, parts.total_weight]) if parts.total_weight else g  # g' (scalar or (N, d...))
    if ctx.needs_grad(node.input[0]):
        weighted = ctx.emit1("Mul", [parts.element_weight, scaled]) if parts.element_weight else scaled
        if parts.element_weight is None and parts.reduction != "none":  # a scalar: spread over the batch
            weighted = ctx.emit1("Expand", [weighted, ctx.const(list(parts.batch_shape))])
        result[0] = ctx.emit1("Neg", [ctx.emit1("Mul", [parts.one_hot, parts.per_class(ctx, weighted)])])
    if parts.weight is not None and ctx.needs_grad(parts.weight):
        loss_per_unit = ctx.emit1("Neg", [parts.picked(ctx, node.input[0])])  # -x[t], (N, d...)
        if parts.reduction == "mean":
            loss_per_unit = ctx.emit1("Sub", [loss_per_unit, node.output[0]])
        contribution = ctx.emit1("Mul", [loss_per_unit, scaled])
        if parts.mask is not None:
            contribution = ctx.emit1("Mul", [contribution, parts.mask])
        spread = ctx.emit1("Mul", [parts.one_hot, parts.per_class(ctx, contribution)])
        result[2] = _reduce(ctx, spread, [0, *range(2, len(parts.x_shape))])
    return result


@jvp_rule("NegativeLogLikelihoodLoss")
def nll_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    parts = _Parts(ctx, node)
    terms = []
    if tangents[0] is not None:
        picked = ctx.emit1("Neg", [parts.picked(ctx, tangents[0])])
        terms.append(ctx.emit1("Mul", [picked, parts.element_weight]) if parts.element_weight else picked)
    weight_tangent = None
    if len(tangents) > 2 and tangents[2] is not None:
        weight_tangent = ctx.emit1("Gather", [tangents[2], parts.safe_target], axis=0)  # dw[t], (N, d...)
        if parts.mask is not None:
            weight_tangent = ctx.emit1("Mul", [weight_tangent, parts.mask])
        terms.append(ctx.emit1("Mul", [ctx.emit1("Neg", [parts.picked(ctx, node.input[0])]), weight_tangent]))
    if not terms:
        return [None] * len(node.output)
    total = terms[0] if len(terms) == 1 else ctx.emit1("Add", terms)
    rank = len(parts.batch_shape)
    if parts.reduction == "none":
        return [total]
    total = _sum_all(ctx, total, rank)
    if parts.reduction == "mean":
        if weight_tangent is not None:  # the quotient rule: (dS - L dW) / W
            change_of_weight = _sum_all(ctx, weight_tangent, rank)
            total = ctx.emit1("Sub", [total, ctx.emit1("Mul", [node.output[0], change_of_weight])])
        total = ctx.emit1("Div", [total, parts.total_weight])
    return [total]
