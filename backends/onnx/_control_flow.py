"""Control flow known when the gradient graph is built, written out: If branches inlined, Loop and Scan unrolled.

Shapes are concrete in a gradient graph, and so is every tensor that does not depend on the input's
values (see ``_graph``): an ``If`` on such a condition (silero-vad's sample rate, a training flag, a shape
test) computes exactly its taken branch at every input the graph is valid for. Inlining that branch
(its local tensors renamed apart, its outputs bound to the If's outputs by Identity) makes its nodes
ordinary nodes of the graph, differentiated by their own rules: the VJP of the If is the VJP of the branch
it takes. A Loop of known trip count and a Scan over a known length are unrolled the same way, one copy of
the body per iteration with the carried values threaded through and the per-iteration outputs stacked. An
If whose condition (or a Loop whose trip count) depends on the input's values is left alone (it has no
rule: a typed refusal names it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _graph_edit as edit
from . import _model_io as io
from .rules.emit import optional_input


def inline_known_ifs(model: Any, values: dict[str, np.ndarray], taken: set[str]) -> Any | None:
    """A copy of ``model`` with every top-level If whose condition is in ``values`` replaced by its taken
    branch, or None when there is none. ``taken``: names in use (new names avoid them; updated)."""
    return _expanded(model, lambda node: node.op_type == "If" and edit.is_standard(node) and node.input[0] in values,
                     lambda node, index, graph: _inlined(node, values, f"{node.name or 'if'}_{index}", taken, graph))


def _inlined(node: Any, values: dict[str, np.ndarray], prefix: str, taken: set[str], graph: Any) -> list[Any]:
    """The taken branch's nodes with its local tensors renamed, then an Identity per If output."""
    condition = bool(np.asarray(values[node.input[0]]).reshape(-1)[0])
    branch = io.node_attribute(node, "then_branch" if condition else "else_branch")
    nodes, results = _body_copy(branch, {}, prefix, taken, graph)
    return nodes + _identities(node.output, results, prefix, taken)


def _identities(outputs: Sequence[str], values: Sequence[str], prefix: str, taken: set[str]) -> list[Any]:
    """An Identity from each value to its output (skipping the outputs the node leaves unnamed)."""
    from onnx import helper

    return [helper.make_node("Identity", [value], [out], name=edit.fresh(f"{prefix}/output", taken))
            for out, value in zip(outputs, values, strict=True) if out]


def _stacked(values: Sequence[str], out: str, axis: int, prefix: str, taken: set[str], graph: Any,
             opset: int) -> list[Any]:
    """Nodes stacking ``values`` along a new axis ``axis`` into ``out``: an Unsqueeze of each, one Concat."""
    from onnx import helper

    nodes, parts = [], []
    axes = ""  # Unsqueeze takes its axes as an input from opset 13
    if opset >= 13:
        axes = edit.add_initializer(graph, np.array([axis], np.int64), f"gradsal_{prefix}_axes", taken)
    for value in values:
        name = edit.fresh(f"gradsal_{prefix}_stacked", taken)
        if axes:
            nodes.append(helper.make_node("Unsqueeze", [value, axes], [name], name=edit.fresh(name, taken)))
        else:
            nodes.append(helper.make_node("Unsqueeze", [value], [name], axes=[axis], name=edit.fresh(name, taken)))
        parts.append(name)
    nodes.append(helper.make_node("Concat", parts, [out], axis=axis, name=edit.fresh(f"{prefix}/scan", taken)))
    return nodes


def _body_copy(body: Any, bound: dict[str, str], prefix: str, taken: set[str],
               graph: Any) -> tuple[list[Any], list[str]]:
    """(nodes, output names) of a copy of a subgraph with its local tensors renamed apart and its inputs
    read from the tensors ``bound`` names; its initializers move to ``graph``."""
    from onnx import helper

    local = {name for node in body.node for name in node.output if name} | {t.name for t in body.initializer}
    renamed = dict(bound) | {name: edit.fresh(f"gradsal_{prefix}_{name}", taken) for name in sorted(local)}
    for tensor in body.initializer:
        moved = graph.initializer.add()
        moved.CopyFrom(tensor)
        moved.name = renamed[tensor.name]
    nodes = []
    for node in body.node:
        new = helper.make_node(node.op_type, [renamed.get(n, n) for n in node.input],
                               [renamed.get(n, n) for n in node.output],
                               name=edit.fresh(node.name, taken) if node.name else None, domain=node.domain)
        new.attribute.extend(_renamed_attributes(node, renamed))
        nodes.append(new)
    return nodes, [renamed.get(out.name, out.name) for out in body.output]


