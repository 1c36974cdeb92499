"""LSTM nodes unrolled into standard operators, so that their gradient is the gradient of the unrolled graph.

Shapes are concrete in a gradient graph, so the sequence length is known: an LSTM becomes, per direction,
one MatMul of the whole input sequence by the input weights and then, per time step, a MatMul of the
previous hidden state by the recurrence weights, the gates (sigmoid/tanh), the cell and hidden updates
(ONNX's equations, peepholes included):

    i = s(x W_i + h R_i + p_i c + b_i)    f = s(x W_f + h R_f + p_f c + b_f)    g = tanh(x W_c + h R_c + b_c)
    c' = f c + i g                        o = s(x W_o + h R_o + p_o c' + b_o)  h' = o tanh(c')

The existing rules (MatMul, Gather, Sigmoid, Tanh, Mul, Add, Concat, Reshape, Transpose) then differentiate
it with respect to the input, the initial states and the weights. Both directions, initial states and
constant ``sequence_lens`` (a step past a sequence's end keeps its states and outputs 0) are covered. Other
activations, ``clip``, ``input_forget`` and ``layout=1`` are refused where the node is on the path.
The forward pass the caller sees (``OnnxBackend.forward``) still runs onnxruntime's own LSTM kernel.
An LSTM of the common form (default activations, no peepholes, every sequence running to the end) is not
unrolled: it stays fused, and its own rule (``rules/lstm.py``) batches all but the recurrence over time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...core.errors import UnsupportedOperatorError
from . import _graph_edit as edit
from ._model_io import node_attribute as _attr

_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
RECURRENT_OPS = frozenset(_GATES)


def unsupported_form(node: Any) -> str | None:
    """Why a recurrent node cannot be unrolled here, or None."""
    activations = _attr(node, "activations", None)
    directions = 2 if _attr(node, "direction", "forward") == "bidirectional" else 1
    defaults = _DEFAULT_ACTIVATIONS[node.op_type]
    if activations is not None and list(activations) != defaults * directions:
        return f"its activations {activations} are not the default ({', '.join(defaults)})"
    if _attr(node, "clip", None) is not None:
        return "it clips its cell input (clip), which has no gradient rule yet"
    if int(_attr(node, "input_forget", 0)):
        return "it couples its input and forget gates (input_forget=1), which has no gradient rule yet"
    if int(_attr(node, "layout", 0)):
        return "it is batch-first (layout=1), which onnxruntime's CPU kernel does not run either"
    return None


class _Emitter:
    """Appends nodes with fresh names (tensor names avoid ``taken``) and constant initializers."""

    def __init__(self, taken: set[str], prefix: str, dtype: np.dtype, opset: int) -> None:
        self.taken, self.prefix, self.dtype, self.opset = taken, prefix, dtype, opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def fresh(self, hint: str) -> str:
        return edit.fresh(f"{self.prefix}_{hint}", self.taken)

    def __call__(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        output = output or self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], name=self.fresh(f"node_{op.lower()}"), **attrs))
        return output

    def const(self, value: Any, dtype: Any = None) -> str:
        from onnx import numpy_helper

        name = self.fresh("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype or self.dtype), name))
        return name

    def reshape(self, name: str, shape: list[int]) -> str:
        return self("Reshape", [name, self.const(shape, np.int64)])

    def pick(self, name: str, index: int | list[int], axis: int) -> str:
        return self("Gather", [name, self.const(index, np.int64)], axis=axis)

    def split(self, name: str, sizes: list[int], axis: int) -> list[str]:
        """``name`` cut along ``axis`` into parts of ``sizes``, by one Split: its adjoint is one Concat, where
        a Gather per part would scatter each part's cotangent back to the whole tensor and sum them."""
        from onnx import helper

        outputs = [self.fresh("part") for _ in sizes]
        if self.opset >= 13:
            node = helper.make_node("Split", [name, self.const(sizes, np.int64)], outputs,
                                    name=self.fresh("node_split"), axis=axis)
        else:
            node = helper.make_node("Split", [name], outputs, name=self.fresh("node_split"), axis=axis, split=sizes)
        self.nodes.append(node)
        return outputs


