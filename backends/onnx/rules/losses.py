"""Differentiation rules of NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (the former of log_softmax).

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

from . import emit
from .registry import RuleContext, jvp_rule, vjp_rule
from .softmax import log_softmax_product

if TYPE_CHECKING:
    from onnx import NodeProto

Names = emit.Names


class _Parts:
    """The tensors both rules share, emitted once per rule call."""

    def __init__(self, ctx: RuleContext, node: NodeProto) -> None:
        x, target = node.input[0], node.input[1]
        self.weight = node.input[2] if len(node.input) > 2 and node.input[2] else None
        self.x_shape = tuple(ctx.shape(x))
        self.batch_shape = (self.x_shape[0], *self.x_shape[2:])
        self.reduction = str(ctx.attr(node, "reduction", "mean"))
        ignore = ctx.attr(node, "ignore_index", None)
        if ignore is None:
            safe, self.mask = target, None
        else:
            ignored = ctx.emit1("Equal", [target, ctx.const(np.array(ignore, dtype=ctx.dtype(target)))])
            safe = ctx.emit1("Where", [ignored, ctx.const(np.array(0, dtype=ctx.dtype(target))), target])
            self.mask = emit.mask(ctx, ctx.emit1("Not", [ignored]), x)
        self.safe_target = safe
        classes = np.arange(self.x_shape[1], dtype=ctx.dtype(target)).reshape(1, -1, *[1] * (len(self.x_shape) - 2))
        self.one_hot = emit.mask(ctx, ctx.emit1("Equal", [self.per_class(ctx, safe), ctx.const(classes)]), x)
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
        return emit.reduce_sum(ctx, ctx.emit1("Mul", [self.one_hot, name]), [1], keepdims=0)


def _sum_all(ctx: RuleContext, name: str, rank: int) -> str:
    return emit.reduce_sum(ctx, name, list(range(rank)), keepdims=0)


def _loss_vjp(ctx: RuleContext, parts: _Parts, g: str, x: str, loss: str, wants_x: bool,
              wants_weight: bool) -> tuple[str | None, str | None]:
    """(dL/dx, dL/dw) of the loss of log-probabilities ``x`` whose output is ``loss``."""
    grad_x = grad_w = None
    scaled = ctx.emit1("Div", [g, parts.total_weight]) if parts.total_weight else g  # g' (scalar or (N, d...))
    if wants_x:
        weighted = ctx.emit1("Mul", [parts.element_weight, scaled]) if parts.element_weight else scaled
        if parts.element_weight is None and parts.reduction != "none":  # a scalar: spread over the batch
            weighted = ctx.emit1("Expand", [weighted, ctx.const(list(parts.batch_shape))])
        grad_x = ctx.emit1("Neg", [ctx.emit1("Mul", [parts.one_hot, parts.per_class(ctx, weighted)])])
    if wants_weight:
        loss_per_unit = ctx.emit1("Neg", [parts.picked(ctx, x)])  # -x[t], (N, d...)
        if parts.reduction == "mean":
            loss_per_unit = ctx.emit1("Sub", [loss_per_unit, loss])
        contribution = ctx.emit1("Mul", [loss_per_unit, scaled])
        if parts.mask is not None:
            contribution = ctx.emit1("Mul", [contribution, parts.mask])
        spread = ctx.emit1("Mul", [parts.one_hot, parts.per_class(ctx, contribution)])
        grad_w = emit.channel_total(ctx, spread, len(parts.x_shape))
    return grad_x, grad_w


def _loss_jvp(ctx: RuleContext, parts: _Parts, x: str, loss: str, x_tangent: str | None,
              weight_tangent: str | None) -> str | None:
    """The loss's tangent, from the tangents of the log-probabilities ``x`` and of the weights."""
    terms = []
    if x_tangent is not None:
        picked = ctx.emit1("Neg", [parts.picked(ctx, x_tangent)])
        terms.append(ctx.emit1("Mul", [picked, parts.element_weight]) if parts.element_weight else picked)
    if weight_tangent is not None:
        weight_tangent = ctx.emit1("Gather", [weight_tangent, parts.safe_target], axis=0)  # dw[t], (N, d...)
        if parts.mask is not None:
            weight_tangent = ctx.emit1("Mul", [weight_tangent, parts.mask])
        terms.append(ctx.emit1("Mul", [ctx.emit1("Neg", [parts.picked(ctx, x)]), weight_tangent]))
    if not terms:
        return None
    total = emit.total(ctx, terms)
    rank = len(parts.batch_shape)
    if parts.reduction == "none":
        return total
    total = _sum_all(ctx, total, rank)
    if parts.reduction == "mean":
        if weight_tangent is not None:  # the quotient rule: (dS - L dW) / W
            change_of_weight = _sum_all(ctx, weight_tangent, rank)
            total = ctx.emit1("Sub", [total, ctx.emit1("Mul", [loss, change_of_weight])])
        total = ctx.emit1("Div", [total, parts.total_weight])
    return total


