"""VJP and JVP rules for ONNX's shape, indexing and reduction operators.

Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Split, Slice, Gather, GatherElements, Expand, Tile,
DepthToSpace, SpaceToDepth, Range and the ReduceSum/Mean/Max/Min/SumSquare/L2/L1/LogSum/LogSumExp family.
Every rule emits standard ONNX nodes through the :class:`~._rules.RuleContext`. Choices that keep the
gradient graph cheap (issue 9) and valid at the model's own opset:

- shapes are concrete at the probed input shape, so reshape-like operators (Reshape, Flatten, Squeeze,
  Unsqueeze) are a Reshape to a constant shape in both directions, whatever the opset form of their axes
  or target shape (``allowzero``, ``0`` and ``-1`` entries, axes attribute or input, Squeeze without axes);
- axes, starts, repeats and constant indices are read with ``ctx.value`` once, when the graph is built;
- Slice's adjoint is a zero Pad of the cotangent; negative steps reverse it first, and steps > 1 spread
  it with zeros through a Reshape + Pad + Reshape (dense, no scatter, no index tensors);
- Gather with constant indices is scattered back by a Pad (one index or a contiguous run) or by one
  Gather with the inverse permutation (distinct indices); repeated or data-dependent indices use
  ScatterElements with ``reduction="add"`` (opset >= 16) or a one-hot MatMul (earlier opsets);
- a reduction's cotangent is broadcast back by Expand or, where the rule multiplies by a primal tensor
  anyway, by that broadcasting Mul;
- reductions are emitted in the form valid at ``ctx.opset``: ReduceSum takes ``axes`` as an input from
  opset 13 and as an attribute before, Pad/Slice/Split likewise switch from attributes to inputs at
  11/10/13.

ReduceMax and ReduceMin: the cotangent is shared equally among the elements that tie for the extreme
(as ``torch.amax`` does), ``g [x == y] / #ties``; the JVP uses the same linear map (the mean of the tied
tangents), so that <J u, v> = <u, J^T v> holds everywhere; without ties both are the usual derivative.

Range(start, limit, delta) is ``start + i delta`` for ``i < n``, ``n = ceil((limit - start) / delta)``:
when start or delta is computed from the input's values it is on the path, and differentiable wherever
``n`` is locally constant (``n`` is an integer, so the limit has no gradient). Its length is then a shape
that varies with the input's values, which the builder checks at run time (``GradientGraph.shape_checks``).
An integer Range on the path is piecewise constant: an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ....core.errors import BackendError, UnsupportedOperatorError
from .registry import RuleContext, jvp_rule, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto

Names = list[str | None]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_FALLBACK_HINT = "or pass OnnxBackend(..., fallback='finite_differences') to differentiate it numerically."


# --------------------------------------------------------------------------------------------- helpers


def _nothing(node: NodeProto) -> Names:
    """A VJP result with no gradient for any input."""
    return [None] * len(node.input)


def _input(node: NodeProto, index: int) -> str:
    """The name of an optional input, or "" when it is absent."""
    return node.input[index] if len(node.input) > index else ""


def _unsupported(ctx: RuleContext, node: NodeProto, why: str) -> UnsupportedOperatorError:
    label = f"{node.op_type} node {node.name or '(unnamed)'!r} (opset {ctx.opset})"
    return UnsupportedOperatorError(
        f"{label} lies between the input and the explained output, but {why}. "
        f"Explain a tensor before it (output_name=...), {_FALLBACK_HINT}"
    )


def _constant(ctx: RuleContext, node: NodeProto, index: int, what: str) -> np.ndarray:
    """The value of input ``index`` (axes, starts, repeats...): it must not depend on the input's values."""
    value = ctx.value(node.input[index])
    if value is None:
        raise _unsupported(ctx, node, f"its {what} ({node.input[index]!r}) depend on the input's values")
    return np.asarray(value)


def _elem_type(ctx: RuleContext, name: str) -> int:
    """ONNX element type (TensorProto enum) of a tensor."""
    from onnx import helper

    return int(helper.np_dtype_to_tensor_dtype(np.dtype(ctx.dtype(name))))


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _zeros(ctx: RuleContext, shape: Sequence[int], like: str) -> str:
    """A zero tensor of ``shape`` in ``like``'s element type (no initializer of that size is stored)."""
    from onnx import helper

    value = helper.make_tensor("value", _elem_type(ctx, like), [1], [0])
    return ctx.emit1("ConstantOfShape", [ctx.const([int(d) for d in shape])], value=value)


def _reshape(ctx: RuleContext, name: str, from_shape: Sequence[int], to_shape: Sequence[int],
             like: str) -> str:
    """``name`` (of ``from_shape``) viewed as ``to_shape``; nothing is emitted when the shapes agree.

    Empty tensors become a zero constant: Reshape's ``0`` means "copy this dimension" below opset 14.
    """
    to_shape = tuple(int(d) for d in to_shape)
    if tuple(from_shape) == to_shape:
        return name
    if math.prod(to_shape) == 0:
        return _zeros(ctx, to_shape, like)
    return ctx.emit1("Reshape", [name, ctx.const(list(to_shape))])


