"""VJP and JVP rules of Resize and Upsample.

Resizing is a separable linear map in x: along each resized axis ``y = A x`` with an interpolation matrix
``A`` (out, size), each row one-hot for nearest resizing and two linear weights for linear resizing. The
matrices are built at build time by replaying onnxruntime's coordinate arithmetic in float32, so the
adjoint applies each ``A^T`` exactly (one MatMul per axis); a nearest upsampling by an integer factor is a
Reshape + ReduceSum instead. The JVP resizes the tangent (extrapolated cells, a constant, get 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import emit
from .registry import RuleContext, jvp_rule, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto

Names = list[str | None]


@dataclass(frozen=True)
class _ResizeSpec:
    mode: str  # nearest | linear
    coordinate: str  # coordinate_transformation_mode ("asymmetric" before Resize-11)
    nearest: str  # nearest_mode ("simple" before Resize-11)
    scales: list[float]  # per axis, float32 values as onnxruntime uses them
    roi: list[float] | None  # starts then ends, per axis (tf_crop_and_resize)


def _resize_scales(ctx: RuleContext, node: NodeProto, rank: int) -> list[float]:
    """The per-axis scales onnxruntime interpolates with (float32), from scales or from sizes."""
    in_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    axes = [int(a) % rank for a in (ctx.attr(node, "axes", None) or range(rank))]
    if node.op_type == "Upsample" and ctx.opset < 9:
        given = np.asarray(ctx.attr(node, "scales"), dtype=np.float32)
    else:
        index = 2 if node.op_type == "Resize" and ctx.opset >= 11 else 1
        name = emit.optional_input(node, index)
        given = None if not name else emit.constant(ctx, node, name, "scales").astype(np.float32).ravel()
    scales = [np.float32(1.0)] * rank
    if given is not None and given.size:
        for i, a in enumerate(axes if given.size != rank else range(rank)):
            scales[a] = np.float32(given[i])
        return [float(s) for s in scales]
    requested = list(out_shape)  # the sizes asked for (a keep_aspect_ratio_policy may change the output)
    sizes = ctx.value(emit.optional_input(node, 3)) if emit.optional_input(node, 3) else None
    if sizes is not None:
        for i, a in enumerate(axes if np.size(sizes) != rank else range(rank)):
            requested[a] = int(np.ravel(sizes)[i])
    for a in axes:
        scales[a] = np.float32(requested[a]) / np.float32(in_shape[a])
    policy = ctx.attr(node, "keep_aspect_ratio_policy", "stretch")
    if policy in ("not_larger", "not_smaller"):
        pick = min if policy == "not_larger" else max
        common = pick(scales[a] for a in axes)
        scales = [common if a in axes else np.float32(1.0) for a in range(rank)]
    return [float(s) for s in scales]


def _resize_spec(ctx: RuleContext, node: NodeProto) -> _ResizeSpec:
    rank = len(ctx.shape(node.input[0]))
    mode = str(ctx.attr(node, "mode", "nearest"))
    if int(ctx.attr(node, "antialias", 0)):  # type: ignore[arg-type]
        raise emit.unsupported(ctx, node, "antialiased resizing has no gradient rule yet")
    if mode not in ("nearest", "linear"):
        raise emit.unsupported(ctx, node, f"its mode {mode!r} has no gradient rule yet (nearest and linear do)")
    legacy = node.op_type == "Upsample" or ctx.opset < 11
    coordinate = "asymmetric" if legacy else str(ctx.attr(node, "coordinate_transformation_mode", "half_pixel"))
    nearest = "simple" if legacy else str(ctx.attr(node, "nearest_mode", "round_prefer_floor"))
    roi = None
    if coordinate == "tf_crop_and_resize":
        values = emit.constant(ctx, node, node.input[1], "roi").astype(np.float32).ravel()
        axes = [int(a) % rank for a in (ctx.attr(node, "axes", None) or range(rank))]
        starts, ends = [0.0] * rank, [1.0] * rank
        for i, a in enumerate(axes):
            starts[a], ends[a] = float(values[i]), float(values[len(axes) + i])
        roi = starts + ends
    return _ResizeSpec(mode, coordinate, nearest, _resize_scales(ctx, node, rank), roi)


def _original_coordinates(spec: _ResizeSpec, axis: int, size: int, out: int) -> np.ndarray:
    """Input coordinate of every output position, computed in float32 in onnxruntime's order of operations."""
    f = np.float32
    o = np.arange(out, dtype=f)
    scale, length_in, length_out = f(spec.scales[axis]), f(size), f(out)
    mode = spec.coordinate
    if mode == "asymmetric":
        return o / scale
    if mode == "pytorch_half_pixel":
        return (o + f(0.5)) / scale - f(0.5) if out > 1 else np.zeros(out, dtype=f)
    if mode == "tf_half_pixel_for_nn":
        return (o + f(0.5)) / scale
    if mode == "align_corners":
        return o * (length_in - f(1)) / (length_out - f(1)) if out > 1 else np.zeros(out, dtype=f)
    if mode == "tf_crop_and_resize":
        rank = len(spec.roi) // 2  # type: ignore[arg-type]
        start, end = f(spec.roi[axis]), f(spec.roi[rank + axis])  # type: ignore[index]
        if out > 1:
            return start * (length_in - f(1)) + (o * (end - start) * (length_in - f(1))) / (length_out - f(1))
        return np.full(out, 0.5 * float(start + end) * (float(length_in) - 1), dtype=f)  # float32 sum
    if mode == "half_pixel_symmetric":
        adjustment = length_out / (scale * length_in)
        offset = (length_in / f(2)) * (f(1) - adjustment)
        return (offset + (o.astype(np.float64) + 0.5) / scale - 0.5).astype(f)
    if mode == "half_pixel":
        return (o + f(0.5)) / scale - f(0.5)
    raise ValueError(mode)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    whole = np.trunc(x)
    return whole + np.where(np.abs(x - whole) >= 0.5, np.sign(x), 0)