MAX_UNROLLED_ITERATIONS = 256


def unroll_known_loops(model: Any, values: dict[str, np.ndarray], taken: set[str], opset: int) -> Any | None:
    """A copy of ``model`` with every top-level Loop of known trip count unrolled, or None when there is none.

    A Loop qualifies when its trip count ``M`` is known at build time (1 .. ``MAX_UNROLLED_ITERATIONS``), its
    initial condition is absent or a known true, and its body passes the condition through unchanged (as
    exported ``for`` loops do): it then runs exactly ``M`` times, and its unrolled copies (the iteration
    number a constant, the carried values threaded through) compute the same outputs; scan outputs are the
    per-iteration values stacked on a new first axis."""
    return _expanded(model, lambda node: _unrollable(node, values),
                     lambda node, index, graph: _unrolled_loop(
                         node, int(np.asarray(values[node.input[0]]).reshape(-1)[0]),
                         f"{node.name or 'loop'}_{index}", taken, graph, opset))


def _expanded(model: Any, chosen: Any, expand: Any) -> Any | None:
    """A copy of ``model`` whose top-level nodes for which ``chosen(node)`` holds are replaced, in place, by
    ``expand(node, index, copy.graph)``; None when no node is chosen."""
    import onnx

    if not any(chosen(node) for node in model.graph.node):
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes: list[Any] = []
    for index, node in enumerate(model.graph.node):
        nodes.extend(expand(node, index, copy.graph) if chosen(node) else [node])
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


def _unrollable(node: Any, values: dict[str, np.ndarray]) -> bool:
    if node.op_type != "Loop" or not edit.is_standard(node):
        return False
    trip, condition = optional_input(node, 0), optional_input(node, 1)
    if not trip or trip not in values or (condition and (condition not in values or
                                                         not bool(np.asarray(values[condition]).reshape(-1)[0]))):
        return False
    if not 1 <= int(np.asarray(values[trip]).reshape(-1)[0]) <= MAX_UNROLLED_ITERATIONS:
        return False
    body = io.node_attribute(node, "body")
    condition_in, condition_out = body.input[1].name, body.output[0].name
    passes_through = condition_out == condition_in or any(
        n.op_type == "Identity" and list(n.output) == [condition_out] and list(n.input) == [condition_in]
        for n in body.node)
    return passes_through


def _unrolled_loop(node: Any, trips: int, prefix: str, taken: set[str], graph: Any, opset: int) -> list[Any]:
    body = io.node_attribute(node, "body")
    carried = list(node.input[2:])
    n_carried = len(carried)
    nodes: list[Any] = []
    true_name = edit.add_initializer(graph, np.array(True), f"gradsal_{prefix}_true", taken)
    scans: list[list[str]] = [[] for _ in body.output[1 + n_carried:]]
    for i in range(trips):
        iteration = edit.add_initializer(graph, np.array(i, np.int64), f"gradsal_{prefix}_iteration_{i}", taken)
        bound = {body.input[0].name: iteration, body.input[1].name: true_name}
        bound |= {vi.name: value for vi, value in zip(body.input[2:], carried, strict=True)}
        copied, results = _body_copy(body, bound, f"{prefix}_{i}", taken, graph)
        nodes.extend(copied)
        carried = results[1:1 + n_carried]
        for scan, value in zip(scans, results[1 + n_carried:], strict=True):
            scan.append(value)
    nodes += _identities(node.output[:n_carried], carried, prefix, taken)
    for out, values_ in zip(node.output[n_carried:], scans, strict=False):
        if out:
            nodes += _stacked(values_, out, 0, prefix, taken, graph, opset)
    return nodes