def _weight_tangent(tangents: Names) -> str | None:
    return tangents[2] if len(tangents) > 2 else None


@vjp_rule("NegativeLogLikelihoodLoss", differentiable=(0, 2))
def nll_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    result = emit.nothing(node)
    parts = _Parts(ctx, node)
    wants_weight = parts.weight is not None and ctx.needs_grad(parts.weight)
    result[0], grad_w = _loss_vjp(ctx, parts, grads[0], node.input[0], node.output[0],
                                  ctx.needs_grad(node.input[0]), wants_weight)
    if wants_weight:
        result[2] = grad_w
    return result


@jvp_rule("NegativeLogLikelihoodLoss")
def nll_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    parts = _Parts(ctx, node)
    return [_loss_jvp(ctx, parts, node.input[0], node.output[0], tangents[0], _weight_tangent(tangents))]


# ------------------------------------------------------------------------------ SoftmaxCrossEntropyLoss
def _log_probabilities(ctx: RuleContext, node: NodeProto) -> str:
    """log softmax of the scores over axis 1: the node's second output when it has one, else computed as
    s - max - log sum exp(s - max) (LogSoftmax before opset 13 flattens the trailing axes: not usable)."""
    if len(node.output) > 1 and node.output[1]:
        return node.output[1]
    scores = node.input[0]
    shifted = ctx.emit1("Sub", [scores, emit.reduce(ctx, "ReduceMax", scores, [1])])
    total = emit.reduce_sum(ctx, ctx.emit1("Exp", [shifted]), [1])
    return ctx.emit1("Sub", [shifted, ctx.emit1("Log", [total])])


@vjp_rule("SoftmaxCrossEntropyLoss", differentiable=(0, 2))
def softmax_cross_entropy_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """The NLL of log_softmax(scores): d/dscores = h - softmax sum_c h, h the cotangent of the log-probabilities
    (from the loss, plus the log_prob output's own)."""
    result = emit.nothing(node)
    parts = _Parts(ctx, node)
    log_prob = _log_probabilities(ctx, node)
    wants_weight = parts.weight is not None and ctx.needs_grad(parts.weight)
    from_loss, grad_w = (None, None) if grads[0] is None else _loss_vjp(
        ctx, parts, grads[0], log_prob, node.output[0], ctx.needs_grad(node.input[0]), wants_weight)
    extra = grads[1] if len(grads) > 1 else None
    h = [t for t in (from_loss, extra) if t is not None]
    if h and ctx.needs_grad(node.input[0]):
        result[0] = log_softmax_product(ctx, log_prob, emit.total(ctx, h), [1], transposed=True)
    if wants_weight and grad_w is not None:
        result[2] = grad_w
    return result


@jvp_rule("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    parts = _Parts(ctx, node)
    log_prob = _log_probabilities(ctx, node)
    lp_tangent = None
    if tangents[0] is not None:  # d log_softmax = ds - sum_c softmax ds
        lp_tangent = log_softmax_product(ctx, log_prob, tangents[0], [1], transposed=False)
    loss = _loss_jvp(ctx, parts, log_prob, node.output[0], lp_tangent, _weight_tangent(tangents))
    return [loss, lp_tangent][:len(node.output)]
