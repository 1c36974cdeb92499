"""Rules of the pointwise (unary) activations: diagonal Jacobians, and the piecewise ones Relu, Clip, PRelu.

A unary elementwise ``y = f(x)`` has the diagonal Jacobian ``diag(f'(x))``, so its VJP and its JVP are the
same product ``v * f'(x)`` (registered once with :func:`~.registry.diagonal`). ``f'`` is written with the
primal output where that is cheaper (Sigmoid ``y (1 - y)``, Tanh ``1 - y^2``, Exp ``y``). A piecewise
operator multiplies by one 0/1 mask of its primal tensors (Relu ``[x > 0]``, Clip ``[min < x < max]``),
spelled through :mod:`.forms` (steps, box masks and selects that onnxruntime runs fast) rather than with a
Where. Relu also offers guided backpropagation (Springenberg et al. 2015) and the deconvnet rule (Zeiler &
Fergus 2014). Clip and PRelu take their other inputs (bounds, slope) as differentiable operands too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ....core.errors import InputError
from . import emit, forms
from .emit import Names
from .registry import RuleContext, diagonal, jvp_rule, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto


_RELU_RULES = frozenset({"standard", "guided", "deconvnet"})


def _mul(ctx: RuleContext, a: str, b: str) -> str:
    return ctx.emit1("Mul", [a, b])


def _one_minus(ctx: RuleContext, y: str) -> str:
    return ctx.emit1("Sub", [emit.scalar(ctx, 1.0, y), y])


# ------------------------------------------------------------------------------ smooth functions


def _derivative_operator(op: str, derivative: str) -> None:
    """Register ``v * derivative(x)`` as the rule of ``op``, whose derivative is another ONNX operator."""

    @diagonal(op)
    def apply(ctx: RuleContext, node: NodeProto, v: str) -> str:
        return _mul(ctx, v, ctx.emit1(derivative, [node.input[0]]))


# d|x| = sign(x), d log(1 + e^x) = sigmoid(x), d sin(x) = cos(x)
for _op, _derivative in (("Abs", "Sign"), ("Softplus", "Sigmoid"), ("Sin", "Cos")):
    _derivative_operator(_op, _derivative)


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
    return ctx.emit1("Div", [v, _mul(ctx, y, emit.scalar(ctx, 2.0, y))])


@diagonal("Reciprocal")
def _reciprocal(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """d (1/x) = -y^2."""
    y = node.output[0]
    return ctx.emit1("Neg", [_mul(ctx, v, _mul(ctx, y, y))])


@diagonal("Sigmoid")
def _sigmoid(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """d sigmoid = y (1 - y)."""
    y = node.output[0]
    return _mul(ctx, v, _mul(ctx, y, _one_minus(ctx, y)))


@diagonal("Tanh")
def _tanh(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """d tanh = 1 - y^2."""
    y = node.output[0]
    return _mul(ctx, v, ctx.emit1("Sub", [emit.scalar(ctx, 1.0, y), _mul(ctx, y, y)]))


@diagonal("Softsign")
def _softsign(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """y = x / (1 + |x|), so 1 - |y| = 1 / (1 + |x|) and dy/dx = (1 - |y|)^2."""
    y = node.output[0]
    rest = ctx.emit1("Sub", [emit.scalar(ctx, 1.0, y), ctx.emit1("Abs", [y])])
    return _mul(ctx, v, _mul(ctx, rest, rest))


@diagonal("Erf")
def _erf(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """d erf(x) = 2/sqrt(pi) exp(-x^2)."""
    x = node.input[0]
    bell = ctx.emit1("Exp", [_mul(ctx, _mul(ctx, x, x), emit.scalar(ctx, -1.0, x))])
    return _mul(ctx, v, _mul(ctx, bell, emit.scalar(ctx, 2.0 / math.sqrt(math.pi), x)))


@diagonal("Cos")
def _cos(ctx: RuleContext, node: NodeProto, v: str) -> str:
    return ctx.emit1("Neg", [_mul(ctx, v, ctx.emit1("Sin", [node.input[0]]))])


@diagonal("Gelu")
def _gelu(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """Exact: Phi(x) + x phi(x) (Hendrycks & Gimpel 2016). Tanh form y = x/2 (1 + t), t = tanh(k (x + c x^3)):
    dy/dx = (1 + t)/2 + x/2 (1 - t^2) k (1 + 3 c x^2)."""
    x = node.input[0]
    square = _mul(ctx, x, x)
    if ctx.attr(node, "approximate", "none") == "tanh":
        k, c = math.sqrt(2.0 / math.pi), 0.044715
        cubic = ctx.emit1("Add", [emit.scalar(ctx, 1.0, x), _mul(ctx, square, emit.scalar(ctx, c, x))])
        t = ctx.emit1("Tanh", [_mul(ctx, _mul(ctx, x, cubic), emit.scalar(ctx, k, x))])
        half_one_plus_t = _mul(ctx, ctx.emit1("Add", [t, emit.scalar(ctx, 1.0, x)]), emit.scalar(ctx, 0.5, x))
        sech2 = ctx.emit1("Sub", [emit.scalar(ctx, 1.0, x), _mul(ctx, t, t)])
        widening = ctx.emit1("Add", [emit.scalar(ctx, 1.0, x), _mul(ctx, square, emit.scalar(ctx, 3 * c, x))])
        slope = _mul(ctx, widening, emit.scalar(ctx, 0.5 * k, x))
        derivative = ctx.emit1("Add", [half_one_plus_t, _mul(ctx, _mul(ctx, x, sech2), slope)])
    else:
        erf = ctx.emit1("Erf", [_mul(ctx, x, emit.scalar(ctx, 1.0 / math.sqrt(2.0), x))])
        cdf = _mul(ctx, ctx.emit1("Add", [erf, emit.scalar(ctx, 1.0, x)]), emit.scalar(ctx, 0.5, x))
        density = ctx.emit1("Exp", [_mul(ctx, square, emit.scalar(ctx, -0.5, x))])
        x_pdf = _mul(ctx, _mul(ctx, x, emit.scalar(ctx, 1.0 / math.sqrt(2.0 * math.pi), x)), density)
        derivative = ctx.emit1("Add", [cdf, x_pdf])
    return _mul(ctx, v, derivative)


# ------------------------------------------------------------------------- exponential linear units


def _blend_constants(ctx: RuleContext, mask: str, if_one: float, if_zero: float) -> str:
    """``if_zero + (if_one - if_zero) mask`` for scalar constants (two cheap scalar-broadcast ops)."""
    scaled = _mul(ctx, mask, emit.scalar(ctx, if_one - if_zero, mask))
    return scaled if if_zero == 0.0 else ctx.emit1("Add", [scaled, emit.scalar(ctx, if_zero, mask)])


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
    return ctx.emit1("Min", [x, emit.scalar(ctx, 0.0, x)])


def _elu_slope(ctx: RuleContext, x: str, alpha: float) -> str:
    """Elu's dy/dx: 1 for x > 0, alpha e^x below; e^min(x, 0) is both when alpha = 1."""
    exp_negative_part = ctx.emit1("Exp", [_negative_part(ctx, x)])
    if alpha == 1.0:
        return exp_negative_part
    positive_part = _mul(ctx, forms.step(ctx, x), emit.scalar(ctx, 1.0 - alpha, x))
    return ctx.emit1("Add", [_mul(ctx, exp_negative_part, emit.scalar(ctx, alpha, x)), positive_part])


