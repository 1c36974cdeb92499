"""Small quantised ONNX graphs built by hand, shared by the quantisation tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DYNAMIC_WEIGHT = np.array([[3, 200], [17, 90], [128, 40]], np.uint8)  # zero point 128, scale 0.01


def dynamically_quantised_matmul() -> onnx.ModelProto:
    """``y = DynamicQuantizeLinear(x) @ W`` (x: (n, 3), y: (n, 2)), as onnxruntime's quantize_dynamic writes it."""
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulInteger", ["xq", "w", "xz", "wz"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xs", "ws"], ["scale"]),
        helper.make_node("Mul", ["accf", "scale"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "dq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
                              [numpy_helper.from_array(DYNAMIC_WEIGHT, "w"),
                               numpy_helper.from_array(np.array(128, np.uint8), "wz"),
                               numpy_helper.from_array(np.array(0.01, np.float32), "ws")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
