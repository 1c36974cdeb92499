"""Straight-through differentiation of quantised graphs: the gradient of the float network they approximate.

A quantised network rounds its activations to integers, so it is piecewise constant in its input and its
true gradient is zero almost everywhere. The straight-through estimator (Bengio, Léonard & Courville 2013,
"Estimating or propagating gradients through stochastic neurons") takes the rounding's derivative as 1:
``d round(x / s) * s / dx = 1``, which is the gradient of the float network the quantised one approximates.
This module rewrites a copy of the graph into that float network before differentiation:

- ``DequantizeLinear(QuantizeLinear(x, s, z), s, z)`` becomes ``Clip(x, s (qmin - z), s (qmax - z))``:
  the identity up to rounding inside the integer type's range, saturated outside it (the clipped
  straight-through estimator of quantisation-aware training; it keeps a ReLU that a quantiser folded into
  the range of an unsigned zero point);
- the dynamic-quantisation chain ``Mul(Cast(MatMulInteger(DynamicQuantizeLinear(x), Wq, ., Wz)),
  x_scale * W_scale)`` (and its ``ConvInteger`` twin) becomes ``MatMul(x, W)`` (``Conv(x, W)``) with the
  dequantised weights ``W = (Wq - Wz) * W_scale``.

Only these patterns in the main graph are rewritten; other quantised operators (``QLinearConv`` and the
like) stay, and the gradient builder refuses them by name. The forward pass is never rewritten: the
backend's outputs are the quantised model's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _graph_edit as edit
from . import _model_io as io
from .rules.emit import optional_input


class StraightThroughWarning(UserWarning):
    """gradsal differentiates a quantised model as the float network it approximates (straight-through)."""


_INTEGER_OPS = {"MatMulInteger": "MatMul", "ConvInteger": "Conv"}
_CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def float_equivalent(model: Any) -> tuple[Any, int]:
    """``(copy of model with its quantised patterns replaced by float operations, how many were)``.

    ``model`` itself is never changed; with no quantised node at all it is returned as it is (count 0),
    and with no pattern found the copy equals it.
    """
    import onnx

    if not any(node.op_type in ("DequantizeLinear", *_INTEGER_OPS) and edit.is_standard(node)
               for node in model.graph.node):
        return model, 0
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    constants = io.constant_values(graph)
    # Clip takes its bounds as inputs from opset 11
    opset = edit.default_opset(copy)
    taken = edit.names_in(graph)
    made_by = io.producers(graph)
    readers = edit.readers(graph)
    replaced: dict[int, Any] = {}  # id(node replaced) -> its float replacement
    new_weights: list[Any] = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and edit.is_standard(node) and opset >= 11:
            found_pair = _qdq_clip(node, made_by, constants, taken)
            if found_pair is None:
                continue
            replacement, bounds = found_pair
            new_weights.extend(bounds)
        elif node.op_type in _INTEGER_OPS and edit.is_standard(node):
            found = _dynamic_chain(node, made_by, readers, constants, taken)
            if found is None:
                continue
            end, replacement, weight = found
            new_weights.append(weight)
            replaced[id(end)] = replacement
            continue
        else:
            continue
        replaced[id(node)] = replacement
    if not replaced:
        return copy, 0
    # The replaced chains' other nodes stay (an intermediate tensor may be explained or read elsewhere);
    # nothing reads their results on the way to the outputs any more, so the gradient builder drops them.
    nodes = [replaced.get(id(node), node) for node in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_weights)
    return copy, len(replaced)


def _same(a: str, b: str, constants: dict[str, np.ndarray]) -> bool:
    """Two optional inputs that hold the same value (the same name, both absent, or equal constants)."""
    if a == b:
        return True
    if a in constants and b in constants:
        return constants[a].dtype == constants[b].dtype and np.array_equal(constants[a], constants[b])
    return False


def _qdq_clip(dequantize: Any, made_by: dict[str, Any], constants: dict[str, np.ndarray],
              taken: set[str]) -> tuple[Any, list] | None:
    """``(Clip(x, low, high), [low, high])`` for a DequantizeLinear of a QuantizeLinear of x with the same
    constant scalar scale and integer zero point; None otherwise (per-axis or float8 quantisation). New
    names avoid ``taken``."""
    from onnx import helper, numpy_helper

    quantize = made_by.get(dequantize.input[0])
    if quantize is None or quantize.op_type != "QuantizeLinear" or not edit.is_standard(quantize):
        return None
    for position in (1, 2):
        if not _same(optional_input(quantize, position), optional_input(dequantize, position), constants):
            return None
    q_attributes = {k: v for k, v in edit.attributes(quantize).items() if k != "saturate"}
    dq_attributes = edit.attributes(dequantize)
    if q_attributes.get("axis", 1) != dq_attributes.get("axis", 1) or \
            q_attributes.get("block_size", 0) != dq_attributes.get("block_size", 0):
        return None
    scale_name = quantize.input[1]
    zero_name = optional_input(quantize, 2)
    if scale_name not in constants or (zero_name and zero_name not in constants) or "output_dtype" in q_attributes:
        return None
    scale = constants[scale_name]
    zero = constants[zero_name] if zero_name else np.zeros((), np.uint8)
    if scale.size != 1 or zero.size != 1 or zero.dtype.kind not in "iu":
        return None
    limits = np.iinfo(zero.dtype)
    zero_value, scale_value = float(zero.reshape(())), float(scale.reshape(()))
    name = dequantize.name or dequantize.output[0]
    bounds = [numpy_helper.from_array(np.array((limit - zero_value) * scale_value, scale.dtype),
                                      edit.fresh(f"{name}_{side}", taken))
              for limit, side in ((limits.min, "low"), (limits.max, "high"))]
    clip = helper.make_node("Clip", [quantize.input[0], bounds[0].name, bounds[1].name], [dequantize.output[0]],
                            name=edit.fresh(f"{name}_straight_through", taken))
    return clip, bounds


def _only_reader(name: str, readers: dict[str, list[Any]], op_type: str) -> Any | None:
    found = readers.get(name, [])
    return found[0] if len(found) == 1 and found[0].op_type == op_type else None


def _dynamic_chain(integer_op: Any, made_by: dict[str, Any], readers: dict[str, list[Any]],
                   constants: dict[str, np.ndarray], taken: set[str]) -> tuple[Any, Any, Any] | None:
    """``(last Mul of the chain, its float replacement, the dequantised weight)`` for a MatMulInteger or
    ConvInteger whose first operand is a DynamicQuantizeLinear of x and whose second is a constant, its
    result cast to float and multiplied by ``x_scale`` and a constant weight scale; None otherwise. New
    names avoid ``taken``."""
    from onnx import helper, numpy_helper

    quantize = made_by.get(integer_op.input[0])
    if quantize is None or quantize.op_type != "DynamicQuantizeLinear":
        return None
    x, x_scale, x_zero = quantize.input[0], quantize.output[1], quantize.output[2]
    inputs = [*integer_op.input, "", "", ""]
    if inputs[1] not in constants or inputs[2] not in ("", x_zero) or (inputs[3] and inputs[3] not in constants):
        return None
    cast = _only_reader(integer_op.output[0], readers, "Cast")
    if cast is None:
        return None
    to = io.node_attribute(cast, "to")
    if to not in (1, 10, 11):  # float, float16, double
        return None
    scaled = _scaled(cast.output[0], x_scale, made_by, readers, constants)
    if scaled is None:
        return None
    end, weight_scale = scaled
    weight = _dequantised(integer_op.op_type, constants[inputs[1]],
                          constants[inputs[3]] if inputs[3] else np.zeros((), np.int32), weight_scale,
                          helper.tensor_dtype_to_np_dtype(to))
    if weight is None:
        return None
    weight_name = edit.fresh(f"{integer_op.output[0]}_dequantised_weight", taken)
    attributes = {k: v for k, v in edit.attributes(integer_op).items() if k in _CONV_ATTRIBUTES}
    name = edit.fresh(f"{integer_op.name or integer_op.output[0]}_straight_through", taken)
    replacement = helper.make_node(_INTEGER_OPS[integer_op.op_type], [x, weight_name], [end.output[0]], name=name,
                                   **attributes)
    return end, replacement, numpy_helper.from_array(weight, weight_name)


def _scaled(product: str, x_scale: str, made_by: dict[str, Any], readers: dict[str, list[Any]],
            constants: dict[str, np.ndarray]) -> tuple[Any, np.ndarray] | None:
    """``(the Mul that ends the rescaling of product, the constant weight scale)``: either
    ``Mul(product, Mul(x_scale, w_scale))`` or ``Mul(Mul(product, x_scale), w_scale)`` (any operand order)."""
    first = _only_reader(product, readers, "Mul")
    if first is None:
        return None
    other = first.input[1] if first.input[0] == product else first.input[0]
    if other == x_scale:
        second = _only_reader(first.output[0], readers, "Mul")
        if second is None:
            return None
        scale = second.input[1] if second.input[0] == first.output[0] else second.input[0]
        return (second, constants[scale]) if scale in constants else None
    scales = made_by.get(other)
    if scales is None or scales.op_type != "Mul" or x_scale not in scales.input:
        return None
    scale = scales.input[1] if scales.input[0] == x_scale else scales.input[0]
    return (first, constants[scale]) if scale in constants else None


def _dequantised(op_type: str, quantised: np.ndarray, zero_point: np.ndarray, scale: np.ndarray,
                 dtype: np.dtype) -> np.ndarray | None:
    """``(Wq - Wz) * W_scale`` in the layout the integer operator uses: per output column for MatMulInteger
    (the last axis of B and of the result), per output channel for ConvInteger (the first axis of W,
    the second of the result); None for a scale that does not broadcast that way."""
    centred = quantised.astype(np.float64) - zero_point.astype(np.float64).reshape(
        zero_point.shape if op_type == "MatMulInteger" or zero_point.size == 1 else (-1,) + (1,) * (quantised.ndim - 1))
    scale = scale.astype(np.float64)
    if scale.size == 1:
        return (centred * scale.reshape(())).astype(dtype)
    if op_type == "MatMulInteger" and scale.ndim == 1 and scale.shape[0] == quantised.shape[-1]:
        return (centred * scale).astype(dtype)
    channels = quantised.shape[0]
    if op_type == "ConvInteger" and scale.shape == (channels,) + (1,) * (quantised.ndim - 2):
        return (centred * scale.reshape((channels,) + (1,) * (quantised.ndim - 1))).astype(dtype)
    return None

