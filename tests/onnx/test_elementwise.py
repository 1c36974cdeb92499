"""Property tests of the elementwise, activation, Softmax, LayerNormalization, MatMul/Gemm, Where, Cast,
Dropout and variadic rules (backends/onnx/rules: pointwise, arithmetic, softmax, normalisation, matmul).

Each test builds a one- or few-node model with random shapes and attributes and checks its VJP and JVP
graphs with ``assert_gradients_match``: central finite differences of the ORIGINAL model run by
onnxruntime, and <J u, v> = <u, J^T v>. Models are float64 wherever onnxruntime's CPU kernel has a
double implementation, float32 (looser tolerance) elsewhere. Inputs live on lattices offset from every
kink (Relu at 0, Clip bounds, HardSwish at +-3, ...) by more than the finite-difference step.
"""

from __future__ import annotations

import numpy as np
import pytest
from harness import assert_gradients_match, make_model, run_vjp
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from gradsal.backends.onnx._graph import build_gradient_model
from gradsal.core.errors import UnsupportedOperatorError

F32, F64 = np.float32, np.float64
OPSETS = [11, 13, 17]
SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


def values(shape, dtype, low: float = -2.0, high: float = 2.0, *, step: float = 0.2, offset: float = 0.1):
    """Arrays of ``low + offset + step k``: by default 0.1 away from every multiple of 0.2 (where the
    tests put kinks), more than the harness's float32 finite-difference step (0.01 max(1, |x|) times a
    normal tangent entry) for |x| <= 2."""
    count = max(1, round((high - low) / step))
    ints = hnp.arrays(np.int64, shape, elements=st.integers(0, count - 1))
    return ints.map(lambda k: np.asarray(low + offset + step * k, dtype=dtype))


def nonzero(shape, dtype, low: float = 0.3, high: float = 2.0):
    """Arrays whose entries have magnitude in [low, high] and a random sign (denominators, Abs...)."""
    signs = hnp.arrays(np.bool_, shape)
    pairs = st.tuples(values(shape, dtype, low, high), signs)
    return pairs.map(lambda p: np.where(p[1], -p[0], p[0]).astype(dtype))


