"""Property tests of the Conv, ConvTranspose, BatchNormalization and InstanceNormalization rules
(backends/onnx/rules/convolution.py, correlation.py and conv.py).

Each test builds a one-node model with random shapes and attributes (groups incl. depthwise, strides,
dilations, pads, auto_pad, output_padding/output_shape, 1-D to 3-D) and checks its VJP and JVP graphs
with ``assert_gradients_match``: central finite differences of the ORIGINAL model run by onnxruntime,
and <J u, v> = <u, J^T v>. onnxruntime's Conv/ConvTranspose/InstanceNormalization kernels are float32
only, so those models are float32 with the harness's float32 tolerance; BatchNormalization is float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from harness import assert_gradients_match, make_model, run_vjp
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper

from gradsal.backends.onnx._graph import build_gradient_model
from gradsal.backends.onnx.rules import correlation
from gradsal.core.errors import UnsupportedOperatorError

F32, F64 = np.float32, np.float64
OPSETS = [11, 13, 17, 21]


def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def check(nodes, inputs, *, initializers=None, opset=17, **kwargs):
    """``inputs``: the differentiated input first (name -> example array)."""
    model = make_model(nodes, inputs, ["y"], initializers=initializers, opset=opset)
    assert_gradients_match(model, next(iter(inputs.values())), **kwargs)


def normal(rng_seed: int, shape, dtype=F32) -> np.ndarray:
    return np.random.default_rng(rng_seed).standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------------ Conv geometry


@st.composite
def conv_geometry(draw, *, transpose: bool = False):
    """Channels, groups, kernel, strides, dilations and padding of a small Conv (or ConvTranspose)."""
    rank = draw(st.sampled_from([1, 1, 2, 2, 2, 3]))
    kind = draw(st.sampled_from(["single", "grouped", "depthwise"]))
    group = 1 if kind == "single" else draw(st.integers(2, 3))
    in_per_group = 1 if kind == "depthwise" else draw(st.integers(1, 2))
    out_per_group = draw(st.integers(1, 2)) if kind != "depthwise" else draw(st.sampled_from([1, 1, 2]))
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    max_kernel = 2 if rank == 3 else 3
    kernel = [draw(st.integers(1, max_kernel)) for _ in range(rank)]
    strides = [draw(st.integers(1, 3 if rank == 1 else 2)) for _ in range(rank)]
    # onnxruntime refuses SAME padding with dilations for Conv
    same = auto_pad.startswith("SAME")
    dilations = [1 if same and not transpose else draw(st.integers(1, 2)) for _ in range(rank)]
    pads = [draw(st.integers(0, 2)) for _ in range(2 * rank)] if auto_pad == "NOTSET" else [0] * (2 * rank)
    return dict(rank=rank, group=group, in_per_group=in_per_group, out_per_group=out_per_group,
                auto_pad=auto_pad, kernel=kernel, strides=strides, dilations=dilations, pads=pads)


def conv_attrs(geometry) -> dict:
    attrs = dict(kernel_shape=geometry["kernel"], strides=geometry["strides"], dilations=geometry["dilations"],
                 group=geometry["group"])
    if geometry["auto_pad"] == "NOTSET":
        attrs["pads"] = geometry["pads"]
    else:
        attrs["auto_pad"] = geometry["auto_pad"]
    return attrs


def conv_input_sizes(draw, geometry) -> list[int]:
    """Spatial sizes at least as large as one (dilated) window, small enough for finite differences."""
    rank = geometry["rank"]
    sizes = []
    for a in range(rank):
        extent = geometry["dilations"][a] * (geometry["kernel"][a] - 1) + 1
        padding = geometry["pads"][a] + geometry["pads"][rank + a]
        low = max(1, extent - padding)
        sizes.append(draw(st.integers(low, low + (4 if rank == 1 else 2 if rank == 2 else 1))))
    return sizes


# --------------------------------------------------------------------------------------------- Conv


@given(data=st.data())
def test_conv(data):
    """Input gradient (flipped-kernel / strided strategies) and bias, at opsets 11 to 21."""
    geometry = data.draw(conv_geometry())
    group = geometry["group"]
    channels, out_channels = group * geometry["in_per_group"], group * geometry["out_per_group"]
    batch = data.draw(st.integers(1, 2)) if geometry["rank"] == 1 else 1
    x = normal(data.draw(st.integers(0, 99)), [batch, channels, *conv_input_sizes(data.draw, geometry)])
    weight = normal(1, [out_channels, geometry["in_per_group"], *geometry["kernel"]])
    inputs, initializers = ["x", "W"], {"W": weight}
    if data.draw(st.booleans()):
        inputs.append("B")
        initializers["B"] = normal(2, [out_channels])
    check([node("Conv", inputs, **conv_attrs(geometry))], {"x": x}, initializers=initializers,
          opset=data.draw(st.sampled_from(OPSETS)))


# geometry (rank, channels, out, group, kernel, strides, dilations, pads, size) exercising every strided path
STRATEGY_CASES = [
    (1, 2, 3, 1, [3], [2], [1], [1, 0], [7]),
    (1, 3, 3, 3, [3], [3], [2], [2, 1], [9]),
    (2, 2, 2, 1, [3, 2], [2, 3], [1, 1], [1, 1, 0, 1], [6, 7]),
    (2, 3, 3, 3, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], [6, 5]),
    (2, 4, 2, 2, [1, 3], [2, 1], [1, 2], [0, 2, 0, 1], [5, 6]),
    (2, 3, 2, 1, [1, 1], [2, 2], [1, 1], [0, 0, 0, 0], [5, 4]),
    (3, 2, 2, 2, [2, 2, 1], [2, 1, 2], [1, 1, 1], [1, 0, 0, 0, 1, 0], [4, 3, 3]),
    (1, 2, 3, 1, [1], [3], [1], [2, 0], [1]),  # the only window lies on padding: a zero gradient
]


@pytest.mark.parametrize("strategy", ["conv", "convtranspose"])
@pytest.mark.parametrize("case", STRATEGY_CASES, ids=[f"case{i}" for i in range(len(STRATEGY_CASES))])
def test_conv_gradient_strategies(strategy, case):
    """Every way of writing the input gradient (the benchmark's alternatives too) is exact."""
    _, channels, out_channels, group, kernel, strides, dilations, pads, size = case
    x = normal(3, [1, channels, *size])
    weight = normal(4, [out_channels, channels // group, *kernel])
    attrs = dict(kernel_shape=kernel, strides=strides, dilations=dilations, pads=pads, group=group)
    with correlation.forced(conv=strategy):
        check([node("Conv", ["x", "W"], **attrs)], {"x": x}, initializers={"W": weight})


@pytest.mark.parametrize(("strides", "group", "channels", "expected"), [
    ([1, 1], 1, 16, "conv"), ([1, 1], 2, 16, "conv"), ([1, 1], 16, 16, "conv"),
    ([2, 2], 16, 16, "conv"), ([2, 1], 16, 16, "conv"),  # depthwise: zero spread + flipped kernel
    ([2, 2], 1, 16, "convtranspose"), ([2, 2], 2, 16, "convtranspose"),
    ([1, 1], 1, 3, "convtranspose"), ([2, 2], 1, 3, "convtranspose"),  # an RGB stem
])
def test_conv_input_strategy_is_chosen_from_the_geometry(strides, group, channels, expected):
    """The measured choice, as a pure function of the layer; ``forced`` overrides it within its block only."""
    from gradsal.backends.onnx.rules.windows import Axis

    axes = [Axis(8, 8 // s, 3, s, 1, 1) for s in strides]
    depthwise = group == channels and group > 1
    assert correlation.conv_input_strategy(axes, group, channels, depthwise) == expected
    other = "conv" if expected == "convtranspose" else "convtranspose"
    with correlation.forced(conv=other):
        assert correlation.conv_input_strategy(axes, group, channels, depthwise) == other
    assert correlation.conv_input_strategy(axes, group, channels, depthwise) == expected


@given(data=st.data())
def test_conv_weight_and_bias_gradients(data):
    """The weight (or the bias) is the differentiated input; the data is a constant."""
    geometry = data.draw(conv_geometry())
    group = geometry["group"]
    channels, out_channels = group * geometry["in_per_group"], group * geometry["out_per_group"]
    x = normal(5, [data.draw(st.integers(1, 2)), channels, *conv_input_sizes(data.draw, geometry)])
    weight = normal(6, [out_channels, geometry["in_per_group"], *geometry["kernel"]])
    bias = normal(7, [out_channels])
    nodes = [node("Conv", ["x", "W", "B"], **conv_attrs(geometry))]
    opset = data.draw(st.sampled_from(OPSETS))
    if data.draw(st.booleans()):
        check(nodes, {"W": weight}, initializers={"x": x, "B": bias}, opset=opset)
    else:
        check(nodes, {"B": bias}, initializers={"x": x, "W": weight}, opset=opset)


@pytest.mark.parametrize("pads", [[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 2, 0]])
def test_conv_of_the_input_with_itself(pads):
    """Conv(x, x): data and weight both depend on the input, and the weight is not a constant (the
    input gradient falls back to ConvTranspose); the two contributions are summed."""
    x = normal(8, [2, 2, 3, 3])
    check([node("Conv", ["x", "x"], pads=pads)], {"x": x})


def test_conv_symbolic_batch():
    """A model declared with a symbolic batch gets concrete shapes from the input it is built for."""
    x = normal(9, [2, 2, 5, 5])
    weight = normal(10, [3, 2, 3, 3])
    model = make_model([node("Conv", ["x", "W"], strides=[2, 2], pads=[1, 1, 1, 1])], {"x": x}, ["y"],
                       initializers={"W": weight}, symbolic_batch=True)
    assert_gradients_match(model, x)
    assert_gradients_match(model, x[:1])


def test_stride1_conv_gradient_is_a_conv():
    """The measured choice: a stride-1 Conv's input gradient is a Conv (flipped kernel), not ConvTranspose,
    except for a layer reading few channels (an RGB stem), whose gradient is a ConvTranspose."""
    x = normal(11, [1, 16, 6, 6])
    for group, weight_shape in [(1, [8, 16, 3, 3]), (2, [4, 8, 3, 3]), (16, [16, 1, 3, 3])]:
        model = make_model([node("Conv", ["x", "W"], pads=[1, 1, 1, 1], group=group)], {"x": x}, ["y"],
                           initializers={"W": normal(12, weight_shape)})
        built = build_gradient_model(model, x.shape, input_name="x", output_name="y")
        ops = [n.op_type for n in built.model.graph.node]
        assert "ConvTranspose" not in ops and ops.count("Conv") == 2
    stem = normal(13, [1, 3, 6, 6])
    model = make_model([node("Conv", ["x", "W"], pads=[1, 1, 1, 1])], {"x": stem}, ["y"],
                       initializers={"W": normal(14, [8, 3, 3, 3])})
    ops = [n.op_type for n in build_gradient_model(model, stem.shape, input_name="x", output_name="y").model.graph.node]
    assert ops.count("ConvTranspose") == 1 and ops.count("Conv") == 1
    assert_gradients_match(model, stem)


# ------------------------------------------------------------------------------------ ConvTranspose


@given(data=st.data())
def test_conv_transpose(data):
    """Input gradient (a Conv), weight and bias gradients; output_padding, output_shape and auto_pad."""
    geometry = data.draw(conv_geometry(transpose=True))
    rank, group = geometry["rank"], geometry["group"]
    channels, out_channels = group * geometry["in_per_group"], group * geometry["out_per_group"]
    sizes = [data.draw(st.integers(1, 4 if rank == 1 else 3 if rank == 2 else 2)) for _ in range(rank)]
    attrs = conv_attrs(geometry)
    extents = [d * (k - 1) + 1 for d, k in zip(geometry["dilations"], geometry["kernel"], strict=True)]
    if geometry["auto_pad"] == "NOTSET":  # pads that leave at least one output cell
        pads = list(geometry["pads"])
        for a in range(rank):
            room = geometry["strides"][a] * (sizes[a] - 1) + extents[a] - 1
            pads[a] = min(pads[a], room)
            pads[rank + a] = min(pads[rank + a], room - pads[a])
        attrs["pads"] = pads
    # onnxruntime and ONNX's shape inference disagree on SAME padding combined with these two
    plain = geometry["auto_pad"] != "NOTSET"
    choice = "plain" if plain else data.draw(st.sampled_from(["plain", "output_padding", "output_shape"]))
    if choice == "output_padding":
        attrs["output_padding"] = [data.draw(st.integers(0, s - 1)) for s in geometry["strides"]]
    elif choice == "output_shape":
        natural = [s * (n - 1) + e for s, n, e in zip(geometry["strides"], sizes, extents, strict=True)]
        attrs["output_shape"] = [m - data.draw(st.integers(0, e - 1)) for m, e in zip(natural, extents, strict=True)]
    x = normal(data.draw(st.integers(0, 99)), [1, channels, *sizes])
    weight = normal(13, [channels, geometry["out_per_group"], *geometry["kernel"]])
    bias = normal(14, [out_channels])
    nodes = [node("ConvTranspose", ["x", "W", "B"], **attrs)]
    opset = data.draw(st.sampled_from(OPSETS))
    target = data.draw(st.sampled_from(["x", "x", "W", "B"]))
    arrays = {"x": x, "W": weight, "B": bias}
    check(nodes, {target: arrays[target]}, initializers={k: v for k, v in arrays.items() if k != target},
          opset=opset)


# ------------------------------------------------------------------------------------ normalisation


@given(data=st.data())
def test_batch_normalization(data):
    """Inference BatchNormalization (float64), rank 2 to 4, folded into one per-channel multiply."""
    rank = data.draw(st.integers(2, 4))
    channels = data.draw(st.integers(1, 3))
    shape = [data.draw(st.integers(1, 2)), channels, *[data.draw(st.integers(1, 3)) for _ in range(rank - 2)]]
    x = normal(data.draw(st.integers(0, 99)), shape, F64)
    rng = np.random.default_rng(15)
    params = {"scale": rng.standard_normal(channels), "bias": rng.standard_normal(channels),
              "mean": rng.standard_normal(channels), "var": rng.random(channels) + 0.2}
    opset = data.draw(st.sampled_from([11, 13, 15, 17, 21]))
    attrs = {"epsilon": data.draw(st.sampled_from([1e-5, 1e-3, 0.1]))}
    if opset >= 14 and data.draw(st.booleans()):
        attrs["training_mode"] = 0
    check([node("BatchNormalization", ["x", *params], **attrs)], {"x": x}, initializers=params, opset=opset)


def test_batch_normalization_training_mode_is_refused():
    x = normal(16, [2, 3, 2, 2])
    params = {name: np.ones(3, F32) for name in ("scale", "bias", "mean", "var")}
    bn = node("BatchNormalization", ["x", *params], ["y", "running_mean", "running_var"], training_mode=1)
    model = make_model([bn], {"x": x}, ["y"], initializers=params, opset=15)
    with pytest.raises(UnsupportedOperatorError, match="training mode"):
        build_gradient_model(model, x.shape, input_name="x", output_name="y")


def test_batch_normalization_matches_closed_form():
    """x_grad = v * scale / sqrt(var + eps) per channel (an independent NumPy formula)."""
    rng = np.random.default_rng(17)
    x, v = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 4, 4))
    params = {"scale": rng.standard_normal(3), "bias": rng.standard_normal(3), "mean": rng.standard_normal(3),
              "var": rng.random(3) + 0.5}
    model = make_model([node("BatchNormalization", ["x", *params], epsilon=1e-3)], {"x": x}, ["y"],
                       initializers=params)
    _, g = run_vjp(model, x, v)
    epsilon = float(np.float32(1e-3))  # ONNX stores attributes as float32
    factor = params["scale"] / np.sqrt(params["var"] + epsilon)
    np.testing.assert_allclose(g, v * factor[None, :, None, None], rtol=1e-12)


@given(data=st.data())
def test_instance_normalization(data):
    """x, scale or bias differentiated; ReduceMean's axes as attribute (< 18) or input (18+)."""
    rank = data.draw(st.integers(3, 4))
    channels = data.draw(st.integers(1, 3))
    # at least 3 cells per instance: with 2, x -> xhat is +-1 and its derivative 1/|x1 - x2| is unbounded
    spatial = [data.draw(st.integers(3, 5))] if rank == 3 else [data.draw(st.integers(2, 3)) for _ in range(2)]
    shape = [data.draw(st.integers(1, 2)), channels, *spatial]
    arrays = {"x": normal(data.draw(st.integers(0, 99)), shape), "scale": normal(18, [channels]),
              "bias": normal(19, [channels])}
    target = data.draw(st.sampled_from(["x", "x", "scale", "bias"]))
    opset = data.draw(st.sampled_from([11, 13, 18, 21]))
    nodes = [node("InstanceNormalization", ["x", "scale", "bias"], epsilon=data.draw(st.sampled_from([1e-5, 0.1])))]
    # float32 and strongly curved over a few cells: the harness's finite difference along a whole
    # (unnormalised) tangent has a truncation error near its float32 atol, so allow 1e-2
    check(nodes, {target: arrays[target]}, initializers={k: v for k, v in arrays.items() if k != target},
          opset=opset, atol=1e-2)
