"""If nodes: a condition known at build time differentiates as the branch it takes (property tests against
finite differences, nested Ifs and branches reading the outer scope included); a condition computed from
the input's values takes, at each input, the branch that input takes (the graph is rebuilt when it switches)."""

from __future__ import annotations

import numpy as np
import pytest
from harness import assert_gradients_match, make_model, run_forward
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import gradsal.core as gs
from gradsal.backends.onnx import OnnxBackend


def _branch(name: str, nodes: list, output: str) -> object:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)])


def _if(condition: str, then_nodes: list, then_out: str, else_nodes: list, else_out: str, out: str) -> object:
    return helper.make_node("If", [condition], [out], then_branch=_branch("then", then_nodes, then_out),
                            else_branch=_branch("else", else_nodes, else_out))


def _model(flag: bool, nested_flag: bool, from_shape: bool, x: np.ndarray) -> object:
    """y = w * If(flag, tanh(h) * h, If(nested, sigmoid(h), -h^2)), h = x + 1 computed outside the branches.

    ``from_shape``: the condition is ``Shape(x)[1] > 0`` (always true; known only after the probe) instead of
    an initializer."""
    inner = _if("nested", [helper.make_node("Sigmoid", ["h"], ["s"])], "s",
                [helper.make_node("Mul", ["h", "h"], ["hh"]), helper.make_node("Neg", ["hh"], ["nhh"])], "nhh", "inner")
    then_nodes = [helper.make_node("Tanh", ["h"], ["t"]), helper.make_node("Mul", ["t", "h"], ["th"])]
    nodes = [helper.make_node("Add", ["x", "one"], ["h"])]
    if from_shape:
        nodes += [helper.make_node("Shape", ["x"], ["shape"]),
                  helper.make_node("Gather", ["shape", "index"], ["width"], axis=0),
                  helper.make_node("Greater", ["width", "zero"], ["flag"])]
    nodes += [_if("flag", then_nodes, "th", [inner], "inner", "branch"),
              helper.make_node("Mul", ["branch", "w"], ["y"])]
    constants = {"one": np.array(1.0, np.float32), "w": np.linspace(0.5, 2.0, x.shape[1]).astype(np.float32),
                 "nested": np.array(nested_flag)}
    if from_shape:
        constants |= {"index": np.array(1, np.int64), "zero": np.array(0, np.int64)}
    else:
        constants["flag"] = np.array(flag)
    return make_model(nodes, {"x": x}, ["y"], initializers=constants)


@given(flag=st.booleans(), nested_flag=st.booleans(), from_shape=st.booleans(),
       rows=st.integers(1, 3), width=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_if_with_a_known_condition_differentiates_as_its_taken_branch(flag: bool, nested_flag: bool, from_shape: bool,
                                                                       rows: int, width: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32)
    assert_gradients_match(_model(flag, nested_flag, from_shape, x), x, rtol=2e-2, atol=2e-3)


def test_the_taken_branch_matches_its_closed_form() -> None:
    x = np.array([[0.3, -0.7, 1.2]], np.float32)
    w = np.linspace(0.5, 2.0, 3).astype(np.float32)
    h = x + 1
    for flag, nested, derivative in ((True, False, np.tanh(h) + h * (1 - np.tanh(h) ** 2)),
                                     (False, True, 1 / (1 + np.exp(-h)) * (1 - 1 / (1 + np.exp(-h)))),
                                     (False, False, -2 * h)):
        _, grad = OnnxBackend(_model(flag, nested, False, x)).vjp(x, np.ones((1, 3), np.float32))
        np.testing.assert_allclose(grad, w * derivative, rtol=1e-5, atol=1e-6)


def _if_on_the_sum() -> object:
    # y = tanh(x) where sum(x) > 0, else -x^2: the branch switches with the input's values
    x = np.zeros((1, 3), np.float32)
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["flag"]),
             _if("flag", [helper.make_node("Tanh", ["x"], ["t"])], "t",
                 [helper.make_node("Mul", ["x", "x"], ["xx"]), helper.make_node("Neg", ["xx"], ["n"])], "n", "y")]
    return make_model(nodes, {"x": x}, ["y"], initializers={"zero": np.array(0.0, np.float32)}, opset=11)