def at_least_1d(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The harness feeds the differentiated input as an array, so it is never 0-d (constants may be)."""
    return shape or (1,)


def node(op: str, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def check(nodes, x, *, initializers=None, opset=17, outputs=("y",), **kwargs):
    model = make_model(nodes, {"x": x}, list(outputs), initializers=initializers, opset=opset)
    assert_gradients_match(model, x, **kwargs)


# ------------------------------------------------------------------------------ unary elementwise ops

# op, dtype (float64 where onnxruntime has a double kernel), value range, opsets
UNARY = [
    ("Neg", F64, (-2, 2), OPSETS),
    ("Identity", F64, (-2, 2), OPSETS),
    ("Exp", F64, (-2, 2), OPSETS),
    ("Log", F64, (0.1, 3), OPSETS),
    ("Sqrt", F64, (0.1, 3), OPSETS),
    ("Reciprocal", F64, "nonzero", OPSETS),
    ("Abs", F64, "nonzero", OPSETS),
    ("Relu", F64, (-2, 2), OPSETS),
    ("Relu", F32, (-2, 2), OPSETS),  # float32 takes another mask (HardSigmoid) than float64
    ("Sigmoid", F64, (-4, 4), OPSETS),
    ("Tanh", F64, (-3, 3), OPSETS),
    ("Sin", F64, (-3, 3), OPSETS),
    ("Cos", F64, (-3, 3), OPSETS),
    ("Erf", F32, (-2, 2), OPSETS),
    ("Softplus", F32, (-3, 3), OPSETS),
    ("Softsign", F32, (-3, 3), OPSETS),
    ("HardSwish", F32, "hard_swish", [14, 17]),
]


@pytest.mark.parametrize(("op", "dtype", "domain", "opsets"), UNARY,
                         ids=[f"{u[0]}-{np.dtype(u[1]).name}" for u in UNARY])
@given(data=st.data())
def test_unary(op, dtype, domain, opsets, data):
    shape = data.draw(SHAPES)
    if domain == "nonzero":
        x = data.draw(nonzero(shape, dtype))
    elif domain == "hard_swish":  # kinks at +-3; 0.25 away, beyond the float32 step at |x| ~ 3.5
        x = data.draw(values(shape, dtype, -3.5, 3.5, step=0.5, offset=0.25))
    else:
        x = data.draw(values(shape, dtype, *domain))
    check([node(op, ["x"])], x, opset=data.draw(st.sampled_from(opsets)))


@given(data=st.data())
def test_hard_swish_feature_map(data):
    """Rank-4 float32 HardSwish, whose forward the VJP graph rewrites as x HardSigmoid(x) to share the
    HardSigmoid; against finite differences (VJP and JVP), off the kinks at +-3."""
    spatial = data.draw(SHAPES.filter(lambda s: len(s) == 2))
    shape = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 4)), *spatial)
    x = data.draw(values(shape, F32, -3.5, 3.5, step=0.5, offset=0.25))
    check([node("HardSwish", ["x"])], x, opset=data.draw(st.sampled_from([14, 17])))


@pytest.mark.parametrize("op", ["LeakyRelu", "Elu", "Selu", "Celu"])
@given(data=st.data())
def test_activations_with_attributes(op, data):
    """Random alpha (negative too where the formula allows) and gamma (Selu); kink at 0 kept away from."""
    alpha = data.draw(st.floats(0.05, 2.0))
    if op in ("LeakyRelu", "Elu"):
        alpha *= data.draw(st.sampled_from([-1.0, 1.0]))
    attrs = {"alpha": alpha}
    if op == "Selu":
        attrs["gamma"] = data.draw(st.floats(0.5, 2.0))
    opset = data.draw(st.sampled_from([12, 13, 17] if op == "Celu" else OPSETS))
    dtype = F64 if op == "LeakyRelu" and opset >= 16 else F32  # the others have float kernels only
    x = data.draw(values(data.draw(SHAPES), dtype))
    check([node(op, ["x"], **attrs)], x, opset=opset)


@given(data=st.data())
def test_hard_sigmoid(data):
    alpha, beta = data.draw(st.floats(0.2, 1.0)), data.draw(st.floats(0.0, 1.0))
    # draw z = alpha x + beta 0.1 off the kinks z = 0 and z = 1, then solve for x
    z = data.draw(values(data.draw(SHAPES), F64, -0.6, 1.6))
    x = ((z - beta) / alpha).astype(F32)
    check([node("HardSigmoid", ["x"], alpha=alpha, beta=beta)], x, opset=data.draw(st.sampled_from(OPSETS)))


@given(data=st.data())
def test_gelu(data):
    approximate = data.draw(st.sampled_from(["none", "tanh"]))
    dtype = F64 if approximate == "tanh" else F32  # exact Gelu needs Erf, which has no double kernel
    x = data.draw(values(data.draw(SHAPES), dtype, -3, 3))
    check([node("Gelu", ["x"], approximate=approximate)], x, opset=data.draw(st.sampled_from([20, 21])))


# ------------------------------------------------------------------------------------------- Relu rules


def _relu_chain(x_shape, dtype, data):
    """x -> Mul(c) -> Relu -> Mul(d) -> y, so the Relu rule acts on a non-trivial cotangent."""
    c = data.draw(nonzero(x_shape, dtype))
    d = data.draw(nonzero(x_shape, dtype))
    nodes = [node("Mul", ["x", "c"], ["h"]), node("Relu", ["h"], ["r"]), node("Mul", ["r", "d"])]
    return make_model(nodes, {"x": np.zeros(x_shape, dtype)}, ["y"], {"c": c, "d": d}), c, d


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
@given(data=st.data())
def test_relu_modified_rules_match_numpy(rule, dtype, data):
    """Guided backprop passes relu(g) where the Relu's input > 0; deconvnet passes relu(g) everywhere.
    The reference is the rule computed by hand in NumPy (finite differences give the standard one)."""
    shape = data.draw(SHAPES)
    model, c, d = _relu_chain(shape, dtype, data)
    x = data.draw(values(shape, dtype))
    v = data.draw(values(shape, dtype, -2, 2, step=0.25, offset=0.125))
    y, g = run_vjp(model, x, v, relu_rule=rule)
    passed = np.maximum(v * d, 0.0)  # the cotangent reaching the Relu's output, made non-negative
    if rule == "guided":
        passed = passed * (x * c > 0)
    tolerance = 1e-12 if dtype == F64 else 1e-6
    np.testing.assert_allclose(g, passed * c, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(y, np.maximum(x * c, 0) * d, rtol=tolerance)


# -------------------------------------------------------------------------------------------------- Clip


@given(data=st.data())
def test_clip(data):
    """Bounds as attributes (opset < 11) or optional inputs (11+, either may be omitted)."""
    opset = data.draw(st.sampled_from([10, 11, 12, 13, 17]))
    dtype = F64 if opset >= 13 else F32  # Clip-6/11/12 have float kernels only
    low = data.draw(st.integers(-8, 0)) * 0.2
    high = low + data.draw(st.integers(1, 10)) * 0.2
    x = data.draw(values(data.draw(SHAPES), dtype))  # 0.1 off every multiple of 0.2
    if opset < 11:
        check([node("Clip", ["x"], min=low, max=high)], x, opset=opset)
        return
    use_low, use_high = data.draw(st.booleans()), data.draw(st.booleans())
    inputs = ["x", "low" if use_low else "", "high" if use_high else ""]
    while inputs[-1] == "":
        inputs.pop()
    initializers = {"low": np.array(low, dtype), "high": np.array(high, dtype)}
    initializers = {k: v for k, v in initializers.items() if k in inputs}
    check([node("Clip", inputs)], x, initializers=initializers, opset=opset)


@pytest.mark.parametrize("level", ["all", "none"])
def test_hard_sigmoid_mask_is_exact_at_both_kinks(level):
    """HardSigmoid(alpha=1/4, beta=1/2) between identity 1x1 Convs (float32, NCHW: the blocked-layout box
    mask). Powers of two make y = x/4 + 1/2 exact, so the gradient must be exactly alpha [0 < y < 1]: at
    y = 0 and y = 1 (x = -+2), one float32 inside and outside each, and far out."""
    import onnxruntime as ort

    f32 = np.float32
    kinks = [f32(-2), f32(2)]
    near = [np.nextafter(k, direction) for k in kinks for direction in (f32(-np.inf), f32(np.inf))]
    special = np.array([*kinks, *near, 0.0, 1.0, -1.0, -3.0, 3.0, 1e30, -1e30], np.float32)
    channels = 8
    x = np.resize(special, (2, channels, 5, 4)).astype(np.float32)
    x[1] = np.random.default_rng(0).uniform(-3, 3, x[1].shape)
    eye = np.eye(channels, dtype=np.float32).reshape(channels, channels, 1, 1)
    model = make_model(
        [node("Conv", ["x", "eye"], ["a"]), node("HardSigmoid", ["a"], ["b"], alpha=0.25, beta=0.5),
         node("Conv", ["b", "eye"], ["y"])],
        {"x": x}, ["y"], initializers={"eye": eye},
    )
    v = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    opt = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level == "all" else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    _, grad = run_vjp(model, x, v, level=opt)
    y = x / f32(4) + f32(0.5)  # exact in float32 for these inputs
    np.testing.assert_array_equal(grad, np.where((y > 0) & (y < 1), v * f32(0.25), 0).astype(np.float32))


@pytest.mark.parametrize("level", ["all", "none"])
def test_hard_swish_derivative_is_exact_at_the_kinks(level):
    """HardSwish between identity 1x1 Convs (float32, NCHW, the blocked-layout case): its [|x| < 3] is
    computed as [x^2 < 9] with a power-of-two slope. Checked against the closed form h + x/6 [|x| < 3]
    at +-3, one float32 either side of each, 0, a subnormal, and far out (where x^2 and the slope's
    product overflow)."""
    import onnxruntime as ort

    f32 = np.float32
    kinks = [f32(-3), f32(3)]
    near = [np.nextafter(k, direction) for k in kinks for direction in (f32(-np.inf), f32(np.inf))]
    tiny = np.nextafter(f32(0), f32(1))
    special = np.array([*kinks, *near, 0.0, tiny, -tiny, 1.5, -1.5, 1e5, -1e5, 3e9, -3e9, 1e30, -1e30],
                       np.float32)
    channels = 8
    x = np.resize(special, (2, channels, 5, 4)).astype(np.float32)
    x[1] = np.random.default_rng(0).uniform(-5, 5, x[1].shape)
    eye = np.eye(channels, dtype=np.float32).reshape(channels, channels, 1, 1)
    model = make_model(
        [node("Conv", ["x", "eye"], ["a"]), node("HardSwish", ["a"], ["b"]), node("Conv", ["b", "eye"], ["y"])],
        {"x": x}, ["y"], initializers={"eye": eye}, opset=14,
    )
    v = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    opt = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level == "all" else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    outputs, grad = run_vjp(model, x, v, level=opt)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    # the forward now computes HardSwish as x HardSigmoid(x), sharing the HardSigmoid with the VJP
    np.testing.assert_allclose(np.asarray(outputs), session.run(None, {"x": x})[0], rtol=1e-6, atol=0)
    wide = x.astype(np.float64)
    derivative = np.clip(wide / 6 + 0.5, 0, 1) + np.where(np.abs(wide) < 3, wide / 6, 0)
    np.testing.assert_allclose(grad, derivative * v, rtol=1e-6, atol=1e-6)  # the jumps at +-3 are 0.5


@pytest.mark.parametrize("high", [6.0, 1.0, 20.0, 255.0])
@pytest.mark.parametrize("level", ["all", "none"])
def test_relu6_mask_is_exact_at_both_bounds(high, level):
    """Clip(0, high) between identity 1x1 Convs (float32, NCHW: the blocked-layout case the two-pass
    mask is written for; 255 takes the three-pass form). Its gradient is exactly [0 < x < high],
    checked at 0, at high and one float32 either side of each bound; the two-pass form also at a
    subnormal (the three-pass form's steep step gives a fraction below 1e-30, as documented)."""
    import onnxruntime as ort

    from gradsal.backends.onnx.rules.forms import box_step_is_exact

    below_high = np.nextafter(np.float32(high), np.float32(0))
    above_high = np.nextafter(np.float32(high), np.float32(np.inf))
    tiny = np.nextafter(np.float32(0), np.float32(1)) if box_step_is_exact(high) else np.float32(1e-20)
    special = np.array([-1.0, -tiny, 0.0, tiny, 1e-30, 0.5, below_high, high, above_high, 2 * high],
                       np.float32)
    channels = 8
    x = np.resize(special, (2, channels, 5, 4)).astype(np.float32)
    x[1] = np.random.default_rng(0).uniform(-1, high + 1, x[1].shape)
    eye = np.eye(channels, dtype=np.float32).reshape(channels, channels, 1, 1)
    model = make_model(
        [node("Conv", ["x", "eye"], ["a"]), node("Clip", ["a", "low", "high"], ["b"]),
         node("Conv", ["b", "eye"], ["y"])],
        {"x": x}, ["y"],
        initializers={"eye": eye, "low": np.array(0.0, np.float32), "high": np.array(high, np.float32)},
    )
    v = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    opt = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level == "all" else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    _, grad = run_vjp(model, x, v, level=opt)
    np.testing.assert_array_equal(grad, np.where((x > 0) & (x < high), v, 0).astype(np.float32))


@given(data=st.data())
def test_clip_bounds_differentiable(data):
    """The input is a bound: Clip(c, b, hi) or Clip(c, lo, b) with a constant c and b = x . [1] (a
    scalar, as Clip wants, made from the 1-element input)."""
    which = data.draw(st.sampled_from(["low", "high"]))
    c = data.draw(values(data.draw(SHAPES), F64, -3, 3))
    x = np.array([data.draw(st.integers(-10, 10)) * 0.2])
    constants = {"low": np.array(-5.0), "high": np.array(5.0), "one": np.ones(1), "c": c}
    inputs = ["c", "b", "high"] if which == "low" else ["c", "low", "b"]
    initializers = {k: v for k, v in constants.items() if k in [*inputs, "one"]}
    opset = data.draw(st.sampled_from([13, 17]))
    nodes = [node("MatMul", ["x", "one"], ["b"]), node("Clip", inputs)]
    check(nodes, x, initializers=initializers, opset=opset)


# ---------------------------------------------------------------------------------------------- PRelu


@given(data=st.data())
def test_prelu(data):
    """Slope broadcast unidirectionally to x (e.g. (C, 1, 1) against (N, C, H, W)); x as data or slope."""
    x_shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=3))
    suffix = x_shape[len(x_shape) - data.draw(st.integers(0, len(x_shape))):]
    slope_shape = tuple(d if data.draw(st.booleans()) else 1 for d in suffix)
    opset = data.draw(st.sampled_from(OPSETS))
    dtype = F64 if opset >= 16 else F32  # PRelu's double kernel exists from opset 16
    data_values = data.draw(values(x_shape, dtype))
    slope = data.draw(values(slope_shape, dtype, -1, 1, step=0.05, offset=0.0))
    if data.draw(st.booleans()):
        check([node("PRelu", ["x", "slope"])], data_values, initializers={"slope": slope}, opset=opset)
    else:
        slope = slope.reshape(at_least_1d(slope.shape))
        check([node("PRelu", ["data", "x"])], slope, initializers={"data": data_values}, opset=opset)


