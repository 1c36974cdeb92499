"""The onnxruntime-friendly forms of rules/forms.py against their plain definitions.

Each test builds a small model whose gradient graph uses one form, builds that graph twice, normally and
under ``forms.plain()``, runs both in onnxruntime (all graph optimisations on, as users run them) and
compares the results as the form's docstring promises: bit for bit where it says exact, to rounding where
it says so, and with the documented difference at a kink. Each test also checks that the two graphs differ
in the nodes that make the fast form (so that a graph is never compared with itself). Float32 rank-4
models sit between identity 1x1 Convs where the fast form is meant for onnxruntime's blocked layout, and
hold the edge values: exact zeros, the bounds of Clip/ReLU6/HardSigmoid, |x| = 3 for HardSwish, and the
float32 numbers either side of each. The rules' own finite-difference checks are in test_elementwise.py.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from harness import make_model
from onnx import helper

from gradsal.backends.onnx._graph import build_gradient_model
from gradsal.backends.onnx.rules import forms

F32 = np.float32
CHANNELS = 8


@dataclass
class Built:
    output: np.ndarray
    gradient: np.ndarray
    ops: Counter[str]
    constant_shapes: list[tuple[int, ...]]  # of the float32 initializers, sorted


def fast_and_plain(model: onnx.ModelProto, x: np.ndarray, seed: np.ndarray, mode: str = "vjp") -> list[Built]:
    """The graph built normally, then under ``forms.plain()``: each run at ``x`` with ``seed``."""
    results = []
    for context in (contextlib.nullcontext(), forms.plain()):
        with context:
            built = build_gradient_model(model, x.shape, input_name="x", output_name="y", mode=mode)
        onnx.checker.check_model(built.model, full_check=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(built.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        output, gradient = session.run([built.output_name, built.result_name],
                                       {built.input_name: x, built.seed_name: seed})
        floats = [i for i in built.model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
        constants = sorted(tuple(i.dims) for i in floats)
        results.append(Built(output, gradient, Counter(n.op_type for n in built.model.graph.node), constants))
    return results


def node(op: str, inputs, outputs=("y",), **attrs) -> onnx.NodeProto:
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def between_convs(op_nodes, initializers=None, x_shape=(2, CHANNELS, 5, 4)) -> onnx.ModelProto:
    """identity Conv -> ``op_nodes`` (reading "a", writing "b") -> identity Conv: float32 NCHW."""
    eye = np.eye(CHANNELS, dtype=F32).reshape(CHANNELS, CHANNELS, 1, 1)
    nodes = [node("Conv", ["x", "eye"], ["a"]), *op_nodes, node("Conv", ["b", "eye"], ["y"])]
    return make_model(nodes, {"x": np.zeros(x_shape, F32)}, ["y"], initializers={"eye": eye, **(initializers or {})})


def edge_values(special, shape=(2, CHANNELS, 5, 4), low=-4.0, high=4.0, seed=0) -> np.ndarray:
    """``special`` repeated over the first sample, uniform values in [low, high] in the others."""
    x = np.resize(np.asarray(special, F32), shape).astype(F32)
    x[1:] = np.random.default_rng(seed).uniform(low, high, x[1:].shape)
    return x


def around(*points: float) -> list[float]:
    """Each point and the float32 numbers just below and above it."""
    out = []
    for p in points:
        p32 = F32(p)
        out += [np.nextafter(p32, F32(-np.inf)), p32, np.nextafter(p32, F32(np.inf))]
    return [float(v) for v in out]


def cotangent(shape, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


# ------------------------------------------------------------------------------------------ steps


def test_step_of_relu_equals_the_comparison_outside_its_documented_band():
    """Relu's [y > 0]: HardSigmoid(1e30 y) equals Cast(y > 0) except for 0 < y < 1e-30 (a fraction there)."""
    tiny = float(np.nextafter(F32(0), F32(1)))
    x = edge_values([*around(0.0), -1.0, 1.0, 1e-31, tiny, 1e-29, 3.0])
    model = between_convs([node("Relu", ["a"], ["b"])])
    v = cotangent(x.shape)
    fast, plain = fast_and_plain(model, x, v)
    assert fast.ops["HardSigmoid"] >= 1 and plain.ops["HardSigmoid"] == 0 and plain.ops["Greater"] >= 1
    np.testing.assert_array_equal(plain.gradient, np.where(x > 0, v, 0))
    band = (x > 0) & (x < 1e-30)
    assert band.any()
    np.testing.assert_array_equal(fast.gradient[~band], plain.gradient[~band])
    assert np.all(np.abs(fast.gradient[band]) <= np.abs(v[band]))