def _expand(ctx: RuleContext, name: str, from_shape: Sequence[int], to_shape: Sequence[int]) -> str:
    if tuple(from_shape) == tuple(to_shape):
        return name
    return ctx.emit1("Expand", [name, ctx.const([int(d) for d in to_shape])])


def _pad(ctx: RuleContext, name: str, begins: Sequence[int], ends: Sequence[int]) -> str:
    """Zero-pad every axis by non-negative amounts (pads as an input from opset 11, an attribute before)."""
    if not any(begins) and not any(ends):
        return name
    pads = [int(p) for p in (*begins, *ends)]
    if ctx.opset >= 11:
        return ctx.emit1("Pad", [name, ctx.const(pads)])
    return ctx.emit1("Pad", [name], pads=pads)


def _slice(ctx: RuleContext, name: str, axes: Sequence[int], starts: Sequence[int], ends: Sequence[int],
           steps: Sequence[int] | None = None) -> str:
    """Slice (inputs from opset 10, attributes and unit steps before)."""
    if ctx.opset >= 10:
        inputs = [name, ctx.const(list(starts)), ctx.const(list(ends)), ctx.const(list(axes))]
        if steps is not None:
            inputs.append(ctx.const(list(steps)))
        return ctx.emit1("Slice", inputs)
    if steps is not None and any(s != 1 for s in steps):
        raise UnsupportedOperatorError(
            f"gradsal needs a reversed Slice, which ONNX has only from opset 10 (the model has {ctx.opset}); "
            f"{_FALLBACK_HINT}"
        )
    return ctx.emit1("Slice", [name], axes=list(axes), starts=list(starts), ends=list(ends))


def _split(ctx: RuleContext, name: str, sizes: Sequence[int], axis: int) -> list[str]:
    """Split into pieces of ``sizes`` along ``axis`` (sizes an input from opset 13, an attribute before)."""
    sizes = [int(s) for s in sizes]
    if ctx.opset >= 13:
        return ctx.emit("Split", [name, ctx.const(sizes)], len(sizes), axis=axis)
    return ctx.emit("Split", [name], len(sizes), axis=axis, split=sizes)


def _reduce_sum(ctx: RuleContext, name: str, axes: Sequence[int], keepdims: int = 1) -> str:
    """ReduceSum over ``axes`` (an input from opset 13, an attribute before); nothing if ``axes`` is empty."""
    if not axes:
        return name
    if ctx.opset >= 13:
        return ctx.emit1("ReduceSum", [name, ctx.const([int(a) for a in axes])], keepdims=keepdims)
    return ctx.emit1("ReduceSum", [name], axes=[int(a) for a in axes], keepdims=keepdims)


def _equal(ctx: RuleContext, a: str, b: str) -> str:
    """Boolean ``a == b`` (Equal takes floats only from opset 11; before, "neither less nor greater")."""
    if ctx.opset >= 11:
        return ctx.emit1("Equal", [a, b])
    differ = ctx.emit1("Or", [ctx.emit1("Less", [a, b]), ctx.emit1("Greater", [a, b])])
    return ctx.emit1("Not", [differ])


def _same_op(ctx: RuleContext, node: NodeProto, first_input: str) -> list[str]:
    """The node again, with ``first_input`` in place of its first input (the JVP of an op linear in it)."""
    attrs = {}
    for attribute in node.attribute:
        value = ctx.attr(node, attribute.name)
        if value is not None and not (isinstance(value, list) and not value):
            attrs[attribute.name] = value
    return ctx.emit(node.op_type, [first_input, *node.input[1:]], len(node.output), **attrs)


# --------------------------------------------------------- Reshape, Flatten, Squeeze, Unsqueeze (views)


@vjp_rule("Reshape", "Squeeze", "Unsqueeze", differentiable=(0,))
@vjp_rule("Flatten")
def reshape_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """A view: the cotangent reshaped back to the input's (concrete) shape."""
    result, x, g = _nothing(node), node.input[0], grads[0]
    if g is not None and ctx.needs_grad(x):
        result[0] = _reshape(ctx, g, ctx.shape(node.output[0]), ctx.shape(x), x)
    return result


@jvp_rule("Reshape", "Squeeze", "Unsqueeze", "Flatten")
def reshape_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    x, t = node.input[0], tangents[0]
    if t is None:
        return [None]
    return [_reshape(ctx, t, ctx.shape(x), ctx.shape(node.output[0]), x)]


# ------------------------------------------------------------------------------------------ Transpose


def _perm(ctx: RuleContext, node: NodeProto) -> list[int]:
    rank = len(ctx.shape(node.input[0]))
    perm = ctx.attr(node, "perm")
    return [int(p) for p in perm] if perm else list(reversed(range(rank)))