# ---------------------------------------------------------------------------------- binary arithmetic


def _binary_forms(op, data, dtype=F64):
    """Yield (nodes, x, initializers) for the three forms x op c, c op x, and x against a broadcast
    function of itself (both operands differentiated), with random mutually broadcastable shapes."""
    sa, sb = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)
                       ).input_shapes
    positive = op == "Pow"
    draw = (lambda s: values(s, dtype, 0.3, 2.0)) if positive else (lambda s: nonzero(s, dtype))
    yield [node(op, ["x", "c"])], data.draw(draw(at_least_1d(sa))), {"c": data.draw(draw(sb))}
    yield [node(op, ["c", "x"])], data.draw(draw(at_least_1d(sb))), {"c": data.draw(draw(sa))}
    scale = data.draw(values(sb, dtype, 0.5, 1.5) if positive else nonzero(sb, dtype, 0.5, 1.5))
    order = ["x", "xk"] if data.draw(st.booleans()) else ["xk", "x"]
    nodes = [node("Mul", ["x", "k"], ["xk"]), node(op, order)]
    yield nodes, data.draw(draw(at_least_1d(sa))), {"k": scale}


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow"])
@given(data=st.data())
def test_binary_arithmetic(op, data):
    """Pow here has a differentiable base and/or exponent (positive base)."""
    opset = data.draw(st.sampled_from(OPSETS))
    for nodes, x, initializers in _binary_forms(op, data):
        check(nodes, x, initializers=initializers, opset=opset)


