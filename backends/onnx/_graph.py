"""Build a gradient graph (reverse-mode VJP or forward-mode JVP) over an ONNX model.

The gradient graph is the original forward graph plus, for every node on the path from the
differentiated tensor to the explained output, the nodes its rule emits (see ``rules``). It runs in
one onnxruntime session: inputs ``x`` and a seed (cotangent or tangent), outputs the explained tensor
and ``J^T v`` (or ``J u``). Shapes are made concrete at the caller's input shape, after a probe run of
the model that records every tensor's shape and the value of every tensor that does not depend on the
input's values (shape arithmetic), so rules can work with static shapes and constant axes.

"Does not depend on the input's values" is decided by :func:`_dependence`, which follows values *and*
shapes: ``Shape`` of an activation is a constant, but ``Shape`` of a tensor whose shape is set by the
input's values (a ``Range`` up to ``ReduceMax(x)``, a ``NonZero``) is not, and neither is anything a
``Range``, ``ConstantOfShape`` or ``EyeLike`` computes from such values. Tensors whose shape may change
with the input's values make the graph valid only at the probed point: the builder adds a ``Shape``
output for each of them (``GradientGraph.shape_checks``), and the backend rebuilds the graph when a
run finds another shape; an inlined ``If`` branch is checked the same way, by its condition.

Guards are the third kind of check: a rule may *speculate*, emitting a form that is exact only under a
condition it cannot decide at build time (a max-pooling window has a single maximum), and register a
boolean output that is true where the condition fails (``GradientGraph.guards``). The backend runs the
speculative graph and, where a guard fires, reruns on the exact graph, built with ``speculative=False``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np

from ...core.errors import BackendError, ModelError, UnsupportedOperatorError
from . import _graph_edit as edit
from . import _model_io as io
from . import rules as _rule_families
from ._control_flow import if_conditions, inline_known_ifs, unroll_known_loops, unroll_scans
from ._graph_edit import names_in
from ._quantised import nodes_between, refuse_quantisation
from ._recurrent import unroll_recurrent
from .rules import forms
from .rules import registry as _rules

COTANGENT_NAME = "gradsal_cotangent"
_MAX_IF_DEPTH = 8
TANGENT_NAME = "gradsal_tangent"
RESULT_NAME = "gradsal_result"

# Operators that keep their (first) input's shape and dtype, and binary ones that broadcast: their
# result shapes are tracked so that rules can unbroadcast what they emit.
_SAME_SHAPE_OPS = frozenset({
    "Neg", "Abs", "Sign", "Exp", "Log", "Sqrt", "Reciprocal", "Relu", "Sigmoid", "Tanh", "Erf", "Identity",
    "Cast", "CastLike", "Not", "Softmax", "LogSoftmax", "Sin", "Cos", "Floor", "Ceil", "IsNaN", "IsInf",
    "LeakyRelu", "Elu", "Selu", "HardSigmoid", "HardSwish", "Softplus", "Clip",
})
_BROADCAST_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Where", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual",
    "And", "Or", "Xor", "Max", "Min", "Sum", "Mean", "PRelu",
})


class Guard(NamedTuple):
    """A boolean scalar output of a speculative gradient graph: where it is true, the result is not exact."""

    output: str
    why: str  # the condition under which the speculative form fails, for messages and debugging


@dataclass(frozen=True)
class GradientGraph:
    """A built gradient model and the names of its inputs and outputs."""

    model: Any  # onnx.ModelProto
    input_name: str
    seed_name: str
    output_name: str
    result_name: str
    wrt_name: str
    mode: str
    shape_checks: tuple[tuple[str, str, tuple[int, ...]], ...] = ()
    """(graph output, tensor, shape at the probe) for each tensor whose shape may change with the
    input's values: the graph is valid for an input where every such output equals the probed shape."""
    guards: tuple[Guard, ...] = ()
    """The speculative forms' guards: where one output is true (a max-pooling window with two maxima,
    say), the result is not exact; build again with ``speculative=False`` and run that graph instead."""


def _np_dtype(elem_type: int) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


@dataclass
class _Probe:
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    values: dict[str, np.ndarray]  # only tensors that do not vary with the input's values
    varying_shapes: set[str] = field(default_factory=set)  # tensors whose shape may vary with them
    conditions: dict[str, bool] = field(default_factory=dict)  # If conditions computed from the input's values


