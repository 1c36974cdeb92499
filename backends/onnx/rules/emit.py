"""The one emitter of gradient graphs: the ONNX spellings of the building blocks every rule needs.

Each function appends standard nodes through a :class:`~.registry.RuleContext` in the form that is valid at
the model's own opset (``ctx.opset``): a reduction takes its axes as an input from opset 13 (ReduceSum) or
18 (the others) and as an attribute before; Slice takes inputs from 10, Pad from 11, Split's sizes from
13; Equal takes floats from 11. Rules and the graph builder call these instead of spelling the nodes
themselves, so an opset switch lives in one place. Helpers that emit nothing when there is nothing to do
(reshaping to the same shape, reducing over no axes, padding by zero) return their input unchanged.
The refusal every rule raises for a case it cannot differentiate is written here too (:func:`unsupported`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ....core.errors import UnsupportedOperatorError

if TYPE_CHECKING:
    from onnx import NodeProto

    from .registry import RuleContext

Names = list[str | None]

FALLBACK_HINT = "pass OnnxBackend(..., fallback='finite_differences') to differentiate it numerically."

# The first opset at which each reduction takes ``axes`` as an input instead of an attribute.
_AXES_AS_INPUT = {"ReduceSum": 13}
_AXES_AS_INPUT_LATER = 18


# ------------------------------------------------------------------------------- refusals and inputs


def unsupported(ctx: RuleContext, node: NodeProto, why: str, where: str = "before it") -> UnsupportedOperatorError:
    """The typed refusal for a node on the differentiated path that a rule cannot differentiate."""
    label = f"{node.op_type} node {node.name or '(unnamed)'!r} (opset {ctx.opset})"
    return UnsupportedOperatorError(
        f"{label} lies between the input and the explained output, but {why}. "
        f"Explain a tensor {where} (output_name=...), or {FALLBACK_HINT}"
    )


def optional_input(node: NodeProto, index: int) -> str:
    """The name of input ``index``, or "" when it is absent (as ONNX spells an omitted optional input)."""
    return node.input[index] if len(node.input) > index else ""


def constant(ctx: RuleContext, node: NodeProto, name: str, what: str) -> np.ndarray:
    """The value of ``name`` (axes, pads, shapes...), refusing the node when it depends on the input's values."""
    value = ctx.value(name)
    if value is None:
        raise unsupported(ctx, node, f"its {what} ({name!r}) depends on the input's values")
    return np.asarray(value)


def positive_axis(axis: int, rank: int) -> int:
    """An axis attribute counted from the front (ONNX lets a negative axis count from the back)."""
    return axis + rank if axis < 0 else axis


def padded(values: Sequence[str | None], length: int) -> Names:
    """``values`` followed by None (no gradient) up to ``length`` entries."""
    return [*values, *[None] * (length - len(values))]


def nothing(node: NodeProto) -> Names:
    """A VJP result with no gradient for any input."""
    return [None] * len(node.input)


def node_attributes(ctx: RuleContext, node: NodeProto, **overrides: object) -> dict[str, object]:
    """The node's attributes as keyword arguments for :meth:`RuleContext.emit`, with ``overrides`` applied."""
    attrs = {attribute.name: ctx.attr(node, attribute.name) for attribute in node.attribute}
    attrs.update(overrides)
    return {k: v for k, v in attrs.items() if v is not None and not (isinstance(v, list) and not v)}


def same_op(ctx: RuleContext, node: NodeProto, replaced: Mapping[int, str]) -> list[str]:
    """The node again, its attributes kept and the inputs at the positions of ``replaced`` swapped.

    The JVP of an operator that is linear in those inputs; "" drops an optional input (a bias).
    """
    inputs = [replaced.get(i, name) for i, name in enumerate(node.input)]
    while inputs and not inputs[-1]:
        inputs.pop()
    return ctx.emit(node.op_type, inputs, len(node.output), **node_attributes(ctx, node))


# ------------------------------------------------------------------------------------ types and values