@pytest.mark.parametrize("op", ["Mul", "Div"])
@given(data=st.data())
def test_constant_factor_of_a_feature_map(op, data):
    """Mul/Div of a float32 NCHW tensor by a constant scalar or per-channel factor (Paddle's HardSwish
    x relu6(x + 3) / 6, exported scales): the VJP multiplies per channel (1/b for Div)."""
    spatial = data.draw(SHAPES.filter(lambda s: len(s) == 2))
    shape = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 5)), *spatial)
    x = data.draw(values(shape, F32))
    factor_shape = data.draw(st.sampled_from([(), (1,), (shape[1], 1, 1), (1, shape[1], 1, 1)]))
    factor = data.draw(nonzero(factor_shape, F32, 0.5, 1.5))
    order = ["x", "k"] if op == "Div" or data.draw(st.booleans()) else ["k", "x"]
    check([node(op, order)], x, initializers={"k": factor}, opset=data.draw(st.sampled_from(OPSETS)))


@pytest.mark.parametrize("kind", ["float", "int", "array"])
@given(data=st.data())
def test_pow_constant_exponent(kind, data):
    """Exponents as exports write them: scalar float (each special case) or int64 constants, or a
    broadcast array."""
    shape = data.draw(SHAPES)
    x = data.draw(values(shape, F64, 0.3, 2.0))
    opset = data.draw(st.sampled_from([12, 13, 17] if kind == "int" else OPSETS))  # mixed types from 12
    if kind == "float":
        exponent_shape = data.draw(st.sampled_from([(), (1,), (1, 1, 1, 1)]))
        exponents = [np.full(exponent_shape, p) for p in (2.0, 0.5, 1.0, -1.0, 3.0, -0.5, 1.7)]
    elif kind == "int":
        exponents = [np.array(p, dtype=np.int64) for p in (2, 3, 1, -2)]
    else:
        exponent_shape = data.draw(hnp.broadcastable_shapes(shape, max_dims=3, max_side=3))
        exponents = [data.draw(values(exponent_shape, F64, -2, 3))]
    for exponent in exponents:
        check([node("Pow", ["x", "p"])], x, initializers={"p": exponent}, opset=opset)


