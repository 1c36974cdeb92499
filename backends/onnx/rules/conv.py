"""VJP and JVP rules for ONNX's convolution, pooling, normalisation, padding and resizing operators.

Every rule emits standard ONNX nodes through the :class:`~._rules.RuleContext`; shapes are concrete, so
window geometry (pads, strides, phases) and every weight the gradient needs are worked out in NumPy at
build time and emitted as constants. Choices that keep the VJP graph about as cheap as the forward pass
(issue 9; measured by ``benchmarks/measure_conv_grad.py``):

- A Conv's input gradient is the adjoint of a correlation. With stride 1 it is a Conv of the cotangent
  with the kernel flipped and in/out channels swapped per group: onnxruntime runs it at the cost of the
  forward (1.0x, any grouping), ConvTranspose at 1.4-4.8x. A strided depthwise layer spreads the
  cotangent out with zeros (a one-hot ConvTranspose over N*C single-channel images) and then runs the
  flipped depthwise Conv: 2.2-3x the forward against 3-10x for ConvTranspose. Other strided layers use
  ConvTranspose, which measured fastest for them (0.9-3.6x); the alternative that splits the input
  positions into stride phases (one Conv over all phases + an interleaving Transpose) loses everywhere
  to onnxruntime's slow fine-grained Transpose. The weight is rearranged at build time; a weight
  computed in the graph falls back to ConvTranspose. The weight's own gradient is a correlation of x
  and the cotangent (the batch summed as channels).
- BatchNormalization (inference) folds into one multiply by a per-channel constant.
- MaxPool sends each cotangent to its window's argmax, the first maximum in scan order (torch's rule).
  Float32 2-D windows that tile the input (stride = kernel, no padding: the usual 2x2 pool) use a mask,
  upsampled cotangent times ``[x == upsampled y]``, in onnxruntime's blocked layout; it is the argmax
  rule wherever a window has a single maximum, and the graph raises a tie flag (an output) where one has
  two, on which the backend runs the exact graph instead, and keeps using it for the next calls at that
  shape (inputs with flat regions tie every time); OCR-style benchmark: 3.5x -> 2.7-3.1x the forward.
  The exact graph reads the pooling ``Indices``: MaxUnpool (float32) or ScatterElements when windows are
  disjoint, one ScatterElements with ``reduction="add"`` when they overlap (opset 16+; before,
  the windows are scattered in non-overlapping phases and summed). onnxruntime's MaxPool with Indices is
  a scalar NCHW kernel, 7-9x its plain MaxPool.
- AveragePool's adjoint scales the cotangent by 1/divisor and spreads it over each window: a
  one-channel all-ones ConvTranspose when windows are disjoint, else the depthwise all-ones Conv adjoint.
- Pad's adjoint slices the interior and folds reflected/edge/wrapped borders back onto the cells they copy.
- Resize/Upsample are separable linear maps: the adjoint applies, per resized axis, the transpose of the
  interpolation matrix (built at build time by replaying onnxruntime's coordinate arithmetic in float32)
  with MatMul; nearest resizing by an integer factor is a Reshape + ReduceSum instead.
- Linear operators' JVPs re-emit the operator itself on the tangent (bias and padding value dropped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import product
from typing import TYPE_CHECKING

import numpy as np

from ....core.errors import UnsupportedOperatorError
from . import forms
from .registry import RuleContext, jvp_rule, vjp_rule
from .tensor import _slice as _opset_slice

if TYPE_CHECKING:
    from onnx import NodeProto

Names = list[str | None]

_FALLBACK_HINT = "or pass OnnxBackend(..., fallback='finite_differences') to differentiate it numerically."

# How a Conv's input gradient is emitted, per layer kind ("stride1": every stride 1; "depthwise" and
# "regular" (any other grouping): strided): "phase" (for stride 1 the flipped-kernel Conv; for stride > 1
# one Conv over all stride phases + a Transpose that interleaves them), "spread" (zero-insertion + the
# stride-1 flipped-kernel Conv) or "convtranspose". Chosen from the timings of
# benchmarks/measure_conv_grad.py, which overrides these to time each variant.
CONV_GRAD_STRATEGY = {"stride1": "phase", "depthwise": "spread", "regular": "convtranspose",
                      "few_channels": "convtranspose"}
# A layer reading fewer channels than this (an RGB or grey stem) has its input gradient as ConvTranspose at
# any stride: a flipped-kernel Conv with 3 output channels misses onnxruntime's blocked NCHWc kernels and
# measured 1.7-2x slower than ConvTranspose (3 or 4 channels; even at 12, slower from 16).
FEW_CHANNELS = 12
# AveragePool's window-sum adjoint, for windows that never share a cell and for overlapping ones:
# "transpose" (one-channel all-ones ConvTranspose over the N*C images) or "conv" (the depthwise all-ones
# case of the Conv adjoint above); chosen from the same benchmark.
POOL_GRAD_STRATEGY = {"disjoint": "transpose", "overlapping": "conv"}


# --------------------------------------------------------------------------------------------- helpers


def _padded(values: Sequence[str | None], length: int) -> Names:
    return [*values, *[None] * (length - len(values))]


def _unsupported(ctx: RuleContext, node: NodeProto, why: str) -> UnsupportedOperatorError:
    label = f"{node.op_type} node {node.name or '(unnamed)'!r} (opset {ctx.opset})"
    return UnsupportedOperatorError(
        f"{label} lies between the input and the explained output, but {why}. "
        f"Explain a tensor before it (output_name=...), {_FALLBACK_HINT}"
    )


def _input(node: NodeProto, index: int) -> str:
    """The name of an optional input, or "" when it is absent."""
    return node.input[index] if len(node.input) > index else ""


def _copy_attrs(ctx: RuleContext, node: NodeProto, **overrides: object) -> dict[str, object]:
    attrs = {attribute.name: ctx.attr(node, attribute.name) for attribute in node.attribute}
    attrs.update(overrides)
    return {k: v for k, v in attrs.items() if v is not None}


def _reshape(ctx: RuleContext, name: str, shape: Sequence[int]) -> str:
    return ctx.emit1("Reshape", [name, ctx.const([int(d) for d in shape])])


def _slice(ctx: RuleContext, name: str, axes: Sequence[int], starts: Sequence[int], ends: Sequence[int],
           steps: Sequence[int] | None = None) -> str:
    """Slice in the form valid at the model's opset; nothing is emitted for no axes."""
    return _opset_slice(ctx, name, axes, starts, ends, steps) if axes else name


