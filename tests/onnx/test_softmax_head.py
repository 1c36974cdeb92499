"""A softmax written out as Exp/ReduceSum/Div (or Mul(Reciprocal), with or without the max subtracted) at
the default output is a probability head: its logits are explained, as for Softmax, and the gradient is
the logits' closed form; look-alikes that do not normalise per sample are left alone."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gradsal.backends.onnx import LogitsWarning, OnnxBackend

RNG = np.random.default_rng(21)
WEIGHT = RNG.standard_normal((5, 3))


def _model(head: list, initializers: list, opset: int, output: str = "probs") -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]), *head]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["n", 5])],
                              [helper.make_tensor_value_info(output, TensorProto.DOUBLE, None)],
                              [numpy_helper.from_array(WEIGHT, "w"), *initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _axes(name: str, axes: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(axes, np.int64), name)


def _exp_sum_div() -> onnx.ModelProto:  # opset 13: ReduceSum's axes are an input
    return _model([helper.make_node("Exp", ["logits"], ["e"]),
                   helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=1),
                   helper.make_node("Div", ["e", "s"], ["probs"])], [_axes("axes", [1])], 13)


def _max_shifted_reciprocal() -> onnx.ModelProto:  # opset 18: ReduceMax's axes are an input too
    return _model([helper.make_node("ReduceMax", ["logits", "axes"], ["m"], keepdims=1),
                   helper.make_node("Sub", ["logits", "m"], ["z"]),
                   helper.make_node("Exp", ["z"], ["e"]),
                   helper.make_node("ReduceSum", ["e", "axes"], ["s"]),
                   helper.make_node("Reciprocal", ["s"], ["r"]),
                   helper.make_node("Mul", ["r", "e"], ["probs"])], [_axes("axes", [-1])], 18)


def _max_shifted_div_attribute_axes() -> onnx.ModelProto:  # opset 11: axes are attributes
    return _model([helper.make_node("ReduceMax", ["logits"], ["m"], axes=[1]),
                   helper.make_node("Sub", ["logits", "m"], ["z"]),
                   helper.make_node("Exp", ["z"], ["e"]),
                   helper.make_node("ReduceSum", ["e"], ["s"], axes=[1]),
                   helper.make_node("Div", ["e", "s"], ["probs"])], [], 11)


@pytest.mark.parametrize("build", [_exp_sum_div, _max_shifted_reciprocal, _max_shifted_div_attribute_axes])
def test_a_written_out_softmax_explains_its_logits(build) -> None:
    model = build()
    with pytest.warns(LogitsWarning, match=r"'probs' is the softmax \(Exp/ReduceSum/Div\) of 'logits'"):
        backend = OnnxBackend(model)
    assert backend.output_name == "logits"
    x, v = RNG.standard_normal((4, 5)), RNG.standard_normal((4, 3))
    output, grad = backend.vjp(x, v)
    np.testing.assert_allclose(output, x @ WEIGHT, rtol=1e-12)
    np.testing.assert_allclose(grad, v @ WEIGHT.T, rtol=1e-12)  # logits = x W: J^T v = v W^T
    kept = OnnxBackend(model, explain_logits=False)
    assert kept.output_name == "probs"
    np.testing.assert_allclose(kept.forward(x).sum(axis=1), 1.0, rtol=1e-12)  # it is a softmax


def _div_by_constant() -> onnx.ModelProto:
    return _model([helper.make_node("Exp", ["logits"], ["e"]), helper.make_node("Div", ["e", "c"], ["probs"])],
                  [numpy_helper.from_array(np.array(3.0), "c")], 13)


def _sum_over_every_axis() -> onnx.ModelProto:  # no axes: normalised over the batch too
    return _model([helper.make_node("Exp", ["logits"], ["e"]),
                   helper.make_node("ReduceSum", ["e"], ["s"]),
                   helper.make_node("Div", ["e", "s"], ["probs"])], [], 13)


def _sum_over_the_batch() -> onnx.ModelProto:
    return _model([helper.make_node("Exp", ["logits"], ["e"]),
                   helper.make_node("ReduceSum", ["e", "axes"], ["s"]),
                   helper.make_node("Div", ["e", "s"], ["probs"])], [_axes("axes", [0])], 13)


def _sum_of_another_tensor() -> onnx.ModelProto:  # exp(l) / sum(exp(2 l)): not normalised
    return _model([helper.make_node("Exp", ["logits"], ["e"]),
                   helper.make_node("Add", ["logits", "logits"], ["l2"]),
                   helper.make_node("Exp", ["l2"], ["e2"]),
                   helper.make_node("ReduceSum", ["e2", "axes"], ["s"]),
                   helper.make_node("Div", ["e", "s"], ["probs"])], [_axes("axes", [1])], 13)


def _sum_dropping_its_axis() -> onnx.ModelProto:  # keepdims=0: (n, 3) / (n,) broadcasts the wrong way
    return _model([helper.make_node("Exp", ["logits"], ["e"]),
                   helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=0),
                   helper.make_node("Reshape", ["s", "shape"], ["row"]),
                   helper.make_node("Div", ["e", "row"], ["probs"])],
                  [_axes("axes", [1]), _axes("shape", [1, -1])], 13)


@pytest.mark.parametrize("build", [_div_by_constant, _sum_over_every_axis, _sum_over_the_batch,
                                   _sum_of_another_tensor, _sum_dropping_its_axis])
def test_a_look_alike_is_not_taken_for_a_softmax(build) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", LogitsWarning)
        backend = OnnxBackend(build())
    assert backend.output_name == "probs"


def test_a_max_over_other_axes_leaves_the_shifted_tensor_as_the_logits() -> None:
    # softmax over axis 2 of z = l - max over axis 1: a softmax of z, not of l
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], axes=[1]),
             helper.make_node("Sub", ["x", "m"], ["z"]),
             helper.make_node("Exp", ["z"], ["e"]),
             helper.make_node("ReduceSum", ["e"], ["s"], axes=[2]),
             helper.make_node("Div", ["e", "s"], ["probs"])]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["n", 2, 3])],
                              [helper.make_tensor_value_info("probs", TensorProto.DOUBLE, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=8)
    with pytest.warns(LogitsWarning, match="of 'z'"):
        assert OnnxBackend(model).output_name == "z"