def elem_type(ctx: RuleContext, name: str) -> int:
    """ONNX element type (TensorProto enum) of a tensor."""
    from onnx import helper

    return int(helper.np_dtype_to_tensor_dtype(np.dtype(ctx.dtype(name))))


def scalar(ctx: RuleContext, value: float, like: str) -> str:
    """A float constant in ``like``'s element type, to broadcast against it."""
    return ctx.const(float(value), like=like)


def cast(ctx: RuleContext, name: str, to: int, from_elem: int | None = None) -> str:
    """``name`` as element type ``to``; nothing is emitted when it already is.

    ``from_elem``: the type ``name`` has, for a cotangent or tangent, which the context does not type.
    """
    source = elem_type(ctx, name) if from_elem is None else from_elem
    return name if source == to else ctx.emit1("Cast", [name], to=to)


def mask(ctx: RuleContext, condition: str, like: str) -> str:
    """A boolean condition as 0/1 in ``like``'s float type."""
    return ctx.emit1("Cast", [condition], to=elem_type(ctx, like))


def equal(ctx: RuleContext, a: str, b: str) -> str:
    """Boolean ``a == b`` (Equal takes floats only from opset 11; before, "neither less nor greater")."""
    if ctx.opset >= 11:
        return ctx.emit1("Equal", [a, b])
    differ = ctx.emit1("Or", [ctx.emit1("Less", [a, b]), ctx.emit1("Greater", [a, b])])
    return ctx.emit1("Not", [differ])


def zeros(ctx: RuleContext, shape: Sequence[int], like: str) -> str:
    """A zero tensor of ``shape`` in ``like``'s element type (no initializer of that size is stored)."""
    from onnx import helper

    value = helper.make_tensor("value", elem_type(ctx, like), [1], [0])
    return ctx.emit1("ConstantOfShape", [ctx.const([int(d) for d in shape])], value=value)


def broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    """The shape NumPy broadcasting gives ``shapes`` (as ONNX's multidirectional broadcasting does)."""
    return tuple(int(d) for d in np.broadcast_shapes(*(tuple(s) for s in shapes)))


def channel_total(ctx: RuleContext, g: str, rank: int) -> str:
    """Sum over every axis but the channels (axis 1) of a rank-``rank`` tensor: a (C,) cotangent (a bias's,
    a per-channel scale's or weight's)."""
    return reduce_sum(ctx, g, [0, *range(2, rank)], keepdims=0)


def total(ctx: RuleContext, terms: Sequence[str]) -> str:
    """The sum of same-shaped (or broadcasting) terms: the term itself, an Add, or one Sum node."""
    if len(terms) == 1:
        return terms[0]
    if len(terms) == 2:
        return ctx.emit1("Add", list(terms))
    return ctx.emit1("Sum", list(terms))


# ------------------------------------------------------------------------------------- reshaping


def reshape(ctx: RuleContext, name: str, shape: Sequence[int], from_shape: Sequence[int] | None = None) -> str:
    """``name`` viewed as ``shape``; nothing is emitted when it already has that shape.

    An empty result is a zero constant instead: Reshape's ``0`` means "copy this dimension" below opset 14.
    ``from_shape`` is needed only for a tensor whose shape the context does not track.
    """
    shape = tuple(int(d) for d in shape)
    known = tuple(from_shape) if from_shape is not None else _known_shape(ctx, name)
    if known == shape:
        return name
    if math.prod(shape) == 0:
        return zeros(ctx, shape, name)
    return ctx.emit1("Reshape", [name, ctx.const(list(shape))])


def expand(ctx: RuleContext, name: str, shape: Sequence[int], from_shape: Sequence[int] | None = None) -> str:
    """``name`` broadcast to ``shape``; nothing is emitted when it already has that shape."""
    known = tuple(from_shape) if from_shape is not None else _known_shape(ctx, name)
    if known == tuple(shape):
        return name
    return ctx.emit1("Expand", [name, ctx.const([int(d) for d in shape])])