# ----------------------------------------------------------------------------------- variadic ops


def _lattice(shape, offset):
    ints = hnp.arrays(np.int64, shape, elements=st.integers(-20, 20))
    return ints.map(lambda k: np.asarray(0.1 * k + offset))


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
@given(data=st.data())
def test_variadic(op, data):
    """1 to 4 broadcasting operands, the input in one or several slots. Constants sit on a lattice 0.05
    away from the input's, so Max/Min never tie between the input and a constant."""
    count = data.draw(st.integers(1, 4))
    shapes = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=count, min_dims=0, max_dims=3, max_side=3)
                       ).input_shapes
    x_slots = data.draw(st.sets(st.integers(0, count - 1), min_size=1))
    x_shape = at_least_1d(shapes[min(x_slots)])
    dtype = F32 if op == "Mean" else F64  # Mean has no double kernel
    x = data.draw(_lattice(x_shape, 0.05)).astype(dtype)
    initializers = {f"c{i}": data.draw(_lattice(shapes[i], 0.0)).astype(dtype)
                    for i in range(count) if i not in x_slots}
    inputs = ["x" if i in x_slots else f"c{i}" for i in range(count)]
    check([node(op, inputs)], x, initializers=initializers, opset=data.draw(st.sampled_from(OPSETS)))


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_extremum_ties_go_to_the_first_input(op):
    """Max(c, x, x) with c == x in some places: the tie goes to c (the first), so x gets nothing there;
    elsewhere the first x slot gets it all (checked by hand, since finite differences are undefined)."""
    x = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]])
    sign = 1.0 if op == "Max" else -1.0
    c = np.array([[0.5, 3.0 * sign, 2.0], [-3.0 * sign, 0.0, 4.0 * sign]])  # ties at (0,0) (0,2) (1,1)
    model = make_model([node(op, ["c", "x", "x"])], {"x": x}, ["y"], {"c": c})
    v = np.arange(1.0, 7.0).reshape(2, 3)
    y, g = run_vjp(model, x, v)
    reduce = np.maximum if op == "Max" else np.minimum
    np.testing.assert_array_equal(y, reduce(c, x))
    x_wins = (x == y) & (c != y)
    np.testing.assert_array_equal(g, np.where(x_wins, v, 0.0))