def _zero_pad(ctx: RuleContext, name: str, begins: Sequence[int], ends: Sequence[int]) -> str:
    """Pad with zeros (non-negative amounts per axis, full rank)."""
    if not any(begins) and not any(ends):
        return name
    pads = [int(p) for p in (*begins, *ends)]
    if ctx.opset >= 11:
        return ctx.emit1("Pad", [name, ctx.const(pads)], mode="constant")
    return ctx.emit1("Pad", [name], pads=pads, mode="constant", value=0.0)


def _crop_or_pad(ctx: RuleContext, name: str, shape: Sequence[int], begins: Sequence[int],
                 ends: Sequence[int]) -> str:
    """Grow (positive amounts, zeros) or shrink (negative amounts) each axis at both ends."""
    if any(max(-b, 0) + max(-e, 0) >= d for b, e, d in zip(begins, ends, shape, strict=True)):
        # everything is cropped away along some axis: only the zeros padded back remain
        return _zeros(ctx, [d + b + e for b, e, d in zip(begins, ends, shape, strict=True)], name)
    axes = [a for a in range(len(shape)) if begins[a] < 0 or ends[a] < 0]
    cropped = _slice(ctx, name, axes, [max(-begins[a], 0) for a in axes],
                     [shape[a] - max(-ends[a], 0) for a in axes])
    return _zero_pad(ctx, cropped, [max(b, 0) for b in begins], [max(e, 0) for e in ends])


def _reduce_sum(ctx: RuleContext, name: str, axes: Sequence[int], keepdims: int = 1) -> str:
    if ctx.opset >= 13:
        return ctx.emit1("ReduceSum", [name, ctx.const(list(axes))], keepdims=keepdims)
    return ctx.emit1("ReduceSum", [name], axes=list(axes), keepdims=keepdims)


def _zeros(ctx: RuleContext, shape: Sequence[int], like: str) -> str:
    """A zero tensor of ``shape`` in ``like``'s dtype, without storing it in the model."""
    zero = ctx.const(np.zeros([1] * len(shape), dtype=ctx.dtype(like)))
    return ctx.emit1("Expand", [zero, ctx.const([int(d) for d in shape])])


def _sum(ctx: RuleContext, terms: Sequence[str]) -> str:
    return terms[0] if len(terms) == 1 else ctx.emit1("Sum", list(terms))


def _constant_value(ctx: RuleContext, node: NodeProto, name: str, what: str) -> np.ndarray:
    value = ctx.value(name)
    if value is None:
        raise _unsupported(ctx, node, f"its {what} ({name!r}) depends on the input's values")
    return np.asarray(value)


# ------------------------------------------------------------------------------------ window geometry


@dataclass(frozen=True)
class _Axis:
    """One spatial axis of a sliding-window map ``y[o] = sum_j w[j] x[o*stride + j*dilation - pad_begin]``."""

    size: int  # input length
    out: int  # output length
    kernel: int
    stride: int = 1
    dilation: int = 1
    pad_begin: int = 0

    @property
    def extent(self) -> int:
        return self.dilation * (self.kernel - 1) + 1

    @property
    def pad_end_needed(self) -> int:
        """End padding that makes the last window fit exactly (negative: input cells left unread)."""
        return (self.out - 1) * self.stride + self.extent - self.size - self.pad_begin