@vjp_rule("Transpose")
def transpose_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Transpose the cotangent by the inverse permutation."""
    perm = _perm(ctx, node)
    if grads[0] is None or perm == sorted(perm):
        return [grads[0]]
    return [ctx.emit1("Transpose", [grads[0]], perm=[int(p) for p in np.argsort(perm)])]


@jvp_rule("Transpose")
def transpose_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    perm = _perm(ctx, node)
    if tangents[0] is None or perm == sorted(perm):
        return [tangents[0]]
    return [ctx.emit1("Transpose", [tangents[0]], perm=perm)]


# ---------------------------------------------------------------------------------------------- Concat


def _concat_layout(ctx: RuleContext, node: NodeProto) -> tuple[int, list[int], list[int]]:
    """(axis, size of each input along it, offset of each input along it)."""
    rank = len(ctx.shape(node.output[0]))
    axis = _axis(int(ctx.attr(node, "axis")), rank)
    sizes = [ctx.shape(name)[axis] for name in node.input]
    offsets = [int(o) for o in np.cumsum([0, *sizes[:-1]])]
    return axis, sizes, offsets


@vjp_rule("Concat")
def concat_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Each input's part of the cotangent: one Slice when one input needs it, else one Split."""
    result, g = _nothing(node), grads[0]
    if g is None:
        return result
    axis, sizes, offsets = _concat_layout(ctx, node)
    needed = [i for i, name in enumerate(node.input) if ctx.needs_grad(name)]
    if len(node.input) == 1:
        return [g]
    if len(needed) > 1 and all(sizes):
        pieces = _split(ctx, g, sizes, axis)
        for i in needed:
            result[i] = pieces[i]
        return result
    for i in needed:
        name = node.input[i]
        if sizes[i] == 0:
            result[i] = _zeros(ctx, ctx.shape(name), name)
        else:
            result[i] = _slice(ctx, g, [axis], [offsets[i]], [offsets[i] + sizes[i]])
    return result


@jvp_rule("Concat")
def concat_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """Concat of the tangents, zeros for constant inputs; one Pad when a single input has a tangent."""
    present = [i for i, t in enumerate(tangents) if t is not None]
    if not present:
        return [None]
    axis, sizes, offsets = _concat_layout(ctx, node)
    total = sum(sizes)
    if len(present) == 1:
        i = present[0]
        shape = ctx.shape(node.input[i])
        begins, ends = [0] * len(shape), [0] * len(shape)
        begins[axis], ends[axis] = offsets[i], total - offsets[i] - sizes[i]
        if math.prod(shape) == 0:
            return [_zeros(ctx, ctx.shape(node.output[0]), node.input[i])]
        return [_pad(ctx, tangents[i], begins, ends)]  # type: ignore[arg-type]
    like = node.input[present[0]]
    parts = [t if t is not None else _zeros(ctx, ctx.shape(name), like)
             for name, t in zip(node.input, tangents, strict=True)]
    return [ctx.emit1("Concat", parts, axis=axis)]


# ----------------------------------------------------------------------------------------------- Split


def _split_layout(ctx: RuleContext, node: NodeProto) -> tuple[int, list[int]]:
    """(axis, size of each output along it), read from the outputs' concrete shapes: this covers the
    ``split`` attribute (< 13), the ``split`` input (>= 13), ``num_outputs`` (>= 18) and equal splits."""
    rank = len(ctx.shape(node.input[0]))
    axis = _axis(int(ctx.attr(node, "axis", 0)), rank)
    return axis, [ctx.shape(name)[axis] for name in node.output]


@vjp_rule("Split", differentiable=(0,))
def split_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Concat of the outputs' cotangents (zeros for outputs that have none); one Pad when only one has."""
    result, x = _nothing(node), node.input[0]
    present = [i for i, g in enumerate(grads) if g is not None]
    if not present or not ctx.needs_grad(x):
        return result
    axis, sizes = _split_layout(ctx, node)
    shape = ctx.shape(x)
    if len(present) == 1 and sizes[present[0]]:
        i = present[0]
        begins, ends = [0] * len(shape), [0] * len(shape)
        begins[axis] = sum(sizes[:i])
        ends[axis] = shape[axis] - begins[axis] - sizes[i]
        result[0] = _pad(ctx, grads[i], begins, ends)  # type: ignore[arg-type]
        return result
    parts = [g if g is not None else _zeros(ctx, ctx.shape(name), x)
             for name, g in zip(node.output, grads, strict=True)]
    result[0] = ctx.emit1("Concat", parts, axis=axis)
    return result


@jvp_rule("Split")
def split_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    if tangents[0] is None:
        return [None] * len(node.output)
    axis, sizes = _split_layout(ctx, node)
    return list(_split(ctx, tangents[0], sizes, axis))


# ----------------------------------------------------------------------------------------------- Slice


@dataclass(frozen=True)
class _AxisSlice:
    """What a Slice takes along one axis: ``count`` indices ``low, low + step, ...`` (step > 0), read
    from the highest down when ``reversed`` (a negative step)."""

    low: int
    step: int
    count: int
    reversed: bool = False


def _slice_arguments(ctx: RuleContext, node: NodeProto) -> tuple[list[int], list[int], list[int], list[int]]:
    """(starts, ends, axes, steps): attributes in Slice-1 (opsets 1-9), inputs from Slice-10."""
    if len(node.input) >= 3:
        starts = _constant(ctx, node, 1, "starts").reshape(-1).tolist()
        ends = _constant(ctx, node, 2, "ends").reshape(-1).tolist()
        axes = (_constant(ctx, node, 3, "axes").reshape(-1).tolist() if _input(node, 3)
                else list(range(len(starts))))
        steps = (_constant(ctx, node, 4, "steps").reshape(-1).tolist() if _input(node, 4)
                 else [1] * len(starts))
    else:
        starts = list(ctx.attr(node, "starts", []))  # type: ignore[arg-type]
        ends = list(ctx.attr(node, "ends", []))  # type: ignore[arg-type]
        axes = list(ctx.attr(node, "axes", None) or range(len(starts)))  # type: ignore[arg-type]
        steps = [1] * len(starts)
    return ([int(v) for v in starts], [int(v) for v in ends], [int(v) for v in axes],
            [int(v) for v in steps])


def _clamped(start: int, end: int, step: int, dim: int) -> range:
    """The indices one axis of a Slice takes, with ONNX's clamping (which differs from Python's for
    negative steps: there an end of -1 after clamping means "through index 0").

    onnxruntime reads an end of INT64_MAX with a negative step as "through index 0" too (the ONNX
    reference implementation returns nothing); gradsal differentiates what onnxruntime computes.
    """
    if step < 0 and end == _INT64_MAX:
        end = _INT64_MIN
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return range(min(max(start, 0), dim), min(max(end, 0), dim), step)
    return range(min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step)


def _axis_slices(ctx: RuleContext, node: NodeProto) -> list[_AxisSlice]:
    shape = ctx.shape(node.input[0])
    slices = [_AxisSlice(0, 1, d) for d in shape]
    for start, end, axis, step in zip(*_slice_arguments(ctx, node), strict=True):
        axis = _axis(axis, len(shape))
        if step == 0:
            raise _unsupported(ctx, node, "one of its steps is 0, which ONNX does not allow")
        taken = _clamped(start, end, step, shape[axis]) if shape[axis] else range(0)
        count = len(taken)
        if count <= 1:
            slices[axis] = _AxisSlice(taken[0] if count else 0, 1, count)
        elif step > 0:
            slices[axis] = _AxisSlice(taken[0], step, count)
        else:
            slices[axis] = _AxisSlice(taken[-1], -step, count, reversed=True)
    if tuple(s.count for s in slices) != tuple(ctx.shape(node.output[0])):
        raise BackendError(
            f"gradsal internal error: Slice node {node.name!r} takes {[s.count for s in slices]} elements "
            f"by gradsal's reading, but onnxruntime produced shape {ctx.shape(node.output[0])}"
        )
    return slices


def _spread(ctx: RuleContext, g: str, shape: Sequence[int], slices: list[_AxisSlice], dims: Sequence[int],
            like: str) -> tuple[str, list[int], list[int]]:
    """Interleave ``step - 1`` zeros with the elements along every strided axis.

    Returns the new tensor, its shape, and where each axis now starts in the input. Along a strided axis
    each element becomes a block of ``step`` cells holding it at phase ``p`` (Reshape to insert a unit
    axis, Pad it to ``step``, Reshape to merge); ``p`` is chosen so that the blocks fit inside the input
    dimension, and when none fits, the trailing zeros of the last block are cropped.
    """
    split_shape: list[int] = []
    begins: list[int] = []
    ends: list[int] = []
    starts: list[int] = []
    merged: list[int] = []
    crop: dict[int, int] = {}
    for a, s in enumerate(slices):
        split_shape.append(shape[a])
        begins.append(0)
        ends.append(0)
        if s.step == 1 or s.count <= 1:
            starts.append(s.low)
            merged.append(shape[a])
            continue
        highest = min(s.step - 1, s.low)
        phase = min(max(0, s.low + s.count * s.step - dims[a]), highest)
        split_shape.append(1)
        begins.append(phase)
        ends.append(s.step - 1 - phase)
        starts.append(s.low - phase)
        merged.append(s.count * s.step)
        if starts[a] + merged[a] > dims[a]:
            crop[a] = starts[a] + merged[a] - dims[a]
    strided = [a for a, s in enumerate(slices) if s.step > 1 and s.count > 1]
    if len(shape) == 4 and strided == [2, 3] and slices[2].step == slices[3].step:
        phases = (begins[3], begins[5])  # the phase Pads of the unit axes inserted after axes 2 and 3
        spread = _spread_spatially(ctx, g, shape, slices[2].step, phases)
    else:
        blocks = _pad(ctx, _reshape(ctx, g, shape, split_shape, like), begins, ends)
        spread = ctx.emit1("Reshape", [blocks, ctx.const(merged)])
    if crop:
        axes = sorted(crop)
        spread = _slice(ctx, spread, axes, [0] * len(axes), [merged[a] - crop[a] for a in axes])
        for a in axes:
            merged[a] -= crop[a]
    return spread, merged, starts


def _spread_spatially(ctx: RuleContext, g: str, shape: Sequence[int], block: int,
                      phases: tuple[int, int]) -> str:
    """:func:`_spread` of both spatial axes of an NCHW tensor by the same step, as DepthToSpace (DCR).

    Padding the innermost axis is slow in onnxruntime (a copy per element: 3.9 ms for a 8x3x256x256
    float32 cotangent); padding a leading unit axis to ``block**2`` channel groups and letting
    DepthToSpace interleave them takes 2.2 ms. This is the adjoint of YOLOv5's Focus slices.
    """
    n, c, h, w = shape
    group = phases[0] * block + phases[1]  # DCR: out[n, c, h b + i, w b + j] = in[n, (i b + j) C + c, h, w]
    stacked = ctx.emit1("Reshape", [g, ctx.const([n, 1, c, h, w])])
    stacked = _pad(ctx, stacked, [0, group, 0, 0, 0], [0, block * block - 1 - group, 0, 0, 0])
    channels = ctx.emit1("Reshape", [stacked, ctx.const([n, block * block * c, h, w])])
    return ctx.emit1("DepthToSpace", [channels], blocksize=block)


@vjp_rule("Slice", differentiable=(0,))
def slice_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Zero-pad the cotangent back to the input's shape (after un-reversing negative steps and spreading
    strided axes with zeros)."""
    result, x, g = _nothing(node), node.input[0], grads[0]
    if g is None or not ctx.needs_grad(x):
        return result
    dims = list(ctx.shape(x))
    slices = _axis_slices(ctx, node)
    shape = [s.count for s in slices]
    if math.prod(shape) == 0:
        result[0] = _zeros(ctx, dims, x)
        return result
    flipped = [a for a, s in enumerate(slices) if s.reversed]
    if flipped:
        n = len(flipped)
        g = _slice(ctx, g, flipped, [-1] * n, [_INT64_MIN] * n, [-1] * n)
    starts = [s.low for s in slices]
    if any(s.step > 1 and s.count > 1 for s in slices):
        g, shape, starts = _spread(ctx, g, shape, slices, dims, x)
    result[0] = _pad(ctx, g, starts, [d - s - n for d, s, n in zip(dims, starts, shape, strict=True)])
    return result


@jvp_rule("Slice")
def slice_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """Slice the tangent the same way."""
    return [None] if tangents[0] is None else _same_op(ctx, node, tangents[0])


# ---------------------------------------------------------------------------------------------- Gather


def _flat_along(ctx: RuleContext, g: str, g_shape: Sequence[int], data_shape: Sequence[int], axis: int,
                count: int, like: str) -> str:
    """The cotangent of a Gather viewed as ``data_shape`` with ``count`` cells along ``axis``."""
    target = [*data_shape[:axis], count, *data_shape[axis + 1:]]
    return _reshape(ctx, g, g_shape, target, like)


def _accumulate_rows(ctx: RuleContext, g3: str, data_shape: Sequence[int], axis: int, count: int,
                     indices: str, one_hot: Callable[[], str], like: str) -> str:
    """Sum the ``count`` rows of a Gather's cotangent into the data rows that ``indices`` (any shape,
    values possibly repeated or negative) name: ScatterElements with reduction "add" from opset 16, else
    the (dim, count) matrix ``one_hot()`` times the cotangent viewed as (P, count, Q)."""
    pre, dim, post = math.prod(data_shape[:axis]), data_shape[axis], math.prod(data_shape[axis + 1:])
    g_shape = [*data_shape[:axis], count, *data_shape[axis + 1:]]
    rows = _reshape(ctx, g3, g_shape, [pre, count, post], like)
    if ctx.opset >= 16:
        where = _expand(ctx, ctx.emit1("Reshape", [indices, ctx.const([1, count, 1])]), [1, count, 1],
                        [pre, count, post])
        zeros = _zeros(ctx, [pre, dim, post], like)
        summed = ctx.emit1("ScatterElements", [zeros, where, rows], axis=1, reduction="add")
    else:
        summed = ctx.emit1("MatMul", [one_hot(), rows])  # (dim, count) @ (P, count, Q)
    return _reshape(ctx, summed, [pre, dim, post], data_shape, like)


def _one_hot(ctx: RuleContext, indices: str, depth: int, like: str, axis: int = 0) -> str:
    """OneHot of runtime indices in ``like``'s float type (negative indices count from the end)."""
    from onnx import TensorProto

    flat = ctx.emit1("Cast", [indices], to=TensorProto.INT64)
    hot = ctx.emit1("OneHot", [flat, ctx.const(np.array([depth], dtype=np.int64)),
                               ctx.const(np.array([0.0, 1.0], dtype=np.float32))], axis=axis)
    elem = _elem_type(ctx, like)
    return hot if elem == TensorProto.FLOAT else ctx.emit1("Cast", [hot], to=elem)


def _gather_constant_indices(ctx: RuleContext, g3: str, flat: np.ndarray, data_shape: Sequence[int],
                             axis: int, like: str) -> str:
    """Gather's adjoint for indices known at build time (``flat``: non-negative, flattened): a Pad for
    one index or an ascending run, one Gather by the inverse map for distinct indices, else a sum."""
    dim, count = data_shape[axis], flat.size
    unique = np.unique(flat).size == count
    if unique and np.array_equal(flat, np.arange(flat[0], flat[0] + count)):
        begins, ends = [0] * len(data_shape), [0] * len(data_shape)
        begins[axis], ends[axis] = int(flat[0]), dim - int(flat[0]) - count
        return _pad(ctx, g3, begins, ends)
    if unique:  # gather back: untouched cells read a zero appended after the last row
        inverse = np.full(dim, count, dtype=np.int64)
        inverse[flat] = np.arange(count)
        source = g3
        if count < dim:
            ends = [0] * len(data_shape)
            ends[axis] = 1
            source = _pad(ctx, g3, [0] * len(data_shape), ends)
        return ctx.emit1("Gather", [source, ctx.const(inverse)], axis=axis)

    def matrix() -> str:
        return ctx.const((flat[None, :] == np.arange(dim)[:, None]).astype(ctx.dtype(like)))

    return _accumulate_rows(ctx, g3, data_shape, axis, count, ctx.const(flat), matrix, like)


@vjp_rule("Gather", differentiable=(0,))
def gather_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Scatter-add the cotangent back to the gathered positions (see the module docstring for the forms)."""
    result, (data, indices), g = _nothing(node), node.input[:2], grads[0]
    if g is None or not ctx.needs_grad(data):
        return result
    data_shape = list(ctx.shape(data))
    axis = _axis(int(ctx.attr(node, "axis", 0)), len(data_shape))
    dim = data_shape[axis]
    count = math.prod(ctx.shape(indices))
    if count == 0 or math.prod(data_shape) == 0:
        result[0] = _zeros(ctx, data_shape, data)
        return result
    g3 = _flat_along(ctx, g, ctx.shape(node.output[0]), data_shape, axis, count, data)
    value = ctx.value(indices)
    if value is not None:
        flat = np.asarray(value, dtype=np.int64).reshape(-1)
        flat = np.where(flat < 0, flat + dim, flat)
        result[0] = _gather_constant_indices(ctx, g3, flat, data_shape, axis, data)
        return result

    def matrix() -> str:
        return _one_hot(ctx, ctx.emit1("Reshape", [indices, ctx.const([count])]), dim, data)

    result[0] = _accumulate_rows(ctx, g3, data_shape, axis, count, indices, matrix, data)
    return result


@jvp_rule("Gather", "GatherElements")
def gather_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """Gather the tangent at the same indices."""
    return [None] if tangents[0] is None else _same_op(ctx, node, tangents[0])


def _unique_per_line(indices: np.ndarray, axis: int, dim: int) -> bool:
    flat = np.where(indices < 0, indices + dim, indices)
    ordered = np.sort(np.moveaxis(flat, axis, -1), axis=-1)
    return not np.any(ordered[..., 1:] == ordered[..., :-1])


@vjp_rule("GatherElements", differentiable=(0,))
def gather_elements_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """ScatterElements of the cotangent into zeros: with reduction "add" from opset 16, without it when
    constant indices never repeat along the axis, else a one-hot product summed over the axis."""
    result, (data, indices), g = _nothing(node), node.input[:2], grads[0]
    if g is None or not ctx.needs_grad(data):
        return result
    data_shape, index_shape = list(ctx.shape(data)), list(ctx.shape(indices))
    axis = _axis(int(ctx.attr(node, "axis", 0)), len(data_shape))
    if math.prod(index_shape) == 0 or math.prod(data_shape) == 0:
        result[0] = _zeros(ctx, data_shape, data)
        return result
    value = ctx.value(indices)
    if ctx.opset >= 16 or (value is not None and _unique_per_line(np.asarray(value), axis, data_shape[axis])):
        reduction = {"reduction": "add"} if ctx.opset >= 16 else {}
        result[0] = ctx.emit1("ScatterElements", [_zeros(ctx, data_shape, data), indices, g], axis=axis,
                              **reduction)
        return result
    # one-hot H[..., j, d, ...] = [indices[..., j, ...] == d]; grad[..., d, ...] = sum_j H g
    hot = _one_hot(ctx, indices, data_shape[axis], data, axis=axis + 1)
    lifted = [*index_shape[:axis + 1], 1, *index_shape[axis + 1:]]
    product = ctx.emit1("Mul", [hot, _reshape(ctx, g, index_shape, lifted, data)])
    summed = _reduce_sum(ctx, product, [axis], keepdims=0)
    reached = [*index_shape[:axis], data_shape[axis], *index_shape[axis + 1:]]
    result[0] = _pad(ctx, summed, [0] * len(data_shape),
                     [d - r for d, r in zip(data_shape, reached, strict=True)])
    return result


# ------------------------------------------------------------------------------------------ Expand, Tile


@vjp_rule("Expand", differentiable=(0,))
def expand_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Sum the cotangent over the broadcast axes."""
    result, x, g = _nothing(node), node.input[0], grads[0]
    if g is not None and ctx.needs_grad(x):
        result[0] = ctx.unbroadcast(g, x, ctx.shape(node.output[0]))
    return result


@jvp_rule("Expand", "Tile")
def expand_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    return [None] if tangents[0] is None else _same_op(ctx, node, tangents[0])


@vjp_rule("Tile", differentiable=(0,))
def tile_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """View the cotangent as (repeats_0, d_0, repeats_1, d_1, ...) and sum over the repeat axes."""
    result, x, g = _nothing(node), node.input[0], grads[0]
    if g is None or not ctx.needs_grad(x):
        return result
    shape = list(ctx.shape(x))
    repeats = [int(r) for r in _constant(ctx, node, 1, "repeats").reshape(-1)]
    split_shape: list[int] = []
    repeat_axes: list[int] = []
    for d, r in zip(shape, repeats, strict=True):
        if r != 1:
            repeat_axes.append(len(split_shape))
            split_shape.append(r)
        split_shape.append(d)
    if math.prod(shape) == 0 or 0 in repeats:
        result[0] = _zeros(ctx, shape, x)
        return result
    tiles = _reshape(ctx, g, ctx.shape(node.output[0]), split_shape, x)
    result[0] = _reduce_sum(ctx, tiles, repeat_axes, keepdims=0)
    return result


# ---------------------------------------------------------------------------- DepthToSpace, SpaceToDepth


@vjp_rule("DepthToSpace")
def depth_to_space_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """A permutation of elements: SpaceToDepth undoes the DCR mode; CRD is undone by Reshape/Transpose."""
    g = grads[0]
    if g is None:
        return [None]
    block = int(ctx.attr(node, "blocksize"))
    if ctx.attr(node, "mode", "DCR") == "DCR":
        return [ctx.emit1("SpaceToDepth", [g], blocksize=block)]
    n, c, h, w = ctx.shape(node.input[0])
    blocks = ctx.emit1("Reshape", [g, ctx.const([n, c // (block * block), h, block, w, block])])
    moved = ctx.emit1("Transpose", [blocks], perm=[0, 1, 3, 5, 2, 4])
    return [ctx.emit1("Reshape", [moved, ctx.const([n, c, h, w])])]


@vjp_rule("SpaceToDepth")
def space_to_depth_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """DepthToSpace in DCR mode (the default in every opset) undoes SpaceToDepth."""
    g = grads[0]
    if g is None:
        return [None]
    return [ctx.emit1("DepthToSpace", [g], blocksize=int(ctx.attr(node, "blocksize")))]


@jvp_rule("DepthToSpace", "SpaceToDepth")
def depth_space_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    return [None] if tangents[0] is None else _same_op(ctx, node, tangents[0])


# ------------------------------------------------------------------------------------------ reductions


_REDUCTIONS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSumSquare", "ReduceL2",
               "ReduceLogSumExp", "ReduceL1", "ReduceLogSum")
# Over an empty set of axes (noop_with_empty_axes=1) onnxruntime still applies the elementwise part
# (ReduceSumSquare gives x^2, ReduceL2 |x|, ReduceLogSum log x); these are the identity there.
_IDENTITY_WHEN_NOOP = frozenset({"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceLogSumExp"})


@dataclass(frozen=True)
class _Reduction:
    axes: list[int]          # reduced axes, sorted, non-negative; empty: each element is its own group
    in_shape: tuple[int, ...]
    kept_shape: tuple[int, ...]  # the output shape with keepdims=1
    out_shape: tuple[int, ...]
    keepdims: int

    @property
    def count(self) -> int:
        return math.prod(self.in_shape[a] for a in self.axes)


def _reduction(ctx: RuleContext, node: NodeProto) -> _Reduction:
    """Read axes from the attribute (ReduceSum < 13, the others < 18) or the input (from then on);
    no axes means all of them unless noop_with_empty_axes (from 13 / 18) asks for none."""
    in_shape = tuple(ctx.shape(node.input[0]))
    rank = len(in_shape)
    axes = ctx.attr(node, "axes")
    if axes is None and _input(node, 1):
        axes = _constant(ctx, node, 1, "axes").reshape(-1).tolist()
    keepdims = int(ctx.attr(node, "keepdims", 1))  # type: ignore[arg-type]
    if not axes:
        axes = [] if ctx.attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    axes = sorted({_axis(int(a), rank) for a in axes})  # type: ignore[union-attr]
    kept = tuple(1 if a in axes else d for a, d in enumerate(in_shape))
    return _Reduction(axes, in_shape, kept, tuple(ctx.shape(node.output[0])), keepdims)


def _reduced_like(ctx: RuleContext, r: _Reduction, name: str, like: str) -> str:
    """``name`` (output-shaped) viewed with the reduced axes kept as 1s, ready to broadcast against x."""
    return _reshape(ctx, name, r.out_shape, r.kept_shape, like)


def _extreme_mask(ctx: RuleContext, node: NodeProto, r: _Reduction) -> tuple[str, str]:
    """(``[x == y]`` in x's type, the number of ties in each reduced group, in the keepdims shape)."""
    x = node.input[0]
    y = _reduced_like(ctx, r, node.output[0], x)
    mask = ctx.emit1("Cast", [_equal(ctx, x, y)], to=_elem_type(ctx, x))
    return mask, _reduce_sum(ctx, mask, r.axes, keepdims=1)


def _local_slope(ctx: RuleContext, node: NodeProto, r: _Reduction) -> tuple[str | None, str | None]:
    """``dy/dx`` as (an x-shaped slope or None for 1, a per-group factor in the keepdims shape or None
    for 1), for the reductions other than Sum and Mean."""
    x, op = node.input[0], node.op_type
    if op == "ReduceSumSquare":
        return ctx.emit1("Add", [x, x]), None
    if op == "ReduceL1":  # sign(x); 0 at 0, a subgradient
        return ctx.emit1("Sign", [x]), None
    if op == "ReduceLogSum":  # 1 / sum x = exp(-y)
        y = _reduced_like(ctx, r, node.output[0], x)
        return None, ctx.emit1("Exp", [ctx.emit1("Neg", [y])])
    if op == "ReduceL2":  # x / y; a zero group (x = 0 throughout) gets 0, not 0/0
        y = _reduced_like(ctx, r, node.output[0], x)
        safe = ctx.emit1("Max", [y, ctx.const(float(np.finfo(ctx.dtype(x)).tiny), like=x)])
        return x, ctx.emit1("Reciprocal", [safe])
    if op == "ReduceLogSumExp":  # softmax over the group: exp(x - y)
        y = _reduced_like(ctx, r, node.output[0], x)
        return ctx.emit1("Exp", [ctx.emit1("Sub", [x, y])]), None
    mask, ties = _extreme_mask(ctx, node, r)  # ReduceMax, ReduceMin
    return mask, ctx.emit1("Reciprocal", [ties])


@vjp_rule(*_REDUCTIONS, differentiable=(0,))
def reduce_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Broadcast the cotangent back over the reduced axes, times the local slope: Sum 1, Mean 1/N,
    SumSquare 2x, L2 x/y, L1 sign(x), LogSum 1/exp(y), LogSumExp exp(x - y), Max/Min [x == y]/#ties."""
    result, x, g = _nothing(node), node.input[0], grads[0]
    if g is None or not ctx.needs_grad(x):
        return result
    r = _reduction(ctx, node)
    if not r.axes and node.op_type in _IDENTITY_WHEN_NOOP:
        result[0] = _reshape(ctx, g, r.out_shape, r.in_shape, x)
        return result
    if math.prod(r.in_shape) == 0:
        result[0] = _zeros(ctx, r.in_shape, x)
        return result
    gk = _reduced_like(ctx, r, g, x)
    if node.op_type in ("ReduceSum", "ReduceMean"):
        if node.op_type == "ReduceMean":
            gk = ctx.emit1("Mul", [gk, ctx.const(1.0 / r.count, like=x)])
        result[0] = _expand(ctx, gk, r.kept_shape, r.in_shape)
        return result
    slope, factor = _local_slope(ctx, node, r)
    if factor is not None:
        gk = ctx.emit1("Mul", [gk, factor])
    # multiplying by the x-shaped slope broadcasts gk back over the reduced axes for free
    result[0] = _expand(ctx, gk, r.kept_shape, r.in_shape) if slope is None else ctx.emit1("Mul", [slope, gk])
    return result


@jvp_rule(*_REDUCTIONS)
def reduce_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """The same reduction's derivative applied forward: ReduceSum(slope t) times the per-group factor."""
    x, t = node.input[0], tangents[0]
    if t is None:
        return [None]
    r = _reduction(ctx, node)
    if not r.axes and node.op_type in _IDENTITY_WHEN_NOOP:
        return [_reshape(ctx, t, r.in_shape, r.out_shape, x)]
    if math.prod(r.in_shape) == 0:
        return [_zeros(ctx, r.out_shape, x)]
    if node.op_type in ("ReduceSum", "ReduceMean"):
        summed = _reduce_sum(ctx, t, r.axes, r.keepdims)
        if node.op_type == "ReduceMean":
            summed = ctx.emit1("Mul", [summed, ctx.const(1.0 / r.count, like=x)])
        return [summed]
    slope, factor = _local_slope(ctx, node, r)
    summed = _reduce_sum(ctx, t if slope is None else ctx.emit1("Mul", [slope, t]), r.axes, keepdims=1)
    if factor is not None:
        summed = ctx.emit1("Mul", [summed, factor])
    return [_reshape(ctx, summed, r.kept_shape, r.out_shape, x)]


# ----------------------------------------------------------------------------------------------- Range


def _range_parts(ctx: RuleContext, node: NodeProto) -> tuple[str, str, str, int]:
    """(start, delta, the indices 0 .. n - 1 in the output's float type, n); refuses an integer Range."""
    out = node.output[0]
    dtype = np.dtype(ctx.dtype(out))
    if dtype.kind != "f":
        raise _unsupported(ctx, node, f"it computes {dtype} values from the input's values, which are piecewise "
                                      "constant in them (zero gradient almost everywhere)")
    (count,) = ctx.shape(out)
    return node.input[0], node.input[2], ctx.const(np.arange(count, dtype=dtype)), int(count)


@vjp_rule("Range", differentiable=(0, 2))
def range_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """``out[i] = start + i delta``: start gets sum(g), delta sum(i g); the limit only sets the length."""
    result, g = _nothing(node), grads[0]
    if g is None:
        return result
    start, delta, indices, _ = _range_parts(ctx, node)
    if ctx.needs_grad(start):
        result[0] = _reshape(ctx, _reduce_sum(ctx, g, [0], keepdims=0), (), ctx.shape(start), start)
    if ctx.needs_grad(delta):
        weighted = ctx.emit1("Mul", [g, indices])
        result[2] = _reshape(ctx, _reduce_sum(ctx, weighted, [0], keepdims=0), (), ctx.shape(delta), delta)
    return result


@jvp_rule("Range")
def range_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """``t_start + i t_delta`` for every index ``i`` of the output (the limit's tangent does not count)."""
    t_start, t_delta = tangents[0], tangents[2] if len(tangents) > 2 else None
    if t_start is None and t_delta is None:
        return [None]
    start, delta, indices, count = _range_parts(ctx, node)
    parts = []
    if t_start is not None:
        parts.append(_expand(ctx, _reshape(ctx, t_start, ctx.shape(start), (1,), start), (1,), (count,)))
    if t_delta is not None:
        parts.append(ctx.emit1("Mul", [_reshape(ctx, t_delta, ctx.shape(delta), (1,), delta), indices]))
    return [parts[0] if len(parts) == 1 else ctx.emit1("Add", parts)]