# ------------------------------------------------------------------------------------------------ Where


@given(data=st.data())
def test_where(data):
    """Condition broadcast against both branches; the input in the first branch, the second, or both."""
    sc, sa, sb = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, max_side=3)
                           ).input_shapes
    condition = data.draw(hnp.arrays(np.bool_, sc))
    opset = data.draw(st.sampled_from(OPSETS))
    forms = [
        ([node("Where", ["cond", "x", "c"])], at_least_1d(sa), {"c": data.draw(values(sb, F64))}),
        ([node("Where", ["cond", "c", "x"])], at_least_1d(sb), {"c": data.draw(values(sa, F64))}),
        ([node("Mul", ["x", "k"], ["xk"]), node("Where", ["cond", "x", "xk"])], at_least_1d(sa),
         {"k": data.draw(values(sb, F64))}),
    ]
    for nodes, x_shape, initializers in forms:
        x = data.draw(values(x_shape, F64))
        check(nodes, x, initializers={"cond": condition, **initializers}, opset=opset)


# ---------------------------------------------------------------------------------- Softmax family


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@given(data=st.data())
def test_softmax(op, data):
    """Before opset 13 the op spans every axis from `axis` (default 1) on; from 13 the one `axis`
    (default -1)."""
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=3))
    opset = data.draw(st.sampled_from([11, 12, 13, 17]))
    rank = len(shape)
    attrs = {}
    if data.draw(st.booleans()):
        attrs["axis"] = data.draw(st.integers(-rank, rank - 1))
    elif opset < 13 and rank < 2:
        attrs["axis"] = 0  # the default axis 1 needs rank >= 2
    x = data.draw(values(shape, F64, -3, 3, step=0.05))
    check([node(op, ["x"], **attrs)], x, opset=opset)


# -------------------------------------------------------------------------------- LayerNormalization


@given(data=st.data())
def test_layer_normalization(data):
    """Differentiated wrt X, Scale and B in turn; random axis and epsilon, B optional (not for B)."""
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4))
    rank = len(shape)
    axis = data.draw(st.integers(-rank, rank - 1))
    normalized = shape[axis:]
    epsilon = data.draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    opset = data.draw(st.sampled_from([17, 18]))  # ReduceMean takes its axes as an input from 18
    arrays = {
        "X": data.draw(hnp.arrays(F64, shape, elements=st.floats(-3, 3), unique=True)),
        "S": data.draw(values(normalized, F64, -2, 2)),
        "B": data.draw(values(normalized, F64, -1, 1)),
    }
    with_bias = data.draw(st.booleans())
    for role in ("X", "S", "B"):
        names = ["X", "S", "B"] if with_bias or role == "B" else ["X", "S"]
        inputs = ["x" if role == name else name for name in names]
        initializers = {name: a for name, a in arrays.items() if name in inputs}
        check([node("LayerNormalization", inputs, axis=axis, epsilon=epsilon)], arrays[role],
              initializers=initializers, opset=opset)


@pytest.mark.parametrize("output", ["mean", "inv_std"])
@given(data=st.data())
def test_layer_normalization_statistics_outputs(output, data):
    """The optional Mean and InvStdDev outputs (float32: onnxruntime stores them in float32)."""
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=3, max_side=4))
    axis = data.draw(st.integers(1, len(shape) - 1))
    x = data.draw(hnp.arrays(F32, shape, elements=st.floats(-3, 3, width=32), unique=True))
    scale = np.ones(shape[axis:], F32)
    nodes = [node("LayerNormalization", ["x", "s"], ["y", "mean", "inv_std"], axis=axis, epsilon=0.1)]
    model = make_model(nodes, {"x": x}, ["y", "mean", "inv_std"], {"s": scale}, opset=17)
    assert_gradients_match(model, x, output_name=output)


# --------------------------------------------------------------------------------------- MatMul, Gemm


