"""Rules of the broadcasting arithmetic: Add, Sub, Mul, Div, Pow, Sum, Mean, Max, Min, Where, Dropout, Cast.

Each operand broadcasts (numpy rules) to the output, so its cotangent is the output-shaped partial product
summed back over the axes it was broadcast along (``ctx.unbroadcast``, which emits nothing where the shapes
agree); a tangent is broadcast forward instead. The partials: d(a + b) = (1, 1), d(a - b) = (1, -1),
d(ab) = (b, a), d(a/b) = (1/b, -y/b), d(a^b) = (b a^(b-1), y log a); Sum and Mean pass 1 and 1/n to each
operand; Max and Min give the whole cotangent to the first operand that attains the extremum (torch's
rule for ties); Where routes it by its condition; inference-mode Dropout is the identity and Cast changes
only the precision. Products with constants and selects use :mod:`.forms`, which spell them the way
onnxruntime runs fastest. Add, Sub, Sum, Mean and Where are linear in their operands, but their JVPs are
written by hand: the registrar's form fills a missing tangent with a zero tensor, a full pass more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import emit, forms
from .emit import Names
from .registry import RuleContext, jvp_rule, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto


_FLOAT_ELEM_TYPES = frozenset({1, 10, 11, 16})  # float32, float16, float64, bfloat16


def _mul(ctx: RuleContext, a: str, b: str) -> str:
    return ctx.emit1("Mul", [a, b])


def _to_output(ctx: RuleContext, node: NodeProto, t: str, shape: Sequence[int]) -> str:
    """A tangent term of ``shape`` broadcast to the node's output shape."""
    return emit.expand(ctx, t, ctx.shape(node.output[0]), from_shape=shape)


# ------------------------------------------------------------------------------------------ Add, Sub


def _signed_sum(ctx: RuleContext, node: NodeProto, signed: Sequence[tuple[str | None, str, bool]]) -> str:
    """Sum of +/- tangents (each shaped like its primal ``like``), broadcast to the output's shape."""
    present = [(t, like, negate) for t, like, negate in signed if t is not None]
    if len(present) == 1:
        t, like, negate = present[0]
        return _to_output(ctx, node, ctx.emit1("Neg", [t]) if negate else t, ctx.shape(like))
    (t1, like1, _), (t2, like2, negate2) = present
    total = ctx.emit1("Sub" if negate2 else "Add", [t1, t2])
    return _to_output(ctx, node, total, emit.broadcast_shape(ctx.shape(like1), ctx.shape(like2)))


@vjp_rule("Add", "Sub")
def add_sub_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """d(a + b) = (1, 1), d(a - b) = (1, -1)."""
    g, out_shape = grads[0], ctx.shape(node.output[0])
    result = [ctx.unbroadcast(g, name, out_shape) if ctx.needs_grad(name) else None for name in node.input]
    if node.op_type == "Sub" and result[1] is not None:
        result[1] = ctx.emit1("Neg", [result[1]])
    return result


@jvp_rule("Add", "Sub")
def add_sub_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    a, b = node.input[:2]
    return [_signed_sum(ctx, node, [(tangents[0], a, False), (tangents[1], b, node.op_type == "Sub")])]


# ------------------------------------------------------------------------------------------ Mul, Div


@vjp_rule("Mul")
def mul_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    g, (a, b), out_shape = grads[0], node.input[:2], ctx.shape(node.output[0])
    ga = ctx.unbroadcast(forms.times(ctx, g, b, out_shape), a, out_shape) if ctx.needs_grad(a) else None
    gb = ctx.unbroadcast(forms.times(ctx, g, a, out_shape), b, out_shape) if ctx.needs_grad(b) else None
    return [ga, gb]


@jvp_rule("Mul")
def mul_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    a, b = node.input[:2]
    out_shape = ctx.shape(node.output[0])
    terms = []
    if tangents[0] is not None:
        terms.append(forms.times(ctx, tangents[0], b, out_shape))
    if tangents[1] is not None:
        terms.append(forms.times(ctx, tangents[1], a, out_shape))
    # each term broadcasts a against b, i.e. already has the output's shape
    return [emit.total(ctx, terms)]


@vjp_rule("Div")
def div_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """y = a / b: ga = g / b, gb = -(g / b) y."""
    g, (a, b), out_shape = grads[0], node.input[:2], ctx.shape(node.output[0])
    quotient = forms.divided(ctx, g, b, out_shape)
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


# ------------------------------------------------------------------------------------------------ Pow


