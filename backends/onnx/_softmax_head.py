"""Recognising a softmax written out as operators, so that its logits are explained as for ``Softmax``.

Exporters and hand-written graphs often spell ``softmax(z) = exp(z) / sum_A exp(z)`` as
``Div(Exp(z), ReduceSum(Exp(z), axes=A, keepdims=1))`` or ``Mul(Exp(z), Reciprocal(ReduceSum(...)))``,
usually with the max subtracted first for stability, ``z = Sub(l, ReduceMax(l, axes=A, keepdims=1))``,
which leaves the softmax unchanged: the logits are then ``l``. The sum must read the very tensor the
numerator is, keep its reduced axes, and name its axes, none of them the batch axis 0 (a sum over the
batch normalises across samples: no probability head).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_STANDARD = ("", "ai.onnx")


def softmax_logits(node: Any, graph: Any) -> str | None:
    """The logits of the softmax whose last node is ``node`` (a Div or a Mul) in ``graph``, or None."""
    if node.op_type not in ("Div", "Mul") or node.domain not in _STANDARD or len(node.input) != 2:
        return None
    made_by = {name: producer for producer in graph.node for name in producer.output if name}
    if node.op_type == "Div":
        numerator, total = node.input[0], node.input[1]
    elif node.op_type == "Mul":
        found = _exp_times_reciprocal(node, made_by)
        if found is None:
            return None
        numerator, total = found
    else:
        return None
    exp = made_by.get(numerator)
    summed = made_by.get(total)
    if exp is None or exp.op_type != "Exp" or exp.domain not in _STANDARD:
        return None
    if summed is None or summed.op_type != "ReduceSum" or summed.input[0] != numerator:
        return None
    axes = _reduced_axes(summed, graph)
    if axes is None:
        return None
    logits = exp.input[0]
    shifted = made_by.get(logits)
    if shifted is not None and shifted.op_type == "Sub" and shifted.domain in _STANDARD:
        maximum = made_by.get(shifted.input[1])
        if (maximum is not None and maximum.op_type == "ReduceMax" and maximum.input[0] == shifted.input[0]
                and _reduced_axes(maximum, graph) == axes):
            return shifted.input[0]  # subtracting the max along the softmax's axes leaves it unchanged
    return logits


def _exp_times_reciprocal(node: Any, made_by: dict[str, Any]) -> tuple[str, str] | None:
    """``(numerator, the sum)`` for ``Mul(e, Reciprocal(s))`` in either operand order."""
    for numerator, other in (node.input, node.input[::-1]):
        reciprocal = made_by.get(other)
        if reciprocal is not None and reciprocal.op_type == "Reciprocal" and reciprocal.domain in _STANDARD:
            return numerator, reciprocal.input[0]
    return None


def _reduced_axes(node: Any, graph: Any) -> frozenset[int] | None:
    """The axes a ReduceSum/ReduceMax with ``keepdims=1`` reduces, from its attribute or its constant
    second input; None when it drops them, names none (all axes) or names the batch axis 0."""
    from onnx import helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attributes.get("keepdims", 1) != 1:
        return None
    if "axes" in attributes:
        axes = list(attributes["axes"])
    elif len(node.input) > 1 and node.input[1]:
        found = _constant(graph, node.input[1])
        if found is None:
            return None
        axes = [int(a) for a in found.reshape(-1)]
    else:
        return None
    if not axes or 0 in axes:
        return None
    return frozenset(axes)


def _constant(graph: Any, name: str) -> np.ndarray | None:
    """The value of an initializer (not overridable as an input) or a ``Constant`` node's output."""
    from onnx import numpy_helper

    if any(vi.name == name for vi in graph.input):
        return None
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if (node.op_type == "Constant" and node.output[0] == name and len(node.attribute) == 1
                and node.attribute[0].name == "value"):
            return numpy_helper.to_array(node.attribute[0].t)
    return None