@given(data=st.data())
def test_matmul(data):
    """N-D batched broadcasting and 1-D operands; the input as A, as B, and as both (x @ x)."""
    batch_a, batch_b = data.draw(
        hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3)).input_shapes
    n, k, m = (data.draw(st.integers(1, 3)) for _ in range(3))
    a_shape = (k,) if data.draw(st.booleans()) else (*batch_a, n, k)
    b_shape = (k,) if data.draw(st.booleans()) else (*batch_b, k, m)
    opset = data.draw(st.sampled_from([10, *OPSETS]))
    a, b = data.draw(values(a_shape, F64)), data.draw(values(b_shape, F64))
    check([node("MatMul", ["x", "c"])], a, initializers={"c": b}, opset=opset)
    check([node("MatMul", ["c", "x"])], b, initializers={"c": a}, opset=opset)
    square = data.draw(values((*a_shape[:-1], a_shape[-2] if len(a_shape) > 1 else k), F64))
    check([node("MatMul", ["x", "x"])], square, opset=opset)


@given(data=st.data())
def test_gemm(data):
    """transA/transB, alpha/beta, C optional and broadcast; the input as A, B and C in turn."""
    m, k, n = (data.draw(st.integers(1, 3)) for _ in range(3))
    trans_a, trans_b = data.draw(st.integers(0, 1)), data.draw(st.integers(0, 1))
    c_shape = data.draw(st.sampled_from([None, (), (n,), (1, n), (m, 1), (m, n), (1, 1)]))
    opset = data.draw(st.sampled_from([10, *OPSETS]))
    if opset < 11 and c_shape is None:
        c_shape = (n,)  # C is required before opset 11
    alpha, beta = data.draw(st.sampled_from([0.5, -2.0, 1.0])), data.draw(st.sampled_from([3.0, -0.5, 1.0]))
    attrs = {"transA": trans_a, "transB": trans_b, "alpha": alpha, "beta": beta}
    arrays = {"A": data.draw(values((k, m) if trans_a else (m, k), F64)),
              "B": data.draw(values((n, k) if trans_b else (k, n), F64))}
    if c_shape is not None:
        arrays["C"] = data.draw(values(c_shape, F64))
    for role in [n for n in sorted(arrays) if arrays[n].ndim]:  # the input is never 0-d
        inputs = ["x" if name == role else name for name in sorted(arrays)]
        initializers = {name: a for name, a in arrays.items() if name != role}
        check([node("Gemm", inputs, **attrs)], arrays[role], initializers=initializers, opset=opset)
    # the input as A (then B) and, through a second Gemm, also as C: tangents of two inputs at once
    opset = max(opset, 11)  # the inner Gemm has no C
    c_from_a = node("Gemm", ["x", "E"], ["xc"], transA=trans_a)
    inits = {"E": data.draw(values((k, n), F64)), "B": arrays["B"]}
    check([c_from_a, node("Gemm", ["x", "B", "xc"], **attrs)], arrays["A"], initializers=inits, opset=opset)
    c_from_b = node("Gemm", ["E", "x"], ["xc"], transB=trans_b)
    inits = {"E": data.draw(values((m, k), F64)), "A": arrays["A"]}
    check([c_from_b, node("Gemm", ["A", "x", "xc"], **attrs)], arrays["B"], initializers=inits, opset=opset)


# -------------------------------------------------------------------------- Identity, Dropout, Cast


@given(data=st.data())
def test_dropout_inference(data):
    """Dropout-10 (ratio attribute) and 12+ (ratio, training_mode inputs); the mask output is unused."""
    opset = data.draw(st.sampled_from(OPSETS))
    x = data.draw(values(data.draw(SHAPES), F64))
    with_mask = data.draw(st.booleans())
    outputs = ["d", "mask"] if with_mask else ["d"]
    if opset < 12:
        dropout = node("Dropout", ["x"], outputs, ratio=0.3)
        initializers = {}
    else:
        dropout = node("Dropout", ["x", "ratio", "training"], outputs)
        initializers = {"ratio": np.array(0.3, F64), "training": np.array(False)}
    check([dropout, node("Sin", ["d"])], x, initializers=initializers, opset=opset)


def test_dropout_in_training_mode_is_refused():
    x = np.ones((2, 3))
    nodes = [node("Dropout", ["x", "ratio", "training"], ["y"])]
    model = make_model(nodes, {"x": x}, ["y"], {"ratio": np.array(0.5), "training": np.array(True)}, opset=13)
    with pytest.raises(UnsupportedOperatorError, match="training mode"):
        build_gradient_model(model, x.shape, input_name="x", output_name="y")


@given(data=st.data())
def test_cast_between_float_types(data):
    """float32 -> float64 (and CastLike), then a smooth op in double."""
    x = data.draw(values(data.draw(SHAPES), F32))
    op = data.draw(st.sampled_from(["Cast", "CastLike"]))
    if op == "Cast":
        cast, initializers = node("Cast", ["x"], ["x64"], to=TensorProto.DOUBLE), {}
    else:
        cast, initializers = node("CastLike", ["x", "like"], ["x64"]), {"like": np.zeros((), F64)}
    opset = data.draw(st.sampled_from([15, 17] if op == "CastLike" else OPSETS))
    check([cast, node("Sin", ["x64"])], x, initializers=initializers, opset=opset)