def unroll(node: Any, shapes: dict[str, tuple[int, ...]], values: dict[str, np.ndarray],
           taken: set[str], dtype: np.dtype, opset: int) -> tuple[list[Any], list[Any]]:
    """(nodes, initializers) computing a recurrent node's outputs from its inputs with standard operators."""
    lstm = node.op_type == "LSTM"
    inputs = list(node.input) + [""] * (8 - len(node.input))
    x, w, r, b, lengths, initial_h = inputs[:6]
    initial_c, peepholes = (inputs[6], inputs[7]) if lstm else ("", "")
    hidden = int(_attr(node, "hidden_size"))
    direction = str(_attr(node, "direction", "forward"))
    emit = _Emitter(taken, f"gradsal_{(node.name or node.op_type.lower()).replace('/', '_')}", dtype, opset)
    steps, batch = shapes[node.input[0]][:2]
    masks = _step_masks(emit, node, lengths, values, steps, batch)
    directions = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    cell = _Cell(node.op_type, hidden, int(_attr(node, "linear_before_reset", 0)))
    per_direction = []
    for d, way in enumerate(directions):
        per_direction.append(_direction(emit, cell, x, w, r, b, initial_h, initial_c, peepholes, d, way, steps,
                                        batch, masks))
    outputs = list(node.output) + [""] * (3 - len(node.output))
    y, y_h, y_c = outputs[:3]
    if y:  # (T, directions, batch, hidden)
        sequences = [s[0] for s in per_direction]
        emit("Concat", sequences, y, axis=1) if len(sequences) > 1 else emit("Identity", sequences, y)
    for position, name in ((1, y_h), (2, y_c)):
        if name:  # (directions, batch, hidden)
            finals = [emit.reshape(s[position], [1, batch, hidden]) for s in per_direction]
            emit("Concat", finals, name, axis=0) if len(finals) > 1 else emit("Identity", finals, name)
    return emit.nodes, emit.initializers


def _step_masks(emit: _Emitter, node: Any, lengths: str, values: dict[str, np.ndarray], steps: int,
                batch: int) -> list[str] | None:
    """Per step, a (batch, 1) 0/1 mask of the sequences still running; None when all run to the end."""
    if not lengths:
        return None
    known = values.get(lengths)
    if known is None:
        raise UnsupportedOperatorError(
            f"{node.op_type} node {node.name or '(unnamed)'!r}: its sequence_lens ({lengths!r}) depend on the input's "
            f"values; gradsal unrolls an {node.op_type} for sequence lengths known when the gradient graph is built."
        )
    known = np.asarray(known).reshape(-1)
    if np.all(known >= steps):
        return None
    return [emit.const((known > t).astype(emit.dtype).reshape(batch, 1)) for t in range(steps)]


