"""Rules of the operators that pick elements by index: Slice, Gather, GatherElements, and Range.

Slice, Gather and GatherElements are linear in their data, ``y = S x`` with ``S`` a 0/1 selection matrix:
the JVP selects from the tangent the same way, and the VJP scatters the cotangent back, ``S^T g``, adding
where an index repeats. Slice's adjoint is a zero Pad of the cotangent; a negative step reverses it first,
and a step > 1 spreads it with zeros by a Reshape + Pad + Reshape (dense: no scatter, no index tensors;
the same step along both spatial axes of an NCHW tensor takes ``forms.spread_spatially``).
Gather with constant indices is scattered back by a Pad (one index or an ascending run) or one Gather by the
inverse map (distinct indices); repeated or data-dependent indices use ScatterElements with
``reduction="add"`` (opset >= 16) or a one-hot MatMul (earlier opsets). Range(start, limit, delta) is
``start + i delta`` for ``i < n``, ``n = ceil((limit - start) / delta)``: when start or delta is computed
from the input's values it is on the path, differentiable wherever ``n`` is locally constant (an integer:
the limit has no gradient); the builder checks at run time that the length stays the probed one
(``GradientGraph.shape_checks``). An integer Range on the path is piecewise constant: an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ....core.errors import BackendError
from . import emit, forms
from .registry import RuleContext, jvp_rule, linear, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto

Names = emit.Names

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


# ----------------------------------------------------------------------------------------------- Slice


@dataclass(frozen=True)
class _AxisSlice:
    """What a Slice takes along one axis: ``count`` indices ``low, low + step, ...`` (step > 0), read
    from the highest down when ``reversed`` (a negative step)."""

    low: int
    step: int
    count: int
    reversed: bool = False


def _integers(ctx: RuleContext, node: NodeProto, index: int, what: str) -> list[int]:
    return [int(v) for v in emit.constant(ctx, node, node.input[index], what).reshape(-1)]


def _slice_arguments(ctx: RuleContext, node: NodeProto) -> tuple[list[int], list[int], list[int], list[int]]:
    """(starts, ends, axes, steps): attributes in Slice-1 (opsets 1-9), inputs from Slice-10."""
    if len(node.input) >= 3:
        starts, ends = _integers(ctx, node, 1, "starts"), _integers(ctx, node, 2, "ends")
        axes = _integers(ctx, node, 3, "axes") if emit.optional_input(node, 3) else list(range(len(starts)))
        steps = _integers(ctx, node, 4, "steps") if emit.optional_input(node, 4) else [1] * len(starts)
        return starts, ends, axes, steps
    starts = [int(v) for v in ctx.attr(node, "starts", [])]
    ends = [int(v) for v in ctx.attr(node, "ends", [])]
    axes = [int(v) for v in ctx.attr(node, "axes", None) or range(len(starts))]
    return starts, ends, axes, [1] * len(starts)


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
        axis = emit.positive_axis(axis, len(shape))
        if step == 0:
            raise emit.unsupported(ctx, node, "one of its steps is 0, which ONNX does not allow")
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


def _spread(ctx: RuleContext, g: str, shape: Sequence[int], slices: list[_AxisSlice],
            dims: Sequence[int]) -> tuple[str, list[int], list[int]]:
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
        spread = forms.spread_spatially(ctx, g, shape, slices[2].step, phases)
    else:
        blocks = emit.pad(ctx, emit.reshape(ctx, g, split_shape, shape), begins, ends)
        spread = ctx.emit1("Reshape", [blocks, ctx.const(merged)])
    if crop:
        axes = sorted(crop)
        spread = emit.slice_axes(ctx, spread, axes, [0] * len(axes), [merged[a] - crop[a] for a in axes])
        for a in axes:
            merged[a] -= crop[a]
    return spread, merged, starts


@linear("Slice")
def slice_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Zero-pad the cotangent back to the input's shape (after un-reversing negative steps and spreading
    strided axes with zeros)."""
    x, g = node.input[0], grads[0]
    dims = list(ctx.shape(x))
    slices = _axis_slices(ctx, node)
    shape = [s.count for s in slices]
    if math.prod(shape) == 0:
        return emit.padded([emit.zeros(ctx, dims, x)], len(node.input))
    flipped = [a for a, s in enumerate(slices) if s.reversed]
    if flipped:
        n = len(flipped)
        g = emit.slice_axes(ctx, g, flipped, [-1] * n, [_INT64_MIN] * n, [-1] * n)
    starts = [s.low for s in slices]
    if any(s.step > 1 and s.count > 1 for s in slices):
        g, shape, starts = _spread(ctx, g, shape, slices, dims)
    ends = [d - s - n for d, s, n in zip(dims, starts, shape, strict=True)]
    return emit.padded([emit.pad(ctx, g, starts, ends)], len(node.input))