def _pow_base_derivative(ctx: RuleContext, node: NodeProto) -> tuple[str, tuple[int, ...]]:
    """(d a^b / da = b a^(b-1), its shape), simplified for the constant exponents exports use."""
    a, b, y = node.input[0], node.input[1], node.output[0]
    exponent = ctx.value(b)
    if exponent is not None and exponent.size == 1:
        p = float(exponent.reshape(()))
        if p == 2.0:
            return _mul(ctx, a, emit.scalar(ctx, 2.0, a)), ctx.shape(a)
        if p == 1.0:
            return emit.scalar(ctx, 1.0, a), ()
        if p == 0.5:
            return ctx.emit1("Div", [emit.scalar(ctx, 0.5, y), y]), ctx.shape(y)
        power = ctx.emit1("Pow", [a, emit.scalar(ctx, p - 1.0, a)])
        return _mul(ctx, power, emit.scalar(ctx, p, a)), ctx.shape(a)
    shape = emit.broadcast_shape(ctx.shape(a), ctx.shape(b))
    if exponent is not None:
        dtype = np.dtype(ctx.dtype(a))
        power = ctx.emit1("Pow", [a, ctx.const(np.asarray(exponent - 1, dtype=dtype))])
        return _mul(ctx, power, ctx.const(np.asarray(exponent, dtype=dtype))), shape
    b_float = emit.cast(ctx, b, emit.elem_type(ctx, a))
    power = ctx.emit1("Pow", [a, ctx.emit1("Sub", [b_float, emit.scalar(ctx, 1.0, a)])])
    return _mul(ctx, b_float, power), shape


def _pow_exponent_derivative(ctx: RuleContext, node: NodeProto) -> str:
    """d a^b / db = y log(a) (defined for a > 0); 0 where a = 0 (y is 0 there for b > 0, as torch has it).

    log is taken of a + [a = 0], which is 1 (log 0) where a = 0, so 0 x (-inf) never makes a NaN.
    """
    a, y = node.input[0], node.output[0]
    zero_base = emit.mask(ctx, emit.equal(ctx, a, emit.scalar(ctx, 0.0, a)), a)
    return _mul(ctx, y, ctx.emit1("Log", [ctx.emit1("Add", [a, zero_base])]))


def _check_pow_exponent(ctx: RuleContext, node: NodeProto) -> None:
    b = node.input[1]
    if ctx.needs_grad(b) and emit.elem_type(ctx, b) not in _FLOAT_ELEM_TYPES:
        raise emit.unsupported(ctx, node, f"its exponent {b!r} is an integer tensor that depends on the input")


@vjp_rule("Pow")
def pow_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    g, (a, b), out_shape = grads[0], node.input[:2], ctx.shape(node.output[0])
    _check_pow_exponent(ctx, node)
    ga = gb = None
    if ctx.needs_grad(a):
        ga = ctx.unbroadcast(_mul(ctx, g, _pow_base_derivative(ctx, node)[0]), a, out_shape)
    if ctx.needs_grad(b):
        gb_full = _mul(ctx, g, _pow_exponent_derivative(ctx, node))
        gb_typed = emit.cast(ctx, gb_full, emit.elem_type(ctx, b), emit.elem_type(ctx, a))
        gb = ctx.unbroadcast(gb_typed, b, out_shape)
    return [ga, gb]


@jvp_rule("Pow")
def pow_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    _check_pow_exponent(ctx, node)
    a, b = node.input[:2]
    terms = []
    if tangents[0] is not None:
        derivative, shape = _pow_base_derivative(ctx, node)
        term = _mul(ctx, tangents[0], derivative)
        terms.append(_to_output(ctx, node, term, emit.broadcast_shape(ctx.shape(a), shape)))
    if tangents[1] is not None:
        tb = emit.cast(ctx, tangents[1], emit.elem_type(ctx, a), emit.elem_type(ctx, b))
        terms.append(_mul(ctx, tb, _pow_exponent_derivative(ctx, node)))  # y has the output's shape
    return [emit.total(ctx, terms)]


# ------------------------------------------------------------------------------- variadic Sum/Mean/...


def _variadic_vjp(ctx: RuleContext, node: NodeProto, g: str, scale: float) -> Names:
    out_shape = ctx.shape(node.output[0])
    scaled = g if scale == 1.0 else _mul(ctx, g, emit.scalar(ctx, scale, node.output[0]))
    return [ctx.unbroadcast(scaled, name, out_shape) if ctx.needs_grad(name) else None for name in node.input]