class _Cell:
    """One recurrent step of an LSTM, GRU or RNN (ONNX's equations, default activations)."""

    def __init__(self, op: str, hidden: int, linear_before_reset: int) -> None:
        self.op, self.hidden, self.linear_before_reset = op, hidden, linear_before_reset
        self.gates = _GATES[op]

    def block(self, emit: _Emitter, name: str, first: int, count: int, axis: int) -> str:
        """Gates ``first .. first + count - 1`` (each ``hidden`` wide) of ``name`` along ``axis``."""
        return emit.pick(name, list(range(first * self.hidden, (first + count) * self.hidden)), axis)

    def prepare(self, emit: _Emitter, x: str, w: str, r: str, b: str, d: int) -> None:
        """x W^T + biases for every step at once, and the recurrence weights, for direction ``d``."""
        gates = self.gates
        self.projected = emit("MatMul", [x, emit("Transpose", [emit.pick(w, d, 0)], perm=[1, 0])])
        recurrence = emit.pick(r, d, 0)  # (gates hidden, hidden)
        bias = emit.pick(b, d, 0) if b else None
        input_bias = self.block(emit, bias, 0, gates, 0) if bias else None
        recurrent_bias = self.block(emit, bias, gates, gates, 0) if bias else None
        self.candidate_bias = None
        if self.op == "GRU":  # the candidate's recurrent bias sits inside the reset gate's product
            self.r_zr = emit("Transpose", [self.block(emit, recurrence, 0, 2, 0)], perm=[1, 0])
            self.r_h = emit("Transpose", [self.block(emit, recurrence, 2, 1, 0)], perm=[1, 0])
            if bias:
                self.candidate_bias = self.block(emit, recurrent_bias, 2, 1, 0)
                zeros = emit.const(np.zeros(self.hidden))
                recurrent_bias = emit("Concat", [self.block(emit, recurrent_bias, 0, 2, 0), zeros], axis=0)
        else:
            self.r_t = emit("Transpose", [recurrence], perm=[1, 0])
        if bias:
            self.projected = emit("Add", [self.projected, emit("Add", [input_bias, recurrent_bias])])

    def cut_steps(self, emit: _Emitter, steps: int, batch: int) -> None:
        """The projected inputs of each step, ``(batch, gates hidden)``, cut by one Split."""
        parts = emit.split(self.projected, [1] * steps, 0) if steps > 1 else [self.projected]
        self.per_step = [emit.reshape(part, [batch, self.gates * self.hidden]) for part in parts]

    def step(self, emit: _Emitter, t: int, h: str, c: str | None,
             peep: list[str] | None) -> tuple[str, str | None]:
        p = self.per_step[t]  # (batch, gates hidden)
        if self.op == "RNN":
            return emit("Tanh", [emit("Add", [p, emit("MatMul", [h, self.r_t])])]), None
        if self.op == "GRU":
            zr = emit("Add", [self.block(emit, p, 0, 2, 1), emit("MatMul", [h, self.r_zr])])
            z = emit("Sigmoid", [self.block(emit, zr, 0, 1, 1)])
            reset = emit("Sigmoid", [self.block(emit, zr, 1, 1, 1)])
            if self.linear_before_reset:
                inner = emit("MatMul", [h, self.r_h])
                if self.candidate_bias:
                    inner = emit("Add", [inner, self.candidate_bias])
                recurrent = emit("Mul", [reset, inner])
            else:
                recurrent = emit("MatMul", [emit("Mul", [reset, h]), self.r_h])
                if self.candidate_bias:
                    recurrent = emit("Add", [recurrent, self.candidate_bias])
            candidate = emit("Tanh", [emit("Add", [self.block(emit, p, 2, 1, 1), recurrent])])
            return emit("Add", [candidate, emit("Mul", [z, emit("Sub", [h, candidate])])]), None  # (1-z) h~ + z h
        gates = emit("Add", [p, emit("MatMul", [h, self.r_t])])
        if not peep:  # i, o, f are contiguous: one Sigmoid (and one derivative) for the three
            sigmoid_block, g = emit.split(gates, [3 * self.hidden, self.hidden], 1)
            i, o, f = emit.split(emit("Sigmoid", [sigmoid_block]), [self.hidden] * 3, 1)
            c_next = emit("Add", [emit("Mul", [f, c]), emit("Mul", [i, emit("Tanh", [g])])])
            return emit("Mul", [o, emit("Tanh", [c_next])]), c_next
        i, o, f, g = emit.split(gates, [self.hidden] * 4, 1)
        i = emit("Add", [i, emit("Mul", [c, peep[0]])])
        f = emit("Add", [f, emit("Mul", [c, peep[2]])])
        i, f, g = emit("Sigmoid", [i]), emit("Sigmoid", [f]), emit("Tanh", [g])
        c_next = emit("Add", [emit("Mul", [f, c]), emit("Mul", [i, g])])
        o = emit("Add", [o, emit("Mul", [c_next, peep[1]])])
        return emit("Mul", [emit("Sigmoid", [o]), emit("Tanh", [c_next])]), c_next