# ---------------------------------------------------------------------------------------------- Gather


def _accumulate_rows(ctx: RuleContext, rows3: str, data_shape: Sequence[int], axis: int, count: int,
                     indices: str, one_hot: Callable[[], str], like: str) -> str:
    """Sum the ``count`` rows of a Gather's cotangent into the data rows that ``indices`` (any shape,
    values possibly repeated or negative) name: ScatterElements with reduction "add" from opset 16, else
    the (dim, count) matrix ``one_hot()`` times the cotangent viewed as (P, count, Q)."""
    pre, dim, post = math.prod(data_shape[:axis]), data_shape[axis], math.prod(data_shape[axis + 1:])
    g_shape = [*data_shape[:axis], count, *data_shape[axis + 1:]]
    rows = emit.reshape(ctx, rows3, [pre, count, post], g_shape)
    if ctx.opset >= 16:
        where = emit.expand(ctx, ctx.emit1("Reshape", [indices, ctx.const([1, count, 1])]), [pre, count, post],
                            [1, count, 1])
        zeros = emit.zeros(ctx, [pre, dim, post], like)
        summed = ctx.emit1("ScatterElements", [zeros, where, rows], axis=1, reduction="add")
    else:
        summed = ctx.emit1("MatMul", [one_hot(), rows])  # (dim, count) @ (P, count, Q)
    return emit.reshape(ctx, summed, data_shape, [pre, dim, post])


def _one_hot(ctx: RuleContext, indices: str, depth: int, like: str, axis: int = 0) -> str:
    """OneHot of runtime indices in ``like``'s float type (negative indices count from the end)."""
    from onnx import TensorProto

    flat = ctx.emit1("Cast", [indices], to=TensorProto.INT64)
    hot = ctx.emit1("OneHot", [flat, ctx.const(np.array([depth], dtype=np.int64)),
                               ctx.const(np.array([0.0, 1.0], dtype=np.float32))], axis=axis)
    elem = emit.elem_type(ctx, like)
    return hot if elem == TensorProto.FLOAT else ctx.emit1("Cast", [hot], to=elem)


def _gather_constant_indices(ctx: RuleContext, rows3: str, flat: np.ndarray, data_shape: Sequence[int],
                             axis: int, like: str) -> str:
    """Gather's adjoint for indices known at build time (``flat``: non-negative, flattened): a Pad for
    one index or an ascending run, one Gather by the inverse map for distinct indices, else a sum."""
    dim, count = data_shape[axis], flat.size
    unique = np.unique(flat).size == count
    begins, ends = [0] * len(data_shape), [0] * len(data_shape)
    if unique and np.array_equal(flat, np.arange(flat[0], flat[0] + count)):
        begins[axis], ends[axis] = int(flat[0]), dim - int(flat[0]) - count
        return emit.pad(ctx, rows3, begins, ends)
    if unique:  # gather back: untouched cells read a zero appended after the last row
        inverse = np.full(dim, count, dtype=np.int64)
        inverse[flat] = np.arange(count)
        ends[axis] = 1 if count < dim else 0
        source = emit.pad(ctx, rows3, begins, ends)
        return ctx.emit1("Gather", [source, ctx.const(inverse)], axis=axis)

    def matrix() -> str:
        return ctx.const((flat[None, :] == np.arange(dim)[:, None]).astype(ctx.dtype(like)))

    return _accumulate_rows(ctx, rows3, data_shape, axis, count, ctx.const(flat), matrix, like)


