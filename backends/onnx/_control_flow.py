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

    nodes, results = _body_copy(branch, {}, prefix, taken, graph)
    for out, source in zip(outputs, results, strict=True):
        nodes.append(helper.make_node("Identity", [source], [out], name=_fresh(f"{prefix}/output", taken)))
    return nodes


def _body_copy(body: Any, bound: dict[str, str], prefix: str, taken: set[str],
               graph: Any) -> tuple[list[Any], list[str]]:
    """(nodes, output names) of a copy of a subgraph with its local tensors renamed apart and its inputs
    read from the tensors ``bound`` names; its initializers move to ``graph``."""
    from onnx import helper

    local = {name for node in body.node for name in node.output if name} | {t.name for t in body.initializer}
    renamed = dict(bound) | {name: _fresh(f"gradsal_{prefix}_{name}", taken) for name in sorted(local)}
    for tensor in body.initializer:
        moved = graph.initializer.add()
        moved.CopyFrom(tensor)
        moved.name = renamed[tensor.name]
    nodes = []
    for node in body.node:
        new = helper.make_node(node.op_type, [renamed.get(n, n) for n in node.input],
                               [renamed.get(n, n) for n in node.output],
                               name=_fresh(node.name, taken) if node.name else None, domain=node.domain)
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
    if node.op_type != "Loop" or node.domain not in ("", "ai.onnx"):
        return False
    trip = node.input[0] if node.input else ""
    condition = node.input[1] if len(node.input) > 1 else ""
    if not trip or trip not in values or (condition and (condition not in values or
                                                         not bool(np.asarray(values[condition]).reshape(-1)[0]))):
        return False
    if not 1 <= int(np.asarray(values[trip]).reshape(-1)[0]) <= MAX_UNROLLED_ITERATIONS:
        return False
    body = next(a.g for a in node.attribute if a.name == "body")
    condition_in, condition_out = body.input[1].name, body.output[0].name
    passes_through = condition_out == condition_in or any(
        n.op_type == "Identity" and list(n.output) == [condition_out] and list(n.input) == [condition_in]
        for n in body.node)
    return passes_through


def _unrolled_loop(node: Any, trips: int, prefix: str, taken: set[str], graph: Any, opset: int) -> list[Any]:
    from onnx import helper, numpy_helper

    body = next(a.g for a in node.attribute if a.name == "body")
    carried = list(node.input[2:])
    n_carried = len(carried)
    nodes: list[Any] = []
    true_name = _fresh(f"gradsal_{prefix}_true", taken)
    graph.initializer.append(numpy_helper.from_array(np.array(True), true_name))
    scans: list[list[str]] = [[] for _ in body.output[1 + n_carried:]]
    for i in range(trips):
        iteration = _fresh(f"gradsal_{prefix}_iteration_{i}", taken)
        graph.initializer.append(numpy_helper.from_array(np.array(i, np.int64), iteration))
        bound = {body.input[0].name: iteration, body.input[1].name: true_name}
        bound |= {vi.name: value for vi, value in zip(body.input[2:], carried, strict=True)}
        copied, results = _body_copy(body, bound, f"{prefix}_{i}", taken, graph)
        nodes.extend(copied)
        carried = results[1:1 + n_carried]
        for scan, value in zip(scans, results[1 + n_carried:], strict=True):
            scan.append(value)
    for out, value in zip(node.output[:n_carried], carried, strict=True):
        if out:
            nodes.append(helper.make_node("Identity", [value], [out], name=_fresh(f"{prefix}/output", taken)))
    for out, values_ in zip(node.output[n_carried:], scans, strict=False):
        if not out:
            continue
        stacked = []
        for value in values_:
            name = _fresh(f"gradsal_{prefix}_stacked", taken)
            if opset >= 13:
                axes = _fresh(f"gradsal_{prefix}_axes", taken)
                graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), axes))
                nodes.append(helper.make_node("Unsqueeze", [value, axes], [name], name=_fresh(name, taken)))
            else:
                nodes.append(helper.make_node("Unsqueeze", [value], [name], axes=[0], name=_fresh(name, taken)))
            stacked.append(name)
        nodes.append(helper.make_node("Concat", stacked, [out], axis=0, name=_fresh(f"{prefix}/scan", taken)))
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
    for attribute in node.attribute:
        if attribute.name == name:
            return list(attribute.ints)
    return [0] * count


def _scan_length(node: Any, shapes: dict[str, tuple[int, ...]], opset: int) -> int | None:
    if node.op_type != "Scan" or node.domain not in ("", "ai.onnx") or opset < 9:
        return None
    scans = next(a.i for a in node.attribute if a.name == "num_scan_inputs")
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
    from onnx import helper, numpy_helper

    body = next(a.g for a in node.attribute if a.name == "body")
    scans = next(a.i for a in node.attribute if a.name == "num_scan_inputs")
    n_states = len(node.input) - scans
    states = list(node.input[:n_states])
    scan_inputs = list(node.input[n_states:])
    in_axes, in_reverse = _ints(node, "scan_input_axes", scans), _ints(node, "scan_input_directions", scans)
    n_outputs = len(body.output) - n_states
    out_axes, out_reverse = _ints(node, "scan_output_axes", n_outputs), _ints(node, "scan_output_directions", n_outputs)
    nodes: list[Any] = []

    def constant(value: Any, hint: str) -> str:
        name = _fresh(f"gradsal_{prefix}_{hint}", taken)
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    slices: list[list[str]] = [[] for _ in range(n_outputs)]
    for t in range(length):
        bound = {vi.name: value for vi, value in zip(body.input[:n_states], states, strict=True)}
        for vi, name, axis, reverse in zip(body.input[n_states:], scan_inputs, in_axes, in_reverse, strict=True):
            picked = _fresh(f"gradsal_{prefix}_slice", taken)
            index = constant(np.array(length - 1 - t if reverse else t, np.int64), "index")
            nodes.append(helper.make_node("Gather", [name, index], [picked], axis=axis, name=_fresh(picked, taken)))
            bound[vi.name] = picked
        copied, results = _body_copy(body, bound, f"{prefix}_{t}", taken, graph)
        nodes.extend(copied)
        states = results[:n_states]
        for collected, value in zip(slices, results[n_states:], strict=True):
            collected.append(value)
    for out, value in zip(node.output[:n_states], states, strict=True):
        if out:
            nodes.append(helper.make_node("Identity", [value], [out], name=_fresh(f"{prefix}/output", taken)))
    for out, collected, axis, reverse in zip(node.output[n_states:], slices, out_axes, out_reverse, strict=False):
        if not out:
            continue
        ordered = collected[::-1] if reverse else collected
        stacked = []
        for value in ordered:
            name = _fresh(f"gradsal_{prefix}_stacked", taken)
            if opset >= 13:
                axes = constant(np.array([axis], np.int64), "axes")
                nodes.append(helper.make_node("Unsqueeze", [value, axes], [name], name=_fresh(name, taken)))
            else:
                nodes.append(helper.make_node("Unsqueeze", [value], [name], axes=[axis], name=_fresh(name, taken)))
            stacked.append(name)
        nodes.append(helper.make_node("Concat", stacked, [out], axis=axis, name=_fresh(f"{prefix}/scan", taken)))
    return nodes