def _variadic_jvp(ctx: RuleContext, node: NodeProto, tangents: Names, scale: float) -> str:
    present = [(t, name) for t, name in zip(tangents, node.input, strict=True) if t is not None]
    total = present[0][0] if len(present) == 1 else ctx.emit1("Sum", [t for t, _ in present])
    if scale != 1.0:
        total = _mul(ctx, total, emit.scalar(ctx, scale, node.output[0]))
    return _to_output(ctx, node, total, emit.broadcast_shape(*(ctx.shape(name) for _, name in present)))


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
    return emit.mask(ctx, emit.equal(ctx, name, y), y)


@vjp_rule("Max", "Min")
def extremum_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """The gradient goes to the first input that attains the max/min (ties: the first one wins)."""
    g, y = grads[0], node.output[0]
    out_shape = ctx.shape(y)
    needed = [i for i, name in enumerate(node.input) if ctx.needs_grad(name)]
    result: Names = emit.nothing(node)
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
    zero = emit.scalar(ctx, 0.0, y)
    total = tangents[-1] if tangents[-1] is not None else zero
    for i in range(len(node.input) - 2, -1, -1):
        chosen = tangents[i] if tangents[i] is not None else zero
        total = forms.select(ctx, _attains(ctx, node.input[i], y), chosen, total)
    # selecting by an output-shaped mask gives the output's shape; a single input is the output itself
    return [total]


# ---------------------------------------------------------------------------- Where, Dropout, Cast


@vjp_rule("Where", differentiable=(1, 2))
def where_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """ga = g [condition], gb = g [not condition] = g - ga (each reduced to its operand's shape)."""
    g, (condition, a, b) = grads[0], node.input
    out_shape = ctx.shape(node.output[0])
    chosen = emit.mask(ctx, condition, node.output[0])
    ga_full = _mul(ctx, g, chosen) if ctx.needs_grad(a) or ctx.needs_grad(b) else None
    ga = ctx.unbroadcast(ga_full, a, out_shape) if ctx.needs_grad(a) else None
    gb = ctx.unbroadcast(ctx.emit1("Sub", [g, ga_full]), b, out_shape) if ctx.needs_grad(b) else None
    return [None, ga, gb]


@jvp_rule("Where")
def where_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    condition, a, b = node.input
    chosen = emit.mask(ctx, condition, node.output[0])
    ta, tb = tangents[1], tangents[2]
    if tb is None:
        selected = _mul(ctx, ta, chosen)
    elif ta is None:
        selected = ctx.emit1("Sub", [tb, _mul(ctx, tb, chosen)])
    else:
        selected = forms.select(ctx, chosen, ta, tb)
    shapes = [ctx.shape(condition)] + [ctx.shape(n) for n, t in ((a, ta), (b, tb)) if t is not None]
    return [_to_output(ctx, node, selected, emit.broadcast_shape(*shapes))]


def _check_dropout_inference(ctx: RuleContext, node: NodeProto) -> None:
    training = emit.optional_input(node, 2)
    if training:
        value = ctx.value(training)
        if value is None or bool(np.asarray(value).reshape(-1)[0]):
            raise emit.unsupported(ctx, node, "it runs in training mode (random masks); export in eval mode")


@vjp_rule("Dropout", differentiable=(0, 1))
def dropout_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Inference-mode Dropout is the identity; its mask output carries no gradient. The ratio is on the
    path (when computed from the input) so that training mode is refused there too, not called constant."""
    _check_dropout_inference(ctx, node)
    return emit.padded([grads[0]], len(node.input))


@jvp_rule("Dropout")
def dropout_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    _check_dropout_inference(ctx, node)
    return emit.padded([tangents[0]], len(node.output))


def _cast_types(ctx: RuleContext, node: NodeProto) -> tuple[int, int]:
    """(source, target) element types of a Cast/CastLike; raises unless both are floating point."""
    source = emit.elem_type(ctx, node.input[0])
    target = int(ctx.attr(node, "to")) if node.op_type == "Cast" else emit.elem_type(ctx, node.input[1])
    for elem, role in ((source, "converts from"), (target, "converts to")):
        if elem not in _FLOAT_ELEM_TYPES:
            from onnx import helper

            type_name = helper.tensor_dtype_to_string(elem).removeprefix("TensorProto.").lower()
            raise emit.unsupported(
                ctx, node, f"it {role} the non-float type {type_name}, through which no gradient can flow",
                where="on the float side of it",
            )
    return source, target



@vjp_rule("Cast", "CastLike", differentiable=(0,))
def cast_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    source, target = _cast_types(ctx, node)
    return emit.padded([emit.cast(ctx, grads[0], source, target)], len(node.input))


@jvp_rule("Cast", "CastLike")
def cast_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    source, target = _cast_types(ctx, node)
    return [emit.cast(ctx, tangents[0], target, source)]