def _known_shape(ctx: RuleContext, name: str) -> tuple[int, ...] | None:
    try:
        return tuple(ctx.shape(name))
    except KeyError:
        return None


# ----------------------------------------------------------------------- reductions, slices, pads, splits


def reduce(ctx: RuleContext, op: str, name: str, axes: Sequence[int], keepdims: int = 1) -> str:
    """Reduction ``op`` (ReduceSum, ReduceMean, ReduceMax...) over ``axes``; nothing is emitted for no axes."""
    axes = [int(a) for a in axes]
    if not axes:
        return name
    if ctx.opset >= _AXES_AS_INPUT.get(op, _AXES_AS_INPUT_LATER):
        return ctx.emit1(op, [name, ctx.const(axes)], keepdims=keepdims)
    return ctx.emit1(op, [name], axes=axes, keepdims=keepdims)


def reduce_sum(ctx: RuleContext, name: str, axes: Sequence[int], keepdims: int = 1) -> str:
    """ReduceSum over ``axes``; nothing is emitted for no axes."""
    return reduce(ctx, "ReduceSum", name, axes, keepdims)


def slice_axes(ctx: RuleContext, name: str, axes: Sequence[int], starts: Sequence[int], ends: Sequence[int],
               steps: Sequence[int] | None = None) -> str:
    """Slice along ``axes`` (inputs from opset 10, attributes and unit steps before); nothing for no axes."""
    if not axes:
        return name
    if ctx.opset >= 10:
        inputs = [name, ctx.const(list(starts)), ctx.const(list(ends)), ctx.const(list(axes))]
        if steps is not None:
            inputs.append(ctx.const(list(steps)))
        return ctx.emit1("Slice", inputs)
    if steps is not None and any(s != 1 for s in steps):
        raise UnsupportedOperatorError(
            f"gradsal needs a reversed Slice, which ONNX has only from opset 10 (the model has {ctx.opset}); "
            f"{FALLBACK_HINT}"
        )
    return ctx.emit1("Slice", [name], axes=list(axes), starts=list(starts), ends=list(ends))


def pad(ctx: RuleContext, name: str, begins: Sequence[int], ends: Sequence[int]) -> str:
    """Zero-pad every axis by non-negative amounts (pads an input from opset 11, an attribute before)."""
    if not any(begins) and not any(ends):
        return name
    pads = [int(p) for p in (*begins, *ends)]
    if ctx.opset >= 11:
        return ctx.emit1("Pad", [name, ctx.const(pads)], mode="constant")
    return ctx.emit1("Pad", [name], pads=pads, mode="constant", value=0.0)


def crop_or_pad(ctx: RuleContext, name: str, shape: Sequence[int], begins: Sequence[int],
                ends: Sequence[int]) -> str:
    """Grow (positive amounts, zeros) or shrink (negative amounts) each axis of ``name`` at both ends."""
    if any(max(-b, 0) + max(-e, 0) >= d for b, e, d in zip(begins, ends, shape, strict=True)):
        # everything is cropped away along some axis: only the zeros padded back remain
        return zeros(ctx, [d + b + e for b, e, d in zip(begins, ends, shape, strict=True)], name)
    axes = [a for a in range(len(shape)) if begins[a] < 0 or ends[a] < 0]
    cropped = slice_axes(ctx, name, axes, [max(-begins[a], 0) for a in axes],
                         [shape[a] - max(-ends[a], 0) for a in axes])
    return pad(ctx, cropped, [max(b, 0) for b in begins], [max(e, 0) for e in ends])


def split(ctx: RuleContext, name: str, sizes: Sequence[int], axis: int) -> list[str]:
    """Split into pieces of ``sizes`` along ``axis`` (sizes an input from opset 13, an attribute before)."""
    sizes = [int(s) for s in sizes]
    if ctx.opset >= 13:
        return ctx.emit("Split", [name, ctx.const(sizes)], len(sizes), axis=axis)
    return ctx.emit("Split", [name], len(sizes), axis=axis, split=sizes)