def _default_opset(model: Any) -> int:
    opset = edit.default_opset(model)
    if opset:
        return int(opset)
    raise ModelError("the ONNX model imports no default ('ai.onnx') opset; it cannot be differentiated.")


# Inputs whose *values* set the shape of a default-domain operator's outputs, by position (None: all of
# them, subgraph reads included). Every other default-domain operator shapes its outputs from its inputs'
# shapes and its attributes alone; operators of other domains are assumed to be like ``None``.
_SHAPE_SETTING_INPUTS: dict[str, tuple[int, ...] | None] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Range": None,
    "Slice": (1, 2, 3, 4), "Pad": (1, 3), "Resize": (1, 2, 3), "Upsample": (1,), "Split": (1,),
    "Squeeze": (1,), "Unsqueeze": (1,), "OneHot": (1,), "NonZero": (0,), "TopK": (1,), "Compress": (1,),
    "Unique": (0,), "CenterCropPad": (1,), "MaxUnpool": (2,), "Col2Im": (1, 2), "DFT": (1,), "STFT": (1, 3),
    "AffineGrid": (1,), "HannWindow": (0,), "HammingWindow": (0,), "BlackmanWindow": (0,),
    "NonMaxSuppression": None, "MelWeightMatrix": None, "StringSplit": None, "If": None, "Loop": None,
    "Scan": None,
    **{op: (1,) for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                           "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
}
# Operators whose outputs depend on their input's shape only, never on its values.
_SHAPE_READERS = frozenset({"Shape", "Size", "EyeLike"})