def _same_pad_begin(mode: str, size: int, stride: int, extent: int) -> int:
    """Start padding of SAME_UPPER/SAME_LOWER: half the total (the odd cell at the end for UPPER)."""
    needed = max(((size + stride - 1) // stride - 1) * stride + extent - size, 0)
    return needed // 2 if mode == "SAME_UPPER" else (needed + 1) // 2


def _window_axes(ctx: RuleContext, node: NodeProto, x: str, y: str, kernel: Sequence[int],
                 *, pool: bool) -> list[_Axis]:
    """Per-axis geometry of a Conv or pooling node, with auto_pad resolved the way onnxruntime does."""
    x_shape, y_shape = ctx.shape(x), ctx.shape(y)
    n = len(kernel)
    strides = list(ctx.attr(node, "strides", None) or [1] * n)
    dilations = list(ctx.attr(node, "dilations", None) or [1] * n)
    pads = list(ctx.attr(node, "pads", None) or [0] * (2 * n))
    auto_pad = ctx.attr(node, "auto_pad", "NOTSET") or "NOTSET"
    axes = []
    for a in range(n):
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            # onnxruntime sizes a pool's SAME padding by the undilated kernel, a Conv's by the dilated one
            extent = kernel[a] if pool else dilations[a] * (kernel[a] - 1) + 1
            pad_begin = _same_pad_begin(auto_pad, x_shape[a + 2], strides[a], extent)
        elif auto_pad == "VALID":
            pad_begin = 0
        else:
            pad_begin = pads[a]
        axes.append(_Axis(x_shape[a + 2], y_shape[a + 2], int(kernel[a]), strides[a], dilations[a], pad_begin))
    return axes


# --------------------------------------------------------------------- the adjoint of a correlation


@dataclass(frozen=True)
class _PhasePlan:
    """How the input positions ``p = t*stride + r`` of one axis receive the cotangent.

    For phase r, ``x_grad[t*stride + r] = sum_i g_padded[t + i*dilation] * w[taps[r - first, i]]`` for
    ``t < steps``, where ``g_padded`` is the cotangent with ``pad_begin``/``pad_end`` zeros (negative:
    cropped) and a tap index equal to the kernel size means "no tap" (zero weight).
    """

    first: int  # first phase computed (phases before it receive nothing)
    phases: int  # number of consecutive phases computed
    length: int  # sub-kernel length
    dilation: int
    pad_begin: int
    pad_end: int
    steps: int
    taps: np.ndarray  # (phases, length) tap indices into the original kernel


def _phase_plan(axis: _Axis, phases: Sequence[int] | None = None) -> _PhasePlan | None:
    """The plan for ``phases`` (all by default), or None when no kernel tap ever reaches them."""
    s, d = axis.stride, axis.dilation
    steps = -(-axis.size // s)
    wanted = range(s) if phases is None else phases
    # tap j reaches phase r from cotangent offset c: x[t*s + r] += g[t + c] * w[j]
    taps = [
        (r, j, (r + axis.pad_begin - j * d) // s)
        for r in wanted for j in range(axis.kernel) if (r + axis.pad_begin - j * d) % s == 0
    ]
    taps = [(r, j, c) for r, j, c in taps if c + steps - 1 >= 0 and c < axis.out]  # drop taps on padding only
    if not taps:
        return None
    first = min(r for r, _, _ in taps)
    last = max(r for r, _, _ in taps)
    low, high = min(c for *_, c in taps), max(c for *_, c in taps)
    dilation = math.gcd(*[c - low for *_, c in taps]) or 1
    length = (high - low) // dilation + 1
    index = np.full((last - first + 1, length), axis.kernel, dtype=np.int64)
    for r, j, c in taps:
        index[r - first, (c - low) // dilation] = j
    pad_begin = -low
    pad_end = steps - axis.out - pad_begin + (length - 1) * dilation
    return _PhasePlan(first, last - first + 1, length, dilation, pad_begin, pad_end, steps, index)


def _phase_weight(weight: np.ndarray, group: int, plans: Sequence[_PhasePlan]) -> np.ndarray:
    """Rearrange a Conv weight (M, C/group, k...) into the phase Conv's weight (C*R, M/group, L...).

    Output channel (c, r1, ..., rn) of group g holds, for each sub-kernel position, the tap of the
    original kernel that lands there (zero where none): for stride 1 this is the flipped kernel with
    input and output channels swapped.
    """
    n = len(plans)
    m, cg = weight.shape[:2]
    w = weight.reshape(group, m // group, cg, *weight.shape[2:])
    w = np.pad(w, [(0, 0)] * 3 + [(0, 1)] * n)  # index k = the zero tap
    index = []
    for a, plan in enumerate(plans):
        shape = [1] * (2 * n)
        shape[2 * a], shape[2 * a + 1] = plan.taps.shape
        index.append(plan.taps.reshape(shape))
    picked = w[(slice(None),) * 3 + tuple(index)]  # (G, Mg, Cg, R1, L1, ..., Rn, Ln)
    perm = [0, 2, *[3 + 2 * a for a in range(n)], 1, *[4 + 2 * a for a in range(n)]]
    picked = picked.transpose(perm)  # (G, Cg, R1..Rn, Mg, L1..Ln)
    phases = math.prod(p.phases for p in plans)
    return np.ascontiguousarray(picked).reshape(group * cg * phases, m // group, *[p.length for p in plans])


def _phase_conv(ctx: RuleContext, g: str, g_shape: Sequence[int], weight: np.ndarray, group: int,
                plans: Sequence[_PhasePlan]) -> str:
    """The stride-1 Conv computing all phases of ``plans`` at once: (N, C*R, steps...)."""
    n = len(plans)
    cropped = _crop_or_pad(
        ctx, g, g_shape, [0, 0, *[min(p.pad_begin, 0) for p in plans]], [0, 0, *[min(p.pad_end, 0) for p in plans]]
    )
    return ctx.emit1(
        "Conv", [cropped, ctx.const(_phase_weight(weight, group, plans))],
        group=group, kernel_shape=[p.length for p in plans], strides=[1] * n,
        dilations=[p.dilation for p in plans],
        pads=[max(p.pad_begin, 0) for p in plans] + [max(p.pad_end, 0) for p in plans],
    )


def _interleave(ctx: RuleContext, phased: str, axes: Sequence[_Axis], plans: Sequence[_PhasePlan],
                x_shape: Sequence[int]) -> str:
    """Turn per-phase results into the input gradient: (N, C*R, T...) -> (N, C, D...).

    ``phased`` holds channels (c, r1..rn) (one phase index per strided axis) and T steps per axis; phases
    not computed are zero-filled, and the interleaved length T*stride is cut to the input size.
    """
    n_batch, channels = x_shape[:2]
    n = len(axes)
    strided = [a for a in range(n) if axes[a].stride > 1]
    steps = [p.steps for p in plans]
    result = phased
    if strided:
        counts = [plans[a].phases for a in strided]
        phase_at = {a: 2 + i for i, a in enumerate(strided)}
        perm = [0, 1]
        for a in range(n):
            perm += [2 + len(strided) + a, *([phase_at[a]] if a in phase_at else [])]
        moved = ctx.emit1("Transpose", [_reshape(ctx, phased, [n_batch, channels, *counts, *steps])], perm=perm)
        begins, ends = [0, 0], [0, 0]
        for a in range(n):
            begins += [0, *([plans[a].first] if a in phase_at else [])]
            ends += [0, *([axes[a].stride - plans[a].first - plans[a].phases] if a in phase_at else [])]
        moved = _zero_pad(ctx, moved, begins, ends)
        result = _reshape(ctx, moved, [n_batch, channels, *[steps[a] * axes[a].stride for a in range(n)]])
    extra = [a for a in range(n) if steps[a] * axes[a].stride > axes[a].size]
    return _slice(ctx, result, [a + 2 for a in extra], [0] * len(extra), [axes[a].size for a in extra])


def _conv_adjoint_phase(ctx: RuleContext, g: str, weight: np.ndarray, group: int, axes: Sequence[_Axis],
                        x_shape: Sequence[int]) -> str:
    plans = [_phase_plan(axis) for axis in axes]
    if any(p is None for p in plans):
        return _zeros(ctx, x_shape, g)
    g_shape = [x_shape[0], weight.shape[0], *[a.out for a in axes]]
    phased = _phase_conv(ctx, g, g_shape, weight, group, plans)  # type: ignore[arg-type]
    return _interleave(ctx, phased, axes, plans, x_shape)  # type: ignore[arg-type]


def _spread(ctx: RuleContext, g: str, shape: Sequence[int], strides: Sequence[int]) -> str:
    """Insert ``stride - 1`` zeros after every cotangent entry along each spatial axis.

    Written as a one-channel ConvTranspose with a one-hot kernel over (N*C, 1, O...): onnxruntime's
    Pad and Transpose are several times slower at this kind of fine-grained interleave.
    """
    n = len(strides)
    one_hot = np.zeros([1, 1, *strides], dtype=ctx.dtype(g))
    one_hot[(0, 0, *[0] * n)] = 1
    flat = _reshape(ctx, g, [shape[0] * shape[1], 1, *shape[2:]])
    spread = ctx.emit1("ConvTranspose", [flat, ctx.const(one_hot)], kernel_shape=list(strides),
                       strides=list(strides))
    return _reshape(ctx, spread, [*shape[:2], *[shape[a + 2] * strides[a] for a in range(n)]])


def _conv_adjoint_spread(ctx: RuleContext, g: str, weight: np.ndarray, group: int, axes: Sequence[_Axis],
                         x_shape: Sequence[int]) -> str:
    """Zero-insertion to undo the stride, then the stride-1 adjoint (a flipped-kernel Conv)."""
    g_shape = [x_shape[0], weight.shape[0], *[a.out for a in axes]]
    unit_axes = [replace(a, out=a.out * a.stride, stride=1) for a in axes]
    plans = [_phase_plan(axis) for axis in unit_axes]
    if any(p is None for p in plans):
        return _zeros(ctx, x_shape, g)
    spread_shape = [*g_shape[:2], *[a.out for a in unit_axes]]
    spread = _spread(ctx, g, g_shape, [a.stride for a in axes])
    return _phase_conv(ctx, spread, spread_shape, weight, group, plans)  # type: ignore[arg-type]


def _conv_adjoint_transpose(ctx: RuleContext, g: str, weight: str, group: int, axes: Sequence[_Axis],
                            x_shape: Sequence[int]) -> str:
    """ConvTranspose of the cotangent with the layer's own weight (works for a weight computed in-graph)."""
    n = len(axes)
    shape = [*x_shape[:2], *[(a.out - 1) * a.stride + a.extent for a in axes]]
    begins = [0, 0, *[-a.pad_begin for a in axes]]
    ends = [0, 0, *[a.size + a.pad_begin - s for a, s in zip(axes, shape[2:], strict=True)]]
    attrs = {"group": group, "kernel_shape": [a.kernel for a in axes], "strides": [a.stride for a in axes],
             "dilations": [a.dilation for a in axes]}
    if all(e <= 0 for e in ends):
        # only cropping (the usual padded layer): ConvTranspose's own pads do it, without a Slice pass
        return ctx.emit1("ConvTranspose", [g, weight], pads=[a.pad_begin for a in axes] + [-e for e in ends[2:]],
                         **attrs)
    result = ctx.emit1("ConvTranspose", [g, weight], pads=[0] * (2 * n), **attrs)
    return _crop_or_pad(ctx, result, shape, begins, ends)


def _conv_input_grad(ctx: RuleContext, g: str, weight_name: str, group: int, axes: Sequence[_Axis],
                     x_shape: Sequence[int]) -> str:
    """The input gradient of ``y = Conv(x, W)`` (no bias) for the cotangent ``g``."""
    weight = ctx.value(weight_name)
    if weight is None:
        return _conv_adjoint_transpose(ctx, g, weight_name, group, axes, x_shape)
    return _correlation_adjoint(ctx, g, np.asarray(weight), group, axes, x_shape, weight_name)


def _correlation_adjoint(ctx: RuleContext, g: str, weight: np.ndarray, group: int, axes: Sequence[_Axis],
                         x_shape: Sequence[int], weight_name: str | None = None) -> str:
    """Adjoint of the correlation with a constant ``weight``, in the way measured fastest for its kind."""
    if group == 1 and x_shape[1] < FEW_CHANNELS:
        kind = "few_channels"
    elif all(a.stride == 1 for a in axes):
        kind = "stride1"
    else:
        kind = "depthwise" if group > 1 and weight.shape[1] == 1 else "regular"
    strategy = CONV_GRAD_STRATEGY[kind]
    if strategy == "convtranspose":
        return _conv_adjoint_transpose(ctx, g, weight_name or ctx.const(weight), group, axes, x_shape)
    adjoint = {"phase": _conv_adjoint_phase, "spread": _conv_adjoint_spread}[strategy]
    return adjoint(ctx, g, weight, group, axes, x_shape)


def _conv_forward(ctx: RuleContext, data: str, data_shape: Sequence[int], weight: str, group: int,
                  axes: Sequence[_Axis]) -> str:
    """``Conv(data, weight)`` with explicit pads that make each spatial axis exactly ``axis.out`` long."""
    ends = [a.pad_end_needed for a in axes]
    cropped = _crop_or_pad(ctx, data, data_shape, [0, 0, *[min(a.pad_begin, 0) for a in axes]],
                           [0, 0, *[min(e, 0) for e in ends]])
    return ctx.emit1(
        "Conv", [cropped, weight], group=group, kernel_shape=[a.kernel for a in axes],
        strides=[a.stride for a in axes], dilations=[a.dilation for a in axes],
        pads=[max(a.pad_begin, 0) for a in axes] + [max(e, 0) for e in ends],
    )


def _conv_weight_grad(ctx: RuleContext, data: str, cot: str, group: int, axes: Sequence[_Axis]) -> str:
    """``dW[m, c, j] = sum_{n,o} cot[n, m, o] data[n, g*Cg + c, o*stride + j*dilation - pad]``, shaped (M, Cg, k...).

    It is itself a grouped correlation, with the batch axis as the channels being summed, the in-group
    channel of ``data`` as the batch, and the roles of stride and dilation exchanged.
    """
    d_shape, c_shape = ctx.shape(data), ctx.shape(cot)
    n_batch, channels, m_out = d_shape[0], d_shape[1], c_shape[1]
    cg, mg, n = channels // group, m_out // group, len(axes)
    spatial = list(range(3, 3 + n))
    lhs = _reshape(ctx, data, [n_batch, group, cg, *d_shape[2:]])
    lhs = ctx.emit1("Transpose", [lhs], perm=[2, 1, 0, *spatial])
    lhs = _reshape(ctx, lhs, [cg, group * n_batch, *d_shape[2:]])
    rhs = _reshape(ctx, cot, [n_batch, group, mg, *c_shape[2:]])
    rhs = ctx.emit1("Transpose", [rhs], perm=[1, 2, 0, *spatial])
    rhs = _reshape(ctx, rhs, [m_out, n_batch, *c_shape[2:]])
    swapped = [_Axis(a.size, a.kernel, a.out, a.dilation, a.stride, a.pad_begin) for a in axes]
    result = _conv_forward(ctx, lhs, [cg, group * n_batch, *d_shape[2:]], rhs, group, swapped)
    return ctx.emit1("Transpose", [result], perm=[1, 0, *range(2, 2 + n)])


def _bias_grad(ctx: RuleContext, g: str, rank: int) -> str:
    """Sum over every axis but the channels (axis 1) of a rank-``rank`` tensor."""
    return _reduce_sum(ctx, g, [0, *range(2, rank)], keepdims=0)


def _bias_tangent(ctx: RuleContext, tb: str, y: str) -> str:
    rank = len(ctx.shape(y))
    return _reshape(ctx, tb, [1, -1, *[1] * (rank - 2)])


def _tangent_sum(ctx: RuleContext, terms: list[str], bias: str | None, y: str) -> str:
    """Sum of the tangent terms of a linear layer; a bias tangent alone is broadcast to y's shape."""
    if bias is not None:
        if not terms:
            return ctx.emit1("Expand", [bias, ctx.const(list(ctx.shape(y)))])
        terms = [*terms, bias]
    total = terms[0]
    for term in terms[1:]:
        total = ctx.emit1("Add", [total, term])
    return total


# ------------------------------------------------------------------------------ Conv, ConvTranspose


def _conv_parts(ctx: RuleContext, node: NodeProto) -> tuple[str, str, str, int, list[_Axis]]:
    x, w, b = node.input[0], node.input[1], _input(node, 2)
    group = int(ctx.attr(node, "group", 1))  # type: ignore[arg-type]
    kernel = ctx.attr(node, "kernel_shape", None) or ctx.shape(w)[2:]
    return x, w, b, group, _window_axes(ctx, node, x, node.output[0], list(kernel), pool=False)


@vjp_rule("Conv", differentiable=(0, 1, 2))
def conv_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Input gradient: the adjoint correlation (flipped-kernel / phase Conv); weight: a correlation of x and g."""
    result = _padded([], len(node.input))
    g = grads[0]
    if g is None:
        return result
    x, w, b, group, axes = _conv_parts(ctx, node)
    if ctx.needs_grad(x):
        result[0] = _conv_input_grad(ctx, g, w, group, axes, ctx.shape(x))
    if ctx.needs_grad(w):
        result[1] = _conv_weight_grad(ctx, x, g, group, axes)
    if b and ctx.needs_grad(b):
        result[2] = _bias_grad(ctx, g, len(ctx.shape(node.output[0])))
    return result


@jvp_rule("Conv")
def conv_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """Bilinear in (x, W) plus B: ``Conv(u, W) + Conv(x, tW) + tB``."""
    u, tw, tb = _padded(tangents, 3)[:3]
    x, w = node.input[0], node.input[1]
    attrs = _copy_attrs(ctx, node)
    terms = []
    if u is not None:
        terms.append(ctx.emit1("Conv", [u, w], **attrs))
    if tw is not None:
        terms.append(ctx.emit1("Conv", [x, tw], **attrs))
    bias = None if tb is None else _bias_tangent(ctx, tb, node.output[0])
    return _padded([_tangent_sum(ctx, terms, bias, node.output[0])], len(node.output))


def _conv_transpose_axes(ctx: RuleContext, node: NodeProto, x: str, y: str, kernel: Sequence[int]) -> list[_Axis]:
    """Geometry of the Conv whose adjoint the ConvTranspose is (it maps y's shape to x's shape).

    Pads as onnxruntime resolves them: with ``output_shape`` or SAME_* auto_pad the total padding
    ``stride*(in-1) + output_padding + extent - out`` goes mostly to the end for SAME_UPPER and mostly
    to the start otherwise.
    """
    x_shape, y_shape = ctx.shape(x), ctx.shape(y)
    n = len(kernel)
    strides = list(ctx.attr(node, "strides", None) or [1] * n)
    dilations = list(ctx.attr(node, "dilations", None) or [1] * n)
    pads = list(ctx.attr(node, "pads", None) or [0] * (2 * n))
    output_padding = list(ctx.attr(node, "output_padding", None) or [0] * n)
    auto_pad = ctx.attr(node, "auto_pad", "NOTSET") or "NOTSET"
    derived = bool(ctx.attr(node, "output_shape", None)) or auto_pad in ("SAME_UPPER", "SAME_LOWER")
    axes = []
    for a in range(n):
        size, out = y_shape[a + 2], x_shape[a + 2]
        extent = dilations[a] * (kernel[a] - 1) + 1
        if derived:
            total = strides[a] * (out - 1) + output_padding[a] + extent - size
            pad_begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        elif auto_pad == "VALID":
            pad_begin = 0
        else:
            pad_begin = pads[a]
        axes.append(_Axis(size, out, int(kernel[a]), strides[a], dilations[a], pad_begin))
    return axes


@vjp_rule("ConvTranspose", differentiable=(0, 1, 2))
def conv_transpose_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """ConvTranspose is the adjoint of a Conv, so its input gradient is that Conv (same W, strides, pads)."""
    result = _padded([], len(node.input))
    g = grads[0]
    if g is None:
        return result
    x, w, b = node.input[0], node.input[1], _input(node, 2)
    group = int(ctx.attr(node, "group", 1))  # type: ignore[arg-type]
    kernel = ctx.attr(node, "kernel_shape", None) or ctx.shape(w)[2:]
    axes = _conv_transpose_axes(ctx, node, x, node.output[0], list(kernel))
    if ctx.needs_grad(x):
        result[0] = _conv_forward(ctx, g, ctx.shape(g), w, group, axes)
    if ctx.needs_grad(w):
        result[1] = _conv_weight_grad(ctx, g, x, group, axes)
    if b and ctx.needs_grad(b):
        result[2] = _bias_grad(ctx, g, len(ctx.shape(node.output[0])))
    return result


@jvp_rule("ConvTranspose")
def conv_transpose_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    u, tw, tb = _padded(tangents, 3)[:3]
    x, w = node.input[0], node.input[1]
    attrs = _copy_attrs(ctx, node)
    terms = []
    if u is not None:
        terms.append(ctx.emit1("ConvTranspose", [u, w], **attrs))
    if tw is not None:
        terms.append(ctx.emit1("ConvTranspose", [x, tw], **attrs))
    bias = None if tb is None else _bias_tangent(ctx, tb, node.output[0])
    return _padded([_tangent_sum(ctx, terms, bias, node.output[0])], len(node.output))


# -------------------------------------------------------------------------------------------- pooling


def _pool_axes(ctx: RuleContext, node: NodeProto) -> list[_Axis]:
    kernel = list(ctx.attr(node, "kernel_shape"))  # type: ignore[arg-type]
    return _window_axes(ctx, node, node.input[0], node.output[0], kernel, pool=True)


def _max_pool_indices(ctx: RuleContext, node: NodeProto) -> str:
    """Row-major flat argmax of every window (onnxruntime: the first maximum in scan order wins a tie)."""
    if len(node.output) > 1 and node.output[1] and int(ctx.attr(node, "storage_order", 0)) == 0:  # type: ignore[arg-type]
        return node.output[1]
    return ctx.emit("MaxPool", [node.input[0]], 2, **_copy_attrs(ctx, node, storage_order=0))[1]


def _scatter_add(ctx: RuleContext, g: str, indices: str, x_shape: Sequence[int], axes: Sequence[_Axis]) -> str:
    """``x_grad.flat[indices] += g`` for every window.

    Windows that never share a cell: one MaxUnpool (float32) or ScatterElements. Overlapping windows:
    one ScatterElements with ``reduction="add"`` (opset 16+), or before that one plain scatter per set
    of windows ``ceil(extent / stride)`` apart (such windows never overlap), summed.
    """
    size = math.prod(x_shape)
    overlapping = any(a.stride < a.extent for a in axes)
    if ctx.opset < 11:
        raise UnsupportedOperatorError(
            f"MaxPool's gradient needs ScatterElements (opset >= 11; the model has {ctx.opset}): convert the "
            f"model to opset 11 or later, {_FALLBACK_HINT}"
        )
    if not overlapping and np.dtype(ctx.dtype(g)) == np.float32:  # MaxUnpool: float only, ~2x faster
        # its pads only have to keep the shape it infers, (out-1)*stride + kernel - pads, within x's
        excess = [max((a.out - 1) * a.stride + a.kernel - a.size, 0) for a in axes]
        ends = [min(e, a.kernel - 1) for e, a in zip(excess, axes, strict=True)]
        begins = [e - end for e, end in zip(excess, ends, strict=True)]
        return ctx.emit1("MaxUnpool", [g, indices, ctx.const(list(x_shape))], kernel_shape=[a.kernel for a in axes],
                         strides=[a.stride for a in axes], pads=begins + ends)
    zeros = _zeros(ctx, [size], g)

    def scatter(values: str, where: str, **attrs: object) -> str:
        flat_values, flat_where = _reshape(ctx, values, [-1]), _reshape(ctx, where, [-1])
        return ctx.emit1("ScatterElements", [zeros, flat_where, flat_values], axis=0, **attrs)

    if not overlapping:
        flat = scatter(g, indices)
    elif ctx.opset >= 16:
        flat = scatter(g, indices, reduction="add")
    else:  # windows `ceil(extent / stride)` apart never overlap: scatter each such phase and add them up
        g_shape = ctx.shape(g)
        period = [-(-a.extent // a.stride) for a in axes]
        terms = []
        for phase in product(*(range(min(p, a.out)) for p, a in zip(period, axes, strict=True))):
            spatial = list(range(2, 2 + len(axes)))
            ends = [int(d) for d in g_shape[2:]]
            terms.append(scatter(_slice(ctx, g, spatial, list(phase), ends, period),
                                 _slice(ctx, indices, spatial, list(phase), ends, period)))
        flat = _sum(ctx, terms)
    return _reshape(ctx, flat, x_shape)


@vjp_rule("MaxPool", differentiable=(0,))
def max_pool_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Each window's cotangent goes to its argmax, the first maximum in scan order (the pooling Indices):
    MaxUnpool or ScatterElements; for tiled float32 2-D windows, a mask unless some window has a tie."""
    g = grads[0]
    if g is None:
        return [None]
    x = node.input[0]
    axes = _pool_axes(ctx, node)

    if ctx.exact_ties or not _tiles(ctx, x, axes):
        return [_scatter_add(ctx, g, _max_pool_indices(ctx, node), ctx.shape(x), axes)]
    masked, ties = _max_pool_mask(ctx, node, g, axes)
    ctx.flag_ties(ties)
    return [masked]


def _tiles(ctx: RuleContext, x: str, axes: Sequence[_Axis]) -> bool:
    """2-D float32 windows that tile x exactly: stride = kernel, no padding or dilation, nothing left over."""
    return (ctx.opset >= 11 and len(axes) == 2 and np.dtype(ctx.dtype(x)) == np.float32
            and all(a.stride == a.kernel and a.dilation == 1 and a.pad_begin == 0 and a.size == a.out * a.kernel
                    for a in axes))


def _max_pool_mask(ctx: RuleContext, node: NodeProto, g: str, axes: Sequence[_Axis]) -> tuple[str, str]:
    """``g`` upsampled times ``[x == max of its window]``, and whether some window has two maxima.

    The mask sends a window's cotangent to every maximum, so it is the argmax rule only where each window
    has one; where a window has more, the flag makes the backend run the graph built with the Indices.
    Every op here runs in onnxruntime's blocked NCHWc layout (nearest Resize, the per-channel multiply +
    Add + steep HardSigmoid fused into one Conv, AveragePool), where MaxPool with Indices is a scalar NCHW
    kernel that cost 5-7 passes over x in the OCR-style benchmark. When x is a ReLU's output (and the
    ReLU's VJP masks by ``[x > 0]``), ties among zeros are ignored: what any of them receives is zeroed.
    """
    x, y = node.input[0], node.output[0]
    kernel = [a.kernel for a in axes]
    scales = ctx.const(np.array([1.0, 1.0, *kernel], dtype=np.float32))
    roi = ctx.const(np.zeros(0, dtype=np.float32))

    def upsample(name: str) -> str:
        up = ctx.emit1("Resize", [name, roi, scales], mode="nearest", coordinate_transformation_mode="asymmetric",
                       nearest_mode="floor")
        ctx.record(up, x)
        return up

    gap = ctx.emit1("Add", [forms.scale(ctx, upsample(y), -1.0, like=x), x])  # x - max <= 0, 0 at a maximum
    at_max = ctx.emit1("HardSigmoid", [gap], alpha=1e30, beta=1.0)
    masked = ctx.emit1("Mul", [upsample(g), at_max])
    counted = at_max
    producer = ctx.producer(x)
    if producer is not None and producer.op_type == "Relu" and ctx.relu_rule != "deconvnet" and not ctx.is_source(x):
        counted = ctx.emit1("Mul", [at_max, forms.step(ctx, x)])  # [x > 0], as the Relu VJP's own mask
    share = ctx.emit1("AveragePool", [counted], kernel_shape=kernel, strides=kernel)
    most = ctx.emit1("ReduceMax", [share], keepdims=0)
    # not (most < threshold) rather than most > threshold: a NaN (inf - inf at an infinite maximum) flags too
    below = ctx.emit1("Less", [most, ctx.const(np.array(1.5 / math.prod(kernel), dtype=np.float32))])
    return masked, ctx.emit1("Not", [below])



@jvp_rule("MaxPool")
def max_pool_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    flat = _reshape(ctx, tangents[0], [-1])  # type: ignore[arg-type]
    return _padded([ctx.emit1("Gather", [flat, _max_pool_indices(ctx, node)], axis=0)], len(node.output))


def _valid_counts(axis: _Axis) -> np.ndarray:
    """Per output position, the number of window taps that fall inside the input."""
    taps = np.arange(axis.out)[:, None] * axis.stride + np.arange(axis.kernel)[None, :] * axis.dilation
    taps -= axis.pad_begin
    return ((taps >= 0) & (taps < axis.size)).sum(axis=1)


def _average_pool_weights(ctx: RuleContext, node: NodeProto, axes: Sequence[_Axis]) -> str:
    """1 / (the divisor of each output), shaped (1, 1, O...).

    Without ``count_include_pad`` the divisor is the number of taps inside the input. With it, the
    divisor's treatment of windows that overhang the padding (ceil_mode) differs between onnxruntime's
    kernels, so it is read off the operator itself: AveragePool(ones) / (number of taps inside).
    """
    x = node.input[0]
    counts = np.ones([1, 1], dtype=np.float64)
    for axis in axes:
        counts = counts[..., None] * _valid_counts(axis)
    counts = np.maximum(counts, 1)
    if not int(ctx.attr(node, "count_include_pad", 0)):  # type: ignore[arg-type]
        return ctx.const((1.0 / counts).astype(ctx.dtype(x)))
    ones = ctx.emit1("Expand", [ctx.const(np.ones([1] * (2 + len(axes)), dtype=ctx.dtype(x))),
                                ctx.const([1, 1, *[a.size for a in axes]])])
    pooled = ctx.emit1("AveragePool", [ones], **_copy_attrs(ctx, node))
    return ctx.emit1("Div", [pooled, ctx.const(counts.astype(ctx.dtype(x)))])


def _window_sum_adjoint(ctx: RuleContext, g: str, axes: Sequence[_Axis], x_shape: Sequence[int]) -> str:
    """Adjoint of ``y[o] = sum of x over window o``: spread each cotangent over its window.

    Strategy ``POOL_GRAD_STRATEGY``: "transpose" is a one-channel ConvTranspose with an all-ones kernel over
    the N*C images (fastest when windows do not overlap: 1.2x the forward); "conv" is the depthwise
    all-ones case of the Conv adjoint (flipped-kernel Conv, or zero-spread + Conv when strided; fastest
    for overlapping windows: 1.3-2.3x).
    """
    overlapping = any(a.stride < a.extent for a in axes)
    if POOL_GRAD_STRATEGY["overlapping" if overlapping else "disjoint"] == "conv":
        ones = np.ones([x_shape[1], 1, *[a.kernel for a in axes]], dtype=ctx.dtype(g))
        return _correlation_adjoint(ctx, g, ones, x_shape[1], axes, x_shape)
    n_batch, channels = x_shape[:2]
    images = _reshape(ctx, g, [n_batch * channels, 1, *[a.out for a in axes]])
    ones = ctx.const(np.ones([1, 1, *[a.kernel for a in axes]], dtype=ctx.dtype(g)))
    flat_shape = [n_batch * channels, 1, *x_shape[2:]]
    summed = _conv_adjoint_transpose(ctx, images, ones, 1, axes, flat_shape)
    return _reshape(ctx, summed, x_shape)


@vjp_rule("AveragePool", differentiable=(0,))
def average_pool_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """``y = (window sum of x) / divisor``: scale the cotangent by 1/divisor, then spread it over each window."""
    g = grads[0]
    if g is None:
        return [None]
    axes = _pool_axes(ctx, node)
    scaled = ctx.emit1("Mul", [g, _average_pool_weights(ctx, node, axes)])
    return [_window_sum_adjoint(ctx, scaled, axes, ctx.shape(node.input[0]))]


@jvp_rule("AveragePool", "GlobalAveragePool")
def average_pool_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    return [ctx.emit1(node.op_type, [tangents[0]], **_copy_attrs(ctx, node))]  # type: ignore[list-item]


@vjp_rule("GlobalAveragePool", differentiable=(0,))
def global_average_pool_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    g = grads[0]
    if g is None:
        return [None]
    x = node.input[0]
    # (N, C, 1, 1): the builder broadcasts it when it adds up x's cotangent (no full-sized Expand)
    return [forms.scale(ctx, g, 1.0 / math.prod(ctx.shape(x)[2:]), like=x)]


def _global_argmax(ctx: RuleContext, x: str) -> tuple[str, list[int]]:
    """Flat spatial argmax per (sample, channel), shaped (N, C, 1), and x's shape as (N, C, positions)."""
    x_shape = ctx.shape(x)
    flat_shape = [x_shape[0], x_shape[1], math.prod(x_shape[2:])]
    return ctx.emit1("ArgMax", [_reshape(ctx, x, flat_shape)], axis=2, keepdims=1), flat_shape


@vjp_rule("GlobalMaxPool", differentiable=(0,))
def global_max_pool_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """The cotangent goes to the first maximum of each (sample, channel) (ArgMax's tie rule)."""
    g = grads[0]
    if g is None:
        return [None]
    x = node.input[0]
    argmax, flat_shape = _global_argmax(ctx, x)
    values = _reshape(ctx, g, [*flat_shape[:2], 1])
    scattered = ctx.emit1("ScatterElements", [_zeros(ctx, flat_shape, g), argmax, values], axis=2)
    return [_reshape(ctx, scattered, ctx.shape(x))]


@jvp_rule("GlobalMaxPool")
def global_max_pool_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    x = node.input[0]
    argmax, flat_shape = _global_argmax(ctx, x)
    picked = ctx.emit1("GatherElements", [_reshape(ctx, tangents[0], flat_shape), argmax], axis=2)  # type: ignore[arg-type]
    return [_reshape(ctx, picked, ctx.shape(node.output[0]))]


# ------------------------------------------------------------------------------------------------ Pad


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
        pads = [int(p) for p in _constant_value(ctx, node, node.input[1], "pads").ravel()]
    axes = list(range(rank))
    if ctx.opset >= 18 and _input(node, 3):
        axes = [int(a) % rank for a in _constant_value(ctx, node, node.input[3], "axes").ravel()]
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
    terms = [_slice(ctx, g, [axis], [before], [before + size])]
    border = [*[(o0, o1, s) for o0, o1, s in _runs(source[:before])],
              *[(before + size + o0, before + size + o1, s) for o0, o1, s in _runs(source[before + size:])]]
    for o0, o1, step in border:
        positions = list(range(o0, o1)) if step >= 0 else list(range(o1 - 1, o0 - 1, -1))
        piece = ctx.emit1("Gather", [g, ctx.const(positions)], axis=axis)
        if step == 0:
            piece = _reduce_sum(ctx, piece, [axis])
        low = int(source[o0 if step >= 0 else o1 - 1])
        width = 1 if step == 0 else o1 - o0
        begins, ends = [0] * len(shape), [0] * len(shape)
        begins[axis], ends[axis] = low, size - low - width
        terms.append(_zero_pad(ctx, piece, begins, ends))
    return _sum(ctx, terms)


@vjp_rule("Pad", differentiable=(0, 2))
def pad_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Slice the interior of the cotangent; reflect/edge/wrap borders fold back onto the cells they copy."""
    result = _padded([], len(node.input))
    g = grads[0]
    if g is None:
        return result
    if _input(node, 2) and ctx.needs_grad(node.input[2]):
        raise _unsupported(ctx, node, "its constant_value depends on the input")
    spec = _pad_spec(ctx, node)
    x_shape = list(ctx.shape(node.input[0]))
    rank = len(x_shape)
    inner = [x_shape[a] + min(spec.begins[a], 0) + min(spec.ends[a], 0) for a in range(rank)]
    shape = [inner[a] + max(spec.begins[a], 0) + max(spec.ends[a], 0) for a in range(rank)]
    if spec.mode == "constant":
        padded = [a for a in range(rank) if shape[a] != inner[a]]
        folded = _slice(ctx, g, padded, [max(spec.begins[a], 0) for a in padded],
                        [max(spec.begins[a], 0) + inner[a] for a in padded])
    elif spec.mode in ("edge", "reflect", "wrap"):
        folded = g
        for a in range(rank):
            before, after = max(spec.begins[a], 0), max(spec.ends[a], 0)
            if before or after:
                folded = _fold_axis(ctx, folded, shape, a, inner[a], before, after, spec.mode)
                shape[a] = inner[a]
    else:
        raise _unsupported(ctx, node, f"its mode {spec.mode!r} is not one gradsal knows")
    result[0] = _zero_pad(ctx, folded, [max(-b, 0) for b in spec.begins], [max(-e, 0) for e in spec.ends])
    return result


@jvp_rule("Pad")
def pad_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """Pad is affine in x: pad the tangent the same way, with 0 as the constant."""
    u = tangents[0]
    if len(tangents) > 2 and tangents[2] is not None:
        raise _unsupported(ctx, node, "its constant_value depends on the input")
    if ctx.opset < 11:
        return [ctx.emit1("Pad", [u], **_copy_attrs(ctx, node, value=0.0))]  # type: ignore[list-item]
    inputs = [u, node.input[1]]
    if _input(node, 3):
        inputs += ["", node.input[3]]
    return [ctx.emit1("Pad", inputs, **_copy_attrs(ctx, node))]  # type: ignore[list-item]


# ------------------------------------------------------------------------------------ Resize, Upsample


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
        name = _input(node, index)
        given = None if not name else _constant_value(ctx, node, name, "scales").astype(np.float32).ravel()
    scales = [np.float32(1.0)] * rank
    if given is not None and given.size:
        for i, a in enumerate(axes if given.size != rank else range(rank)):
            scales[a] = np.float32(given[i])
        return [float(s) for s in scales]
    requested = list(out_shape)  # the sizes asked for (a keep_aspect_ratio_policy may change the output)
    sizes = ctx.value(_input(node, 3)) if _input(node, 3) else None
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
        raise _unsupported(ctx, node, "antialiased resizing has no gradient rule yet")
    if mode not in ("nearest", "linear"):
        raise _unsupported(ctx, node, f"its mode {mode!r} has no gradient rule yet (nearest and linear do)")
    legacy = node.op_type == "Upsample" or ctx.opset < 11
    coordinate = "asymmetric" if legacy else str(ctx.attr(node, "coordinate_transformation_mode", "half_pixel"))
    nearest = "simple" if legacy else str(ctx.attr(node, "nearest_mode", "round_prefer_floor"))
    roi = None
    if coordinate == "tf_crop_and_resize":
        values = _constant_value(ctx, node, node.input[1], "roi").astype(np.float32).ravel()
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
    product_ = ctx.emit1("MatMul", [transposed, _reshape(ctx, t, [outer, shape[axis], inner])])
    return _reshape(ctx, product_, [*shape[:axis], matrix.shape[1], *shape[axis + 1:]])


def _refuse_geometry_gradient(ctx: RuleContext, node: NodeProto, on_path: list[str]) -> None:
    """Resizing is differentiable in its scales and roi too, but gradsal has no rule for that: refuse
    rather than claim the output does not depend on them (sizes are integers: never on the path)."""
    if on_path:
        raise _unsupported(ctx, node, f"its scales or roi computed from the input ({', '.join(map(repr, on_path))}) "
                           "would need a gradient, which gradsal does not compute (only the data input's)")


@vjp_rule("Resize", "Upsample", differentiable=(0, 1, 2))
def resize_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Separable interpolation y = (A_1 x A_2 ...): the adjoint applies each A_axis^T (MatMul); an integer
    nearest upsampling is summed back with Reshape + ReduceSum."""
    _refuse_geometry_gradient(ctx, node, [name for name in node.input[1:3] if name and ctx.needs_grad(name)])
    result = _padded([], len(node.input))
    g = grads[0]
    if g is None:
        return result
    spec = _resize_spec(ctx, node)
    x_shape, y_shape = list(ctx.shape(node.input[0])), list(ctx.shape(node.output[0]))
    matrices = {a: _interpolation_matrix(spec, a, x_shape[a], y_shape[a]) for a in range(len(x_shape))}
    matrices = {a: m for a, m in matrices.items() if m is not None}
    factors = {a: _block_factor(m) for a, m in matrices.items()}
    if matrices and all(factors.values()):
        split = [d for a in range(len(x_shape)) for d in ([x_shape[a], factors[a]] if a in factors else [x_shape[a]])]
        blocks = [a + 1 + i for i, a in enumerate(sorted(factors))]  # the factor axis follows its axis
        result[0] = _reduce_sum(ctx, _reshape(ctx, g, split), blocks, keepdims=0)
        return result
    shape = list(y_shape)
    for a in sorted(matrices, key=lambda a: y_shape[a] / x_shape[a], reverse=True):
        g = _apply_transposed(ctx, g, shape, a, matrices[a])
        shape[a] = x_shape[a]
    result[0] = g
    return result


@jvp_rule("Resize", "Upsample")
def resize_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """Resizing is linear in x: resize the tangent (extrapolated cells, a constant, get 0)."""
    _refuse_geometry_gradient(ctx, node, [name for name, t in zip(node.input[1:3], tangents[1:3], strict=False)
                                          if name and t is not None])
    _resize_spec(ctx, node)
    attrs = _copy_attrs(ctx, node)
    if "extrapolation_value" in attrs:
        attrs["extrapolation_value"] = 0.0
    return [ctx.emit1(node.op_type, [tangents[0], *node.input[1:]], **attrs)]  # type: ignore[list-item]