def test_an_if_on_the_inputs_values_takes_the_branch_of_each_input() -> None:
    # the VJP of If is If of the branches' VJPs: the graph holds the branch taken at its build, and a call
    # whose condition differs rebuilds it on the other branch
    backend = OnnxBackend(_if_on_the_sum())
    v = np.array([[1.0, -2.0, 0.5]], np.float32)
    for x in ([[0.3, -0.1, 1.2]], [[-0.3, -0.7, 0.2]], [[0.9, 0.1, 0.0]]):
        x = np.array(x, np.float32)
        expected = v * ((1 - np.tanh(x) ** 2) if x.sum() > 0 else -2 * x)
        _, grad = backend.vjp(x, v)
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
        _, product = backend.jvp(x, v)
        np.testing.assert_allclose(product, expected, rtol=1e-5, atol=1e-6)  # diagonal Jacobian


@given(seed=st.integers(0, 2**16))
def test_an_if_on_the_inputs_values_matches_finite_differences(seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((1, 3)).astype(np.float32)
    if abs(float(x.sum())) < 0.05:  # finite differences would straddle the switch
        x[0, 0] += 0.5
    model, v = _if_on_the_sum(), np.array([[0.7, -1.3, 2.0]], np.float32)
    _, grad = OnnxBackend(model).vjp(x, v)  # through the backend, which rebuilds when the branch switches
    eps = 1e-3
    numeric = np.zeros(3)
    for k in range(3):
        step = np.zeros_like(x)
        step[0, k] = eps
        up, down = (run_forward(model, x + s)["y"] for s in (step, -step))
        numeric[k] = float(np.sum((up - down) * v)) / (2 * eps)
    np.testing.assert_allclose(grad[0], numeric, rtol=2e-2, atol=2e-3)


def test_an_inlined_branch_keeps_its_own_initializers_apart() -> None:
    # a branch initializer named like an outer tensor must not replace it
    x = np.array([[0.5, 1.5]], np.float32)
    then_branch = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["t"])], "then", [],
                                    [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
                                    [numpy_helper.from_array(np.array([3.0, 4.0], np.float32), "w")])
    else_branch = _branch("else", [helper.make_node("Identity", ["x"], ["e"])], "e")
    nodes = [helper.make_node("If", ["flag"], ["branch"], then_branch=then_branch, else_branch=else_branch),
             helper.make_node("Mul", ["branch", "w_outer"], ["y"])]
    model = make_model(nodes, {"x": x}, ["y"], initializers={"flag": np.array(True),
                                                            "w_outer": np.array([10.0, 100.0], np.float32)})
    _, grad = OnnxBackend(model).vjp(x, np.ones((1, 2), np.float32))
    np.testing.assert_allclose(grad, [[30.0, 400.0]])