def _nearest_index(spec: _ResizeSpec, x: np.ndarray, downsampling: bool) -> np.ndarray:
    mode = spec.nearest
    if mode == "simple":
        return np.ceil(x) if downsampling else np.trunc(x)
    if mode == "round_prefer_ceil":
        return _round_half_away(x)
    if mode == "floor":
        return np.floor(x)
    if mode == "ceil":
        return np.ceil(x)
    # round_prefer_floor: onnxruntime 1.32 takes coordinates less than 1e-6 above k + 0.5 as halfway
    # too (measured: 1.50000095 -> 1 but 3.5000012 -> 4), so compare with that tolerance
    halfway = np.abs(x.astype(np.float64) - (np.trunc(x) + 0.5)) < 1e-6
    return np.where(halfway, np.floor(x), _round_half_away(x))


def _interpolation_matrix(spec: _ResizeSpec, axis: int, size: int, out: int) -> np.ndarray | None:
    """A (out, size) with y = A x along ``axis``; None where the axis is left as it is."""
    if spec.scales[axis] == 1.0 and out == size:  # onnxruntime copies such an axis whatever the coordinates
        return None
    x = _original_coordinates(spec, axis, size, out)
    matrix = np.zeros((out, size))
    rows = np.arange(out)
    if spec.mode == "nearest":
        index = np.clip(_nearest_index(spec, x, spec.scales[axis] < 1), 0, size - 1).astype(np.int64)
        matrix[rows, index] = 1.0
    else:
        v = np.clip(x, np.float32(0), np.float32(size - 1))
        low = np.minimum(v.astype(np.int64), size - 1)
        high = np.minimum(low + 1, size - 1)
        to_low, to_high = np.abs(v - low.astype(np.float32)), np.abs(v - high.astype(np.float32))
        same = low == high
        to_low, to_high = np.where(same, 0.5, to_low), np.where(same, 0.5, to_high)
        np.add.at(matrix, (rows, low), to_high)
        np.add.at(matrix, (rows, high), to_low)
    if spec.coordinate == "tf_crop_and_resize":
        matrix[(x < 0) | (x > size - 1)] = 0.0  # extrapolated: a constant, no gradient
    return matrix


