"""onnxruntime-friendly spellings of quantities the rules need, each beside its plain definition.

The rules state the maths; some quantities have a second spelling that onnxruntime's CPU kernels run
faster, usually because it stays in the blocked NCHWc layout onnxruntime uses around its convolutions
(a scalar ``Mul`` or a ``ReduceSum`` there costs a reorder of the whole tensor out of that layout and
back), because one vectorised kernel replaces two, or because onnxruntime's CPU ``Where`` is several
times slower than arithmetic on a 0/1 mask (``benchmarks/measure_mask_forms.py``). Each form here is one
function: it emits the fast spelling where its precondition holds and the plain one otherwise, and its
docstring says when the two agree exactly. Inside ``with plain():`` every form emits its plain spelling,
which is how the tests check each fast spelling against its definition (``tests/onnx/test_forms.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

import numpy as np

from . import emit

if TYPE_CHECKING:
    from onnx import NodeProto

    from .registry import RuleContext

_PLAIN: ContextVar[bool] = ContextVar("gradsal_plain_forms", default=False)
_FLOAT32 = 1  # TensorProto.FLOAT
_BOOL = 9  # TensorProto.BOOL


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
    return _compare(ctx, x, 0.0, 1.0)


def off(ctx: RuleContext, x: str) -> str:
    """``[x <= 0]`` as 0/1 in ``x``'s float type (``1 - step(x)``).

    Plain: ``Cast(Not(Greater(x, 0)))``. Fast, for float32: ``HardSigmoid(x; alpha=-1e30, beta=1)`` =
    ``clip(1 - 1e30 x, 0, 1)``, one pass in onnxruntime's blocked layout (a Sub from 1 is not); equal to the
    plain form except for ``0 < x < 1e-30``, where it is a fraction.
    """
    if fast_allowed() and emit.elem_type(ctx, x) == _FLOAT32:
        return ctx.emit1("HardSigmoid", [x], alpha=-1e30, beta=1.0)
    above = ctx.emit1("Greater", [x, emit.scalar(ctx, 0.0, x)])
    return emit.mask(ctx, ctx.emit1("Not", [above]), x)


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


# ------------------------------------------------------------------------------------------ steps


def _compare(ctx: RuleContext, y: str, bound: float, side: float) -> str:
    """The plain ``[y > bound]`` (side 1) or ``[y < bound]`` (side -1) as 0/1 in ``y``'s float type."""
    op = "Greater" if side > 0 else "Less"
    return emit.mask(ctx, ctx.emit1(op, [y, emit.scalar(ctx, bound, y)]), y)


def steep_step(ctx: RuleContext, y: str, bound: float, side: float) -> str:
    """``[y > bound]`` (side 1) or ``[y < bound]`` (side -1) as 0/1 in ``y``'s float type.

    Plain: ``Cast(Greater(y, bound))`` (or Less). Fast, for float32: ``HardSigmoid(side s (y - bound))``,
    one vectorised pass in onnxruntime's blocked layout, with a slope s (1e30, less for huge bounds so that
    s |bound| stays finite) that makes the ramp narrower than float32's spacing: equal to the plain form
    except within about an ulp of the bound (where it may be a fraction), i.e. at the kink.
    """
    if not (fast_allowed() and emit.elem_type(ctx, y) == _FLOAT32):
        return _compare(ctx, y, bound, side)
    slope = 1e30 if abs(bound) <= 1e7 else 1e37 / abs(bound)
    return ctx.emit1("HardSigmoid", [y], alpha=side * slope, beta=-side * slope * bound)