def _loop_model(trips: int, x: np.ndarray, with_condition: bool) -> object:
    """acc_{k+1} = acc_k * w + tanh(x) * k (x read from the outer scope), trips times; y: the final acc and
    the stacked accumulators (a scan output)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
         helper.make_node("Tanh", ["x"], ["t"]),
         helper.make_node("Mul", ["t", "kf"], ["tk"]),
         helper.make_node("Mul", ["acc", "w"], ["aw"]),
         helper.make_node("Add", ["aw", "tk"], ["acc_out"]),
         helper.make_node("Identity", ["acc_out"], ["scan_out"])],
        "body",
        [helper.make_tensor_value_info("k", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, None)])
    loop = helper.make_node("Loop", ["trips", "go" if with_condition else "", "start"], ["final", "history"],
                            body=body)
    nodes = [helper.make_node("Mul", ["x", "x"], ["start"]), loop,
             helper.make_node("ReduceSum", ["history"], ["total"], axes=[0], keepdims=0),
             helper.make_node("Add", ["final", "total"], ["y"])]
    constants = {"trips": np.array(trips, np.int64), "go": np.array(True),
                 "w": np.linspace(0.5, 1.5, x.shape[1]).astype(np.float32)}
    return make_model(nodes, {"x": x}, ["y"], initializers=constants, opset=11)


@given(trips=st.integers(1, 4), with_condition=st.booleans(), rows=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_a_loop_with_a_known_trip_count_is_unrolled(trips: int, with_condition: bool, rows: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((rows, 3)).astype(np.float32)
    assert_gradients_match(_loop_model(trips, x, with_condition), x, rtol=2e-2, atol=2e-3)


def test_a_loop_whose_trip_count_depends_on_the_input_is_a_typed_refusal() -> None:
    x = np.ones((1, 3), np.float32)
    model = _loop_model(2, x, False)
    # the trip count becomes the (integer-cast) sum of x: not known when the graph is built
    model.graph.node.insert(0, helper.make_node("ReduceSum", ["x"], ["sx"], keepdims=0))
    model.graph.node.insert(1, helper.make_node("Cast", ["sx"], ["trips_x"], to=TensorProto.INT64))
    model.graph.node[3].input[0] = "trips_x"
    with pytest.raises(gs.UnsupportedOperatorError, match="no reverse-mode rule for Loop"):
        OnnxBackend(model).vjp(x, np.ones((1, 3), np.float32))


def _scan_model(x: np.ndarray, axis: int, reverse: int, out_axis: int, out_reverse: int) -> object:
    """acc' = acc * w + tanh(s), out = acc' * s over the slices s of x along ``axis``; y: the last acc plus
    the stacked outputs summed over their scan axis."""
    rows = x.shape[1 - axis]
    body = helper.make_graph(
        [helper.make_node("Mul", ["acc", "w"], ["aw"]), helper.make_node("Tanh", ["s"], ["ts"]),
         helper.make_node("Add", ["aw", "ts"], ["acc_out"]), helper.make_node("Mul", ["acc_out", "s"], ["out"])],
        "body",
        [helper.make_tensor_value_info("acc", TensorProto.FLOAT, [rows]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [rows])],
        [helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [rows]),
         helper.make_tensor_value_info("out", TensorProto.FLOAT, [rows])])
    scan = helper.make_node("Scan", ["start", "x"], ["last", "stacked"], body=body, num_scan_inputs=1,
                            scan_input_axes=[axis], scan_input_directions=[reverse],
                            scan_output_axes=[out_axis], scan_output_directions=[out_reverse])
    nodes = [helper.make_node("ReduceSum", ["x"], ["start"], axes=[axis], keepdims=0), scan,
             helper.make_node("Mul", ["stacked", "weights"], ["weighted"]),
             helper.make_node("ReduceSum", ["weighted"], ["total"], axes=[out_axis], keepdims=0),
             helper.make_node("Add", ["last", "total"], ["y"])]
    length = x.shape[axis]
    weights = np.linspace(-1.0, 1.0, length * rows).astype(np.float32).reshape((length, rows) if out_axis == 0
                                                                             else (rows, length))
    constants = {"w": np.float32(0.7) * np.ones(rows, np.float32), "weights": weights}
    return make_model(nodes, {"x": x}, ["y"], initializers=constants, opset=11)


@given(axis=st.sampled_from([0, 1]), reverse=st.sampled_from([0, 1]), out_axis=st.sampled_from([0, 1]),
       out_reverse=st.sampled_from([0, 1]), seed=st.integers(0, 2**16))
def test_a_scan_is_unrolled(axis: int, reverse: int, out_axis: int, out_reverse: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((3, 4)).astype(np.float32)
    assert_gradients_match(_scan_model(x, axis, reverse, out_axis, out_reverse), x, rtol=2e-2, atol=2e-3)