def _block_factor(matrix: np.ndarray) -> int | None:
    """k when the map is plain nearest upsampling by an integer factor (output o copies input o // k)."""
    out, size = matrix.shape
    if out % size:
        return None
    k = out // size
    expected = np.zeros_like(matrix)
    expected[np.arange(out), np.arange(out) // k] = 1.0
    return k if np.array_equal(matrix, expected) else None


def _apply_transposed(ctx: RuleContext, t: str, shape: list[int], axis: int, matrix: np.ndarray) -> str:
    """``A^T`` applied along ``axis`` (A: (out, size)) with one MatMul, reshaping only when axis < rank-2."""
    rank = len(shape)
    dtype = ctx.dtype(t)
    if axis == rank - 1:
        return ctx.emit1("MatMul", [t, ctx.const(matrix.astype(dtype))])
    transposed = ctx.const(np.ascontiguousarray(matrix.T).astype(dtype))
    if axis == rank - 2:
        return ctx.emit1("MatMul", [transposed, t])
    outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
    product_ = ctx.emit1("MatMul", [transposed, emit.reshape(ctx, t, [outer, shape[axis], inner], from_shape=shape)])
    return emit.reshape(ctx, product_, [*shape[:axis], matrix.shape[1], *shape[axis + 1:]],
                        from_shape=[outer, matrix.shape[1], inner])


def _refuse_geometry_gradient(ctx: RuleContext, node: NodeProto, on_path: list[str]) -> None:
    """Resizing is differentiable in its scales and roi too, but gradsal has no rule for that: refuse
    rather than claim the output does not depend on them (sizes are integers: never on the path)."""
    if on_path:
        names = ", ".join(map(repr, on_path))
        raise emit.unsupported(ctx, node, f"its scales or roi computed from the input ({names}) would need a "
                               "gradient, which gradsal does not compute (only the data input's)")


@vjp_rule("Resize", "Upsample", differentiable=(0, 1, 2))
def resize_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Separable interpolation y = (A_1 x A_2 ...): the adjoint applies each A_axis^T (MatMul); an integer
    nearest upsampling is summed back with Reshape + ReduceSum."""
    _refuse_geometry_gradient(ctx, node, [name for name in node.input[1:3] if name and ctx.needs_grad(name)])
    g: str = grads[0]  # type: ignore[assignment]
    spec = _resize_spec(ctx, node)
    x_shape, y_shape = list(ctx.shape(node.input[0])), list(ctx.shape(node.output[0]))
    matrices = {a: _interpolation_matrix(spec, a, x_shape[a], y_shape[a]) for a in range(len(x_shape))}
    matrices = {a: m for a, m in matrices.items() if m is not None}
    factors = {a: _block_factor(m) for a, m in matrices.items()}
    if matrices and all(factors.values()):
        split = [d for a in range(len(x_shape)) for d in ([x_shape[a], factors[a]] if a in factors else [x_shape[a]])]
        blocks = [a + 1 + i for i, a in enumerate(sorted(factors))]  # the factor axis follows its axis
        summed = emit.reduce_sum(ctx, emit.reshape(ctx, g, split, from_shape=y_shape), blocks, keepdims=0)
        return emit.padded([summed], len(node.input))
    shape = list(y_shape)
    for a in sorted(matrices, key=lambda a: y_shape[a] / x_shape[a], reverse=True):
        g = _apply_transposed(ctx, g, shape, a, matrices[a])
        shape[a] = x_shape[a]
    return emit.padded([g], len(node.input))


# Not ``linear``: resizing is linear in x only, and the registrar's JVP would keep a nonzero
# extrapolation_value and could not refuse scales or roi computed from the input.
@jvp_rule("Resize", "Upsample")
def resize_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """Resizing is linear in x: resize the tangent (extrapolated cells, a constant, get 0)."""
    _refuse_geometry_gradient(ctx, node, [name for name, t in zip(node.input[1:3], tangents[1:3], strict=False)
                                          if name and t is not None])
    _resize_spec(ctx, node)
    attrs = emit.node_attributes(ctx, node)
    if "extrapolation_value" in attrs:
        attrs["extrapolation_value"] = 0.0
    return [ctx.emit1(node.op_type, [tangents[0], *node.input[1:]], **attrs)]  # type: ignore[list-item]
