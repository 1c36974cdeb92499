"""Recognising quantised graphs, so that their refusal names the quantisation.

In a quantised model the input is rounded to integers (``QuantizeLinear``, ``DynamicQuantizeLinear``),
multiplied in integer arithmetic (``ConvInteger``, ``MatMulInteger``, ``QLinearConv`` ...) and scaled
back (``DequantizeLinear``, or a ``Cast`` and a ``Mul``). The function of x it computes is piecewise
constant: its gradient is zero almost everywhere, and the only float path left (the dynamic scale) would
give a meaningless one. The rule-by-rule refusal then names a ``Cast`` from int32, which misleads; this
module finds the quantisation operators that lie between the input and the output (weight-only
quantisation, a ``DequantizeLinear`` of a constant weight, does not: it is off the input's path) so that
the refusal says what the model is.
"""

from __future__ import annotations

from typing import Any

from ...core.errors import UnsupportedOperatorError
from ._graph_edit import downstream

QUANTISATION_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
    "QLinearConv", "QLinearMatMul",
    # onnxruntime's contrib operators (domain com.microsoft)
    "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSoftmax", "QGemm", "QAttention", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QuantizeBFP", "DequantizeBFP",
})


def nodes_between(graph: Any, source: str, output: str, reads: Any) -> list[Any]:
    """The nodes that depend on ``source`` (through any input) and that ``output`` depends on."""
    _, after = downstream(graph, [source], reads)
    needed = {output}
    between = []
    for node in reversed(after):
        if any(name in needed for name in node.output):
            needed.update(reads(node))
            between.append(node)
    return between[::-1]


def refuse_quantisation(graph: Any, source: str, output: str, reads: Any, opset: int) -> None:
    """Raise :class:`UnsupportedOperatorError` naming the quantisation if quantisation operators lie
    between ``source`` and ``output``; ``reads(node)`` lists what a node reads (subgraphs included)."""
    found = [node for node in nodes_between(graph, source, output, reads) if node.op_type in QUANTISATION_OPS]
    if not found:
        return
    kinds = ", ".join(sorted({node.op_type for node in found}))
    first = found[0]
    raise UnsupportedOperatorError(
        f"the model is quantised: {kinds} ({len(found)} node(s), the first {first.name or '(unnamed)'!r}, opset "
        f"{opset}) lie between {source!r} and the explained output {output!r}. Quantised arithmetic rounds its "
        "inputs to integers, so the model is piecewise constant in them and has no useful gradient. Explain "
        "the float model it was quantised from; or pass OnnxBackend(..., quantised='straight_through') to "
        "differentiate QuantizeLinear->DequantizeLinear pairs and DynamicQuantizeLinear->ConvInteger/MatMulInteger "
        "as the float network they approximate (other quantised operators stay refused); or pass "
        "fallback='finite_differences' to differentiate it numerically (steps must then exceed the quantisation step)."
    )