def exact_step(ctx: RuleContext, y: str, bound: float, side: float) -> str:
    """``[y > bound]`` (side 1) or ``[y < bound]`` (side -1) as 0/1 in ``y``'s float type, exactly.

    Plain: ``Cast(Greater(y, bound))`` (or Less). Fast, for float32 and a bound that is a float32 with
    2^-40 <= |bound| <= 2^24: ``HardSigmoid(side 2^100 (y - bound))``. Scaling by a power of two is exact
    and ``2^100 bound`` is a float32, so ``alpha y + beta`` is ``2^100 (y - bound)`` rounded once, with or
    without FMA: zero only at the bound, and elsewhere at least 2^100 times the float32 spacing near the
    bound (at least 2^36 for those bounds), which clips to 0 or 1; beyond about 2^28 the product overflows
    to an infinity of the right sign, which clips too. Equal to the plain form everywhere. Other float32
    bounds take :func:`steep_step`.
    """
    if not (fast_allowed() and emit.elem_type(ctx, y) == _FLOAT32):
        return _compare(ctx, y, bound, side)
    if not (np.float32(bound) == bound and 2.0**-40 <= abs(bound) <= 2.0**24):
        return steep_step(ctx, y, bound, side)
    slope = 2.0**100
    return ctx.emit1("HardSigmoid", [y], alpha=side * slope, beta=-side * slope * bound)


def at_top(ctx: RuleContext, gap: str) -> str:
    """``[gap == 0]`` as 0/1 for a float ``gap <= 0`` (an input minus its window's maximum, say).

    Plain: ``Cast(Not(Less(gap, 0)))``. Fast, for float32: ``HardSigmoid(gap; alpha=1e30, beta=1)`` =
    ``clip(1e30 gap + 1, 0, 1)``, one pass that onnxruntime fuses with the Add before it in its blocked
    layout; equal to the plain form except for ``-1e-30 < gap < 0``, where it is a fraction.
    """
    if fast_allowed() and emit.elem_type(ctx, gap) == _FLOAT32:
        return ctx.emit1("HardSigmoid", [gap], alpha=1e30, beta=1.0)
    below = ctx.emit1("Less", [gap, emit.scalar(ctx, 0.0, gap)])
    return emit.mask(ctx, ctx.emit1("Not", [below]), gap)


def blocked(ctx: RuleContext, g: str, like: str) -> str:
    """``g`` (shaped like the primal ``like``) itself, handed to onnxruntime's blocked NCHWc layout.

    Plain: ``g``. Fast, for a float32 rank-4 ``g``: ``AveragePool`` over 1x1 windows (the identity), which
    onnxruntime's NCHWc transformer converts, reordering ``g`` into its blocked layout at the pool's input.
    An upsampling of ``g`` and its products with blocked masks then stay blocked, where a ``g`` in NCHW
    (from a Reshape, say) makes onnxruntime reorder those larger results back to NCHW and forth again.
    Equal to the plain form.
    """
    if not (fast_allowed() and emit.elem_type(ctx, like) == _FLOAT32 and len(ctx.shape(like)) == 4):
        return g
    moved = ctx.emit1("AveragePool", [g], kernel_shape=[1, 1])
    ctx.record(moved, like)
    return moved


# ------------------------------------------------------------------------------------- box masks


def box_step_is_exact(high: float) -> bool:
    """Whether ``1 - y/high`` (float32, with or without a fused multiply-add) is <= 0 at y = high and > 0
    at the float32 just below it, so that the two-pass box mask decides both ends exactly."""
    top = np.float32(high)
    if not (0.0 < top < 1e30):
        return False
    slope = np.float32(-1.0 / float(top))
    below = np.nextafter(top, np.float32(0.0))
    rounded = [np.float32(1.0) + slope * v for v in (top, below)]  # float32 product, then add
    fused = [1.0 + float(slope) * float(v) for v in (top, below)]  # exact product, one rounding
    return all(at_top <= 0.0 < just_below for at_top, just_below in (rounded, fused))


def _box_fits(ctx: RuleContext, y: str, high: float) -> bool:
    return (fast_allowed() and emit.elem_type(ctx, y) == _FLOAT32 and len(ctx.shape(y)) == 4
            and box_step_is_exact(high))


def _two_pass_box(ctx: RuleContext, y: str, high: float) -> str:
    """``a = [y > 0]``, then ``[a - y / high > 0]``: 0 at y = 0 (a = 0), positive inside, 0 at y = high.
    The per-channel multiply, the Add and the steep HardSigmoid fuse into one onnxruntime NCHWc kernel."""
    above_zero = steep_step(ctx, y, 0.0, 1.0)
    ramp = ctx.emit1("Add", [scale(ctx, y, -1.0 / high, like=y), above_zero])
    return ctx.emit1("HardSigmoid", [ramp], alpha=1e30, beta=0.0)


def clip_interior(ctx: RuleContext, x: str, y: str, low: float | None, high: float | None) -> str:
    """Where ``y = clip(x, low, high)`` passes ``x`` through, as 0/1 in ``x``'s float type.

    Plain: ``Cast(Equal(x, y))``, the definition for any bounds (``low``/``high``: the constant bounds,
    None where absent or not known at build time). Fast, for float32 with a constant bound: steep steps of
    the output (:func:`steep_step`), ``[low < y] [y < high]``, which onnxruntime runs in its blocked
    layout next to the Convs (keeping Conv+Clip fused); for a rank-4 ReLU6 (low = 0) whose
    :func:`box_step_is_exact` holds, the two-pass box mask. Equal to the plain form except at x exactly on
    a bound (the fast form gives 0, the plain 1: both are subgradients at the kink) and, for the steep
    steps, within about an ulp of a bound.
    """
    bounded = low is not None or high is not None
    if not (fast_allowed() and bounded and emit.elem_type(ctx, y) == _FLOAT32):
        return emit.mask(ctx, emit.equal(ctx, x, y), x)
    if low == 0.0 and high is not None and _box_fits(ctx, y, high):
        return _two_pass_box(ctx, y, high)
    steps = [steep_step(ctx, y, bound, side) for bound, side in ((low, 1.0), (high, -1.0)) if bound is not None]
    return steps[0] if len(steps) == 1 else ctx.emit1("Mul", steps)


def times_unit_interior(ctx: RuleContext, v: str, y: str, factor: float) -> str:
    """``v [0 < y < 1] factor`` for ``y`` in [0, 1] (HardSigmoid's slope).

    Plain: ``v * ([y (1 - y) > 0] factor)`` (y (1 - y) is positive exactly inside: near 0 it rounds to y,
    near 1 to y times the spacing below 1), the step a :func:`step`. Fast, for float32 rank-4 ``y`` (the
    gate of squeeze-excitation): the two-pass box mask and a per-channel :func:`scale`, which stay in
    onnxruntime's blocked layout where a Sub and a scalar Mul would reorder the whole tensor out of it and
    back. The box mask equals the plain one exactly, the product to the rounding of the order of its
    factors; elsewhere the fast :func:`step` is a fraction for 0 < y (1 - y) < 1e-30.
    """
    if _box_fits(ctx, y, 1.0):
        return scale(ctx, ctx.emit1("Mul", [v, _two_pass_box(ctx, y, 1.0)]), factor, like=y)
    inside = step(ctx, ctx.emit1("Mul", [y, ctx.emit1("Sub", [emit.scalar(ctx, 1.0, y), y])]))
    return ctx.emit1("Mul", [v, ctx.emit1("Mul", [inside, emit.scalar(ctx, factor, y)])])


# --------------------------------------------------------------------------------------- HardSwish