def test_exact_step_of_hard_swish_decides_three_exactly():
    """HardSwish's slope h + x/6 [|x| < 3]: the fast mask [x^2 < 9] (2^100-slope HardSigmoid) is the plain
    [|x| < 3] exactly, at +-3 and one float32 either side; x/6 and h - 1/2 agree to rounding. Its forward
    (x times the shared gate, see the next test) agrees too."""
    x = edge_values([*around(-3.0, 3.0, 0.0), -6.0, 6.0, 1.5, -1.5])
    model = between_convs([node("HardSwish", ["a"], ["b"])])
    v = cotangent(x.shape)
    fast, plain = fast_and_plain(model, x, v)
    assert fast.ops["HardSigmoid"] > plain.ops["HardSigmoid"] and plain.ops["Abs"] >= 1
    outside = np.abs(x) >= 3  # the ramp is masked out: both slopes are exactly h (0 or 1)
    np.testing.assert_array_equal(fast.gradient[outside], plain.gradient[outside])
    np.testing.assert_array_equal(plain.gradient[outside], np.where(x[outside] > 0, v[outside], 0))
    # inside, the slope is x/3 + 1/2: a wrong mask would be off by x/6, far above rounding
    np.testing.assert_allclose(fast.gradient, plain.gradient, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(plain.gradient[~outside], (v * (x / 3 + 0.5))[~outside], rtol=1e-5, atol=1e-6)


def test_hard_swish_forward_shares_its_gate_with_the_gradient():
    """The fast graph computes HardSwish as x HardSigmoid(x) (no HardSwish node left), the plain one keeps
    the node and a second HardSigmoid in the gradient; the outputs agree to float32 rounding."""
    x = edge_values([*around(-3.0, 3.0, 0.0), -6.0, 6.0])
    model = between_convs([node("HardSwish", ["a"], ["b"])])
    fast, plain = fast_and_plain(model, x, cotangent(x.shape))
    assert fast.ops["HardSwish"] == 0 and plain.ops["HardSwish"] == 1
    np.testing.assert_allclose(fast.output, plain.output, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bounds", [(-1.0, 2.0), (-1.0, None), (None, 2.0)])
def test_steep_steps_of_clip_differ_from_equality_only_on_the_bounds(bounds):
    """Clip (float32, rank 2: no box mask) with constant bounds: [low < y] [y < high] by steep steps against
    the plain [x == y]; they differ exactly where x is on a bound (fast 0, plain 1), nowhere else."""
    low, high = bounds
    special = [*around(-1.0, 2.0, 0.0), -5.0, 5.0, 0.5]
    x = np.resize(np.asarray(special, F32), (4, 6)).astype(F32)
    x[2:] = np.random.default_rng(0).uniform(-3, 3, x[2:].shape)
    inputs = ["a", "low" if low is not None else "", "high" if high is not None else ""]
    initializers = {k: np.array(b, F32) for k, b in (("low", low), ("high", high)) if b is not None}
    model = make_model([node("Identity", ["x"], ["a"]), node("Clip", inputs, ["b"]), node("Identity", ["b"], ["y"])],
                       {"x": x}, ["y"], initializers=initializers)
    v = cotangent(x.shape)
    fast, plain = fast_and_plain(model, x, v)
    assert fast.ops["HardSigmoid"] >= 1 and plain.ops["HardSigmoid"] == 0 and plain.ops["Equal"] == 1
    on_bound = np.isin(x, [b for b in bounds if b is not None])
    assert on_bound.any()
    np.testing.assert_array_equal(fast.gradient[~on_bound], plain.gradient[~on_bound])
    np.testing.assert_array_equal(fast.gradient[on_bound], 0)
    np.testing.assert_array_equal(plain.gradient[on_bound], v[on_bound])


# ------------------------------------------------------------------------------------- box masks


@pytest.mark.parametrize("high", [6.0, 1.0])
def test_relu6_box_mask_differs_from_equality_only_on_the_bounds(high):
    """ReLU6-style Clip(0, high), rank 4: the two-pass box mask (its precondition holds for 6 and 1) against
    the plain [x == y]; equal except at x = 0 and x = high exactly (fast 0, plain 1), including at a
    subnormal and one float32 either side of each bound."""
    assert forms.box_step_is_exact(high)
    tiny = float(np.nextafter(F32(0), F32(1)))
    x = edge_values([*around(0.0, high), tiny, -tiny, 2 * high, -1.0], low=-1, high=high + 1)
    initializers = {"low": np.array(0.0, F32), "high": np.array(high, F32)}
    model = between_convs([node("Clip", ["a", "low", "high"], ["b"])], initializers)
    v = cotangent(x.shape)
    fast, plain = fast_and_plain(model, x, v)
    assert fast.ops["HardSigmoid"] == 2 and plain.ops["HardSigmoid"] == 0 and plain.ops["Equal"] == 1
    on_bound = (x == 0) | (x == F32(high))
    np.testing.assert_array_equal(fast.gradient[~on_bound], plain.gradient[~on_bound])
    np.testing.assert_array_equal(fast.gradient, np.where((x > 0) & (x < F32(high)), v, 0))
    np.testing.assert_array_equal(plain.gradient[on_bound], v[on_bound])


def test_box_step_precondition():
    """The two-pass mask needs 1 - y/high to be <= 0 at high and > 0 just below it; 255 fails that."""
    assert forms.box_step_is_exact(6.0) and forms.box_step_is_exact(1.0)
    assert not forms.box_step_is_exact(255.0)
    assert not forms.box_step_is_exact(0.0) and not forms.box_step_is_exact(1e31)


@pytest.mark.parametrize("rank4", [True, False])
def test_hard_sigmoid_slope_inside_the_unit_interval(rank4):
    """HardSigmoid(0.2 x + 0.5): slope 0.2 where 0 < y < 1. Rank 4: the box mask and a per-channel scale,
    equal to the plain form to the rounding of the product's order; rank 2: the HardSigmoid step of
    y (1 - y), bit for bit the plain Greater (no value of y (1 - y) below 1e-30 here). Both exactly 0
    where y is 0 or 1 (x <= -2.5, x >= 2.5)."""
    special = [*around(-2.5, 2.5, 0.0), -5.0, 5.0, 1.0]
    attrs = {"alpha": 0.2, "beta": 0.5}
    if rank4:
        x = edge_values(special)
        model = between_convs([node("HardSigmoid", ["a"], ["b"], **attrs)])
    else:
        x = np.resize(np.asarray(special, F32), (3, 7)).astype(F32)
        model = make_model([node("Identity", ["x"], ["a"]), node("HardSigmoid", ["a"], ["b"], **attrs),
                            node("Identity", ["b"], ["y"])], {"x": x}, ["y"])
    v = cotangent(x.shape)
    fast, plain = fast_and_plain(model, x, v)
    assert fast.ops["HardSigmoid"] > plain.ops["HardSigmoid"] and plain.ops["Greater"] == 1
    flat = (plain.output == 0) | (plain.output == 1)  # the output is y itself (identity Convs around it)
    assert flat.any() and not flat.all()
    np.testing.assert_array_equal(fast.gradient[flat], 0)
    np.testing.assert_array_equal(plain.gradient[flat], 0)
    if rank4:
        np.testing.assert_allclose(fast.gradient, plain.gradient, rtol=2.5e-7, atol=0)
    else:
        np.testing.assert_array_equal(fast.gradient, plain.gradient)
    np.testing.assert_allclose(plain.gradient[~flat], 0.2 * v[~flat], rtol=1e-6)


# ------------------------------------------------------------------------ products with constants


@pytest.mark.parametrize("factor_shape", [(), (CHANNELS, 1, 1)])
def test_product_with_a_constant_per_channel_is_the_same_products(factor_shape):
    """Mul by a constant scalar (or one number per channel): fast, a (1, C, 1, 1) constant; plain, the
    constant as given. The same products: bit for bit, at zeros too."""
    factor = np.asarray(np.random.default_rng(2).uniform(-2, 2, factor_shape), F32)
    x = edge_values([0.0, -0.0, 1.0, -3.0, 1e-20])
    model = between_convs([node("Mul", ["a", "factor"], ["b"])], {"factor": factor})
    v = cotangent(x.shape)
    for mode in ("vjp", "jvp"):
        fast, plain = fast_and_plain(model, x, v, mode)
        assert (1, CHANNELS, 1, 1) in fast.constant_shapes and (1, CHANNELS, 1, 1) not in plain.constant_shapes
        np.testing.assert_array_equal(fast.gradient, plain.gradient)
        np.testing.assert_array_equal(plain.gradient, v * (factor if factor.ndim == 0 else factor[None]))


def test_division_by_a_constant_per_channel_is_within_rounding():
    """Div by a constant per-channel vector: fast, a Mul by the float32 reciprocal; plain, the Div. Within
    two float32 ulps of each other (the reciprocal and the product each round once)."""
    divisor = np.random.default_rng(3).uniform(0.5, 3, (1, CHANNELS, 1, 1)).astype(F32)
    x = edge_values([0.0, 1.0, -2.0, 7.0])
    model = between_convs([node("Div", ["a", "divisor"], ["b"])], {"divisor": divisor})
    v = cotangent(x.shape)
    fast, plain = fast_and_plain(model, x, v)
    assert plain.ops["Div"] >= 1 and fast.ops["Div"] < plain.ops["Div"]
    np.testing.assert_array_equal(plain.gradient, v / divisor)
    np.testing.assert_allclose(fast.gradient, plain.gradient, rtol=2.5e-7, atol=0)


# ------------------------------------------------------------------------------------------ selects


@pytest.mark.parametrize("slope", [np.array([0.25], F32), np.array([0.1234567], F32)])
def test_prelu_select_is_arithmetic_on_the_mask(slope):
    """PRelu's slope, 1 where x > 0 else the slope: fast ``slope + step (1 - slope)``, plain a Where. Bit for
    bit when 1 - slope is exact (0.25), else to the rounding of that difference. (No x in (0, 1e-30), where
    the fast step is a fraction: test_step_of_relu covers that band.)"""
    x = np.resize(np.asarray([0.0, -1e-3, 1e-3, -1.0, 1.0, 2.0, -2.0], F32), (3, 5)).astype(F32)
    model = make_model([node("Identity", ["x"], ["a"]), node("PRelu", ["a", "slope"], ["b"]),
                        node("Identity", ["b"], ["y"])], {"x": x}, ["y"], initializers={"slope": slope})
    v = cotangent(x.shape)
    for mode in ("vjp", "jvp"):
        fast, plain = fast_and_plain(model, x, v, mode)
        assert fast.ops["Where"] == 0 and plain.ops["Where"] == 1
        np.testing.assert_array_equal(plain.gradient, np.where(x > 0, v, v * slope))
        if slope[0] == 0.25:
            np.testing.assert_array_equal(fast.gradient, plain.gradient)
        else:
            np.testing.assert_allclose(fast.gradient, plain.gradient, rtol=2.5e-7, atol=0)


def test_max_tangent_select():
    """Max(x, c) forward mode: the tangent where x attains the max, chosen by the select (ties: x, the first)."""
    x = np.resize(np.asarray([-1.0, 0.0, 0.5, 1.0, 2.0], F32), (2, 5)).astype(F32)
    c = np.full((2, 5), 0.5, F32)
    model = make_model([node("Max", ["x", "c"], ["y"])], {"x": x}, ["y"], initializers={"c": c})
    u = cotangent(x.shape)
    fast, plain = fast_and_plain(model, x, u, "jvp")
    assert fast.ops["Where"] == 0 and plain.ops["Where"] == 1
    np.testing.assert_array_equal(fast.gradient, plain.gradient)
    np.testing.assert_array_equal(plain.gradient, np.where(x >= c, u, 0))


# ------------------------------------------------------------------------------- the existing ones


def test_spatial_total_of_a_channel_broadcast():
    """y = x + mean over H, W of x (N = 1): the cotangent of the (1, C, 1, 1) mean is summed over exactly
    the spatial axes, as GlobalAveragePool times the area (fast) or ReduceSum (plain); to float32 rounding."""
    x = edge_values([0.0, 1.0, -2.0, 3.5], shape=(1, CHANNELS, 6, 5))
    model = make_model([node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=1), node("Add", ["x", "m"])],
                       {"x": x}, ["y"], opset=13)
    v = cotangent(x.shape)
    fast, plain = fast_and_plain(model, x, v)
    assert fast.ops["GlobalAveragePool"] == 1 and plain.ops["GlobalAveragePool"] == 0
    np.testing.assert_allclose(fast.gradient, plain.gradient, rtol=1e-5, atol=1e-6)
    expected = v + v.sum(axis=(2, 3), keepdims=True, dtype=np.float64) / 30
    np.testing.assert_allclose(plain.gradient, expected, rtol=1e-5, atol=1e-6)


def test_max_pool_mask_marks_each_window_maximum():
    """MaxPool 2x2 over tiling windows: the mask [x - window max == 0], HardSigmoid(1e30 gap + 1) (fast) or
    Not(gap < 0) (plain), sends each window's cotangent to its maximum, as a NumPy argmax does."""
    x = np.random.default_rng(3).permutation(2 * CHANNELS * 4 * 6).reshape(2, CHANNELS, 4, 6).astype(F32) / 7
    model = between_convs([node("MaxPool", ["a"], ["b"], kernel_shape=[2, 2], strides=[2, 2])])
    v = cotangent((2, CHANNELS, 2, 3))
    fast, plain = fast_and_plain(model, x, v)
    assert fast.ops["HardSigmoid"] == 1 and plain.ops["HardSigmoid"] == 0 and plain.ops["Less"] >= 1
    windows = x.reshape(2, CHANNELS, 2, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, CHANNELS, 2, 3, 4)
    hot = windows.argmax(axis=-1)[..., None] == np.arange(4)
    spread = (hot * v[..., None]).reshape(2, CHANNELS, 2, 3, 2, 2).transpose(0, 1, 2, 4, 3, 5)
    expected = spread.reshape(x.shape)
    np.testing.assert_array_equal(fast.gradient, expected)
    np.testing.assert_array_equal(plain.gradient, expected)


def test_blocked_cotangent_is_the_identity():
    """The max-pool mask's cotangent, arriving through Reshapes as in a CNN + sequence model, handed to the
    blocked layout by a 1x1 AveragePool (fast) or left as it is (plain): the same gradient bit for bit."""
    x = np.random.default_rng(4).permutation(2 * CHANNELS * 4 * 6).reshape(2, CHANNELS, 4, 6).astype(F32) / 7
    pooled = [2, CHANNELS, 2, 3]
    model = between_convs([node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                           node("Reshape", ["p", "flat"], ["q"]), node("Reshape", ["q", "pooled"], ["b"])],
                          initializers={"flat": np.array([2, -1], np.int64), "pooled": np.array(pooled, np.int64)},
                          x_shape=x.shape)
    fast, plain = fast_and_plain(model, x, cotangent(tuple(pooled)))
    assert fast.ops["AveragePool"] == plain.ops["AveragePool"] + 1
    np.testing.assert_array_equal(fast.gradient, plain.gradient)
    np.testing.assert_array_equal(fast.output, plain.output)
    # from a Conv's VJP the cotangent is blocked already: no handoff
    direct = between_convs([node("MaxPool", ["a"], ["b"], kernel_shape=[2, 2], strides=[2, 2])], x_shape=x.shape)
    fast, plain = fast_and_plain(direct, x, cotangent(tuple(pooled)))
    assert fast.ops["AveragePool"] == plain.ops["AveragePool"]


def test_off_of_a_pooled_relu_drops_only_windows_in_its_band():
    """Relu -> MaxPool: windows whose maximum is 0 are compared as 1 (``y + [y <= 0]``, HardSigmoid(-1e30 y
    + 1) fast or Not(y > 0) plain), so they receive nothing and the Relu adds no mask of its own. Both
    equal the argmax rule times [x > 0] except, in the fast form, a window whose maximum lies in (0, 1e-30),
    which may receive nothing."""
    shape = (2, CHANNELS, 4, 6)
    x = (np.random.default_rng(5).permutation(np.prod(shape)).reshape(shape) - 0.6 * np.prod(shape)).astype(F32) / 7
    x[0, 0, 0:2, 0:2] = [[-1.0, -2.0], [-3.0, 0.0]]  # maximum exactly 0
    x[0, 1, 0:2, 0:2] = [[1e-31, -2.0], [-3.0, -4.0]]  # maximum in the band
    x[0, 2, 0:2, 0:2] = [[-1.0, np.nextafter(F32(0), F32(1))], [-3.0, -4.0]]
    pool = node("MaxPool", ["r"], ["b"], kernel_shape=[2, 2], strides=[2, 2])
    model = between_convs([node("Relu", ["a"], ["r"]), pool], x_shape=shape)
    v = cotangent((2, CHANNELS, 2, 3))
    fast, plain = fast_and_plain(model, x, v)
    assert fast.ops["HardSigmoid"] == 2 and plain.ops["HardSigmoid"] == 0  # the window test and `off`
    assert plain.ops["Greater"] == 1  # `off` alone: the Relu's own [x > 0] is not emitted
    relu = np.maximum(x, 0)
    windows = relu.reshape(2, CHANNELS, 2, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, CHANNELS, 2, 3, 4)
    hot = windows.argmax(axis=-1)[..., None] == np.arange(4)
    spread = (hot * v[..., None]).reshape(2, CHANNELS, 2, 3, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(shape)
    expected = spread * (x > 0)
    np.testing.assert_array_equal(plain.gradient, expected)
    maxima = windows.max(axis=-1)
    band = np.repeat(np.repeat((maxima > 0) & (maxima < 1e-30), 2, axis=2), 2, axis=3)
    assert band.any()
    np.testing.assert_array_equal(fast.gradient[~band], expected[~band])
    assert np.all(np.abs(fast.gradient[band]) <= np.abs(expected[band]))
