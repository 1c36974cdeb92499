"""VJP and JVP rules for ONNX's elementwise, activation, matrix-product and normalisation operators.

Every rule emits standard ONNX nodes through the :class:`~._rules.RuleContext`. Conventions that keep the
gradient graph about as cheap as the forward pass (issue 9):

- a unary elementwise op has a diagonal Jacobian, so its VJP and its JVP are the same product
  ``v * f'(x)``; ``f'`` is written with the primal output where that is cheaper (Sigmoid ``y(1-y)``,
  Tanh ``1-y^2``, Exp ``y``);
- a piecewise op multiplies by ONE 0/1 mask computed from its primal tensors (Relu: ``Cast(x > 0)``,
  Clip: ``Cast(x == y)``), and a select is written as arithmetic on such a mask: onnxruntime's CPU
  ``Where`` and ``Sign`` kernels are several times slower than ``Greater`` + ``Cast`` + ``Mul``
  (measured: Where(x > 0, g, 0) 7 ms, Mul(g, Sign(x)) 2.4 ms, Mul(g, Cast(x > 0)) 1.2 ms on 1.6 M floats);
- a broadcast operand's gradient is reduced only when its shape differs from the output's
  (``ctx.unbroadcast`` emits nothing otherwise), and after the cheap elementwise work where possible;
- matrix products use Gemm's ``transA``/``transB`` instead of materialising transposes whenever the
  operands are (or can be reshaped for free into) matrices;
- on float32 NCHW tensors, only ops that onnxruntime runs in its blocked NCHWc layout next to the Convs:
  HardSigmoid steps (exact ones with a power-of-two slope), same-shape Mul/Add, and per-channel constant
  multiplies (a constant scalar factor becomes a per-channel one), so no layout reorders come in;
- a rule may write its forward node in an equivalent form that shares an intermediate with the
  gradient (HardSwish as ``x * HardSigmoid(x)``, whose HardSigmoid the VJP reuses).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ....core.errors import InputError, UnsupportedOperatorError
from . import forms
from .registry import RuleContext, diagonal, jvp_rule, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto

_FLOAT_ELEM_TYPES = frozenset({1, 10, 11, 16})  # float32, float16, float64, bfloat16
_RELU_RULES = frozenset({"standard", "guided", "deconvnet"})
_FALLBACK_HINT = "pass OnnxBackend(..., fallback='finite_differences') to differentiate it numerically."

Names = list[str | None]


# --------------------------------------------------------------------------------------------- helpers


def _elem_type(ctx: RuleContext, name: str) -> int:
    """ONNX element type (TensorProto enum) of a tensor."""
    from onnx import helper

    return int(helper.np_dtype_to_tensor_dtype(np.dtype(ctx.dtype(name))))


def _scalar(ctx: RuleContext, value: float, like: str) -> str:
    return ctx.const(float(value), like=like)


def _mul(ctx: RuleContext, a: str, b: str) -> str:
    return ctx.emit1("Mul", [a, b])


def _add_all(ctx: RuleContext, terms: Sequence[str]) -> str:
    total = terms[0]
    for term in terms[1:]:
        total = ctx.emit1("Add", [total, term])
    return total


def _reshape(ctx: RuleContext, name: str, shape: Sequence[int]) -> str:
    return ctx.emit1("Reshape", [name, ctx.const([int(d) for d in shape])])


def _expand_to(ctx: RuleContext, name: str, shape: Sequence[int], target: Sequence[int]) -> str:
    """``name`` (of ``shape``) broadcast to ``target``; nothing is emitted when they already agree."""
    if tuple(shape) == tuple(target):
        return name
    return ctx.emit1("Expand", [name, ctx.const([int(d) for d in target])])


def _reduce(ctx: RuleContext, op: str, name: str, axes: Sequence[int]) -> str:
    """ReduceSum/ReduceMean over ``axes`` keeping dims, in the form valid at ``ctx.opset``."""
    axes_as_input_from = 13 if op == "ReduceSum" else 18
    if ctx.opset >= axes_as_input_from:
        return ctx.emit1(op, [name, ctx.const(list(axes))], keepdims=1)
    return ctx.emit1(op, [name], axes=list(axes), keepdims=1)


def _cast(ctx: RuleContext, name: str, elem: int, from_elem: int) -> str:
    return name if elem == from_elem else ctx.emit1("Cast", [name], to=elem)


def _equal(ctx: RuleContext, a: str, b: str) -> str:
    """Boolean ``a == b`` (Equal takes floats only from opset 11; before, "neither less nor greater")."""
    if ctx.opset >= 11:
        return ctx.emit1("Equal", [a, b])
    differ = ctx.emit1("Or", [ctx.emit1("Less", [a, b]), ctx.emit1("Greater", [a, b])])
    return ctx.emit1("Not", [differ])


def _mask(ctx: RuleContext, condition: str, like: str) -> str:
    """A boolean condition as 0/1 in ``like``'s float type."""
    return ctx.emit1("Cast", [condition], to=_elem_type(ctx, like))


def _positive(ctx: RuleContext, x: str) -> str:
    return ctx.emit1("Greater", [x, _scalar(ctx, 0.0, x)])



def _blend(ctx: RuleContext, mask: str, if_one: str, if_zero: str) -> str:
    """``if_zero + mask (if_one - if_zero)``: Where(mask, if_one, if_zero) for a 0/1 float mask."""
    return ctx.emit1("Add", [if_zero, _mul(ctx, mask, ctx.emit1("Sub", [if_one, if_zero]))])


def _blend_constants(ctx: RuleContext, mask: str, if_one: float, if_zero: float) -> str:
    """``if_zero + (if_one - if_zero) mask`` for scalar constants (two cheap scalar-broadcast ops)."""
    scaled = _mul(ctx, mask, _scalar(ctx, if_one - if_zero, mask))
    return scaled if if_zero == 0.0 else ctx.emit1("Add", [scaled, _scalar(ctx, if_zero, mask)])


def _padded(values: Sequence[str | None], length: int) -> Names:
    return [*values, *[None] * (length - len(values))]


def _broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(d) for d in np.broadcast_shapes(*(tuple(s) for s in shapes)))


def _unsupported(ctx: RuleContext, node: NodeProto, why: str,
                 where: str = "before it") -> UnsupportedOperatorError:
    label = f"{node.op_type} node {node.name or '(unnamed)'!r} (opset {ctx.opset})"
    return UnsupportedOperatorError(
        f"{label} lies between the input and the explained output, but {why}. "
        f"Explain a tensor {where} (output_name=...), or {_FALLBACK_HINT}"
    )


# ------------------------------------------------------------------------- unary (diagonal Jacobian)

@diagonal("Identity")
def _identity(ctx: RuleContext, node: NodeProto, v: str) -> str:
    return v


@diagonal("Neg")
def _neg(ctx: RuleContext, node: NodeProto, v: str) -> str:
    return ctx.emit1("Neg", [v])


@diagonal("Exp")
def _exp(ctx: RuleContext, node: NodeProto, v: str) -> str:
    return _mul(ctx, v, node.output[0])


@diagonal("Log")
def _log(ctx: RuleContext, node: NodeProto, v: str) -> str:
    return ctx.emit1("Div", [v, node.input[0]])