def _direction(emit: _Emitter, cell: _Cell, x: str, w: str, r: str, b: str, initial_h: str, initial_c: str,
               peepholes: str, d: int, way: str, steps: int, batch: int,
               masks: list[str] | None) -> tuple[str, str, str | None]:
    """(Y of this direction as (T, 1, batch, hidden), last hidden state, last cell state or None)."""
    hidden = cell.hidden
    cell.prepare(emit, x, w, r, b, d)
    cell.cut_steps(emit, steps, batch)
    zeros = emit.const(np.zeros((batch, hidden)))
    h = emit.pick(initial_h, d, 0) if initial_h else zeros
    c = (emit.pick(initial_c, d, 0) if initial_c else zeros) if cell.op == "LSTM" else None
    peep = [cell.block(emit, emit.pick(peepholes, d, 0), k, 1, 0) for k in range(3)] if peepholes else None
    order = range(steps) if way == "forward" else range(steps - 1, -1, -1)
    outputs: dict[int, str] = {}
    for t in order:
        h_next, c_next = cell.step(emit, t, h, c, peep)
        if masks is not None:  # past a sequence's end: states kept, output 0
            keep = emit("Sub", [emit.const(np.ones((batch, 1))), masks[t]])
            outputs[t] = emit("Mul", [h_next, masks[t]])
            h = emit("Add", [outputs[t], emit("Mul", [h, keep])])
            if c_next is not None:
                c = emit("Add", [emit("Mul", [c_next, masks[t]]), emit("Mul", [c, keep])])
        else:
            outputs[t] = h = h_next
            c = c_next
    sequence = emit("Concat", [emit.reshape(outputs[t], [1, 1, batch, hidden]) for t in range(steps)], axis=0)
    return sequence, h, c


def unroll_recurrent(model: Any, shapes: dict[str, tuple[int, ...]], values: dict[str, np.ndarray],
                 dtypes: dict[str, np.dtype], taken: set[str], opset: int,
                 on_path: Any) -> Any | None:
    """A copy of ``model`` with its top-level LSTM/GRU/RNN nodes unrolled, or None when there is none to unroll.

    ``on_path(node)``: whether the node lies between the input and the output (an LSTM of an unsupported
    form is refused only then; elsewhere it is left as it is)."""
    import onnx

    if not any(node.op_type in RECURRENT_OPS and edit.is_standard(node) for node in model.graph.node):
        return None
    from .rules.lstm import batched_form_problem

    nodes, initializers = [], []
    changed = False
    for node in model.graph.node:
        if node.op_type not in RECURRENT_OPS or not edit.is_standard(node) or not on_path(node):
            nodes.append(node)
            continue
        why = unsupported_form(node)
        if why is not None:
            raise UnsupportedOperatorError(
                f"{node.op_type} node {node.name or '(unnamed)'!r} (opset {opset}) lies between the input and the "
                f"explained output, but {why}. Pass OnnxBackend(..., fallback='finite_differences') to "
                "differentiate it numerically."
            )
        if node.op_type == "LSTM" and batched_form_problem(node, values.get, shapes[node.input[0]][0]) is None:
            nodes.append(node)  # kept fused: its rule steps only the recurrence (rules/lstm.py)
            continue
        dtype = np.dtype(dtypes.get(node.input[0], np.float32))
        unrolled, added = unroll(node, shapes, values, taken, dtype, opset)
        nodes.extend(unrolled)
        initializers.extend(added)
        changed = True
    if not changed:
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.initializer.extend(initializers)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy
