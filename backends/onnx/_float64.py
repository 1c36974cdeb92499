"""A float64 copy of a float32 ONNX model, for gradient checks as strict as ``torch.autograd.gradcheck``.

Every float32 tensor type becomes float64: graph inputs, outputs and value infos, initializers, the
tensors of ``Constant`` and ``ConstantOfShape`` nodes (``value_float(s)`` become a float64 ``value``),
and ``Cast``/``CastLike``/random-operator targets; subgraphs of ``If``/``Loop``/``Scan`` likewise. The
result computes the same function at a precision where central differences agree to about 1e-8, when
onnxruntime has a double kernel for every operator (it has none for ``Conv`` on the CPU, for instance):
whether it does is known only by loading it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _model_io as io
from ._graph_edit import subgraphs

_FLOAT, _DOUBLE = 1, 11  # onnx.TensorProto.FLOAT, DOUBLE
_DTYPE_ATTRIBUTES = {"Cast": "to", "RandomNormal": "dtype", "RandomUniform": "dtype",
                     "RandomNormalLike": "dtype", "RandomUniformLike": "dtype", "EyeLike": "dtype"}


def float64_copy(proto: Any) -> Any:
    """A copy of ``proto`` whose float32 tensors are all float64 (the original is unchanged)."""
    onnx = io.import_onnx()
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    _convert_graph(onnx, copy.graph)
    for function in copy.functions:
        for node in function.node:
            _convert_node(onnx, node)
    return copy


def _convert_graph(onnx: Any, graph: Any) -> None:
    for value_info in (*graph.input, *graph.output, *graph.value_info):
        tensor_type = value_info.type.tensor_type
        if tensor_type.elem_type == _FLOAT:
            tensor_type.elem_type = _DOUBLE
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == _FLOAT:
            graph.initializer[index].CopyFrom(_as_double(onnx, tensor))
    for node in graph.node:
        _convert_node(onnx, node)


def _convert_node(onnx: Any, node: Any) -> None:
    target = _DTYPE_ATTRIBUTES.get(node.op_type)
    for attribute in node.attribute:
        if attribute.name == target and attribute.i == _FLOAT:
            attribute.i = _DOUBLE
        elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == _FLOAT:
            attribute.t.CopyFrom(_as_double(onnx, attribute.t))
        else:
            for graph in subgraphs(attribute):
                _convert_graph(onnx, graph)
    if node.op_type == "Constant":
        _constant_floats_as_tensor(onnx, node)


def _constant_floats_as_tensor(onnx: Any, node: Any) -> None:
    """``Constant(value_float=...)`` makes float32 whatever the graph around it: rewrite it as a tensor."""
    for attribute in list(node.attribute):
        if attribute.name in ("value_float", "value_floats"):
            values = attribute.f if attribute.name == "value_float" else np.array(attribute.floats)
            node.attribute.remove(attribute)
            node.attribute.append(onnx.helper.make_attribute(
                "value", onnx.numpy_helper.from_array(np.asarray(values, dtype=np.float64))))


def _as_double(onnx: Any, tensor: Any) -> Any:
    return onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor).astype(np.float64), tensor.name)
