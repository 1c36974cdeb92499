"""``If`` nodes whose condition is known when the gradient graph is built are replaced by their taken branch.

Shapes are concrete in a gradient graph, and so is every tensor that does not depend on the input's
values (see ``_graph``): an ``If`` on such a condition (silero-vad's sample rate, a training flag, a shape
test) computes exactly its taken branch at every input the graph is valid for. Inlining that branch
(its local tensors renamed apart, its outputs bound to the If's outputs by Identity) makes its nodes
ordinary nodes of the graph, differentiated by their own rules: the VJP of the If is the VJP of the branch
it takes. An If whose condition depends on the input's values is left alone (it has no rule: a typed
refusal names it).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def inline_known_ifs(model: Any, values: dict[str, np.ndarray], taken: set[str]) -> Any | None:
    """A copy of ``model`` with every top-level If whose condition is in ``values`` replaced by its taken
    branch, or None when there is none. ``taken``: names in use (new names avoid them; updated)."""
    import onnx

    graph = model.graph
    known = [i for i, node in enumerate(graph.node) if node.op_type == "If" and node.domain in ("", "ai.onnx")
             and node.input[0] in values]
    if not known:
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes: list[Any] = []
    for index, node in enumerate(graph.node):
        if index not in known:
            nodes.append(node)
            continue
        condition = bool(np.asarray(values[node.input[0]]).reshape(-1)[0])
        branch = next(a.g for a in node.attribute if a.name == ("then_branch" if condition else "else_branch"))
        nodes.extend(_inlined(branch, list(node.output), f"{node.name or 'if'}_{index}", taken, copy.graph))
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


def _inlined(branch: Any, outputs: list[str], prefix: str, taken: set[str], graph: Any) -> list[Any]:
    """The branch's nodes with its local tensors renamed, then an Identity per branch output."""
    from onnx import helper

    local = {name for node in branch.node for name in node.output if name} | {t.name for t in branch.initializer}
    renamed = {name: _fresh(f"gradsal_{prefix}_{name}", taken) for name in sorted(local)}
    for tensor in branch.initializer:
        moved = graph.initializer.add()
        moved.CopyFrom(tensor)
        moved.name = renamed[tensor.name]
    nodes = []
    for node in branch.node:
        new = helper.make_node(node.op_type, [renamed.get(n, n) for n in node.input],
                               [renamed.get(n, n) for n in node.output],
                               name=_fresh(node.name, taken) if node.name else None, domain=node.domain)
        new.attribute.extend(_renamed_attributes(node, renamed))
        nodes.append(new)
    for out, branch_out in zip(outputs, branch.output, strict=True):
        source = renamed.get(branch_out.name, branch_out.name)
        nodes.append(helper.make_node("Identity", [source], [out], name=_fresh(f"{prefix}/output", taken)))
    return nodes


def _renamed_attributes(node: Any, renamed: dict[str, str]) -> list[Any]:
    """The node's attributes, with outer-scope reads inside its own subgraphs renamed too."""
    import onnx

    attributes = []
    for attribute in node.attribute:
        copy = onnx.AttributeProto()
        copy.CopyFrom(attribute)
        for sub in ([copy.g] if copy.HasField("g") else []) + list(copy.graphs):
            _rename_reads(sub, renamed)
        attributes.append(copy)
    return attributes


def _rename_reads(graph: Any, renamed: dict[str, str]) -> None:
    own = {vi.name for vi in graph.input} | {t.name for t in graph.initializer} | {
        name for node in graph.node for name in node.output}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name not in own and name in renamed:
                node.input[i] = renamed[name]
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                _rename_reads(sub, {k: v for k, v in renamed.items() if k not in own})
    for out in graph.output:
        if out.name not in own and out.name in renamed:
            out.name = renamed[out.name]


def _fresh(name: str, taken: set[str]) -> str:
    candidate, count = name, 0
    while candidate in taken:
        count += 1
        candidate = f"{name}_{count}"
    taken.add(candidate)
    return candidate


def names_in(graph: Any) -> set[str]:
    """Every tensor and node name a graph and its subgraphs use (onnxruntime wants node names unique)."""
    names = {vi.name for vi in (*graph.input, *graph.output)} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(name for name in (*node.input, *node.output, node.name) if name)
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                names |= names_in(sub)
    return names


def if_conditions(graph: Any) -> list[str]:
    """The condition tensors of a graph's top-level If nodes."""
    return [node.input[0] for node in graph.node if node.op_type == "If" and node.domain in ("", "ai.onnx")]
