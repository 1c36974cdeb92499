"""onnxruntime-friendly spellings of quantities the rules need, each beside its plain definition.

The rules state the maths; some quantities have a second spelling that onnxruntime's CPU kernels run
faster, usually because it stays in the blocked NCHWc layout onnxruntime uses around its convolutions
(a scalar ``Mul`` or a ``ReduceSum`` there costs a reorder of the whole tensor out of that layout and
back) or because one vectorised kernel replaces two. Each form here is one function: it emits the fast
spelling where its precondition holds and the plain one otherwise, and its docstring says when the two
agree exactly. Inside ``with plain():`` every form emits its plain spelling, which is how the tests check
each fast spelling against its definition (``tests/onnx/test_forms.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

import numpy as np

from . import emit

if TYPE_CHECKING:
    from .registry import RuleContext

_PLAIN: ContextVar[bool] = ContextVar("gradsal_plain_forms", default=False)
_FLOAT32 = 1  # TensorProto.FLOAT


@contextmanager
def plain() -> Iterator[None]:
    """Within this block, every form emits its plain definition (for tests and for debugging a graph)."""
    token = _PLAIN.set(True)
    try:
        yield
    finally:
        _PLAIN.reset(token)


def fast_allowed() -> bool:
    """False inside :func:`plain`."""
    return not _PLAIN.get()


def step(ctx: RuleContext, x: str) -> str:
    """``[x > 0]`` as 0/1 in ``x``'s float type.

    Plain: ``Cast(Greater(x, 0))``. Fast, for float32: ``HardSigmoid(x; alpha=1e30, beta=0)`` =
    ``clip(1e30 x, 0, 1)``, one vectorised pass that onnxruntime also runs in its blocked layout; it equals
    the plain form except for ``0 < x < 1e-30``, where it is a fraction. (onnxruntime has no double or
    float16 HardSigmoid kernel.)
    """
    if fast_allowed() and emit.elem_type(ctx, x) == _FLOAT32:
        return ctx.emit1("HardSigmoid", [x], alpha=1e30, beta=0.0)
    return emit.mask(ctx, ctx.emit1("Greater", [x, emit.scalar(ctx, 0.0, x)]), x)


def scale(ctx: RuleContext, v: str, factor: float, like: str) -> str:
    """``v * factor``, for ``v`` with the channel axis of the primal ``like``.

    Plain: a Mul by a scalar. Fast, for a rank-4 ``like``: a Mul by a (1, C, 1, 1) constant holding the
    same factor, which onnxruntime keeps in its NCHWc layout. Always equal: the same products.
    """
    shape = ctx.shape(like)
    if fast_allowed() and len(shape) == 4:
        per_channel = ctx.const(np.full((1, shape[1], 1, 1), factor, dtype=ctx.dtype(like)))
        return ctx.emit1("Mul", [v, per_channel])
    return ctx.emit1("Mul", [v, emit.scalar(ctx, factor, like)])


def spatial_total(ctx: RuleContext, grad: str, shape: Sequence[int], axes: Sequence[int]) -> str:
    """``grad`` (of ``shape``) summed over ``axes``, keeping dims.

    Plain: ReduceSum. Fast, for float32 (N, C, spatial...) summed over exactly its spatial axes: the
    per-(sample, channel) mean as GlobalAveragePool times the area as a per-channel constant, both in
    onnxruntime's blocked layout; equal up to float32 rounding of the mean (relative 1e-7 per element
    summed), not bit for bit.
    """
    spatial = len(shape) >= 3 and list(axes) == list(range(2, len(shape)))
    if fast_allowed() and spatial and emit.elem_type(ctx, grad) == _FLOAT32:
        mean = ctx.emit1("GlobalAveragePool", [grad])
        area = np.full((1, shape[1], *[1] * (len(shape) - 2)), float(np.prod(shape[2:])), np.float32)
        return ctx.emit1("Mul", [mean, ctx.const(area)])
    return emit.reduce_sum(ctx, grad, axes)


def spread_spatially(ctx: RuleContext, g: str, shape: Sequence[int], block: int, phases: tuple[int, int]) -> str:
    """``g`` (N, C, H, W) spread with zeros: element (h, w) lands at (h block + phases[0], w block + phases[1])
    of an (N, C, H block, W block) tensor; the adjoint of a Slice with the same step along both spatial axes.

    Plain: Reshape to (N, C, H, 1, W, 1), Pad the unit axes to ``block`` at the phases, Reshape to
    (N, C, H block, W block). Fast: Reshape to (N, 1, C, H, W), Pad the unit axis to ``block**2`` channel
    groups at group ``phases[0] block + phases[1]``, Reshape to (N, block**2 C, H, W) and let DepthToSpace
    (DCR, ``out[n, c, h b + i, w b + j] = in[n, (i b + j) C + c, h, w]``) interleave them: onnxruntime
    pads an innermost axis with a copy per element, which this avoids. Always equal: the same values
    moved to the same places.
    """
    n, c, h, w = shape
    if not fast_allowed():
        blocks = emit.pad(ctx, ctx.emit1("Reshape", [g, ctx.const([n, c, h, 1, w, 1])]),
                          [0, 0, 0, phases[0], 0, phases[1]],
                          [0, 0, 0, block - 1 - phases[0], 0, block - 1 - phases[1]])
        return ctx.emit1("Reshape", [blocks, ctx.const([n, c, h * block, w * block])])
    group = phases[0] * block + phases[1]
    stacked = emit.pad(ctx, ctx.emit1("Reshape", [g, ctx.const([n, 1, c, h, w])]),
                       [0, group, 0, 0, 0], [0, block * block - 1 - group, 0, 0, 0])
    channels = ctx.emit1("Reshape", [stacked, ctx.const([n, block * block * c, h, w])])
    return ctx.emit1("DepthToSpace", [channels], blocksize=block)
