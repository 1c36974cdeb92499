"""Operators with their attributes omitted: gradsal's rules must use the ONNX spec's defaults.

The node carries no attribute; the float64 reference (``onnx_spec_ops``, torch autograd) is given the
default that ``onnx.defs`` states for the model's opset, never a value from gradsal's code. A rule that
falls back to another default (Selu's gamma as 1.0, say) is off by the ratio of the two, far beyond the
1e-5 tolerance (see ``float64_reference``).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")  # the references are torch autograd in float64
import onnx_spec_ops as spec
import torch
from float64_reference import assert_matches_float64_reference, schema_default
from harness import make_model
from onnx import helper

F32 = np.float32
POINTS = np.array([-3.4, -2.75, -2.2, -1.55, -1.15, -0.8, -0.45, -0.15, 0.15, 0.45, 0.8, 1.15,
                   1.55, 2.2, 2.75, 3.4, -0.3, 0.6, -1.9, 1.7, -2.45, 2.45, -0.95, 0.35])  # kinks: 0, +-2.5
SHAPES = [(4, 6), (2, 3, 2, 2)]


def _default(op: str, attribute: str, opset: int):
    value = schema_default(op, attribute, opset)
    return value.decode() if isinstance(value, bytes) else value


def _bare(op: str, x: np.ndarray, opset: int, inputs=("x",), initializers=None):
    return make_model([helper.make_node(op, list(inputs), ["y"])], {"x": x}, ["y"], initializers, opset=opset)


@pytest.mark.parametrize("opset", [7, 17])
@pytest.mark.parametrize("shape", SHAPES)
def test_selu_defaults(shape, opset: int) -> None:
    x = POINTS.reshape(shape).astype(F32)
    alpha, gamma = _default("Selu", "alpha", opset), _default("Selu", "gamma", opset)
    assert_matches_float64_reference(_bare("Selu", x, opset), x, lambda t: spec.selu(t, alpha, gamma))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("op", "opset"), [("Elu", 17), ("Elu", 7), ("Celu", 13), ("LeakyRelu", 17), ("LeakyRelu", 16)])
def test_single_alpha_defaults(op: str, opset: int, shape) -> None:
    dtype = np.float64 if op == "LeakyRelu" and opset >= 16 else F32  # LeakyRelu-16 has a double kernel
    x = POINTS.reshape(shape).astype(dtype)
    alpha = _default(op, "alpha", opset)
    function = {"Elu": spec.elu, "Celu": spec.celu, "LeakyRelu": spec.leaky_relu}[op]
    assert_matches_float64_reference(_bare(op, x, opset), x, lambda t: function(t, alpha))


@pytest.mark.parametrize("shape", SHAPES)
def test_hard_sigmoid_defaults(shape) -> None:
    opset = 17
    alpha, beta = _default("HardSigmoid", "alpha", opset), _default("HardSigmoid", "beta", opset)
    x = POINTS.reshape(shape).astype(F32)
    assert min(np.abs(x - k).min() for k in [-beta / alpha, (1 - beta) / alpha]) >= 0.04
    assert_matches_float64_reference(_bare("HardSigmoid", x, opset), x, lambda t: spec.hard_sigmoid(t, alpha, beta))


def test_gelu_default_is_exact() -> None:
    x = POINTS.reshape(4, 6).astype(F32)
    approximate = _default("Gelu", "approximate", 20)
    assert_matches_float64_reference(_bare("Gelu", x, 20), x, lambda t: spec.gelu(t, approximate))


# ------------------------------------------------------------------------------------------ spatial

SPATIAL_TOLERANCE = dict(rtol=1e-5, atol_scale=1e-5)


def _input(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, shape).astype(F32)


def _no_attribute_defaults(op: str, opset: int) -> None:
    """Conv-like defaults the spec states in words (strides and dilations 1, pads 0, group 1)."""
    assert _default(op, "group", opset) == 1
    assert _default(op, "auto_pad", opset) == "NOTSET"


def test_conv_defaults() -> None:
    _no_attribute_defaults("Conv", 17)
    x, w = _input((2, 3, 6, 5)), _input((4, 3, 3, 2), 1)
    model = _bare("Conv", x, 17, ("x", "w"), {"w": w})
    wt = torch.tensor(w, dtype=torch.float64)
    assert_matches_float64_reference(model, x, lambda t: spec.conv(t, wt, [1, 1], [0, 0, 0, 0], [1, 1], 1),
                                     **SPATIAL_TOLERANCE)


def test_conv_transpose_defaults() -> None:
    _no_attribute_defaults("ConvTranspose", 17)
    x, w = _input((1, 3, 4, 5)), _input((3, 2, 3, 2), 2)
    model = _bare("ConvTranspose", x, 17, ("x", "w"), {"w": w})
    wt = torch.tensor(w, dtype=torch.float64)
    assert_matches_float64_reference(
        model, x, lambda t: spec.conv_transpose(t, wt, [1, 1], [0, 0, 0, 0], [1, 1], 1, [0, 0]), **SPATIAL_TOLERANCE)


def test_instance_normalization_default_epsilon() -> None:
    x, scale, bias = _input((2, 3, 4, 5)), _input((3,), 3), _input((3,), 4)
    # a small spatial variance makes epsilon matter: a wrong default shifts the gradient by far over 1e-5
    x[0, 0] *= 0.01
    epsilon = _default("InstanceNormalization", "epsilon", 17)
    model = _bare("InstanceNormalization", x, 17, ("x", "s", "b"), {"s": scale, "b": bias})
    st_, bt = torch.tensor(scale, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64)
    assert_matches_float64_reference(model, x, lambda t: spec.instance_normalization(t, st_, bt, epsilon),
                                     **SPATIAL_TOLERANCE)


def test_average_pool_defaults() -> None:
    """Only the required kernel_shape: strides 1, no pads."""
    x = _input((2, 3, 5, 6))
    model = make_model([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 3])], {"x": x}, ["y"])
    assert_matches_float64_reference(
        model, x, lambda t: spec.average_pool(t, [2, 3], [1, 1], [0, 0, 0, 0], 0), **SPATIAL_TOLERANCE)


def test_average_pool_default_count_include_pad() -> None:
    """Pads set, count_include_pad omitted: the divisor at the borders follows the spec's default."""
    x = _input((2, 3, 5, 6))
    count_include_pad = _default("AveragePool", "count_include_pad", 17)
    pads = [1, 1, 0, 1]
    model = make_model([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 2], pads=pads)],
                       {"x": x}, ["y"])
    assert_matches_float64_reference(
        model, x, lambda t: spec.average_pool(t, [3, 2], [1, 1], pads, count_include_pad), **SPATIAL_TOLERANCE)


@pytest.mark.parametrize("scales", [(2.0, 3.0), (1.5, 2.5), (0.5, 1.0)])
def test_resize_defaults(scales) -> None:
    """No attributes: mode, coordinate_transformation_mode and nearest_mode from the spec."""
    opset = 13
    x = _input((1, 2, 4, 6))
    mode = _default("Resize", "mode", opset)
    coordinates = _default("Resize", "coordinate_transformation_mode", opset)
    nearest_mode = _default("Resize", "nearest_mode", opset)
    scale_input = np.array([1, 1, *scales], F32)
    model = _bare("Resize", x, opset, ("x", "", "scales"), {"scales": scale_input})
    size = (int(x.shape[2] * scales[0]), int(x.shape[3] * scales[1]))
    assert_matches_float64_reference(
        model, x, lambda t: spec.resize(t, size, scales, mode, coordinates, nearest_mode), **SPATIAL_TOLERANCE)