def _reads(node: Any) -> list[str]:
    """The tensors a node reads: its inputs, and the outer-scope tensors its subgraphs use."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
        for sub in edit.subgraphs(attribute):
            names.extend(name for n in sub.node for name in _reads(n))
    return names


def _dependence(graph: Any, sources: set[str],
                static: frozenset[str] | set[str] = frozenset()) -> tuple[set[str], set[str]]:
    """(tensors whose values may vary with the values of ``sources``, tensors whose shapes may).

    Random draws count as varying. A conservative reading: a tensor not in the first set is a constant
    of the graph at a given input shape, which rules may read (axes, pads, target shapes, indices).
    ``static``: tensors whose shapes shape inference fixed at the concrete input shape (never varying).
    """
    values, shapes = set(sources), set()
    for node in graph.node:
        reads = _reads(node)
        outputs = [name for name in node.output if name]
        shape_varies = any(name in shapes for name in reads)
        if node.op_type in _SHAPE_READERS:
            value_varies = shape_varies
        else:
            value_varies = node.op_type in _rules.RANDOM_OPS or any(name in values for name in reads)
        positions = _SHAPE_SETTING_INPUTS.get(node.op_type, ()) if edit.is_standard(node) else None
        setting = reads if positions is None else [node.input[i] for i in positions if i < len(node.input)]
        if shape_varies or any(name in values for name in setting if name):
            shapes.update(name for name in outputs if name not in static)
        if value_varies:
            values.update(outputs)
    return values, shapes


def _concrete_input(value_info: Any, shape: Sequence[int]) -> Any:
    from onnx import helper

    elem = value_info.type.tensor_type.elem_type
    return helper.make_tensor_value_info(value_info.name, elem, list(shape))


def _probe(model: Any, input_name: str, input_shape: Sequence[int], x: np.ndarray | None = None) -> _Probe:
    # the values of top-level If conditions are recorded even where they depend on the input's values
    conditions = set(if_conditions(model.graph))
    """Run the model once at ``x`` (zeros of ``input_shape`` by default) recording tensor shapes, dtypes,
    the values of the tensors that do not vary with the input's values, and which shapes may vary."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    graph = model.graph
    init_names = {init.name for init in graph.initializer}
    data_inputs = [vi for vi in graph.input if vi.name not in init_names]
    values: dict[str, np.ndarray] = {
        init.name: numpy_helper.to_array(init) for init in graph.initializer
    }
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    input_vi = next(vi for vi in data_inputs if vi.name == input_name)
    probe_graph = onnx.GraphProto()
    probe_graph.CopyFrom(graph)
    del probe_graph.input[:]
    for vi in graph.input:
        probe_graph.input.append(_concrete_input(vi, input_shape) if vi.name == input_name else vi)
    del probe_graph.output[:]
    del probe_graph.value_info[:]
    plain_model = helper.make_model(probe_graph, opset_imports=list(model.opset_import))
    plain_model.ir_version = model.ir_version
    dtypes, static = _inferred(plain_model)

    dependent, varying_shapes = _dependence(graph, {vi.name for vi in data_inputs}, static)
    tensors = [name for node in graph.node for name in node.output if name]
    shape_outputs: dict[str, str] = {}
    for name in tensors:
        if name in dependent and name in conditions:
            probe_graph.output.append(helper.make_empty_tensor_value_info(name))
        elif name in dependent:
            shape_name = f"gradsal_probe_shape_{len(shape_outputs)}"
            probe_graph.node.append(helper.make_node("Shape", [name], [shape_name]))
            probe_graph.output.append(helper.make_tensor_value_info(shape_name, onnx.TensorProto.INT64, None))
            shape_outputs[name] = shape_name
        elif name not in values:
            probe_graph.output.append(helper.make_empty_tensor_value_info(name))
    probe_model = helper.make_model(probe_graph, opset_imports=list(model.opset_import))
    probe_model.ir_version = model.ir_version

    dtypes[input_name] = _np_dtype(input_vi.type.tensor_type.elem_type)
    probed_at_zeros = x is None
    if x is None:
        x = np.zeros(tuple(input_shape), dtype=dtypes[input_name])
    elif tuple(x.shape) != tuple(input_shape):
        raise BackendError(
            f"gradsal internal error: the probe input has shape {x.shape}, not {tuple(input_shape)}"
        )
    feeds = {input_name: np.asarray(x, dtype=dtypes[input_name])}
    for vi in data_inputs:
        if vi.name != input_name:
            raise ModelError(
                f"the model has another input {vi.name!r} besides {input_name!r}; gradsal differentiates "
                "single-input models (fold the other inputs into the graph as constants first)."
            )
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(
            probe_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        results = session.run(None, feeds)
    except Exception as exc:
        at = "zeros" if probed_at_zeros else "x"
        raise BackendError(
            f"onnxruntime could not run the model at input shape {tuple(input_shape)} (on {at}, to probe its "
            f"tensors): {' '.join(str(exc).split())}. Check that the model runs on such an input (forward(x))."
        ) from exc

    shapes: dict[str, tuple[int, ...]] = {input_name: tuple(int(d) for d in input_shape)}
    taken_at_x = {}
    for out, result in zip(probe_graph.output, results, strict=True):
        if out.name.startswith("gradsal_probe_shape_"):
            continue
        if out.name in dependent:
            taken_at_x[out.name] = bool(np.asarray(result).reshape(-1)[0])
            shapes[out.name] = tuple(np.shape(result))
            dtypes[out.name] = np.asarray(result).dtype
            continue
        values[out.name] = result
    by_shape_name = {v: k for k, v in shape_outputs.items()}
    for out, result in zip(probe_graph.output, results, strict=True):
        if out.name in by_shape_name:
            shapes[by_shape_name[out.name]] = tuple(int(d) for d in result)
    for name, value in values.items():
        shapes.setdefault(name, tuple(value.shape))
        dtypes[name] = value.dtype
    return _Probe(shapes, dtypes, values, varying_shapes, taken_at_x)


def _inferred(model: Any) -> tuple[dict[str, np.dtype], set[str]]:
    """(dtypes, tensors whose shape ONNX shape inference finds fully static) at the model's concrete input."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is only a source of dtypes and static shapes here; gaps fall back
        inferred = model
    dtypes: dict[str, np.dtype] = {}
    static: set[str] = set()
    for vi in itertools.chain(inferred.graph.value_info, inferred.graph.input, inferred.graph.output):
        tensor_type = vi.type.tensor_type
        if tensor_type.elem_type:
            dtypes[vi.name] = _np_dtype(tensor_type.elem_type)
        if tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in tensor_type.shape.dim):
            static.add(vi.name)
    return dtypes, static


def _differentiable_inputs(node: Any) -> list[int]:
    rules = _rules.rules_for(node.op_type)
    if node.op_type in _rules.SHAPE_ONLY_OPS:
        return []
    positions = range(len(node.input))
    if rules is not None and rules.differentiable is not None:
        positions = [i for i in rules.differentiable if i < len(node.input)]
    return [i for i in positions if node.input[i]]


def _outer_reads(node: Any) -> list[str]:
    """The outer-scope tensors that a node's subgraphs (If branches, Loop and Scan bodies) read."""
    names: list[str] = []
    for attribute in node.attribute:
        for sub in edit.subgraphs(attribute):
            local = ({vi.name for vi in sub.input} | {t.name for t in sub.initializer}
                     | {name for n in sub.node for name in n.output})
            read = [name for n in sub.node for name in (*n.input, *_outer_reads(n)) if name]
            names.extend(name for name in read if name not in local)
    return names


def _gradient_reads(node: Any) -> list[str]:
    """The tensors through which gradient may reach a node's outputs: its differentiable inputs and what
    its subgraphs read from the outer scope (so a branch computed from x puts its If on the path, where
    the If's rule, or its absence, decides, instead of a false "does not depend")."""
    return [node.input[i] for i in _differentiable_inputs(node)] + _outer_reads(node)


def _path(graph: Any, source: str, output: str) -> set[str]:
    """Tensors that depend differentiably on ``source`` and that ``output`` depends on differentiably."""
    forward = {source}
    for node in graph.node:
        if any(name in forward for name in _gradient_reads(node)):
            forward.update(name for name in node.output if name)
    backward = {output}
    for node in reversed(graph.node):
        if any(name in backward for name in node.output):
            backward.update(_gradient_reads(node))
    return forward & backward


@dataclass
class _Builder:
    """The :class:`~.rules.registry.RuleContext` the rules see, and the nodes they emitted."""

    opset: int
    relu_rule: str
    probe: _Probe
    on_path: set[str]
    float_dtype: np.dtype
    taken: set[str]
    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)
    extra_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    extra_dtypes: dict[str, np.dtype] = field(default_factory=dict)
    current: str = ""
    source: str = ""
    made_by: dict[str, Any] = field(default_factory=dict)
    speculative: bool = True
    guards: list[Guard] = field(default_factory=list)
    masked: set[tuple[str, str]] = field(default_factory=set)
    forward_before: dict[str, list[Any]] = field(default_factory=dict)
    forward_replaced: dict[str, Any] = field(default_factory=dict)
    _counter: itertools.count = field(default_factory=itertools.count)

    def fresh(self, hint: str) -> str:
        while True:
            name = f"gradsal_{hint}_{next(self._counter)}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def _node(self, op_type: str, inputs: Sequence[str], outputs: list[str], attrs: dict[str, object],
              name: str | None = None) -> Any:
        """A node with these outputs (its shapes and dtypes tracked); None-valued attributes are left out."""
        from onnx import helper

        clean = {k: v for k, v in attrs.items() if v is not None}
        self._track(op_type, list(inputs), outputs, clean)
        return helper.make_node(op_type, list(inputs), outputs, name=name or f"{outputs[0]}/{self.current}", **clean)

    def emit(self, op_type: str, inputs: Sequence[str], n_outputs: int = 1, **attrs: object) -> list[str]:
        outputs = [self.fresh(op_type.lower()) for _ in range(n_outputs)]
        self.nodes.append(self._node(op_type, inputs, outputs, attrs))
        return outputs

    def emit1(self, op_type: str, inputs: Sequence[str], **attrs: object) -> str:
        return self.emit(op_type, inputs, 1, **attrs)[0]

    def emit_forward(self, before: Any, op_type: str, inputs: Sequence[str], **attrs: object) -> str:
        output = self.fresh(op_type.lower())
        self.forward_before.setdefault(before.output[0], []).append(self._node(op_type, inputs, [output], attrs))
        return output

    def replace_forward(self, node: Any, op_type: str, inputs: Sequence[str], **attrs: object) -> None:
        self.forward_replaced[node.output[0]] = self._node(op_type, inputs, list(node.output), attrs,
                                                           name=node.name or None)

    def forward_nodes(self, nodes: Sequence[Any]) -> list[Any]:
        """The model's nodes with the rules' forward additions and replacements, in a valid order."""
        result = []
        for node in nodes:
            key = node.output[0] if node.output else None
            result += self.forward_before.get(key, [])
            result.append(self.forward_replaced.get(key, node))
        return result

    def _track(self, op_type: str, inputs: list[str], outputs: list[str], attrs: dict[str, object]) -> None:
        known = [self._known_shape(name) for name in inputs if name]
        if op_type in _SAME_SHAPE_OPS and known and known[0] is not None:
            self.extra_shapes[outputs[0]] = known[0]
        elif op_type in _BROADCAST_OPS and known and all(s is not None for s in known):
            self.extra_shapes[outputs[0]] = tuple(np.broadcast_shapes(*known))
        if op_type == "Cast":
            self.extra_dtypes[outputs[0]] = _np_dtype(int(attrs["to"]))  # type: ignore[arg-type]
        elif inputs and inputs[-1 if op_type == "Where" else 0]:
            dtype = self._known_dtype(inputs[-1 if op_type == "Where" else 0])
            if dtype is not None and op_type not in ("Shape", "Size", "Equal", "Greater", "Less", "Not"):
                self.extra_dtypes[outputs[0]] = dtype

    def _known_shape(self, name: str) -> tuple[int, ...] | None:
        return self.extra_shapes.get(name, self.probe.shapes.get(name))

    def _known_dtype(self, name: str) -> np.dtype | None:
        return self.extra_dtypes.get(name, self.probe.dtypes.get(name))

    def const(self, value: Any, dtype: Any = None, like: str | None = None) -> str:
        from onnx import numpy_helper

        if like is not None:
            dtype = self.dtype(like)
        elif dtype is None:
            if isinstance(value, np.ndarray):
                dtype = value.dtype
            elif isinstance(value, float) or (
                isinstance(value, Sequence) and any(isinstance(v, float) for v in value)
            ):
                dtype = self.float_dtype
            else:
                dtype = np.int64
        array = np.asarray(value, dtype=dtype)
        name = self.fresh("const")
        self.initializers.append(numpy_helper.from_array(array, name))
        self.extra_shapes[name] = tuple(array.shape)
        self.extra_dtypes[name] = array.dtype
        return name

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self._known_shape(name)
        if shape is None:
            raise KeyError(f"gradsal internal error: the shape of {name!r} is not known to the builder")
        return shape

    def dtype(self, name: str) -> np.dtype:
        dtype = self._known_dtype(name)
        return self.float_dtype if dtype is None else dtype

    def value(self, name: str) -> np.ndarray | None:
        return self.probe.values.get(name)

    def needs_grad(self, name: str) -> bool:
        return name in self.on_path

    def record(self, name: str, like: str) -> None:
        """Note that ``name`` (a cotangent or tangent) has the shape and dtype of the primal ``like``."""
        if name not in self.extra_shapes and name not in self.probe.shapes:
            self.extra_shapes[name] = self.shape(like)
            self.extra_dtypes.setdefault(name, self.dtype(like))

    def unbroadcast(self, grad: str, target: str, grad_shape: Sequence[int] | None = None) -> str:
        gshape = tuple(grad_shape) if grad_shape is not None else self.shape(grad)
        tshape = self.shape(target)
        if gshape == tshape:
            return grad
        lead = len(gshape) - len(tshape)
        axes = list(range(lead)) + [
            lead + i for i, d in enumerate(tshape) if d == 1 and gshape[lead + i] != 1
        ]
        summed = forms.spatial_total(self, grad, gshape, axes) if axes else grad
        out = self.emit1("Reshape", [summed, self.const(list(tshape))])
        self.extra_shapes[out] = tshape
        return out

    def producer(self, name: str) -> Any:
        return None if name == self.source else self.made_by.get(name)

    def guard(self, flag: str, why: str) -> None:
        self.guards.append(Guard(flag, why))

    def mark_masked(self, grad: str, primal: str) -> None:
        self.masked.add((grad, primal))

    def is_masked(self, grad: str, primal: str) -> bool:
        return (grad, primal) in self.masked

    def attr(self, node: Any, name: str, default: object = None) -> object:
        return io.node_attribute(node, name, default)

    def sum(self, names: list[str], like: str) -> str:
        """The total of the cotangent contributions to the primal ``like``, shaped like it.

        A contribution may be smaller than ``like`` but broadcastable to it (a mean's cotangent, kept as
        (N, C, 1, 1)): it is added with a broadcasting Add rather than expanded first, which saves a full
        pass and keeps onnxruntime's blocked layout; it is expanded only when nothing else is full-sized.
        """
        target = self.shape(like)
        full = [n for n in names if self._known_shape(n) in (None, target)]
        partial = [n for n in names if n not in full]
        if not full:
            full = [self.emit1("Expand", [partial.pop(0), self.const(list(target))])]
        total = full[0] if len(full) == 1 else self.emit1("Sum", full)
        for extra in partial:
            total = self.emit1("Add", [total, extra])
        self.record(total, like)
        return total


