"""Rules of the operators that move elements without changing them: views, permutations, joins and copies.

Each is linear, ``y = P x``, with ``P`` a 0/1 matrix: the JVP applies the operator itself to the tangent
and the VJP applies ``P^T``. A view (Reshape, Flatten, Squeeze, Unsqueeze) and a permutation (Transpose,
DepthToSpace, SpaceToDepth) are invertible, so ``P^T = P^-1``: the cotangent is reshaped back to the
input's concrete shape, or permuted by the inverse. Concat and Split are each other's transposes. Copies
(Expand, Tile) transpose to sums: the cotangent summed over the broadcast axes, or, viewed as
``(repeats_0, d_0, repeats_1, d_1, ...)``, over the repeat axes. Shapes are concrete at the probed input
shape, so a reshape is a Reshape to a constant shape whatever the opset form of its axes or target shape
(``allowzero``, ``0`` and ``-1`` entries, axes as an attribute or an input, Squeeze without axes).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from . import emit
from .pooling import blocked_cotangent
from .registry import RuleContext, jvp_rule, linear, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto

Names = emit.Names


# --------------------------------------------------------- Reshape, Flatten, Squeeze, Unsqueeze (views)


@linear("Reshape", "Squeeze", "Unsqueeze", "Flatten")
def reshape_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """A view: the cotangent reshaped back to the input's (concrete) shape (handed to onnxruntime's blocked
    layout where a max-pool mask takes it: :func:`~.pooling.blocked_cotangent`)."""
    x = node.input[0]
    back = blocked_cotangent(ctx, x, emit.reshape(ctx, grads[0], ctx.shape(x), ctx.shape(node.output[0])))
    return emit.padded([back], len(node.input))


# ------------------------------------------------------------------------------------------ Transpose


def _perm(ctx: RuleContext, node: NodeProto) -> list[int]:
    rank = len(ctx.shape(node.input[0]))
    perm = ctx.attr(node, "perm")
    return [int(p) for p in perm] if perm else list(reversed(range(rank)))


@linear("Transpose")
def transpose_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Transpose the cotangent by the inverse permutation."""
    perm = _perm(ctx, node)
    if perm == sorted(perm):
        return [grads[0]]
    return [ctx.emit1("Transpose", [grads[0]], perm=[int(p) for p in np.argsort(perm)])]


# ---------------------------------------------------------------------------------------------- Concat


def _concat_layout(ctx: RuleContext, node: NodeProto) -> tuple[int, list[int], list[int]]:
    """(axis, size of each input along it, offset of each input along it)."""
    axis = emit.positive_axis(int(ctx.attr(node, "axis")), len(ctx.shape(node.output[0])))
    sizes = [ctx.shape(name)[axis] for name in node.input]
    offsets = [int(o) for o in np.cumsum([0, *sizes[:-1]])]
    return axis, sizes, offsets


def _placed(ctx: RuleContext, part: str, shape: list[int], axis: int, offset: int, total: int) -> str:
    """``part`` (of ``shape``) zero-padded along ``axis`` to ``total``, starting at ``offset``."""
    begins, ends = [0] * len(shape), [0] * len(shape)
    begins[axis], ends[axis] = offset, total - offset - shape[axis]
    return emit.pad(ctx, part, begins, ends)


@vjp_rule("Concat")
def concat_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Each input's part of the cotangent: one Slice when one input needs it, else one Split."""
    result, g = emit.nothing(node), grads[0]
    if len(node.input) == 1:
        return [g]
    axis, sizes, offsets = _concat_layout(ctx, node)
    needed = [i for i, name in enumerate(node.input) if ctx.needs_grad(name)]
    if len(needed) > 1 and all(sizes):
        pieces = emit.split(ctx, g, sizes, axis)
        for i in needed:
            result[i] = pieces[i]
        return result
    for i in needed:
        name = node.input[i]
        if sizes[i] == 0:
            result[i] = emit.zeros(ctx, ctx.shape(name), name)
        else:
            result[i] = emit.slice_axes(ctx, g, [axis], [offsets[i]], [offsets[i] + sizes[i]])
    return result


@jvp_rule("Concat")
def concat_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """Concat of the tangents, zeros for constant inputs.

    Hand-written rather than by ``linear``: when one input alone has a tangent (a class token or a
    constant channel joined to the input), one Pad places it, without zero tensors and a Concat.
    """
    present = [i for i, t in enumerate(tangents) if t is not None]
    axis, sizes, offsets = _concat_layout(ctx, node)
    if len(present) == 1:
        i = present[0]
        shape = list(ctx.shape(node.input[i]))
        if math.prod(shape) == 0:
            return [emit.zeros(ctx, ctx.shape(node.output[0]), node.input[i])]
        return [_placed(ctx, tangents[i], shape, axis, offsets[i], sum(sizes))]
    like = node.input[present[0]]
    parts = [t if t is not None else emit.zeros(ctx, ctx.shape(name), like)
             for name, t in zip(node.input, tangents, strict=True)]
    return [ctx.emit1("Concat", parts, axis=axis)]


# ----------------------------------------------------------------------------------------------- Split


@linear("Split")
def split_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Concat of the outputs' cotangents (zeros for outputs that have none); one Pad when only one has.

    The sizes are read from the outputs' concrete shapes: this covers the ``split`` attribute (< 13),
    the ``split`` input (>= 13), ``num_outputs`` (>= 18) and equal splits.
    """
    x = node.input[0]
    shape = list(ctx.shape(x))
    axis = emit.positive_axis(int(ctx.attr(node, "axis", 0)), len(shape))
    sizes = [ctx.shape(name)[axis] for name in node.output]
    present = [i for i, g in enumerate(grads) if g is not None]
    if len(present) == 1 and sizes[present[0]]:
        i = present[0]
        placed = _placed(ctx, grads[i], [*shape[:axis], sizes[i], *shape[axis + 1:]], axis,
                         sum(sizes[:i]), shape[axis])
        return emit.padded([placed], len(node.input))
    parts = [g if g is not None else emit.zeros(ctx, ctx.shape(name), x)
             for name, g in zip(node.output, grads, strict=True)]
    return emit.padded([ctx.emit1("Concat", parts, axis=axis)], len(node.input))


# ------------------------------------------------------------------------------------------ Expand, Tile


@linear("Expand")
def expand_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Sum the cotangent over the broadcast axes."""
    summed = ctx.unbroadcast(grads[0], node.input[0], ctx.shape(node.output[0]))
    return emit.padded([summed], len(node.input))


@linear("Tile")
def tile_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """View the cotangent as (repeats_0, d_0, repeats_1, d_1, ...) and sum over the repeat axes."""
    x = node.input[0]
    shape = list(ctx.shape(x))
    repeats = [int(r) for r in emit.constant(ctx, node, node.input[1], "repeats").reshape(-1)]
    if math.prod(shape) == 0 or 0 in repeats:
        return emit.padded([emit.zeros(ctx, shape, x)], len(node.input))
    split_shape: list[int] = []
    repeat_axes: list[int] = []
    for d, r in zip(shape, repeats, strict=True):
        if r != 1:
            repeat_axes.append(len(split_shape))
            split_shape.append(r)
        split_shape.append(d)
    tiles = emit.reshape(ctx, grads[0], split_shape, ctx.shape(node.output[0]))
    return emit.padded([emit.reduce_sum(ctx, tiles, repeat_axes, keepdims=0)], len(node.input))


# ---------------------------------------------------------------------------- DepthToSpace, SpaceToDepth


@linear("DepthToSpace")
def depth_to_space_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """A permutation of elements: SpaceToDepth undoes the DCR mode; CRD is undone by Reshape/Transpose."""
    g = grads[0]
    block = int(ctx.attr(node, "blocksize"))
    if ctx.attr(node, "mode", "DCR") == "DCR":
        return [ctx.emit1("SpaceToDepth", [g], blocksize=block)]
    n, c, h, w = ctx.shape(node.input[0])
    blocks = emit.reshape(ctx, g, [n, c // (block * block), h, block, w, block], ctx.shape(node.output[0]))
    moved = ctx.emit1("Transpose", [blocks], perm=[0, 1, 3, 5, 2, 4])
    return [ctx.emit1("Reshape", [moved, ctx.const([n, c, h, w])])]


@linear("SpaceToDepth")
def space_to_depth_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """DepthToSpace in DCR mode (the default in every opset) undoes SpaceToDepth."""
    return [ctx.emit1("DepthToSpace", [grads[0]], blocksize=int(ctx.attr(node, "blocksize")))]