def _renamed_attributes(node: Any, renamed: dict[str, str]) -> list[Any]:
    """The node's attributes, with outer-scope reads inside its own subgraphs renamed too."""
    import onnx

    attributes = []
    for attribute in node.attribute:
        copy = onnx.AttributeProto()
        copy.CopyFrom(attribute)
        for sub in edit.subgraphs(copy):
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
            for sub in edit.subgraphs(attribute):
                _rename_reads(sub, {k: v for k, v in renamed.items() if k not in own})
    for out in graph.output:
        if out.name not in own and out.name in renamed:
            out.name = renamed[out.name]


def if_conditions(graph: Any) -> list[str]:
    """The condition tensors of a graph's top-level If nodes."""
    return [node.input[0] for node in graph.node if node.op_type == "If" and edit.is_standard(node)]


def unroll_scans(model: Any, shapes: dict[str, tuple[int, ...]], taken: set[str], opset: int) -> Any | None:
    """A copy of ``model`` with every top-level Scan (opset 9+) unrolled over its concrete sequence length
    (1 .. ``MAX_UNROLLED_ITERATIONS``), or None when there is none.

    Iteration t reads slice t of each scan input along its axis (from the end for a reverse one), threads
    the states through, and the scan outputs' slices are stacked along their axes (in reverse order for a
    reverse one), as ONNX defines Scan."""
    return _expanded(model, lambda node: _scan_length(node, shapes, opset) is not None,
                     lambda node, index, graph: _unrolled_scan(
                         node, _scan_length(node, shapes, opset), f"{node.name or 'scan'}_{index}", taken, graph,
                         opset))


def _ints(node: Any, name: str, count: int) -> list[int]:
    """An integer-list attribute of Scan, ``count`` zeros (its default) when absent."""
    return list(io.node_attribute(node, name, [0] * count))


def _scan_length(node: Any, shapes: dict[str, tuple[int, ...]], opset: int) -> int | None:
    if node.op_type != "Scan" or not edit.is_standard(node) or opset < 9:
        return None
    scans = int(io.node_attribute(node, "num_scan_inputs"))
    scan_inputs = list(node.input[len(node.input) - scans:])
    axes = _ints(node, "scan_input_axes", scans)
    lengths = set()
    for name, axis in zip(scan_inputs, axes, strict=True):
        if name not in shapes:
            return None
        shape = shapes[name]
        lengths.add(shape[axis % len(shape)])
    if len(lengths) != 1:
        return None
    length = lengths.pop()
    return length if 1 <= length <= MAX_UNROLLED_ITERATIONS else None


def _unrolled_scan(node: Any, length: int, prefix: str, taken: set[str], graph: Any, opset: int) -> list[Any]:
    from onnx import helper

    body = io.node_attribute(node, "body")
    scans = int(io.node_attribute(node, "num_scan_inputs"))
    n_states = len(node.input) - scans
    states = list(node.input[:n_states])
    scan_inputs = list(node.input[n_states:])
    in_axes, in_reverse = _ints(node, "scan_input_axes", scans), _ints(node, "scan_input_directions", scans)
    n_outputs = len(body.output) - n_states
    out_axes, out_reverse = _ints(node, "scan_output_axes", n_outputs), _ints(node, "scan_output_directions", n_outputs)
    nodes: list[Any] = []
    slices: list[list[str]] = [[] for _ in range(n_outputs)]
    for t in range(length):
        bound = {vi.name: value for vi, value in zip(body.input[:n_states], states, strict=True)}
        for vi, name, axis, reverse in zip(body.input[n_states:], scan_inputs, in_axes, in_reverse, strict=True):
            picked = edit.fresh(f"gradsal_{prefix}_slice", taken)
            index = edit.add_initializer(graph, np.array(length - 1 - t if reverse else t, np.int64),
                                         f"gradsal_{prefix}_index", taken)
            nodes.append(helper.make_node("Gather", [name, index], [picked], axis=axis, name=edit.fresh(picked, taken)))
            bound[vi.name] = picked
        copied, results = _body_copy(body, bound, f"{prefix}_{t}", taken, graph)
        nodes.extend(copied)
        states = results[:n_states]
        for collected, value in zip(slices, results[n_states:], strict=True):
            collected.append(value)
    nodes += _identities(node.output[:n_states], states, prefix, taken)
    for out, collected, axis, reverse in zip(node.output[n_states:], slices, out_axes, out_reverse, strict=False):
        if out:
            nodes += _stacked(collected[::-1] if reverse else collected, out, axis, prefix, taken, graph, opset)
    return nodes