def _node_label(node: Any, opset: int) -> str:
    return f"{node.op_type} node {node.name or '(unnamed)'!r} (opset {opset}) producing {list(node.output)}"


def _require_rule(node: Any, opset: int, mode: str) -> Any:
    rules = _rules.rules_for(node.op_type)
    fn = None if rules is None else (rules.vjp if mode == "vjp" else rules.jvp)
    hint = "Pass OnnxBackend(..., fallback='finite_differences') to differentiate the model numerically."
    if node.op_type in _rules.NON_DIFFERENTIABLE_OPS:
        raise UnsupportedOperatorError(
            f"{_node_label(node, opset)} is piecewise constant: its gradient is zero almost everywhere, "
            f"and it lies between the input and the explained output. Explain a tensor before it "
            f"(output_name=...) or {hint[0].lower() + hint[1:]}"
        )
    if fn is None:
        domain = f" in domain {node.domain!r}" if not edit.is_standard(node) else ""
        raise UnsupportedOperatorError(
            f"gradsal has no {'reverse' if mode == 'vjp' else 'forward'}-mode rule for "
            f"{_node_label(node, opset)}{domain}. {hint}"
        )
    return fn


def _on_path_nodes(graph: Any, on_path: set[str]) -> list[Any]:
    return [
        node for node in graph.node
        if any(name in on_path for name in _gradient_reads(node))
        and any(name in on_path for name in node.output)
    ]