def hard_swish_gate(ctx: RuleContext, node: NodeProto) -> str:
    """``h = HardSigmoid(x; 1/6, 1/2)`` of ``HardSwish(x) = x h`` (the node's input x).

    Plain: a HardSigmoid node in the gradient graph. Fast, for a float32 rank-4 x: the same node added to
    the forward, and the HardSwish replaced by ``Mul(x, h)``, which is how onnxruntime runs a HardSwish it
    cannot fuse into a Conv; the gradient graph then shares h instead of another pass over x. The forward's
    values agree with onnxruntime's HardSwish to float32 rounding.
    """
    x = node.input[0]
    if not (fast_allowed() and emit.elem_type(ctx, x) == _FLOAT32 and len(ctx.shape(x)) == 4):
        return ctx.emit1("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)
    h = ctx.emit_forward(node, "HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)
    ctx.replace_forward(node, "Mul", [x, h])
    return h


def hard_swish_ramp(ctx: RuleContext, x: str, h: str) -> str:
    """``x/6 [|x| < 3]`` (= ``(h - 1/2) [|x| < 3]`` for the gate ``h``), the second part of HardSwish's slope.

    Plain: ``(h - 1/2) Cast(Less(Abs(x), 3))``. Fast, for float32: ``(x [x^2 < 9]) / 6`` with the mask an
    :func:`exact_step` and the sixth a per-channel :func:`scale`, only ops onnxruntime runs in its blocked
    layout (x^2 < 9 exactly when |x| < 3 in float32: the square of the float32 below 3 rounds below 9).
    The masks are equal exactly; x/6 and h - 1/2 differ by float32 rounding.
    """
    if fast_allowed() and emit.elem_type(ctx, x) == _FLOAT32:
        inside = exact_step(ctx, ctx.emit1("Mul", [x, x]), 9.0, -1.0)
        return scale(ctx, ctx.emit1("Mul", [x, inside]), 1.0 / 6.0, like=x)
    inside = emit.mask(ctx, ctx.emit1("Less", [ctx.emit1("Abs", [x]), emit.scalar(ctx, 3.0, x)]), x)
    return ctx.emit1("Mul", [ctx.emit1("Sub", [h, emit.scalar(ctx, 0.5, x)]), inside])


# ------------------------------------------------------------------------ products with constants


def channel_factor(ctx: RuleContext, name: str, out_shape: Sequence[int]) -> np.ndarray | None:
    """A constant float32 operand of a rank-4 result that is one number, or one number per channel, as a
    (1, C, 1, 1) array; else None."""
    value = ctx.value(name)
    if value is None or len(out_shape) != 4:
        return None
    value = np.asarray(value)
    channels = int(out_shape[1])
    if value.dtype != np.float32 or value.ndim > 4:
        return None
    if value.size == 1:
        return np.full((1, channels, 1, 1), value.reshape(-1)[0], np.float32)
    if (1,) * (4 - value.ndim) + value.shape == (1, channels, 1, 1):
        return value.reshape(1, channels, 1, 1)
    return None


def times(ctx: RuleContext, g: str, factor: str, out_shape: Sequence[int]) -> str:
    """``g * factor`` for ``g`` of ``out_shape``.

    Plain: ``Mul(g, factor)``. Fast, for a constant float32 ``factor`` that is one number or one per channel
    of a rank-4 ``g``: a Mul by that factor as a (1, C, 1, 1) constant, which onnxruntime keeps in its
    blocked layout (a scalar Mul reorders ``g`` out of it and back). Always equal: the same products.
    """
    per_channel = channel_factor(ctx, factor, out_shape) if fast_allowed() else None
    return ctx.emit1("Mul", [g, factor if per_channel is None else ctx.const(per_channel)])


def divided(ctx: RuleContext, g: str, b: str, out_shape: Sequence[int]) -> str:
    """``g / b`` for ``g`` of ``out_shape``.

    Plain: ``Div(g, b)``. Fast, where :func:`times` would take ``b`` per channel: a Mul by the per-channel
    reciprocal ``1/b``, in onnxruntime's blocked layout; within an ulp of the quotient, not bit for bit.
    """
    per_channel = channel_factor(ctx, b, out_shape) if fast_allowed() else None
    if per_channel is None:
        return ctx.emit1("Div", [g, b])
    with np.errstate(divide="ignore"):
        reciprocal = np.float32(1) / per_channel
    return ctx.emit1("Mul", [g, ctx.const(reciprocal)])


# ------------------------------------------------------------------------------------------ selects


def select(ctx: RuleContext, chosen: str, if_one: str, if_zero: str) -> str:
    """``Where(chosen, if_one, if_zero)`` for a 0/1 float mask ``chosen``.

    Plain: ``Where(Cast(chosen, bool), if_one, if_zero)``. Fast: ``if_zero + chosen (if_one - if_zero)``,
    because onnxruntime's CPU Where is several times slower than Sub, Mul and Add. Equal exactly where
    ``if_one - if_zero`` is exact and finite (if_zero = 0, or the two within a factor of two of each other),
    else to the rounding of that difference; an infinite or NaN operand spreads to the other branch's
    positions in the fast form.
    """
    if fast_allowed() or ctx.opset < 9:
        difference = ctx.emit1("Sub", [if_one, if_zero])
        return ctx.emit1("Add", [if_zero, ctx.emit1("Mul", [chosen, difference])])
    condition = ctx.emit1("Cast", [chosen], to=_BOOL)
    return ctx.emit1("Where", [condition, if_one, if_zero])
