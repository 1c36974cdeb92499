"""Sliding-window geometry shared by the convolution and pooling rules.

Along one spatial axis a Conv or a pooling node reads, for output position ``o``, the input cells
``x[o*stride + j*dilation - pad_begin]`` for the kernel taps ``j = 0 .. kernel-1`` (cells outside the input
are padding). :class:`Axis` holds those numbers with the concrete input and output lengths, and
:func:`window_axes` reads them off a node, resolving ``auto_pad`` the way onnxruntime does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onnx import NodeProto

    from .registry import RuleContext


@dataclass(frozen=True)
class Axis:
    """One spatial axis of a sliding-window map ``y[o] = sum_j w[j] x[o*stride + j*dilation - pad_begin]``."""

    size: int  # input length
    out: int  # output length
    kernel: int
    stride: int = 1
    dilation: int = 1
    pad_begin: int = 0

    @property
    def extent(self) -> int:
        """Cells one window spans, dilation included."""
        return self.dilation * (self.kernel - 1) + 1

    @property
    def pad_end_needed(self) -> int:
        """End padding that makes the last window fit exactly (negative: input cells left unread)."""
        return (self.out - 1) * self.stride + self.extent - self.size - self.pad_begin


def overlapping(axes: Sequence[Axis]) -> bool:
    """True when two windows can share an input cell along some axis."""
    return any(a.stride < a.extent for a in axes)


def _same_pad_begin(mode: str, size: int, stride: int, extent: int) -> int:
    """Start padding of SAME_UPPER/SAME_LOWER: half the total (the odd cell at the end for UPPER)."""
    needed = max(((size + stride - 1) // stride - 1) * stride + extent - size, 0)
    return needed // 2 if mode == "SAME_UPPER" else (needed + 1) // 2


def window_attributes(ctx: RuleContext, node: NodeProto, n: int) -> tuple[list[int], list[int], list[int], str]:
    """(strides, dilations, pads, auto_pad) of a windowed node over ``n`` spatial axes, defaults filled in."""
    strides = list(ctx.attr(node, "strides", None) or [1] * n)
    dilations = list(ctx.attr(node, "dilations", None) or [1] * n)
    pads = list(ctx.attr(node, "pads", None) or [0] * (2 * n))
    return strides, dilations, pads, str(ctx.attr(node, "auto_pad", "NOTSET") or "NOTSET")


def window_axes(ctx: RuleContext, node: NodeProto, x: str, y: str, kernel: Sequence[int],
                *, pool: bool) -> list[Axis]:
    """Per-axis geometry of a Conv or pooling node, with auto_pad resolved the way onnxruntime does."""
    x_shape, y_shape = ctx.shape(x), ctx.shape(y)
    strides, dilations, pads, auto_pad = window_attributes(ctx, node, len(kernel))
    axes = []
    for a in range(len(kernel)):
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            # onnxruntime sizes a pool's SAME padding by the undilated kernel, a Conv's by the dilated one
            extent = kernel[a] if pool else dilations[a] * (kernel[a] - 1) + 1
            pad_begin = _same_pad_begin(auto_pad, x_shape[a + 2], strides[a], extent)
        elif auto_pad == "VALID":
            pad_begin = 0
        else:
            pad_begin = pads[a]
        axes.append(Axis(x_shape[a + 2], y_shape[a + 2], int(kernel[a]), strides[a], dilations[a], pad_begin))
    return axes