def _emit_vjp(builder: _Builder, nodes: list[Any], source: str, output: str, seed: str) -> str:
    grads: dict[str, list[str]] = {output: [seed]}
    for node in reversed(nodes):
        out_grads = [
            builder.sum(grads[name], name) if grads.get(name) else None for name in node.output
        ]
        if all(g is None for g in out_grads):
            continue
        in_grads = _apply_rule(builder, node, "vjp", out_grads, len(node.input))
        for name, grad in _on_path(builder, node.input, in_grads):
            grads.setdefault(name, []).append(grad)
    if not grads.get(source):
        raise _independent(output, source)
    return builder.sum(grads[source], source)


def _emit_jvp(builder: _Builder, nodes: list[Any], source: str, output: str, seed: str) -> str:
    tangents: dict[str, str] = {source: seed}
    for node in nodes:
        in_tangents = [tangents.get(name) if name else None for name in node.input]
        if all(t is None for t in in_tangents):
            continue
        out_tangents = _apply_rule(builder, node, "jvp", in_tangents, len(node.output))
        tangents.update(_on_path(builder, node.output, out_tangents))
    if output not in tangents:
        raise _independent(output, source)
    return tangents[output]


def _apply_rule(builder: _Builder, node: Any, mode: str, given: list[str | None], expected: int) -> list[str | None]:
    """Call the node's ``mode`` rule on ``given`` (its outputs' cotangents, or its inputs' tangents)."""
    fn = _require_rule(node, builder.opset, mode)
    builder.current = node.name or node.op_type
    result = fn(builder, node, given)
    _check_arity(node, result, expected, mode.upper())
    return result