@diagonal("Sqrt")
def _sqrt(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """d sqrt(x) = 1 / (2 y)."""
    y = node.output[0]
    return ctx.emit1("Div", [v, _mul(ctx, y, _scalar(ctx, 2.0, y))])


@diagonal("Reciprocal")
def _reciprocal(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """d (1/x) = -y^2."""
    y = node.output[0]
    return ctx.emit1("Neg", [_mul(ctx, v, _mul(ctx, y, y))])


@diagonal("Abs")
def _abs(ctx: RuleContext, node: NodeProto, v: str) -> str:
    return _mul(ctx, v, ctx.emit1("Sign", [node.input[0]]))


@diagonal("Sigmoid")
def _sigmoid(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """d sigmoid = y (1 - y)."""
    y = node.output[0]
    return _mul(ctx, v, _mul(ctx, y, ctx.emit1("Sub", [_scalar(ctx, 1.0, y), y])))


@diagonal("Tanh")
def _tanh(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """d tanh = 1 - y^2."""
    y = node.output[0]
    return _mul(ctx, v, ctx.emit1("Sub", [_scalar(ctx, 1.0, y), _mul(ctx, y, y)]))


@diagonal("Softplus")
def _softplus(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """d log(1 + e^x) = sigmoid(x)."""
    return _mul(ctx, v, ctx.emit1("Sigmoid", [node.input[0]]))


@diagonal("Softsign")
def _softsign(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """y = x / (1 + |x|), so 1 - |y| = 1 / (1 + |x|) and dy/dx = (1 - |y|)^2."""
    y = node.output[0]
    rest = ctx.emit1("Sub", [_scalar(ctx, 1.0, y), ctx.emit1("Abs", [y])])
    return _mul(ctx, v, _mul(ctx, rest, rest))


@diagonal("Erf")
def _erf(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """d erf(x) = 2/sqrt(pi) exp(-x^2)."""
    x = node.input[0]
    bell = ctx.emit1("Exp", [_mul(ctx, _mul(ctx, x, x), _scalar(ctx, -1.0, x))])
    return _mul(ctx, v, _mul(ctx, bell, _scalar(ctx, 2.0 / math.sqrt(math.pi), x)))


@diagonal("Sin")
def _sin(ctx: RuleContext, node: NodeProto, v: str) -> str:
    return _mul(ctx, v, ctx.emit1("Cos", [node.input[0]]))


@diagonal("Cos")
def _cos(ctx: RuleContext, node: NodeProto, v: str) -> str:
    return ctx.emit1("Neg", [_mul(ctx, v, ctx.emit1("Sin", [node.input[0]]))])


@diagonal("LeakyRelu")
def _leaky_relu(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """dy/dx = 1 for x > 0, alpha below (the mask read from y when alpha >= 0: y > 0 iff x > 0)."""
    alpha = float(ctx.attr(node, "alpha", 0.009999999776482582))  # the spec's float32 0.01, as in the forward
    sign_source = node.output[0] if alpha >= 0 else node.input[0]
    return _mul(ctx, v, _blend_constants(ctx, forms.step(ctx, sign_source), 1.0, alpha))


def _negative_part(ctx: RuleContext, x: str) -> str:
    """min(x, 0); before opset 8 Min does not broadcast, so as x - relu(x) (exact: x - x or x - 0)."""
    if ctx.opset < 8:
        return ctx.emit1("Sub", [x, ctx.emit1("Relu", [x])])
    return ctx.emit1("Min", [x, _scalar(ctx, 0.0, x)])


def _elu_slope(ctx: RuleContext, x: str, alpha: float) -> str:
    """Elu's dy/dx: 1 for x > 0, alpha e^x below; e^min(x, 0) is both when alpha = 1."""
    exp_negative_part = ctx.emit1("Exp", [_negative_part(ctx, x)])
    if alpha == 1.0:
        return exp_negative_part
    positive_part = _mul(ctx, forms.step(ctx, x), _scalar(ctx, 1.0 - alpha, x))
    return ctx.emit1("Add", [_mul(ctx, exp_negative_part, _scalar(ctx, alpha, x)), positive_part])


@diagonal("Elu")
def _elu(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """y = x for x > 0, alpha (e^x - 1) below."""
    return _mul(ctx, v, _elu_slope(ctx, node.input[0], float(ctx.attr(node, "alpha", 1.0))))


@diagonal("Selu")
def _selu(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """y = gamma elu_alpha(x), so dy/dx = gamma elu_alpha'(x)."""
    x = node.input[0]
    alpha = float(ctx.attr(node, "alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr(node, "gamma", 1.05070102214813232421875))
    return _mul(ctx, v, _mul(ctx, _elu_slope(ctx, x, alpha), _scalar(ctx, gamma, x)))


@diagonal("Celu")
def _celu(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """y = max(0, x) + min(0, alpha (e^(x/alpha) - 1)), so dy/dx = e^(min(x, 0)/alpha)."""
    x = node.input[0]
    alpha = float(ctx.attr(node, "alpha", 1.0))
    negative_part = ctx.emit1("Min", [x, _scalar(ctx, 0.0, x)])
    return _mul(ctx, v, ctx.emit1("Exp", [_mul(ctx, negative_part, _scalar(ctx, 1.0 / alpha, x))]))


@diagonal("HardSigmoid")
def _hard_sigmoid(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """y = clip(alpha x + beta, 0, 1): slope alpha where 0 < y < 1, i.e. where y (1 - y) > 0."""
    y = node.output[0]
    alpha = float(ctx.attr(node, "alpha", 0.2))
    if _elem_type(ctx, y) == 1 and len(ctx.shape(y)) == 4 and _box_step_is_exact(1.0):
        # NCHW float32 (the gate of squeeze-excitation, HardSwish exported before opset 14 as
        # x HardSigmoid(x)): the two-pass box mask and a per-channel scale stay in onnxruntime's blocked
        # layout; Sub and a scalar Mul would reorder the whole tensor out of it and back.
        return forms.scale(ctx, _mul(ctx, v, _box_mask(ctx, y, 1.0)), alpha, like=y)
    inside = forms.step(ctx, _mul(ctx, y, ctx.emit1("Sub", [_scalar(ctx, 1.0, y), y])))
    return _mul(ctx, v, _mul(ctx, inside, _scalar(ctx, alpha, y)))


@diagonal("HardSwish")
def _hard_swish(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """y = x h(x), h = clip(x/6 + 1/2, 0, 1): dy/dx = h + x/6 [|x| < 3] = h + (h - 1/2) [|x| < 3]
    (x/3 + 1/2 inside, 0 below -3, 1 above 3)."""
    x = node.input[0]
    h = _shared_hard_sigmoid(ctx, node)
    if _elem_type(ctx, x) == 1:
        # Only ops onnxruntime runs in its blocked NCHWc layout (HardSigmoid, Mul, per-channel Mul + Add
        # fused into a Conv), so the gradient chain needs no layout reorders around the Convs.
        inside = _exact_step(ctx, _mul(ctx, x, x), 9.0, -1.0)  # [x^2 < 9] = [|x| < 3]
        ramp = forms.scale(ctx, _mul(ctx, x, inside), 1.0 / 6.0, like=x)
    else:
        inside = _mask(ctx, ctx.emit1("Less", [ctx.emit1("Abs", [x]), _scalar(ctx, 3.0, x)]), x)
        ramp = _mul(ctx, ctx.emit1("Sub", [h, _scalar(ctx, 0.5, x)]), inside)
    return _mul(ctx, v, ctx.emit1("Add", [h, ramp]))


def _shared_hard_sigmoid(ctx: RuleContext, node: NodeProto) -> str:
    """h = HardSigmoid(x) of HardSwish(x) = x h; for a float32 rank-4 x, also used by the forward.

    onnxruntime runs a HardSwish it cannot fuse into a Conv (here the VJP reads x) as HardSigmoid + Mul
    in its blocked layout. Writing the forward that way, as ``Mul(x, h)`` with this same h, saves the
    gradient graph one pass over x per HardSwish; the forward's values are the same.
    """
    x = node.input[0]
    if _elem_type(ctx, x) != 1 or len(ctx.shape(x)) != 4:
        return ctx.emit1("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)
    h = ctx.emit_forward(node, "HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)
    ctx.replace_forward(node, "Mul", [x, h])
    return h


def _exact_step(ctx: RuleContext, y: str, bound: float, side: float) -> str:
    """float32 ``[y > bound]`` (side=1) or ``[y < bound]`` (side=-1), exact everywhere, as
    HardSigmoid(side 2^100 (y - bound)).

    Scaling by a power of two is exact and ``2^100 bound`` is a float32, so ``alpha y + beta`` is
    ``2^100 (y - bound)`` rounded once, with or without FMA: zero only at the bound, and elsewhere at least
    2^100 times the float32 spacing near the bound (at least 2^36 for the bounds taken here), which clips
    to 0 or 1. Beyond about 2^28 the product overflows to an infinity of the right sign, which clips too.
    """
    slope = 2.0**100
    if not (np.float32(bound) == bound and 2.0**-40 <= abs(bound) <= 2.0**24):
        return _steep_step(ctx, y, bound, side)
    return ctx.emit1("HardSigmoid", [y], alpha=side * slope, beta=-side * slope * bound)



@diagonal("Gelu")
def _gelu(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """Exact: Phi(x) + x phi(x). Tanh form y = x/2 (1 + t), t = tanh(k (x + c x^3)):
    dy/dx = (1 + t)/2 + x/2 (1 - t^2) k (1 + 3 c x^2)."""
    x = node.input[0]
    square = _mul(ctx, x, x)
    if ctx.attr(node, "approximate", "none") == "tanh":
        k, c = math.sqrt(2.0 / math.pi), 0.044715
        cubic = ctx.emit1("Add", [_scalar(ctx, 1.0, x), _mul(ctx, square, _scalar(ctx, c, x))])
        inner = _mul(ctx, _mul(ctx, x, cubic), _scalar(ctx, k, x))
        t = ctx.emit1("Tanh", [inner])
        half_one_plus_t = _mul(ctx, ctx.emit1("Add", [t, _scalar(ctx, 1.0, x)]), _scalar(ctx, 0.5, x))
        sech2 = ctx.emit1("Sub", [_scalar(ctx, 1.0, x), _mul(ctx, t, t)])
        slope = _mul(ctx, ctx.emit1("Add", [_scalar(ctx, 1.0, x), _mul(ctx, square, _scalar(ctx, 3 * c, x))]),
                     _scalar(ctx, 0.5 * k, x))
        derivative = ctx.emit1("Add", [half_one_plus_t, _mul(ctx, _mul(ctx, x, sech2), slope)])
    else:
        erf = ctx.emit1("Erf", [_mul(ctx, x, _scalar(ctx, 1.0 / math.sqrt(2.0), x))])
        cdf = _mul(ctx, ctx.emit1("Add", [erf, _scalar(ctx, 1.0, x)]), _scalar(ctx, 0.5, x))
        density = ctx.emit1("Exp", [_mul(ctx, square, _scalar(ctx, -0.5, x))])
        x_pdf = _mul(ctx, _mul(ctx, x, _scalar(ctx, 1.0 / math.sqrt(2.0 * math.pi), x)), density)
        derivative = ctx.emit1("Add", [cdf, x_pdf])
    return _mul(ctx, v, derivative)


# ----------------------------------------------------------------------------------------------- Relu


@vjp_rule("Relu")
def relu_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Standard: g [x > 0]. Guided backpropagation (Springenberg et al. 2015): relu(g) [x > 0].
    Deconvnet (Zeiler & Fergus 2014, as in Springenberg et al.): relu(g), whatever x."""
    g, y = grads[0], node.output[0]  # y > 0 iff x > 0; reading y keeps Conv+Relu fusable
    if ctx.relu_rule not in _RELU_RULES:
        raise InputError(f"relu_rule={ctx.relu_rule!r} is unknown; pass one of {sorted(_RELU_RULES)}.")
    if ctx.relu_rule == "deconvnet":
        return [ctx.emit1("Relu", [g])]
    if ctx.relu_rule == "guided":
        g = ctx.emit1("Relu", [g])
    return [_mul(ctx, g, forms.step(ctx, y))]


@jvp_rule("Relu")
def relu_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    return [_mul(ctx, tangents[0], forms.step(ctx, node.output[0]))]


# ---------------------------------------------------------------------------------------------- Clip


def _clip_bounds(ctx: RuleContext, node: NodeProto) -> tuple[str | None, str | None]:
    if ctx.opset < 11:
        return None, None
    bounds = [name if name else None for name in node.input[1:3]]
    return tuple(_padded(bounds, 2))  # type: ignore[return-value]


def _clip_inside(ctx: RuleContext, node: NodeProto) -> str:
    """1 where min < x < max.

    float32 with constant bounds: a product of steep HardSigmoid steps of the output y (min < y, y < max),
    which onnxruntime runs in its blocked NCHWc layout next to the Convs, keeping Conv+Clip fused. Else
    (and for a Clip without bounds) exactly where the output equals the input, which works for every form.
    """
    x, y = node.input[0], node.output[0]
    bounds = _constant_clip_bounds(ctx, node)
    if _elem_type(ctx, y) == 1 and bounds is not None and any(b is not None for b in bounds):
        low, high = bounds
        if low == 0.0 and high is not None and len(ctx.shape(y)) == 4 and _box_step_is_exact(high):
            return _box_mask(ctx, y, high)
        steps = [_steep_step(ctx, y, bound, side) for bound, side in ((low, 1.0), (high, -1.0)) if bound is not None]
        return steps[0] if len(steps) == 1 else _mul(ctx, steps[0], steps[1])
    return _mask(ctx, _equal(ctx, x, y), x)


def _box_mask(ctx: RuleContext, y: str, high: float) -> str:
    """``[0 < y < high]`` for ``y = clip(x, 0, high)`` (ReLU6) in two passes instead of three.

    ``a = [y > 0]``, then ``[a - y / high > 0]``: 0 at y = 0 (a = 0), positive inside, 0 at y = high. The
    per-channel multiply, the Add and the steep HardSigmoid fuse into one onnxruntime NCHWc Conv kernel.
    """
    above_zero = _steep_step(ctx, y, 0.0, 1.0)
    ramp = ctx.emit1("Add", [forms.scale(ctx, y, -1.0 / high, like=y), above_zero])
    return ctx.emit1("HardSigmoid", [ramp], alpha=1e30, beta=0.0)


def _box_step_is_exact(high: float) -> bool:
    """Whether ``1 - y/high`` (float32, with or without a fused multiply-add) is <= 0 at y = high and > 0
    at the float32 just below it, so that :func:`_box_mask` decides both ends exactly."""
    top = np.float32(high)
    if not (0.0 < top < 1e30):
        return False
    slope = np.float32(-1.0 / float(top))
    below = np.nextafter(top, np.float32(0.0))
    rounded = [np.float32(1.0) + slope * v for v in (top, below)]  # float32 product, then add
    fused = [1.0 + float(slope) * float(v) for v in (top, below)]  # exact product, one rounding
    return all(at_top <= 0.0 < just_below for at_top, just_below in (rounded, fused))


def _constant_clip_bounds(ctx: RuleContext, node: NodeProto) -> tuple[float | None, float | None] | None:
    """(min, max) as floats when known at build time (None for an absent or infinite bound), else None."""
    if ctx.opset < 11:
        values = [ctx.attr(node, "min", None), ctx.attr(node, "max", None)]
    else:
        values = []
        for name in _clip_bounds(ctx, node):
            value = None if name is None else ctx.value(name)
            if name is not None and value is None:
                return None  # a bound computed from the input
            values.append(value)
    if any(v is not None and np.asarray(v).size != 1 for v in values):
        return None
    bounds = [None if v is None else float(np.asarray(v).reshape(-1)[0]) for v in values]
    return tuple(None if b is None or not abs(b) < 1e38 else b for b in bounds)  # type: ignore[return-value]


def _steep_step(ctx: RuleContext, y: str, bound: float, side: float) -> str:
    """float32 ``[y > bound]`` (side=1) or ``[y < bound]`` (side=-1) as HardSigmoid(side s (y - bound)).

    The slope s (1e30, less for huge bounds so that s |bound| stays finite) makes the ramp narrower than
    float32's spacing: the result is exactly 0 or 1 except within an ulp of the bound, i.e. at the kink.
    """
    slope = 1e30 if abs(bound) <= 1e7 else 1e37 / abs(bound)
    return ctx.emit1("HardSigmoid", [y], alpha=side * slope, beta=-side * slope * bound)


@vjp_rule("Clip")
def clip_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    g, x = grads[0], node.input[0]
    out_shape = ctx.shape(node.output[0])
    result: Names = _padded([], len(node.input))
    if ctx.needs_grad(x):
        result[0] = _mul(ctx, g, _clip_inside(ctx, node))
    for position, bound in enumerate(_clip_bounds(ctx, node), start=1):
        if bound is not None and ctx.needs_grad(bound):
            clipped = _clip_bound_mask(ctx, node, position)
            result[position] = ctx.unbroadcast(_mul(ctx, g, clipped), bound, out_shape)
    return result


@jvp_rule("Clip")
def clip_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    terms = []
    if tangents[0] is not None:
        terms.append(_mul(ctx, tangents[0], _clip_inside(ctx, node)))
    for position, bound in enumerate(_clip_bounds(ctx, node), start=1):
        if bound is not None and position < len(tangents) and tangents[position] is not None:
            terms.append(_mul(ctx, tangents[position], _clip_bound_mask(ctx, node, position)))
    return [_add_all(ctx, terms)]


def _clip_bound_mask(ctx: RuleContext, node: NodeProto, position: int) -> str:
    """1 where the output is the bound at ``position`` (1: min, 2: max), in x's float type.

    ONNX defines y = min(max(x, min), max), so y = max everywhere when min > max: dy/dmin = [x < min]
    [min < max] and dy/dmax = [x > max] or [min > max] (each bound alone: [x < min], [x > max]).
    """
    x = node.input[0]
    low, high = _clip_bounds(ctx, node)
    if position == 1:
        condition = ctx.emit1("Less", [x, low])
        if high is not None:
            condition = ctx.emit1("And", [condition, ctx.emit1("Less", [low, high])])
    else:
        condition = ctx.emit1("Greater", [x, high])
        if low is not None:
            condition = ctx.emit1("Or", [condition, ctx.emit1("Greater", [low, high])])
    return _mask(ctx, condition, x)


# ----------------------------------------------------------------------------------------------- PRelu


def _prelu_slope(ctx: RuleContext, node: NodeProto) -> str:
    """1 where x > 0, else the (broadcast) slope: slope + [x > 0] (1 - slope)."""
    x, slope = node.input[:2]
    return _blend(ctx, forms.step(ctx, x), _scalar(ctx, 1.0, x), slope)


def _prelu_negative_part(ctx: RuleContext, node: NodeProto) -> str:
    x = node.input[0]
    return ctx.emit1("Min", [x, _scalar(ctx, 0.0, x)])


@vjp_rule("PRelu")
def prelu_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """y = x (x > 0), slope x (else); slope broadcasts to x (unidirectionally)."""
    g, (x, slope) = grads[0], node.input[:2]
    gx = _mul(ctx, g, _prelu_slope(ctx, node)) if ctx.needs_grad(x) else None
    gs = None
    if ctx.needs_grad(slope):
        gs = ctx.unbroadcast(_mul(ctx, g, _prelu_negative_part(ctx, node)), slope, ctx.shape(x))
    return [gx, gs]


@jvp_rule("PRelu")
def prelu_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    terms = []
    if tangents[0] is not None:
        terms.append(_mul(ctx, tangents[0], _prelu_slope(ctx, node)))
    if tangents[1] is not None:
        scaled = _mul(ctx, tangents[1], _prelu_negative_part(ctx, node))  # shape of x (slope broadcasts to x)
        terms.append(scaled)
    return [_add_all(ctx, terms)]


# ------------------------------------------------------------------------------------ binary arithmetic


def _jvp_sum(ctx: RuleContext, node: NodeProto, signed: Sequence[tuple[str | None, str, bool]]) -> str:
    """Sum of +/- tangents (each shaped like its primal ``like``), expanded to the output's shape."""
    present = [(t, like, negate) for t, like, negate in signed if t is not None]
    out_shape = ctx.shape(node.output[0])
    if len(present) == 1:
        t, like, negate = present[0]
        t = ctx.emit1("Neg", [t]) if negate else t
        return _expand_to(ctx, t, ctx.shape(like), out_shape)
    (t1, like1, _), (t2, like2, negate2) = present
    total = ctx.emit1("Sub" if negate2 else "Add", [t1, t2])
    return _expand_to(ctx, total, _broadcast_shape(ctx.shape(like1), ctx.shape(like2)), out_shape)


@vjp_rule("Add")
def add_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    g, out_shape = grads[0], ctx.shape(node.output[0])
    return [ctx.unbroadcast(g, name, out_shape) if ctx.needs_grad(name) else None for name in node.input]


@jvp_rule("Add")
def add_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    a, b = node.input[:2]
    return [_jvp_sum(ctx, node, [(tangents[0], a, False), (tangents[1], b, False)])]


@vjp_rule("Sub")
def sub_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    g, (a, b), out_shape = grads[0], node.input[:2], ctx.shape(node.output[0])
    ga = ctx.unbroadcast(g, a, out_shape) if ctx.needs_grad(a) else None
    gb = ctx.emit1("Neg", [ctx.unbroadcast(g, b, out_shape)]) if ctx.needs_grad(b) else None
    return [ga, gb]


@jvp_rule("Sub")
def sub_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    a, b = node.input[:2]
    return [_jvp_sum(ctx, node, [(tangents[0], a, False), (tangents[1], b, True)])]


@vjp_rule("Mul")
def mul_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    g, (a, b), out_shape = grads[0], node.input[:2], ctx.shape(node.output[0])
    ga = ctx.unbroadcast(_times_operand(ctx, g, b, out_shape), a, out_shape) if ctx.needs_grad(a) else None
    gb = ctx.unbroadcast(_times_operand(ctx, g, a, out_shape), b, out_shape) if ctx.needs_grad(b) else None
    return [ga, gb]


def _channel_factor(ctx: RuleContext, name: str, out_shape: Sequence[int]) -> np.ndarray | None:
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


def _times_operand(ctx: RuleContext, g: str, factor: str, out_shape: Sequence[int]) -> str:
    """``g * factor``; a constant scalar factor of a rank-4 float32 ``g`` is multiplied in per channel,
    which onnxruntime keeps in its blocked NCHWc layout (a scalar Mul reorders ``g`` out of it and back)."""
    per_channel = _channel_factor(ctx, factor, out_shape)
    return _mul(ctx, g, factor if per_channel is None else ctx.const(per_channel))


@jvp_rule("Mul")
def mul_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    a, b = node.input[:2]
    out_shape = ctx.shape(node.output[0])
    terms = []
    if tangents[0] is not None:
        terms.append(_times_operand(ctx, tangents[0], b, out_shape))
    if tangents[1] is not None:
        terms.append(_times_operand(ctx, tangents[1], a, out_shape))
    # each term broadcasts a against b, i.e. already has the output's shape
    return [_add_all(ctx, terms)]


@vjp_rule("Div")
def div_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """y = a / b: ga = g / b, gb = -(g / b) y."""
    g, (a, b), out_shape = grads[0], node.input[:2], ctx.shape(node.output[0])
    per_channel = _channel_factor(ctx, b, out_shape)
    if per_channel is not None and not ctx.needs_grad(b):
        # g / b as g * (1/b) per channel (blocked layout, see _times_operand); within an ulp of g / b
        with np.errstate(divide="ignore"):
            reciprocal = np.float32(1) / per_channel
        ga = ctx.unbroadcast(_mul(ctx, g, ctx.const(reciprocal)), a, out_shape) if ctx.needs_grad(a) else None
        return [ga, None]
    quotient = ctx.emit1("Div", [g, b])
    ga = ctx.unbroadcast(quotient, a, out_shape) if ctx.needs_grad(a) else None
    gb = None
    if ctx.needs_grad(b):
        gb = ctx.emit1("Neg", [ctx.unbroadcast(_mul(ctx, quotient, node.output[0]), b, out_shape)])
    return [ga, gb]


@jvp_rule("Div")
def div_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """t_y = (t_a - y t_b) / b."""
    b, y = node.input[1], node.output[0]
    ta, tb = tangents[:2]
    if tb is None:
        return [ctx.emit1("Div", [ta, b])]
    y_tb = _mul(ctx, y, tb)
    numerator = ctx.emit1("Neg", [y_tb]) if ta is None else ctx.emit1("Sub", [ta, y_tb])
    return [ctx.emit1("Div", [numerator, b])]


def _pow_base_derivative(ctx: RuleContext, node: NodeProto) -> tuple[str, tuple[int, ...]]:
    """(d a^b / da = b a^(b-1), its shape), simplified for the constant exponents exports use."""
    a, b, y = node.input[0], node.input[1], node.output[0]
    exponent = ctx.value(b)
    if exponent is not None and exponent.size == 1:
        p = float(exponent.reshape(()))
        if p == 2.0:
            return _mul(ctx, a, _scalar(ctx, 2.0, a)), ctx.shape(a)
        if p == 1.0:
            return _scalar(ctx, 1.0, a), ()
        if p == 0.5:
            return ctx.emit1("Div", [_scalar(ctx, 0.5, y), y]), ctx.shape(y)
        power = ctx.emit1("Pow", [a, _scalar(ctx, p - 1.0, a)])
        return _mul(ctx, power, _scalar(ctx, p, a)), ctx.shape(a)
    shape = _broadcast_shape(ctx.shape(a), ctx.shape(b))
    if exponent is not None:
        dtype = np.dtype(ctx.dtype(a))
        power = ctx.emit1("Pow", [a, ctx.const(np.asarray(exponent - 1, dtype=dtype))])
        return _mul(ctx, power, ctx.const(np.asarray(exponent, dtype=dtype))), shape
    b_float = _cast(ctx, b, _elem_type(ctx, a), _elem_type(ctx, b))
    power = ctx.emit1("Pow", [a, ctx.emit1("Sub", [b_float, _scalar(ctx, 1.0, a)])])
    return _mul(ctx, b_float, power), shape


def _pow_exponent_derivative(ctx: RuleContext, node: NodeProto) -> str:
    """d a^b / db = y log(a) (defined for a > 0); 0 where a = 0 (y is 0 there for b > 0, as torch has it).

    log is taken of a + [a = 0], which is 1 (log 0) where a = 0, so 0 x (-inf) never makes a NaN.
    """
    a, y = node.input[0], node.output[0]
    zero_base = _mask(ctx, _equal(ctx, a, _scalar(ctx, 0.0, a)), a)
    return _mul(ctx, y, ctx.emit1("Log", [ctx.emit1("Add", [a, zero_base])]))


def _check_pow_exponent(ctx: RuleContext, node: NodeProto) -> None:
    b = node.input[1]
    if ctx.needs_grad(b) and _elem_type(ctx, b) not in _FLOAT_ELEM_TYPES:
        raise _unsupported(ctx, node, f"its exponent {b!r} is an integer tensor that depends on the input")


@vjp_rule("Pow")
def pow_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    g, (a, b), out_shape = grads[0], node.input[:2], ctx.shape(node.output[0])
    _check_pow_exponent(ctx, node)
    ga = gb = None
    if ctx.needs_grad(a):
        ga = ctx.unbroadcast(_mul(ctx, g, _pow_base_derivative(ctx, node)[0]), a, out_shape)
    if ctx.needs_grad(b):
        gb_full = _mul(ctx, g, _pow_exponent_derivative(ctx, node))
        gb = ctx.unbroadcast(_cast(ctx, gb_full, _elem_type(ctx, b), _elem_type(ctx, a)), b, out_shape)
    return [ga, gb]


@jvp_rule("Pow")
def pow_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    _check_pow_exponent(ctx, node)
    a, b = node.input[:2]
    out_shape = ctx.shape(node.output[0])
    terms = []
    if tangents[0] is not None:
        derivative, shape = _pow_base_derivative(ctx, node)
        term = _mul(ctx, tangents[0], derivative)
        terms.append(_expand_to(ctx, term, _broadcast_shape(ctx.shape(a), shape), out_shape))
    if tangents[1] is not None:
        tb = _cast(ctx, tangents[1], _elem_type(ctx, a), _elem_type(ctx, b))
        terms.append(_mul(ctx, tb, _pow_exponent_derivative(ctx, node)))  # y has the output's shape
    return [_add_all(ctx, terms)]


# ------------------------------------------------------------------------------- variadic Sum/Mean/...


def _variadic_vjp(ctx: RuleContext, node: NodeProto, g: str, scale: float) -> Names:
    out_shape = ctx.shape(node.output[0])
    scaled = g if scale == 1.0 else _mul(ctx, g, _scalar(ctx, scale, node.output[0]))
    return [ctx.unbroadcast(scaled, name, out_shape) if ctx.needs_grad(name) else None for name in node.input]


def _variadic_jvp(ctx: RuleContext, node: NodeProto, tangents: Names, scale: float) -> str:
    present = [(t, name) for t, name in zip(tangents, node.input, strict=True) if t is not None]
    total = present[0][0] if len(present) == 1 else ctx.emit1("Sum", [t for t, _ in present])
    if scale != 1.0:
        total = _mul(ctx, total, _scalar(ctx, scale, node.output[0]))
    shape = _broadcast_shape(*(ctx.shape(name) for _, name in present))
    return _expand_to(ctx, total, shape, ctx.shape(node.output[0]))


@vjp_rule("Sum")
def sum_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    return _variadic_vjp(ctx, node, grads[0], 1.0)


@jvp_rule("Sum")
def sum_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    return [_variadic_jvp(ctx, node, tangents, 1.0)]


@vjp_rule("Mean")
def mean_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    return _variadic_vjp(ctx, node, grads[0], 1.0 / len(node.input))


@jvp_rule("Mean")
def mean_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    return [_variadic_jvp(ctx, node, tangents, 1.0 / len(node.input))]


def _attains(ctx: RuleContext, name: str, y: str) -> str:
    """0/1 mask (output-shaped) of where input ``name`` equals the Max/Min output ``y``."""
    return _mask(ctx, _equal(ctx, name, y), y)


@vjp_rule("Max", "Min")
def extremum_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """The gradient goes to the first input that attains the max/min (ties: the first one wins)."""
    g, y = grads[0], node.output[0]
    out_shape = ctx.shape(y)
    needed = [i for i, name in enumerate(node.input) if ctx.needs_grad(name)]
    result: Names = _padded([], len(node.input))
    remaining = g  # the part of g no earlier input has taken
    for i, name in enumerate(node.input[: needed[-1] + 1] if needed else []):
        last = i == len(node.input) - 1
        share = remaining if last else _mul(ctx, remaining, _attains(ctx, name, y))
        if i in needed:
            result[i] = ctx.unbroadcast(share, name, out_shape)
        if i < needed[-1]:
            remaining = ctx.emit1("Sub", [remaining, share])
    return result


@jvp_rule("Max", "Min")
def extremum_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """t_y = the tangent of the first input that attains the max/min, chosen from the last one back."""
    y = node.output[0]
    zero = _scalar(ctx, 0.0, y)
    total = tangents[-1] if tangents[-1] is not None else zero
    for i in range(len(node.input) - 2, -1, -1):
        chosen = tangents[i] if tangents[i] is not None else zero
        total = _blend(ctx, _attains(ctx, node.input[i], y), chosen, total)
    # blending against an output-shaped mask gives the output's shape; a single input is the output itself
    return [total]


# ---------------------------------------------------------------------------- Where, Dropout, Cast


@vjp_rule("Where", differentiable=(1, 2))
def where_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """ga = g [condition], gb = g [not condition] = g - ga (each reduced to its operand's shape)."""
    g, (condition, a, b) = grads[0], node.input
    out_shape = ctx.shape(node.output[0])
    chosen = _mask(ctx, condition, node.output[0])
    ga_full = _mul(ctx, g, chosen) if ctx.needs_grad(a) or ctx.needs_grad(b) else None
    ga = ctx.unbroadcast(ga_full, a, out_shape) if ctx.needs_grad(a) else None
    gb = ctx.unbroadcast(ctx.emit1("Sub", [g, ga_full]), b, out_shape) if ctx.needs_grad(b) else None
    return [None, ga, gb]


@jvp_rule("Where")
def where_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    condition, a, b = node.input
    chosen = _mask(ctx, condition, node.output[0])
    ta, tb = tangents[1], tangents[2]
    if tb is None:
        selected = _mul(ctx, ta, chosen)
    elif ta is None:
        selected = ctx.emit1("Sub", [tb, _mul(ctx, tb, chosen)])
    else:
        selected = _blend(ctx, chosen, ta, tb)
    shapes = [ctx.shape(condition)] + [ctx.shape(n) for n, t in ((a, ta), (b, tb)) if t is not None]
    return [_expand_to(ctx, selected, _broadcast_shape(*shapes), ctx.shape(node.output[0]))]


def _check_dropout_inference(ctx: RuleContext, node: NodeProto) -> None:
    if len(node.input) > 2 and node.input[2]:
        training = ctx.value(node.input[2])
        if training is None or bool(np.asarray(training).reshape(-1)[0]):
            raise _unsupported(ctx, node, "it runs in training mode (random masks); export in eval mode")


@vjp_rule("Dropout", differentiable=(0, 1))
def dropout_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Inference-mode Dropout is the identity; its mask output carries no gradient. The ratio is on the
    path (when computed from the input) so that training mode is refused there too, not called constant."""
    _check_dropout_inference(ctx, node)
    return _padded([grads[0]], len(node.input))


@jvp_rule("Dropout")
def dropout_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    _check_dropout_inference(ctx, node)
    return _padded([tangents[0]], len(node.output))


def _cast_types(ctx: RuleContext, node: NodeProto) -> tuple[int, int]:
    """(source, target) element types of a Cast/CastLike; raises unless both are floating point."""
    source = _elem_type(ctx, node.input[0])
    target = int(ctx.attr(node, "to")) if node.op_type == "Cast" else _elem_type(ctx, node.input[1])
    for elem, role in ((source, "converts from"), (target, "converts to")):
        if elem not in _FLOAT_ELEM_TYPES:
            from onnx import helper

            type_name = helper.tensor_dtype_to_string(elem).removeprefix("TensorProto.").lower()
            raise _unsupported(
                ctx, node, f"it {role} the non-float type {type_name}, through which no gradient can flow",
                where="on the float side of it",
            )
    return source, target


@vjp_rule("Cast", "CastLike", differentiable=(0,))
def cast_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    source, target = _cast_types(ctx, node)
    return _padded([_cast(ctx, grads[0], source, target)], len(node.input))


@jvp_rule("Cast", "CastLike")
def cast_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    source, target = _cast_types(ctx, node)
    return [_cast(ctx, tangents[0], target, source)]


# ---------------------------------------------------------------------------- Softmax, LogSoftmax


def _softmax_axes(ctx: RuleContext, node: NodeProto) -> list[int]:
    """Before opset 13 the input is coerced to 2-D at ``axis`` (default 1): the op spans every axis
    from ``axis`` on. From 13 it spans the single ``axis`` (default -1)."""
    rank = len(ctx.shape(node.input[0]))
    if ctx.opset >= 13:
        return [int(ctx.attr(node, "axis", -1)) % rank]
    axis = int(ctx.attr(node, "axis", 1))
    return list(range(axis + rank if axis < 0 else axis, rank))


def _softmax_product(ctx: RuleContext, node: NodeProto, v: str) -> str | None:
    """J v = J^T v = y (v - sum(v y)) over the softmax axes (the Jacobian is symmetric)."""
    axes, y = _softmax_axes(ctx, node), node.output[0]
    if not axes:  # coerced to [N, 1]: the output is constantly 1
        return None
    total = _reduce(ctx, "ReduceSum", _mul(ctx, v, y), axes)
    return _mul(ctx, y, ctx.emit1("Sub", [v, total]))


@vjp_rule("Softmax")
def softmax_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    return [_softmax_product(ctx, node, grads[0])]


@jvp_rule("Softmax")
def softmax_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    return [_softmax_product(ctx, node, tangents[0])]


@vjp_rule("LogSoftmax")
def log_softmax_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """J^T g = g - softmax * sum(g) over the axes; softmax = exp(y)."""
    g, axes = grads[0], _softmax_axes(ctx, node)
    if not axes:
        return [None]
    probabilities = ctx.emit1("Exp", [node.output[0]])
    return [ctx.emit1("Sub", [g, _mul(ctx, probabilities, _reduce(ctx, "ReduceSum", g, axes))])]


@jvp_rule("LogSoftmax")
def log_softmax_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """J t = t - sum(t * softmax) over the axes."""
    t, axes = tangents[0], _softmax_axes(ctx, node)
    if not axes:
        return [None]
    probabilities = ctx.emit1("Exp", [node.output[0]])
    return [ctx.emit1("Sub", [t, _reduce(ctx, "ReduceSum", _mul(ctx, t, probabilities), axes)])]


# ------------------------------------------------------------------------------- LayerNormalization


def _layer_norm_parts(ctx: RuleContext, node: NodeProto) -> tuple[str, str, list[int], int]:
    """(x_hat, inv_std in x's dtype, normalised axes, element type U of the node's Mean/InvStdDev).

    One LayerNormalization with unit scale and no bias yields x_hat and 1/sigma in a single fused kernel.
    """
    x = node.input[0]
    shape = ctx.shape(x)
    axis = int(ctx.attr(node, "axis", -1)) % len(shape)
    stash = int(ctx.attr(node, "stash_type", 1))
    ones = ctx.const(np.ones(shape[axis:], dtype=np.dtype(ctx.dtype(x))))
    x_hat, _, inv_std = ctx.emit(
        "LayerNormalization", [x, ones], 3, axis=axis, epsilon=float(ctx.attr(node, "epsilon", 1e-5)),
        stash_type=stash,
    )
    return x_hat, _cast(ctx, inv_std, _elem_type(ctx, x), stash), list(range(axis, len(shape))), stash


def _layer_norm_inputs(node) -> tuple[str, str, str | None]:
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    return node.input[0], node.input[1], bias


@vjp_rule("LayerNormalization")
def layer_norm_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """y = x_hat scale + B, x_hat = (x - mu) r, r = 1/sqrt(var + eps), over the trailing axes:
    gx = r (d - mean(d) - x_hat mean(d x_hat)) with d = g scale (Ba, Kiros & Hinton 2016)."""
    x, scale, bias = _layer_norm_inputs(node)
    x_shape = ctx.shape(x)
    x_hat, inv_std, axes, stash = _layer_norm_parts(ctx, node)
    grads = _padded(grads, 3)
    g = grads[0]
    result: Names = _padded([], len(node.input))
    elem = _elem_type(ctx, x)
    if ctx.needs_grad(x):
        terms = []
        if g is not None:
            d = _mul(ctx, g, scale)
            centred = ctx.emit1("Sub", [d, _reduce(ctx, "ReduceMean", d, axes)])
            along = _mul(ctx, x_hat, _reduce(ctx, "ReduceMean", _mul(ctx, d, x_hat), axes))
            terms.append(_mul(ctx, inv_std, ctx.emit1("Sub", [centred, along])))
        count = float(np.prod([x_shape[a] for a in axes]))
        if grads[1] is not None:  # Mean output: d mu / dx = 1/N
            g_mean = _cast(ctx, grads[1], elem, stash)
            terms.append(_expand_to(ctx, _mul(ctx, g_mean, _scalar(ctx, 1.0 / count, x)),
                                    ctx.shape(node.output[1]), x_shape))
        if grads[2] is not None:  # InvStdDev output: d r / dx = -r^2 x_hat / N
            g_inv = _mul(ctx, _cast(ctx, grads[2], elem, stash), _mul(ctx, inv_std, inv_std))
            terms.append(_mul(ctx, _mul(ctx, g_inv, x_hat), _scalar(ctx, -1.0 / count, x)))
        result[0] = _add_all(ctx, terms)
    if g is not None and ctx.needs_grad(scale):
        result[1] = ctx.unbroadcast(_mul(ctx, g, x_hat), scale, x_shape)
    if g is not None and bias is not None and ctx.needs_grad(bias):
        result[2] = ctx.unbroadcast(g, bias, x_shape)
    return result


@jvp_rule("LayerNormalization")
def layer_norm_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """t_y = scale r (t - mean(t) - x_hat mean(t x_hat)) + t_scale x_hat + t_B."""
    x, scale, bias = _layer_norm_inputs(node)
    x_shape = ctx.shape(x)
    x_hat, inv_std, axes, stash = _layer_norm_parts(ctx, node)
    tangents = _padded(tangents, 3)
    tx, t_scale, t_bias = tangents
    outputs: Names = _padded([], len(node.output))
    terms = []
    if tx is not None:
        mean_t = _reduce(ctx, "ReduceMean", tx, axes)
        mean_t_xhat = _reduce(ctx, "ReduceMean", _mul(ctx, tx, x_hat), axes)
        centred = ctx.emit1("Sub", [ctx.emit1("Sub", [tx, mean_t]), _mul(ctx, x_hat, mean_t_xhat)])
        terms.append(_mul(ctx, _mul(ctx, inv_std, centred), scale))
        elem = _elem_type(ctx, x)
        if len(node.output) > 1 and node.output[1]:
            outputs[1] = _cast(ctx, mean_t, stash, elem)
        if len(node.output) > 2 and node.output[2]:
            minus_r2 = ctx.emit1("Neg", [_mul(ctx, inv_std, inv_std)])
            outputs[2] = _cast(ctx, _mul(ctx, minus_r2, mean_t_xhat), stash, elem)
    if t_scale is not None:
        terms.append(_mul(ctx, x_hat, t_scale))
    if t_bias is not None:
        terms.append(_expand_to(ctx, t_bias, ctx.shape(bias), x_shape) if not terms else t_bias)
    outputs[0] = _add_all(ctx, terms)
    return outputs


# ------------------------------------------------------------------------------------- MatMul, Gemm


def _gemm(ctx: RuleContext, a: str, b: str, *, trans_a: int = 0, trans_b: int = 0, alpha: float = 1.0,
          c: str | None = None, beta: float = 1.0, like: str) -> str:
    """Gemm(a, b[, c]); before opset 11 C is required, so a scalar zero stands in."""
    inputs = [a, b]
    if c is not None:
        inputs.append(c)
    elif ctx.opset < 11:
        inputs.append(_scalar(ctx, 0.0, like))
    return ctx.emit1(
        "Gemm", inputs, transA=trans_a or None, transB=trans_b or None,
        alpha=None if alpha == 1.0 else float(alpha), beta=None if beta == 1.0 else float(beta),
    )


def _swap_last_two(ctx: RuleContext, name: str, padded: tuple[int, ...], rank: int) -> str:
    """``name`` (viewed with shape ``padded``) with its last two axes swapped; a free Reshape when
    one of them has size 1 (or the operand is 1-D), else a Transpose."""
    swapped = (*padded[:-2], padded[-1], padded[-2])
    if rank < 2 or 1 in padded[-2:]:
        return _reshape(ctx, name, swapped)
    return ctx.emit1("Transpose", [name], perm=[*range(len(padded) - 2), len(padded) - 1, len(padded) - 2])


def _matmul_vjp_rows(ctx: RuleContext, node: NodeProto, g: str, n_k_m: tuple[int, int, int]) -> Names:
    """a (..., n, k) @ W (k, m): fold the batch into rows and use Gemm's transpose flags."""
    a, w = node.input[:2]
    a_shape = ctx.shape(a)
    _, k, m = n_k_m
    flat = len(a_shape) > 2
    g2 = _reshape(ctx, g, (-1, m)) if flat else g
    ga = gw = None
    if ctx.needs_grad(a):
        ga = _gemm(ctx, g2, w, trans_b=1, like=a)
        ga = _reshape(ctx, ga, a_shape) if flat else ga
    if ctx.needs_grad(w):
        a2 = _reshape(ctx, a, (-1, k)) if flat else a
        gw = _gemm(ctx, a2, g2, trans_a=1, like=a)
    return [ga, gw]


@vjp_rule("MatMul")
def matmul_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """C = A B (numpy matmul semantics): gA = g B^T, gB = A^T g, summed over broadcast batch axes."""
    a, b = node.input[:2]
    sa, sb = ctx.shape(a), ctx.shape(b)
    pa = sa if len(sa) >= 2 else (1, *sa)
    pb = sb if len(sb) >= 2 else (*sb, 1)
    batch = _broadcast_shape(pa[:-2], pb[:-2])
    n, k, m = pa[-2], pa[-1], pb[-1]
    full = (*batch, n, m)
    g = grads[0]
    if ctx.shape(node.output[0]) != full:  # a 1-D operand dropped an axis of the product
        g = _reshape(ctx, g, full)
    if len(sb) == 2 and len(sa) >= 2:
        return _matmul_vjp_rows(ctx, node, g, (n, k, m))
    ga = gb = None
    if ctx.needs_grad(a):
        ga = ctx.emit1("MatMul", [g, _swap_last_two(ctx, b, pb, len(sb))])
        if len(sa) == 1:
            ga = _reshape(ctx, ga, (*batch, k))
        ga = ctx.unbroadcast(ga, a, (*batch, k) if len(sa) == 1 else (*batch, n, k))
    if ctx.needs_grad(b):
        gb = ctx.emit1("MatMul", [_swap_last_two(ctx, a, pa, len(sa)), g])
        if len(sb) == 1:
            gb = _reshape(ctx, gb, (*batch, k))
        gb = ctx.unbroadcast(gb, b, (*batch, k) if len(sb) == 1 else (*batch, k, m))
    return [ga, gb]


@jvp_rule("MatMul")
def matmul_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    a, b = node.input[:2]
    terms = []
    if tangents[0] is not None:
        terms.append(ctx.emit1("MatMul", [tangents[0], b]))
    if tangents[1] is not None:
        terms.append(ctx.emit1("MatMul", [a, tangents[1]]))
    return [_add_all(ctx, terms)]


def _gemm_attrs(ctx: RuleContext, node: NodeProto) -> tuple[int, int, float, float]:
    return (int(ctx.attr(node, "transA", 0)), int(ctx.attr(node, "transB", 0)),
            float(ctx.attr(node, "alpha", 1.0)), float(ctx.attr(node, "beta", 1.0)))


@vjp_rule("Gemm")
def gemm_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Y = alpha A' B' + beta C (A' = A or A^T, B' likewise): every gradient is one Gemm whose
    transpose flags absorb the transposes."""
    g = grads[0]
    a, b = node.input[:2]
    c = node.input[2] if len(node.input) > 2 and node.input[2] else None
    trans_a, trans_b, alpha, beta = _gemm_attrs(ctx, node)
    result: Names = _padded([], len(node.input))
    if ctx.needs_grad(a):
        if trans_a:  # gA = alpha B' g^T
            result[0] = _gemm(ctx, b, g, trans_a=trans_b, trans_b=1, alpha=alpha, like=a)
        else:  # gA = alpha g B'^T
            result[0] = _gemm(ctx, g, b, trans_b=1 - trans_b, alpha=alpha, like=a)
    if ctx.needs_grad(b):
        if trans_b:  # gB = alpha g^T A'
            result[1] = _gemm(ctx, g, a, trans_a=1, trans_b=trans_a, alpha=alpha, like=a)
        else:  # gB = alpha A'^T g
            result[1] = _gemm(ctx, a, g, trans_a=1 - trans_a, alpha=alpha, like=a)
    if c is not None and ctx.needs_grad(c):
        gc = ctx.unbroadcast(g, c, ctx.shape(node.output[0]))
        result[2] = gc if beta == 1.0 else _mul(ctx, gc, _scalar(ctx, beta, c))
    return result


@jvp_rule("Gemm")
def gemm_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    a, b = node.input[:2]
    trans_a, trans_b, alpha, beta = _gemm_attrs(ctx, node)
    tangents = _padded(tangents, 3)
    ta, tb, tc = tangents
    flags = {"trans_a": trans_a, "trans_b": trans_b, "alpha": alpha, "like": a}
    terms = []
    if ta is not None:  # t_C rides along as the C input of the first product
        terms.append(_gemm(ctx, ta, b, c=tc, beta=beta, **flags))
        tc = None
    if tb is not None:
        terms.append(_gemm(ctx, a, tb, c=tc, beta=beta, **flags))
        tc = None
    if tc is not None:
        c = node.input[2]
        scaled = tc if beta == 1.0 else _mul(ctx, tc, _scalar(ctx, beta, c))
        terms.append(_expand_to(ctx, scaled, ctx.shape(c), ctx.shape(node.output[0])))
    return [_add_all(ctx, terms)]


# ------------------------------------------------------------------------------------------------ Einsum


def _einsum_terms(ctx: RuleContext, node: NodeProto) -> tuple[list[str], str, int]:
    """(input terms, explicit output term, rank of ``...``) of an Einsum. An implicit output follows
    numpy's rule: ``...`` first, then the labels used exactly once, sorted. ``...`` stays in the terms:
    ONNX allows broadcasting only there."""
    equation = str(ctx.attr(node, "equation")).replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    ellipsis_rank = max((len(ctx.shape(name)) - len(term) + 3
                         for term, name in zip(terms, node.input, strict=True) if "..." in term), default=0)
    if arrow:
        return terms, rhs, ellipsis_rank
    labels = lhs.replace("...", "").replace(",", "")
    singles = "".join(sorted(c for c in set(labels) if labels.count(c) == 1))
    return terms, ("..." if "..." in lhs else "") + singles, ellipsis_rank


def _einsum_tokens(term: str) -> list[str]:
    """``"a...bc"`` -> ``["a", "...", "b", "c"]``."""
    head, dots, tail = term.partition("...")
    return [*head, *([dots] if dots else []), *tail]


def _einsum_axis_sizes(term: str, shape: Sequence[int], ellipsis_rank: int) -> dict[str, int]:
    """Size of each label of ``term`` and of each ``...`` axis (keyed "0", "1", ... right-aligned)."""
    sizes: dict[str, int] = {}
    position = 0
    for token in _einsum_tokens(term):
        if token == "...":
            own = len(shape) - len(term) + 3
            for j in range(own):
                sizes[str(ellipsis_rank - own + j)] = int(shape[position + j])
            position += own
        else:
            sizes[token] = int(shape[position])
            position += 1
    return sizes


def _einsum_operand_grad(ctx: RuleContext, node: NodeProto, g: str, position: int,
                         terms: list[str], output: str, ellipsis_rank: int) -> str:
    """g_i = einsum(g, other operands -> axes of operand i). Axes only operand i has (summed away in
    the forward) are broadcast back; axes along which operand i was broadcast are summed."""
    own, operand = terms[position], node.input[position]
    labels = own.replace("...", "")
    if len(set(labels)) != len(labels):
        raise _unsupported(ctx, node, f"operand {position} repeats a label ({own!r}: a diagonal), whose "
                                      "gradient gradsal does not build")
    sources = [(output, g, ctx.shape(node.output[0]))] + [
        (term, name, ctx.shape(name)) for i, (term, name) in enumerate(zip(terms, node.input, strict=True))
        if i != position]
    sizes: dict[str, int] = {}
    for term, _, shape in sources:
        for key, size in _einsum_axis_sizes(term, shape, ellipsis_rank).items():
            sizes[key] = max(sizes.get(key, 1), size)
    own_rank = len(ctx.shape(operand)) - len(own) + 3 if "..." in own else 0
    kept, full = [], []
    for token in _einsum_tokens(own):
        if token == "...":
            keys = [str(ellipsis_rank - own_rank + j) for j in range(own_rank)]
            ellipsis_known = any("..." in term for term, _, _ in sources)
            kept += [token] if ellipsis_known else []
            full += [sizes.get(key, 1) if ellipsis_known else 1 for key in keys]
        else:
            kept += [token] if token in sizes else []
            full.append(sizes.get(token, 1))
    equation = ",".join(term for term, _, _ in sources) + "->" + "".join(kept)
    grad = ctx.emit1("Einsum", [name for _, name, _ in sources], equation=equation)
    if len(kept) != len(_einsum_tokens(own)):
        grad = _reshape(ctx, grad, full)
    widened = _broadcast_shape(full, ctx.shape(operand))
    grad = _expand_to(ctx, grad, full, widened)
    return ctx.unbroadcast(grad, operand, widened)


@vjp_rule("Einsum")
def einsum_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Einsum is linear in each operand: its gradient is the Einsum of the cotangent with the others."""
    terms, output, ellipsis_rank = _einsum_terms(ctx, node)
    return [_einsum_operand_grad(ctx, node, grads[0], i, terms, output, ellipsis_rank)
            if ctx.needs_grad(name) else None for i, name in enumerate(node.input)]


@jvp_rule("Einsum")
def einsum_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """Sum over operands of the same Einsum with that operand replaced by its tangent."""
    equation = str(ctx.attr(node, "equation"))
    products = []
    for i, tangent in enumerate(tangents):
        if tangent is not None:
            operands = [tangent if j == i else name for j, name in enumerate(node.input)]
            products.append(ctx.emit1("Einsum", operands, equation=equation))
    return [_add_all(ctx, products)]