def _refused_in_both_modes(model, x, match):
    for mode in ("vjp", "jvp"):
        with pytest.raises(UnsupportedOperatorError, match=match):
            build_gradient_model(model, x.shape, input_name="x", output_name="y", mode=mode)


@pytest.mark.parametrize("to", [TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL])
def test_cast_through_non_float_type_is_refused(to):
    x = np.linspace(-2, 2, 6).reshape(2, 3)
    nodes = [node("Cast", ["x"], ["i"], to=to), node("Cast", ["i"], ["y"], to=TensorProto.DOUBLE)]
    _refused_in_both_modes(make_model(nodes, {"x": x}, ["y"]), x, "non-float type")


def test_cast_from_integer_input_is_refused():
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    model = make_model([node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], {"x": x}, ["y"])
    _refused_in_both_modes(model, x, "non-float type int64")


# ------------------------------------------------------------------------------------------------ Einsum


@st.composite
def einsum_problems(draw):
    """(equation, operand shapes): 1 to 3 operands over labels a-d (no label repeated inside an operand),
    an explicit or implicit output, optionally a leading ``...`` of broadcasting batch axes."""
    sizes = dict(zip("abcd", draw(st.lists(st.integers(1, 3), min_size=4, max_size=4)), strict=True))
    count = draw(st.integers(1, 3))
    terms = ["".join(draw(st.lists(st.sampled_from("abcd"), min_size=1, max_size=3, unique=True)))
             for _ in range(count)]
    explicit = draw(st.booleans())
    used = sorted(set("".join(terms)))
    output = "".join(draw(st.permutations(used))[: draw(st.integers(0, len(used)))])
    batch = [()] * count
    if draw(st.booleans()):
        shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=count, min_dims=1, max_dims=2, max_side=3))
        rank = max(len(b) for b in shapes.input_shapes)  # onnxruntime wants every `...` equally long
        batch = [(1,) * (rank - len(b)) + tuple(b) for b in shapes.input_shapes]
        cut = [draw(st.integers(0, len(t))) for t in terms]  # where `...` sits in each term
        terms = [t[:k] + "..." + t[k:] for t, k in zip(terms, cut, strict=True)]
        k = draw(st.integers(0, len(output)))  # onnxruntime wants `...` in the output too
        output = output[:k] + "..." + output[k:]
    equation = ",".join(terms) + ("->" + output if explicit else "")
    shapes = []
    for b, term in zip(batch, terms, strict=True):
        head, _, tail = term.partition("...")
        shapes.append((*(sizes[c] for c in head), *b, *(sizes[c] for c in tail)))
    return equation, shapes


@given(problem=einsum_problems(), data=st.data())
def test_einsum(problem, data):
    """Each operand in turn is the input (the others constants), and all operands are the input when
    their shapes allow; implicit outputs, summed-away labels and broadcast `...` included."""
    equation, shapes = problem
    operands = [data.draw(values(shape, F64)) for shape in shapes]
    names = [f"c{i}" for i in range(len(shapes))]
    for i in range(len(shapes)):
        inputs = ["x" if j == i else name for j, name in enumerate(names)]
        initializers = {name: a for j, (name, a) in enumerate(zip(names, operands, strict=True)) if j != i}
        check([node("Einsum", inputs, equation=equation)], operands[i], initializers=initializers, opset=12)


@given(data=st.data())
def test_einsum_same_input_in_every_operand(data):
    """Einsum(x, x[, x]) with each term a permutation of the same labels (e.g. "ij,ji->i")."""
    rank, count = data.draw(st.integers(1, 3)), data.draw(st.integers(2, 3))
    terms = ["".join(data.draw(st.permutations("abc"[:rank]))) for _ in range(count)]
    output = "".join(data.draw(st.permutations("abc"[:rank]))[: data.draw(st.integers(0, rank))])
    x = data.draw(values((data.draw(st.integers(1, 3)),) * rank, F64))
    check([node("Einsum", ["x"] * count, equation=",".join(terms) + "->" + output)], x, opset=17)


def test_einsum_diagonal_operand_is_refused():
    x = np.ones((3, 3))
    model = make_model([node("Einsum", ["x"], equation="ii->i")], {"x": x}, ["y"], opset=12)
    _refused_in_both_modes_vjp_only(model, x)


def _refused_in_both_modes_vjp_only(model, x):
    with pytest.raises(UnsupportedOperatorError, match="repeats a label"):
        build_gradient_model(model, x.shape, input_name="x", output_name="y", mode="vjp")