def _on_path(builder: _Builder, names: Sequence[str], values: list[str | None]) -> list[tuple[str, str]]:
    """(tensor, value) for each value a rule computed for a tensor on the path, its shape recorded."""
    kept = [(name, value) for name, value in zip(names, values, strict=True)
            if value is not None and name in builder.on_path]
    for name, value in kept:
        builder.record(value, name)
    return kept


def _independent(output: str, source: str) -> ModelError:
    return ModelError(f"the output {output!r} does not depend on {source!r}: its gradient is zero.")


def _check_arity(node: Any, result: Any, expected: int, kind: str) -> None:
    if not isinstance(result, list) or len(result) != expected:
        raise RuntimeError(
            f"gradsal internal error: the {kind} rule of {node.op_type} returned {result!r}, "
            f"expected a list of {expected} entries"
        )


def _needed_nodes(nodes: list[Any], outputs: set[str]) -> list[Any]:
    """The nodes needed to compute ``outputs``, in their original order (dead forward code is dropped)."""
    needed = set(outputs)
    keep: list[Any] = []
    for node in reversed(nodes):
        if any(name in needed for name in node.output):
            keep.append(node)
            needed.update(name for name in node.input if name)
            for attribute in node.attribute:  # tensors a subgraph reads from the outer scope
                for sub in edit.subgraphs(attribute):
                    needed.update(name for n in sub.node for name in n.input if name)
    keep.reverse()
    return keep


def build_gradient_model(
    model: Any,
    input_shape: Sequence[int],
    *,
    input_name: str,
    output_name: str,
    mode: Literal["vjp", "jvp"] = "vjp",
    wrt: str | None = None,
    relu_rule: str = "standard",
    probe_input: np.ndarray | None = None,
    speculative: bool = True,
) -> GradientGraph:
    """Return the VJP (``mode="vjp"``) or JVP (``"jvp"``) model of ``output_name`` at ``input_shape``.

    The VJP model takes ``input_name`` and a cotangent shaped like the output and returns the output and
    ``J^T cotangent`` with respect to ``wrt`` (the input by default, or any intermediate tensor); the JVP
    model takes a tangent shaped like the input and returns ``J tangent``. Raises
    :class:`UnsupportedOperatorError` when a node on the path has no rule.

    ``probe_input``: the input at which the model is probed (zeros by default). It matters only for
    tensors whose shapes vary with the input's values; the graph is valid where they have the shapes
    they had at the probe, which its ``shape_checks`` outputs let the caller verify.

    ``speculative``: whether rules may emit forms exact only under a run-time condition, each checked by
    one of the graph's :attr:`GradientGraph.guards` (False: the exact graph, with no guards).
    """
    import onnx
    from onnx import helper

    _rule_families.load()
    graph = model.graph
    opset = _default_opset(model)
    source = wrt or input_name
    probe = _probe(model, input_name, input_shape, probe_input)
    switches: dict[str, bool] = {}  # If conditions computed from the input's values, and their value at x
    for _ in range(_MAX_IF_DEPTH):  # an inlined branch may hold Ifs (Loops) the next probe knows more of
        inlined = inline_known_ifs(model, {**probe.values, **probe.conditions}, names_in(graph))
        if inlined is None:
            inlined = unroll_known_loops(model, probe.values, names_in(graph), _default_opset(model))
        if inlined is None:
            inlined = unroll_scans(model, probe.shapes, names_in(graph), _default_opset(model))
        if inlined is None:
            break
        switches |= {name: value for name, value in probe.conditions.items() if name in if_conditions(graph)}
        model, graph = inlined, inlined.graph
        probe = _probe(model, input_name, input_shape, probe_input)
    between = {tuple(node.output) for node in nodes_between(graph, source, output_name, _reads)}
    unrolled = unroll_recurrent(model, probe.shapes, probe.values, probe.dtypes, names_in(graph), _default_opset(model),
                            lambda node: tuple(node.output) in between)
    if unrolled is not None:
        model, graph = unrolled, unrolled.graph
        probe = _probe(model, input_name, input_shape, probe_input)
    for name in (output_name, source):
        if name not in probe.shapes:
            raise ModelError(f"the model has no tensor named {name!r}.")
    if mode == "jvp" and source != input_name:
        raise ModelError("forward mode differentiates with respect to the model input only.")
    refuse_quantisation(graph, source, output_name, _reads, opset)
    on_path = _path(graph, source, output_name)
    float_dtype = probe.dtypes.get(source, np.dtype(np.float32))
    taken = {name for node in graph.node for name in (*node.input, *node.output)}
    taken |= {vi.name for vi in graph.input} | {init.name for init in graph.initializer}
    builder = _Builder(opset, relu_rule, probe, on_path, float_dtype, taken, source=source,
                       made_by={name: node for node in graph.node for name in node.output},
                       speculative=speculative)

    seed = COTANGENT_NAME if mode == "vjp" else TANGENT_NAME
    seed_like = output_name if mode == "vjp" else source
    builder.record(seed, seed_like)
    path_nodes = _on_path_nodes(graph, on_path)
    emit = _emit_vjp if mode == "vjp" else _emit_jvp
    result = emit(builder, path_nodes, source, output_name, seed)
    result_like = source if mode == "vjp" else output_name
    builder.nodes.append(helper.make_node("Identity", [result], [RESULT_NAME], name="gradsal_result"))
    checks = _shape_checks(builder, path_nodes, [output_name, source]) + _branch_checks(builder, switches)

    outputs = [output_name, RESULT_NAME] + ([source] if source != input_name else [])
    outputs += [check for check, _, _ in checks] + [guard.output for guard in builder.guards]
    all_nodes = _needed_nodes([*builder.forward_nodes(graph.node), *builder.nodes], set(outputs))
    input_vi = next(vi for vi in graph.input if vi.name == input_name)
    seed_elem = helper.np_dtype_to_tensor_dtype(builder.dtype(seed_like))
    result_elem = helper.np_dtype_to_tensor_dtype(builder.dtype(result_like))
    new_graph = helper.make_graph(
        all_nodes,
        f"{graph.name or 'model'}_gradsal_{mode}",
        [
            _concrete_input(input_vi, input_shape),
            helper.make_tensor_value_info(seed, seed_elem, list(builder.shape(seed_like))),
        ],
        [
            helper.make_tensor_value_info(
                output_name, helper.np_dtype_to_tensor_dtype(builder.dtype(output_name)),
                list(builder.shape(output_name)),
            ),
            helper.make_tensor_value_info(RESULT_NAME, result_elem, list(builder.shape(result_like))),
            *(
                [helper.make_tensor_value_info(source, helper.np_dtype_to_tensor_dtype(builder.dtype(source)),
                                               list(builder.shape(source)))]
                if source != input_name else []
            ),
            *(helper.make_tensor_value_info(check, onnx.TensorProto.INT64, [len(shape)])
              for check, _, shape in checks),
            *(helper.make_tensor_value_info(guard.output, onnx.TensorProto.BOOL, []) for guard in builder.guards),
        ],
        [*graph.initializer, *builder.initializers],
    )
    grad_model = helper.make_model(new_graph, opset_imports=list(model.opset_import))
    grad_model.ir_version = model.ir_version
    try:
        onnx.checker.check_model(grad_model)
    except onnx.checker.ValidationError as exc:
        raise BackendError(
            f"gradsal internal error: the {mode.upper()} graph it built is not valid ONNX ({exc}). "
            "Please report this with the model."
        ) from exc
    return GradientGraph(grad_model, input_name, seed, output_name, RESULT_NAME, source, mode, tuple(checks),
                         tuple(builder.guards))


def _branch_checks(builder: _Builder, switches: dict[str, bool]) -> list[tuple[str, str, tuple[int, ...]]]:
    """A check output per If inlined on a condition computed from the input's values: the graph holds the
    branch taken at the probe, valid where the condition has that value (elsewhere the backend rebuilds
    it, taking the other branch: the VJP of an If is the VJP of the branch it takes)."""
    from onnx import TensorProto

    checks = []
    for condition, value in switches.items():
        single = builder.emit1("Reshape", [condition, builder.const([1])])  # an If condition has one element
        checks.append((builder.emit1("Cast", [single], to=TensorProto.INT64), condition, (int(value),)))
    return checks


def _shape_checks(builder: _Builder, path_nodes: list[Any],
                  extra: list[str]) -> list[tuple[str, str, tuple[int, ...]]]:
    """A ``Shape`` output for every tensor the rules saw whose shape may vary with the input's values."""
    from onnx import helper

    seen = [*extra, *(name for node in path_nodes for name in (*node.input, *node.output) if name)]
    varying = [name for name in dict.fromkeys(seen) if name in builder.probe.varying_shapes]
    checks = []
    for name in varying:
        check = builder.fresh("shape_check")
        builder.nodes.append(helper.make_node("Shape", [name], [check], name=check))
        checks.append((check, name, tuple(builder.shape(name))))
    return checks