@diagonal("Elu")
def _elu(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """y = x for x > 0, alpha (e^x - 1) below (Clevert et al. 2016)."""
    return _mul(ctx, v, _elu_slope(ctx, node.input[0], float(ctx.attr(node, "alpha", 1.0))))


@diagonal("Selu")
def _selu(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """y = gamma elu_alpha(x), so dy/dx = gamma elu_alpha'(x)."""
    x = node.input[0]
    alpha = float(ctx.attr(node, "alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr(node, "gamma", 1.05070102214813232421875))
    return _mul(ctx, v, _mul(ctx, _elu_slope(ctx, x, alpha), emit.scalar(ctx, gamma, x)))


@diagonal("Celu")
def _celu(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """y = max(0, x) + min(0, alpha (e^(x/alpha) - 1)), so dy/dx = e^(min(x, 0)/alpha)."""
    x = node.input[0]
    alpha = float(ctx.attr(node, "alpha", 1.0))
    negative_part = ctx.emit1("Min", [x, emit.scalar(ctx, 0.0, x)])
    return _mul(ctx, v, ctx.emit1("Exp", [_mul(ctx, negative_part, emit.scalar(ctx, 1.0 / alpha, x))]))


# ------------------------------------------------------------------------------ hard activations


@diagonal("HardSigmoid")
def _hard_sigmoid(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """y = clip(alpha x + beta, 0, 1): slope alpha where 0 < y < 1."""
    return forms.times_unit_interior(ctx, v, node.output[0], float(ctx.attr(node, "alpha", 0.2)))


@diagonal("HardSwish")
def _hard_swish(ctx: RuleContext, node: NodeProto, v: str) -> str:
    """y = x h(x), h = clip(x/6 + 1/2, 0, 1) (Howard et al. 2019): dy/dx = h + x/6 [|x| < 3]
    (x/3 + 1/2 inside, 0 below -3, 1 above 3)."""
    h = forms.hard_swish_gate(ctx, node)
    return _mul(ctx, v, ctx.emit1("Add", [h, forms.hard_swish_ramp(ctx, node.input[0], h)]))


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
    if ctx.is_masked(grads[0], y):  # a max pool's mask already zeroed it wherever y is 0
        return [g]
    return [_mul(ctx, g, forms.step(ctx, y))]


@jvp_rule("Relu")
def relu_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    return [_mul(ctx, tangents[0], forms.step(ctx, node.output[0]))]


# ---------------------------------------------------------------------------------------------- Clip


def _clip_bounds(ctx: RuleContext, node: NodeProto) -> tuple[str | None, str | None]:
    """The names of the bound inputs (from opset 11; attributes before), None where absent."""
    if ctx.opset < 11:
        return None, None
    low, high = (emit.optional_input(node, i) or None for i in (1, 2))
    return low, high


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
    low, high = (None if b is None or not abs(b) < 1e38 else b for b in bounds)
    return low, high


def _clip_interior(ctx: RuleContext, node: NodeProto) -> str:
    """[min < x < max]: where the output is the input."""
    low, high = _constant_clip_bounds(ctx, node) or (None, None)
    return forms.clip_interior(ctx, node.input[0], node.output[0], low, high)


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
    return emit.mask(ctx, condition, x)


@vjp_rule("Clip")
def clip_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """y = min(max(x, min), max): gx = g [min < x < max]; each bound takes g where y equals it."""
    g, x = grads[0], node.input[0]
    out_shape = ctx.shape(node.output[0])
    result: Names = emit.nothing(node)
    if ctx.needs_grad(x):
        result[0] = _mul(ctx, g, _clip_interior(ctx, node))
    for position, bound in enumerate(_clip_bounds(ctx, node), start=1):
        if bound is not None and ctx.needs_grad(bound):
            clipped = _clip_bound_mask(ctx, node, position)
            result[position] = ctx.unbroadcast(_mul(ctx, g, clipped), bound, out_shape)
    return result


@jvp_rule("Clip")
def clip_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    terms = []
    if tangents[0] is not None:
        terms.append(_mul(ctx, tangents[0], _clip_interior(ctx, node)))
    for position, bound in enumerate(_clip_bounds(ctx, node), start=1):
        if bound is not None and position < len(tangents) and tangents[position] is not None:
            terms.append(_mul(ctx, tangents[position], _clip_bound_mask(ctx, node, position)))
    return [emit.total(ctx, terms)]


# ----------------------------------------------------------------------------------------------- PRelu


def _prelu_slope(ctx: RuleContext, node: NodeProto) -> str:
    """1 where x > 0, else the (broadcast) slope."""
    x, slope = node.input[:2]
    return forms.select(ctx, forms.step(ctx, x), emit.scalar(ctx, 1.0, x), slope)


def _prelu_negative_part(ctx: RuleContext, node: NodeProto) -> str:
    x = node.input[0]
    return ctx.emit1("Min", [x, emit.scalar(ctx, 0.0, x)])


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
    if tangents[1] is not None:  # the slope broadcasts to x: the term has x's shape
        terms.append(_mul(ctx, tangents[1], _prelu_negative_part(ctx, node)))
    return [emit.total(ctx, terms)]
