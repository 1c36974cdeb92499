"""VJP and JVP rules of Pad.

Pad is affine in x: ``y = P x + c m``, where ``P`` copies every input cell to its place in the output (and,
in the edge, reflect and wrap modes, to the border cells that repeat it) and ``m`` marks the border cells
a constant ``c`` fills. Its VJP is ``P^T g``: the interior of the cotangent, plus each border cell folded
back onto the input cell it copies; negative pads crop, and their adjoint pads the cotangent with zeros.
Its JVP pads the tangent the same way with 0 as the constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import emit
from .registry import RuleContext, jvp_rule, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto

Names = list[str | None]


@dataclass(frozen=True)
class _PadSpec:
    mode: str
    begins: list[int]  # per axis; negative = cropped
    ends: list[int]


def _pad_spec(ctx: RuleContext, node: NodeProto) -> _PadSpec:
    """Pads per axis at the model's opset: attribute before 11, input from 11, optional axes from 18."""
    rank = len(ctx.shape(node.input[0]))
    mode = ctx.attr(node, "mode", "constant") or "constant"
    if ctx.opset < 11:
        pads = list(ctx.attr(node, "pads", None) or ctx.attr(node, "paddings", None) or [0] * (2 * rank))
    else:
        pads = [int(p) for p in emit.constant(ctx, node, node.input[1], "pads").ravel()]
    axes = list(range(rank))
    if ctx.opset >= 18 and emit.optional_input(node, 3):
        axes = [int(a) % rank for a in emit.constant(ctx, node, node.input[3], "axes").ravel()]
    begins, ends = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        begins[a], ends[a] = pads[i], pads[len(axes) + i]
    return _PadSpec(str(mode), begins, ends)


def _runs(source: np.ndarray) -> list[tuple[int, int, int]]:
    """Split output positions into runs (start, stop, step) over which ``source`` moves by step 1, -1 or 0."""
    runs, start = [], 0
    while start < len(source):
        stop, step = start + 1, 0
        if stop < len(source) and abs(int(source[stop]) - int(source[start])) <= 1:
            step = int(source[stop]) - int(source[start])
            while stop < len(source) and int(source[stop]) - int(source[stop - 1]) == step:
                stop += 1
        runs.append((start, stop, step))
        start = stop
    return runs


def _fold_axis(ctx: RuleContext, g: str, shape: list[int], axis: int, size: int, before: int, after: int,
               mode: str) -> str:
    """Adjoint of padding one axis (length ``size``) by ``before``/``after`` cells in an edge/reflect/wrap mode."""
    source = np.pad(np.arange(size), (before, after), mode=mode)  # NumPy's modes mean what ONNX's do
    terms = [emit.slice_axes(ctx, g, [axis], [before], [before + size])]
    border = [*[(o0, o1, s) for o0, o1, s in _runs(source[:before])],
              *[(before + size + o0, before + size + o1, s) for o0, o1, s in _runs(source[before + size:])]]
    for o0, o1, step in border:
        positions = list(range(o0, o1)) if step >= 0 else list(range(o1 - 1, o0 - 1, -1))
        piece = ctx.emit1("Gather", [g, ctx.const(positions)], axis=axis)
        if step == 0:
            piece = emit.reduce_sum(ctx, piece, [axis])
        low = int(source[o0 if step >= 0 else o1 - 1])
        width = 1 if step == 0 else o1 - o0
        begins, ends = [0] * len(shape), [0] * len(shape)
        begins[axis], ends[axis] = low, size - low - width
        terms.append(emit.pad(ctx, piece, begins, ends))
    return emit.total(ctx, terms)


def _constant_on_path(ctx: RuleContext, node: NodeProto) -> Exception:
    return emit.unsupported(ctx, node, "its constant_value depends on the input")


@vjp_rule("Pad", differentiable=(0, 2))
def pad_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Slice the interior of the cotangent; reflect/edge/wrap borders fold back onto the cells they copy."""
    g: str = grads[0]  # type: ignore[assignment]
    if emit.optional_input(node, 2) and ctx.needs_grad(node.input[2]):
        raise _constant_on_path(ctx, node)
    spec = _pad_spec(ctx, node)
    x_shape = list(ctx.shape(node.input[0]))
    rank = len(x_shape)
    inner = [x_shape[a] + min(spec.begins[a], 0) + min(spec.ends[a], 0) for a in range(rank)]
    shape = [inner[a] + max(spec.begins[a], 0) + max(spec.ends[a], 0) for a in range(rank)]
    if spec.mode == "constant":
        padded = [a for a in range(rank) if shape[a] != inner[a]]
        folded = emit.slice_axes(ctx, g, padded, [max(spec.begins[a], 0) for a in padded],
                                 [max(spec.begins[a], 0) + inner[a] for a in padded])
    elif spec.mode in ("edge", "reflect", "wrap"):
        folded = g
        for a in range(rank):
            before, after = max(spec.begins[a], 0), max(spec.ends[a], 0)
            if before or after:
                folded = _fold_axis(ctx, folded, shape, a, inner[a], before, after, spec.mode)
                shape[a] = inner[a]
    else:
        raise emit.unsupported(ctx, node, f"its mode {spec.mode!r} is not one gradsal knows")
    result = emit.pad(ctx, folded, [max(-b, 0) for b in spec.begins], [max(-e, 0) for e in spec.ends])
    return emit.padded([result], len(node.input))


# Not ``linear``: Pad is affine in x, and the registrar's JVP would keep the fill constant (an attribute
# before opset 11), where the tangent must be padded with 0.
@jvp_rule("Pad")
def pad_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """Pad is affine in x: pad the tangent the same way, with 0 as the constant."""
    u = tangents[0]
    if len(tangents) > 2 and tangents[2] is not None:
        raise _constant_on_path(ctx, node)
    if ctx.opset < 11:
        return [ctx.emit1("Pad", [u], **emit.node_attributes(ctx, node, value=0.0))]  # type: ignore[list-item]
    inputs = [u, node.input[1]]
    if emit.optional_input(node, 3):
        inputs += ["", node.input[3]]
    return [ctx.emit1("Pad", inputs, **emit.node_attributes(ctx, node))]  # type: ignore[list-item]