@linear("Gather")
def gather_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Scatter-add the cotangent back to the gathered positions (see the module docstring for the forms)."""
    (data, indices), g = node.input[:2], grads[0]
    data_shape = list(ctx.shape(data))
    axis = emit.positive_axis(int(ctx.attr(node, "axis", 0)), len(data_shape))
    dim = data_shape[axis]
    count = math.prod(ctx.shape(indices))
    if count == 0 or math.prod(data_shape) == 0:
        return emit.padded([emit.zeros(ctx, data_shape, data)], len(node.input))
    rows3 = emit.reshape(ctx, g, [*data_shape[:axis], count, *data_shape[axis + 1:]], ctx.shape(node.output[0]))
    value = ctx.value(indices)
    if value is not None:
        flat = np.asarray(value, dtype=np.int64).reshape(-1)
        flat = np.where(flat < 0, flat + dim, flat)
        return emit.padded([_gather_constant_indices(ctx, rows3, flat, data_shape, axis, data)], len(node.input))

    def matrix() -> str:
        return _one_hot(ctx, ctx.emit1("Reshape", [indices, ctx.const([count])]), dim, data)

    summed = _accumulate_rows(ctx, rows3, data_shape, axis, count, indices, matrix, data)
    return emit.padded([summed], len(node.input))


def _unique_per_line(indices: np.ndarray, axis: int, dim: int) -> bool:
    flat = np.where(indices < 0, indices + dim, indices)
    ordered = np.sort(np.moveaxis(flat, axis, -1), axis=-1)
    return not np.any(ordered[..., 1:] == ordered[..., :-1])


@linear("GatherElements")
def gather_elements_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """ScatterElements of the cotangent into zeros: with reduction "add" from opset 16, without it when
    constant indices never repeat along the axis, else a one-hot product summed over the axis."""
    (data, indices), g = node.input[:2], grads[0]
    data_shape, index_shape = list(ctx.shape(data)), list(ctx.shape(indices))
    axis = emit.positive_axis(int(ctx.attr(node, "axis", 0)), len(data_shape))
    if math.prod(index_shape) == 0 or math.prod(data_shape) == 0:
        return emit.padded([emit.zeros(ctx, data_shape, data)], len(node.input))
    value = ctx.value(indices)
    if ctx.opset >= 16 or (value is not None and _unique_per_line(np.asarray(value), axis, data_shape[axis])):
        reduction = {"reduction": "add"} if ctx.opset >= 16 else {}
        scattered = ctx.emit1("ScatterElements", [emit.zeros(ctx, data_shape, data), indices, g], axis=axis,
                              **reduction)
        return emit.padded([scattered], len(node.input))
    # one-hot H[..., j, d, ...] = [indices[..., j, ...] == d]; grad[..., d, ...] = sum_j H g
    hot = _one_hot(ctx, indices, data_shape[axis], data, axis=axis + 1)
    lifted = [*index_shape[:axis + 1], 1, *index_shape[axis + 1:]]
    product = ctx.emit1("Mul", [hot, emit.reshape(ctx, g, lifted, index_shape)])
    summed = emit.reduce_sum(ctx, product, [axis], keepdims=0)
    reached = [*index_shape[:axis], data_shape[axis], *index_shape[axis + 1:]]
    grown = emit.pad(ctx, summed, [0] * len(data_shape), [d - r for d, r in zip(data_shape, reached, strict=True)])
    return emit.padded([grown], len(node.input))


# ----------------------------------------------------------------------------------------------- Range


def _range_parts(ctx: RuleContext, node: NodeProto) -> tuple[str, str, str, int]:
    """(start, delta, the indices 0 .. n - 1 in the output's float type, n); refuses an integer Range."""
    out = node.output[0]
    dtype = np.dtype(ctx.dtype(out))
    if dtype.kind != "f":
        raise emit.unsupported(ctx, node, f"it computes {dtype} values from the input's values, which are "
                                          "piecewise constant in them (zero gradient almost everywhere)")
    (count,) = ctx.shape(out)
    return node.input[0], node.input[2], ctx.const(np.arange(count, dtype=dtype)), int(count)


def _as_scalar_of(ctx: RuleContext, total: str, primal: str) -> str:
    """A rank-0 sum reshaped to the shape of the scalar input ``primal`` (rank 0 or (1,))."""
    return emit.reshape(ctx, total, ctx.shape(primal), ())


@vjp_rule("Range", differentiable=(0, 2))
def range_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """``out[i] = start + i delta``: start gets sum(g), delta sum(i g); the limit only sets the length."""
    result, g = emit.nothing(node), grads[0]
    start, delta, indices, _ = _range_parts(ctx, node)
    if ctx.needs_grad(start):
        result[0] = _as_scalar_of(ctx, emit.reduce_sum(ctx, g, [0], keepdims=0), start)
    if ctx.needs_grad(delta):
        weighted = ctx.emit1("Mul", [g, indices])
        result[2] = _as_scalar_of(ctx, emit.reduce_sum(ctx, weighted, [0], keepdims=0), delta)
    return result


@jvp_rule("Range")
def range_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """``t_start + i t_delta`` for every index ``i`` of the output (the limit's tangent does not count)."""
    t_start, t_delta = tangents[0], tangents[2] if len(tangents) > 2 else None
    if t_start is None and t_delta is None:  # only the limit has a tangent: the values do not move
        return [None]
    start, delta, indices, count = _range_parts(ctx, node)
    parts = []
    if t_start is not None:
        parts.append(emit.expand(ctx, emit.reshape(ctx, t_start, (1,), ctx.shape(start)), (count,), (1,)))
    if t_delta is not None:
        parts.append(ctx.emit1("Mul", [emit.reshape(ctx, t_delta, (1,), ctx.shape(delta)), indices]))
    return [emit.total(ctx, parts)]
