"""The adjoint of a sliding-window correlation, and the pure choice of how to write it.

A Conv is the correlation ``y[n, m, o] = sum_{c, j} W[m, c, j] x[n, c, o*stride + j*dilation - pad]`` (per
group); its input gradient is the adjoint map ``x_grad = C^T g``, and so is the window-sum part of
AveragePool's (``W`` all ones, one channel per group). It can be written two ways (Dumoulin and Visin 2016,
"A guide to convolution arithmetic", section 4):

- ``"conv"``: a stride-1 Conv of the cotangent with the kernel flipped and the in/out channels swapped per
  group; a strided layer first spreads the cotangent out with ``stride - 1`` zeros between its entries;
- ``"convtranspose"``: ConvTranspose of the cotangent with the layer's own weight (the only form for a
  weight computed in the graph).

Both are exact; which one onnxruntime runs faster depends on the layer, so :func:`conv_input_strategy` and
:func:`window_sum_strategy` choose from the layer geometry alone (measured by
``benchmarks/measure_conv_grad.py``; the numbers are in BENCHMARKS.md). The choice is an explicit argument
of :func:`correlation_adjoint`; ``with forced(conv=..., window_sum=...):`` overrides it for every rule
in the block, which is how the benchmark times each variant and the tests check each one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from . import emit
from .windows import Axis, overlapping

if TYPE_CHECKING:
    from .registry import RuleContext

ConvStrategy = Literal["conv", "convtranspose"]
WindowSumStrategy = Literal["conv", "transpose"]

# A layer reading fewer channels than this (an RGB or grey stem) has its input gradient as ConvTranspose at
# any stride: a flipped-kernel Conv with so few output channels misses onnxruntime's blocked NCHWc kernels.
FEW_CHANNELS = 12

_FORCED_CONV: ContextVar[ConvStrategy | None] = ContextVar("gradsal_forced_conv_strategy", default=None)
_FORCED_WINDOW_SUM: ContextVar[WindowSumStrategy | None] = ContextVar("gradsal_forced_window_sum", default=None)


@contextmanager
def forced(*, conv: ConvStrategy | None = None, window_sum: WindowSumStrategy | None = None) -> Iterator[None]:
    """Within this block, every Conv input gradient (``conv``) and every AveragePool window-sum adjoint
    (``window_sum``) is written with the given strategy instead of the measured choice (None: the choice)."""
    tokens = _FORCED_CONV.set(conv), _FORCED_WINDOW_SUM.set(window_sum)
    try:
        yield
    finally:
        _FORCED_CONV.reset(tokens[0])
        _FORCED_WINDOW_SUM.reset(tokens[1])


def conv_input_strategy(axes: Sequence[Axis], group: int, in_channels: int, depthwise: bool) -> ConvStrategy:
    """The strategy a Conv's input gradient is written with: the one :func:`forced`, else the measured
    choice (:func:`measured_conv_strategy`)."""
    return _FORCED_CONV.get() or measured_conv_strategy(axes, group, in_channels, depthwise)


def measured_conv_strategy(axes: Sequence[Axis], group: int, in_channels: int, depthwise: bool) -> ConvStrategy:
    """How a Conv with a constant weight writes its input gradient, from its geometry alone.

    The flipped-kernel Conv for stride 1 (any grouping) and for strided depthwise layers (after the zero
    spread); ConvTranspose for other strided layers and for layers reading few channels.
    """
    if group == 1 and in_channels < FEW_CHANNELS:
        return "convtranspose"
    if all(a.stride == 1 for a in axes) or depthwise:
        return "conv"
    return "convtranspose"


def window_sum_strategy(axes: Sequence[Axis]) -> WindowSumStrategy:
    """The strategy AveragePool's window sum is written with: the one :func:`forced`, else the measured
    choice (:func:`measured_window_sum_strategy`)."""
    return _FORCED_WINDOW_SUM.get() or measured_window_sum_strategy(axes)


def measured_window_sum_strategy(axes: Sequence[Axis]) -> WindowSumStrategy:
    """How AveragePool spreads each cotangent over its window, from its geometry alone: a one-channel
    all-ones ConvTranspose over the N*C images when windows never share a cell, else the depthwise all-ones
    case of the Conv adjoint (:func:`correlation_adjoint` with ``"conv"``)."""
    return "conv" if overlapping(axes) else "transpose"


# ------------------------------------------------------------------------- the flipped-kernel Conv


@dataclass(frozen=True)
class _FlippedKernel:
    """The stride-1 correlation that computes the input gradient along one axis.

    ``x_grad[t] = sum_i g_padded[t + i*dilation] * w[taps[i]]`` for ``t < size``, where ``g_padded`` is the
    cotangent with ``pad_begin``/``pad_end`` zeros (negative: cropped) and a tap index equal to the kernel
    size means "no tap" (zero weight).
    """

    length: int  # sub-kernel length
    dilation: int
    pad_begin: int
    pad_end: int
    taps: np.ndarray  # (length,) tap indices into the original kernel


def _flipped_kernel(axis: Axis) -> _FlippedKernel | None:
    """The plan of a stride-1 axis, or None when every kernel tap lies on padding only."""
    # tap j reaches x[t] from cotangent offset c: x[t] += g[t + c] * w[j]
    taps = [(j, axis.pad_begin - j * axis.dilation) for j in range(axis.kernel)]
    taps = [(j, c) for j, c in taps if c + axis.size - 1 >= 0 and c < axis.out]
    if not taps:
        return None
    low, high = min(c for _, c in taps), max(c for _, c in taps)
    dilation = math.gcd(*[c - low for _, c in taps]) or 1
    length = (high - low) // dilation + 1
    index = np.full(length, axis.kernel, dtype=np.int64)
    for j, c in taps:
        index[(c - low) // dilation] = j
    pad_end = axis.size - axis.out + low + (length - 1) * dilation
    return _FlippedKernel(length, dilation, -low, pad_end, index)


def _flipped_weight(weight: np.ndarray, group: int, plans: Sequence[_FlippedKernel]) -> np.ndarray:
    """Rearrange a Conv weight (M, C/group, k...) into the adjoint Conv's weight (C, M/group, L...).

    Output channel c of group g holds, at each sub-kernel position, the tap of the original kernel that
    lands there (zero where none): the flipped kernel with input and output channels swapped.
    """
    n = len(plans)
    m, cg = weight.shape[:2]
    w = weight.reshape(group, m // group, cg, *weight.shape[2:])
    w = np.pad(w, [(0, 0)] * 3 + [(0, 1)] * n)  # index k = the zero tap
    index = tuple(plan.taps.reshape([plan.length if b == a else 1 for b in range(n)]) for a, plan in enumerate(plans))
    picked = w[(slice(None),) * 3 + index]  # (G, Mg, Cg, L1, ..., Ln)
    picked = picked.transpose([0, 2, 1, *range(3, 3 + n)])  # (G, Cg, Mg, L1..Ln)
    return np.ascontiguousarray(picked).reshape(group * cg, m // group, *[p.length for p in plans])


def _spread(ctx: RuleContext, g: str, shape: Sequence[int], strides: Sequence[int]) -> str:
    """Insert ``stride - 1`` zeros after every cotangent entry along each spatial axis.

    Written as a one-channel ConvTranspose with a one-hot kernel over (N*C, 1, O...): onnxruntime's
    Pad and Transpose are several times slower at this kind of fine-grained interleave.
    """
    n = len(strides)
    one_hot = np.zeros([1, 1, *strides], dtype=ctx.dtype(g))
    one_hot[(0, 0, *[0] * n)] = 1
    flat = emit.reshape(ctx, g, [shape[0] * shape[1], 1, *shape[2:]])
    spread = ctx.emit1("ConvTranspose", [flat, ctx.const(one_hot)], kernel_shape=list(strides),
                       strides=list(strides))
    return emit.reshape(ctx, spread, [*shape[:2], *[shape[a + 2] * strides[a] for a in range(n)]])


def _flipped_conv_adjoint(ctx: RuleContext, g: str, weight: np.ndarray, group: int, axes: Sequence[Axis],
                          x_shape: Sequence[int]) -> str:
    """The stride-1 Conv with the flipped kernel, after zero-insertion where the layer is strided."""
    g_shape = [x_shape[0], weight.shape[0], *[a.out for a in axes]]
    if any(a.stride > 1 for a in axes):
        g = _spread(ctx, g, g_shape, [a.stride for a in axes])
        axes = [replace(a, out=a.out * a.stride, stride=1) for a in axes]
        g_shape = [*g_shape[:2], *[a.out for a in axes]]
    plans = [_flipped_kernel(axis) for axis in axes]
    if any(p is None for p in plans):
        return emit.zeros(ctx, x_shape, g)
    kept = [p for p in plans if p is not None]
    cropped = emit.crop_or_pad(ctx, g, g_shape, [0, 0, *[min(p.pad_begin, 0) for p in kept]],
                               [0, 0, *[min(p.pad_end, 0) for p in kept]])
    return ctx.emit1(
        "Conv", [cropped, ctx.const(_flipped_weight(weight, group, kept))],
        group=group, kernel_shape=[p.length for p in kept], strides=[1] * len(kept),
        dilations=[p.dilation for p in kept],
        pads=[max(p.pad_begin, 0) for p in kept] + [max(p.pad_end, 0) for p in kept],
    )


# ---------------------------------------------------------------------------------- ConvTranspose


def transpose_adjoint(ctx: RuleContext, g: str, weight: str, group: int, axes: Sequence[Axis],
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
    return emit.crop_or_pad(ctx, result, shape, begins, ends)


def correlation_adjoint(ctx: RuleContext, g: str, weight: np.ndarray, group: int, axes: Sequence[Axis],
                        x_shape: Sequence[int], strategy: ConvStrategy, weight_name: str | None = None) -> str:
    """``C^T g`` for the correlation ``C`` with the constant ``weight`` (M, C/group, k...), written as
    ``strategy``; ``weight_name`` names the weight when it is already in the graph."""
    if strategy == "convtranspose":
        return transpose_adjoint(ctx, g, weight_name or ctx.const(weight), group, axes, x_shape)
    return _flipped_conv_adjoint(ctx, g, weight, group, axes, x_shape)
