"""What the graph rewrites outside the rules share: questions about nodes, and fresh names for new ones.

Inlining If branches, unrolling Loop and Scan, replacing quantised patterns by their float network and
recognising a written-out softmax all edit or read ONNX protos directly (not through a rule context): they
ask whether a node is in the default domain, at which opset the model is, what a node's attributes are and
which nodes read a tensor, and they add nodes and initializers under names that must not clash with the
graph's (onnxruntime wants node names unique too). The answers are written once here; the model-level
queries (producers, constant values, one attribute) are in ``_model_io``. onnx is imported inside the
functions only, so that the package imports without it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

STANDARD_DOMAINS = ("", "ai.onnx")


def is_standard(node: Any) -> bool:
    """True for a node of the default ONNX domain (spelled "" or "ai.onnx")."""
    return node.domain in STANDARD_DOMAINS


def default_opset(model: Any) -> int:
    """The version of the default domain the model imports (0 when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 0)


def attributes(node: Any) -> dict[str, Any]:
    """The node's attributes by name, as onnx's ``get_attribute_value`` gives them."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def subgraphs(attribute: Any) -> list[Any]:
    """The graphs an attribute holds (an If's branch, a Loop's body...), none for other attributes."""
    return ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)


def readers(graph: Any) -> dict[str, list[Any]]:
    """The nodes that read each tensor (as a direct input), in graph order."""
    found: dict[str, list[Any]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            found[name].append(node)
    return found


def downstream(graph: Any, names: Iterable[str],
               reads: Callable[[Any], Iterable[str]] | None = None) -> tuple[set[str], list[Any]]:
    """The tensors computed from ``names`` (``names`` included) and the nodes that compute them, in graph
    order; ``reads(node)`` lists what a node reads (its inputs when not given)."""
    reached, nodes = set(names), []
    for node in graph.node:
        if any(name in reached for name in (node.input if reads is None else reads(node))):
            reached.update(name for name in node.output if name)
            nodes.append(node)
    return reached, nodes


def names_in(graph: Any) -> set[str]:
    """Every tensor and node name a graph and its subgraphs use (onnxruntime wants node names unique)."""
    names = {vi.name for vi in (*graph.input, *graph.output)} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(name for name in (*node.input, *node.output, node.name) if name)
        for attribute in node.attribute:
            for sub in subgraphs(attribute):
                names |= names_in(sub)
    return names


def fresh(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``... the first not in ``taken``; it is added to ``taken``."""
    candidate, count = name, 0
    while candidate in taken:
        count += 1
        candidate = f"{name}_{count}"
    taken.add(candidate)
    return candidate


def add_initializer(graph: Any, value: Any, hint: str, taken: set[str]) -> str:
    """Store ``value`` in ``graph`` as an initializer under a fresh name made from ``hint``; returns it."""
    from onnx import numpy_helper

    name = fresh(hint, taken)
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name
