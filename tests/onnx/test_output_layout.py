"""OnnxBackend(..., output_batch_axis=K): outputs that are not batch-first, or have no batch axis at all."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import gradsal.core as gs
from gradsal.backends.onnx import OnnxBackend

RNG = np.random.default_rng(11)


def _time_major_model() -> object:
    # x (N, C, T) -> y = (x * x) transposed to (T, N, C), as a CTC recogniser's output
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Transpose", ["sq"], ["y"], perm=[2, 0, 1])]
    graph = helper.make_graph(nodes, "tnc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, "n", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _no_batch_axis_model() -> object:
    # x (1, 3) -> y (3,): exported with a fixed batch of 1 and the batch axis squeezed away
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Reshape", ["sq", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
                              [numpy_helper.from_array(np.array([3], np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_time_major_output_is_seen_batch_first() -> None:
    x = RNG.standard_normal((2, 4, 5)).astype(np.float32)
    backend = OnnxBackend(_time_major_model(), output_batch_axis=1)
    y = backend.forward(x)
    np.testing.assert_allclose(y, np.transpose(x * x, (0, 2, 1)), rtol=1e-6)  # (N, T, C)
    v = RNG.standard_normal((2, 5, 4)).astype(np.float32)
    _, grad = backend.vjp(x, v)
    np.testing.assert_allclose(grad, 2 * x * np.transpose(v, (0, 2, 1)), rtol=1e-5, atol=1e-6)
    u = RNG.standard_normal(x.shape).astype(np.float32)
    _, product = backend.jvp(x, u)
    np.testing.assert_allclose(product, np.transpose(2 * x * u, (0, 2, 1)), rtol=1e-5, atol=1e-6)
    # a method explains each sample's own top entry: its gradient is nonzero in that sample only
    grads = gs.vanilla_gradient(backend, x)
    for n in range(2):
        t, c = np.unravel_index(np.argmax(y[n]), y[n].shape)
        expected = np.zeros((4, 5), np.float32)
        expected[c, t] = 2 * x[n, c, t]
        np.testing.assert_allclose(grads[n], expected, rtol=1e-5, atol=1e-6)


def test_an_output_without_batch_axis_is_one_sample() -> None:
    x = RNG.standard_normal((1, 3)).astype(np.float32)
    backend = OnnxBackend(_no_batch_axis_model(), output_batch_axis=None)
    assert backend.forward(x).shape == (1, 3)
    grads = gs.vanilla_gradient(backend, x, target=1)
    np.testing.assert_allclose(grads, [[0.0, 2 * x[0, 1], 0.0]], rtol=1e-6)
    with pytest.raises(gs.InputError, match="shaped \\(1, \\*output shape\\)"):
        backend.vjp(x, np.ones(3, np.float32))


@pytest.mark.parametrize(("axis", "error"), [(3, gs.InputError), ("1", gs.InputTypeError), (True, gs.InputTypeError)])
def test_a_bad_output_batch_axis_is_a_typed_error(axis: object, error: type) -> None:
    x = RNG.standard_normal((2, 4, 5)).astype(np.float32)
    with pytest.raises(error, match="output_batch_axis"):
        OnnxBackend(_time_major_model(), output_batch_axis=axis).forward(x)


def test_the_default_axis_leaves_a_scalar_output_alone() -> None:
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    node = helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)
    graph = helper.make_graph([node], "sum", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=8)
    y, grad = OnnxBackend(model).vjp(x, np.array(2.0, np.float32))
    assert y.shape == () and float(y) == pytest.approx(float(x.sum()), rel=1e-6)
    np.testing.assert_array_equal(grad, np.full((2, 3), 2.0, np.float32))
