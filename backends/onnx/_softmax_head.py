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

from . import _model_io as io
from ._graph_edit import is_standard


def softmax_logits(node: Any, graph: Any, made_by: dict[str, Any]) -> str | None:
    """The logits of the softmax whose last node is ``node`` (a Div or a Mul) in ``graph``, or None;
    ``made_by``: the graph's producers (``_model_io.producers``)."""
    if node.op_type not in ("Div", "Mul") or not is_standard(node) or len(node.input) != 2:
        return None
    if node.op_type == "Div":
        numerator, total = node.input[0], node.input[1]
    else:
        found = _exp_times_reciprocal(node, made_by)
        if found is None:
            return None
        numerator, total = found
    exp = made_by.get(numerator)
    summed = made_by.get(total)
    if exp is None or exp.op_type != "Exp" or not is_standard(exp):
        return None
    if summed is None or summed.op_type != "ReduceSum" or summed.input[0] != numerator:
        return None
    axes = _reduced_axes(summed, graph)
    if axes is None:
        return None
    logits = exp.input[0]
    shifted = made_by.get(logits)
    if shifted is not None and shifted.op_type == "Sub" and is_standard(shifted):
        maximum = made_by.get(shifted.input[1])
        if (maximum is not None and maximum.op_type == "ReduceMax" and maximum.input[0] == shifted.input[0]
                and _reduced_axes(maximum, graph) == axes):
            return shifted.input[0]  # subtracting the max along the softmax's axes leaves it unchanged
    return logits


def _exp_times_reciprocal(node: Any, made_by: dict[str, Any]) -> tuple[str, str] | None:
    """``(numerator, the sum)`` for ``Mul(e, Reciprocal(s))`` in either operand order."""
    for numerator, other in (node.input, node.input[::-1]):
        reciprocal = made_by.get(other)
        if reciprocal is not None and reciprocal.op_type == "Reciprocal" and is_standard(reciprocal):
            return numerator, reciprocal.input[0]
    return None


def _reduced_axes(node: Any, graph: Any) -> frozenset[int] | None:
    """The axes a ReduceSum/ReduceMax with ``keepdims=1`` reduces, from its attribute or its constant
    second input; None when it drops them, names none (all axes) or names the batch axis 0."""
    if io.node_attribute(node, "keepdims", 1) != 1:
        return None
    axes = io.node_attribute(node, "axes")
    if axes is not None:
        axes = list(axes)
    elif len(node.input) > 1 and node.input[1]:
        found = io.constant_value(graph, node.input[1])
        if found is None:
            return None
        axes = [int(a) for a in found.reshape(-1)]
    else:
        return None
    if not axes or 0 in axes:
        return None
    return frozenset(axes)
