"""Registry of per-operator differentiation rules, and the context a rule uses to emit ONNX nodes.

A VJP rule receives the node and the cotangent of each of its outputs, and returns the cotangent of
each of its inputs; a JVP rule receives the tangent of each input and returns the tangent of each
output. Rules never compute anything themselves: they append standard ONNX nodes through the
:class:`RuleContext`, naming primal tensors of the original graph (which the gradient graph keeps)
and the cotangent/tangent tensors they are given. Shapes are concrete: the builder makes one gradient
graph per input shape, so a rule may read any tensor's shape, and the value of any tensor that does
not depend on the input's values (axes, pads, target shapes computed by shape arithmetic).

Registering::

    @vjp_rule("Relu")
    def relu_vjp(ctx, node, grads):           # grads[i]: cotangent of node.output[i], or None (zero)
        ...
        return [grad_of_input_0]              # one entry per node.input; None where no gradient

    @jvp_rule("Relu")
    def relu_jvp(ctx, node, tangents):        # tangents[i]: tangent of node.input[i], or None (zero)
        return [tangent_of_output_0]          # one entry per node.output

``differentiable`` (on ``vjp_rule``) lists the input positions through which gradient flows (None:
all of them); the builder uses it to decide which tensors are on the differentiated path, so that a
Reshape's target shape or a Where's condition is never differentiated.

Three registrars write one rule from the other where the maths allows, as JAX's ``defjvp``,
``deflinear`` and ``defbilinear`` do: :func:`diagonal` (an elementwise unary operator: its Jacobian is
diagonal, so the VJP and the JVP are the same product ``v * f'(x)``), :func:`linear` (the VJP is the
transpose; the JVP is the operator itself applied to the tangent) and :func:`bilinear` (the JVP is the sum
of the operator applied with one factor replaced by its tangent). Zero cotangents are handled in one
place, the builder's walk: it calls a VJP rule only when some output has a cotangent (so a single-output
rule always gets one) and a JVP rule only when some input has a tangent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import emit

try:  # onnx is needed only when a rule runs; importing this module must stay cheap
    from onnx import NodeProto
except ImportError:  # pragma: no cover - the backend reports the missing extra itself
    NodeProto = object  # type: ignore[assignment,misc]


class RuleContext(Protocol):
    """What the graph builder offers a rule while it writes the gradient graph."""

    opset: int
    """Version of the default ("ai.onnx") domain the model imports; rules must emit nodes valid at it."""

    relu_rule: str
    """"standard", "guided" or "deconvnet": how Relu's VJP treats the cotangent."""

    def emit(self, op_type: str, inputs: Sequence[str], n_outputs: int = 1, **attrs: object) -> list[str]:
        """Append a node (default domain) with fresh output names; returns those names.

        An empty string in ``inputs`` is an omitted optional input, as in ONNX.
        """

    def emit1(self, op_type: str, inputs: Sequence[str], **attrs: object) -> str:
        """Like :meth:`emit` for a single-output node; returns its output name."""

    def emit_forward(self, before: NodeProto, op_type: str, inputs: Sequence[str], **attrs: object) -> str:
        """Add a node to the forward computation, just before the model node ``before``; returns its output.

        For a primal intermediate that the forward and the rule can share (see :meth:`replace_forward`).
        """

    def record(self, name: str, like: str) -> None:
        """Note that ``name`` (an emitted tensor whose shape the context cannot infer, a Resize output say)
        has the shape and dtype of the primal ``like``."""

    def replace_forward(self, node: NodeProto, op_type: str, inputs: Sequence[str], **attrs: object) -> None:
        """Compute the outputs of the model node ``node`` with an equivalent node instead (its rules still
        apply to the original node)."""

    def const(self, value: np.ndarray | float | int | Sequence[int], dtype: np.dtype | type | None = None,
              like: str | None = None) -> str:
        """An initializer holding ``value``; returns its name.

        ``like``: take the dtype of that tensor (use it for float scalars that meet model tensors).
        Integer sequences default to int64 (axes, shapes, pads).
        """

    def shape(self, name: str) -> tuple[int, ...]:
        """Concrete shape of a tensor (primal, cotangent or tangent) at the current input shape."""

    def dtype(self, name: str) -> np.dtype:
        """Element type of a primal tensor."""

    def value(self, name: str) -> np.ndarray | None:
        """Value of a tensor that does not depend on the input's values, else None.

        Initializers, Constant outputs and shape arithmetic (Shape -> Gather -> Concat ...) qualify; a
        Range, ConstantOfShape or EyeLike computed from the input's values does not, nor does the Shape
        of a tensor whose shape depends on them (a NonZero). Read axes, pads, starts, target shapes and
        scales this way; never data.
        """

    def needs_grad(self, name: str) -> bool:
        """True if ``name`` is on the differentiated path (depends on the source and reaches the output)."""

    def unbroadcast(self, grad: str, target: str, grad_shape: Sequence[int] | None = None) -> str:
        """Sum ``grad`` over the axes along which ``target`` was broadcast; reshape it to ``target``'s shape.

        Emits nothing when the shapes already agree. ``grad_shape`` is needed only when ``grad`` is a
        tensor whose shape the context cannot know (``emit`` tracks the shapes of elementwise results).
        """

    def attr(self, node: NodeProto, name: str, default: object = None) -> object:
        """The value of attribute ``name`` of ``node`` (strings decoded, lists as lists), or ``default``."""

    def producer(self, name: str) -> NodeProto | None:
        """The model node whose VJP the cotangent of the primal ``name`` flows into: the node computing it,
        or None for the tensor differentiated with respect to (``wrt`` or the input) and for initializers."""

    def mark_masked(self, grad: str, primal: str) -> None:
        """Note that the cotangent ``grad`` is already zero wherever the primal ``primal`` is <= 0, so that a
        Relu producing ``primal`` need not multiply it by ``[primal > 0]`` again. The mark is on the name:
        a total of several contributions (a new name) carries none."""

    def is_masked(self, grad: str, primal: str) -> bool:
        """True when :meth:`mark_masked` noted ``grad`` as zero wherever ``primal`` is <= 0."""

    speculative: bool
    """True (the first build): a rule may emit a form that is exact only under a condition, checked at run
    time by a :meth:`guard`; False: the exact graph, built for a run where a guard fired."""

    def guard(self, flag: str, why: str) -> None:
        """Make the boolean scalar ``flag`` a graph output that is true where the speculative form just
        emitted is not exact (``why`` says when); such a run is redone on the exact graph."""


VjpRule = Callable[[RuleContext, NodeProto, list[str | None]], list[str | None]]
JvpRule = Callable[[RuleContext, NodeProto, list[str | None]], list[str | None]]


@dataclass(frozen=True)
class OpRules:
    vjp: VjpRule | None
    jvp: JvpRule | None
    differentiable: tuple[int, ...] | None  # input positions that carry gradient; None = all


_VJP: dict[str, VjpRule] = {}
_JVP: dict[str, JvpRule] = {}
_DIFFERENTIABLE: dict[str, tuple[int, ...] | None] = {}

# Operators whose outputs are random: never a constant the builder may read, whatever their inputs.
RANDOM_OPS = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
})
# Operators whose outputs carry only shape information, a constant or random draws: they end the
# differentiated path silently, because their outputs' values are no differentiable function of their
# inputs' values (Shape and EyeLike read only a shape; ConstantOfShape's fill is a constant, its shape an
# integer; random draws are not functions at all). Range is not here: its values, start + i delta, are
# differentiable in start and delta (it has a rule, in ``indexing``). An output of these operators may
# still *vary* with the input's values (ConstantOfShape of a shape computed from them): the builder
# never reads such a tensor as a constant (see ``_graph._dependence``).
SHAPE_ONLY_OPS = frozenset({"Shape", "Size", "Constant", "ConstantOfShape", "EyeLike"}) | RANDOM_OPS

# Operators that are piecewise constant in their data inputs: on the differentiated path they are an
# error (their gradient is zero almost everywhere, which would silently blank the saliency map).
NON_DIFFERENTIABLE_OPS = frozenset({
    "ArgMax", "ArgMin", "Round", "Floor", "Ceil", "Sign", "Equal", "Greater", "GreaterOrEqual", "Less",
    "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "NonZero", "TopK", "QuantizeLinear",
    "BitShift", "Mod",
})


def vjp_rule(*op_types: str, differentiable: Sequence[int] | None = None) -> Callable[[VjpRule], VjpRule]:
    """Register ``fn`` as the VJP rule of each operator in ``op_types``."""

    def register(fn: VjpRule) -> VjpRule:
        for op in op_types:
            _VJP[op] = fn
            _DIFFERENTIABLE[op] = tuple(differentiable) if differentiable is not None else None
        return fn

    return register


def jvp_rule(*op_types: str) -> Callable[[JvpRule], JvpRule]:
    """Register ``fn`` as the JVP rule of each operator in ``op_types``."""

    def register(fn: JvpRule) -> JvpRule:
        for op in op_types:
            _JVP[op] = fn
        return fn

    return register


def rules_for(op_type: str) -> OpRules | None:
    """The rules registered for an operator, or None if it has neither."""
    if op_type not in _VJP and op_type not in _JVP:
        return None
    return OpRules(_VJP.get(op_type), _JVP.get(op_type), _DIFFERENTIABLE.get(op_type))


def supported_operators() -> list[str]:
    """Operators with a VJP rule, sorted (the README lists them)."""
    return sorted(_VJP)


ApplyJacobian = Callable[[RuleContext, NodeProto, str], str]
AffineTangent = Callable[[RuleContext, NodeProto, str], str]


def diagonal(*op_types: str) -> Callable[[ApplyJacobian], ApplyJacobian]:
    """Register ``apply(ctx, node, v) = v * f'(x)`` as both the VJP and the JVP of unary ``op_types``."""

    def register(apply: ApplyJacobian) -> ApplyJacobian:
        def vjp(ctx: RuleContext, node: NodeProto, grads: list[str | None]) -> list[str | None]:
            return emit.padded([apply(ctx, node, grads[0])], len(node.input))  # type: ignore[arg-type]

        def jvp(ctx: RuleContext, node: NodeProto, tangents: list[str | None]) -> list[str | None]:
            return emit.padded([apply(ctx, node, tangents[0])], len(node.output))  # type: ignore[arg-type]

        vjp_rule(*op_types, differentiable=(0,))(vjp)
        jvp_rule(*op_types)(jvp)
        return apply

    return register


def linear(*op_types: str, inputs: Sequence[int] = (0,)) -> Callable[[VjpRule], VjpRule]:
    """Register ``transpose`` as the VJP of operators jointly linear in the inputs at ``inputs``.

    The JVP is the node itself on the tangents of those inputs (a zero tensor where one has none); the
    other inputs (shapes, axes, pads) are kept, and are never differentiated.
    """

    def register(transpose: VjpRule) -> VjpRule:
        def jvp(ctx: RuleContext, node: NodeProto, tangents: list[str | None]) -> list[str | None]:
            replaced = {i: tangents[i] or emit.zeros(ctx, ctx.shape(node.input[i]), node.input[i])
                        for i in inputs if i < len(node.input) and node.input[i]}
            return list(emit.same_op(ctx, node, replaced))  # type: ignore[arg-type]

        vjp_rule(*op_types, differentiable=inputs)(transpose)
        jvp_rule(*op_types)(jvp)
        return transpose

    return register


def bilinear(*op_types: str, factors: Sequence[int] | None = (0, 1), bias: int | None = None,
             bias_tangent: AffineTangent | None = None) -> Callable[[VjpRule], VjpRule]:
    """Register ``vjp`` as the VJP of operators linear in each of the inputs at ``factors`` separately.

    ``y = op(a, b) [+ bias]``: the JVP is ``op(ta, b) + op(a, tb) [+ bias_tangent(tbias)]``, each term the
    node itself with the bias input left out; ``factors=None`` takes every input (Einsum's operands).
    ``bias_tangent(ctx, node, t)`` maps the bias's tangent to a tensor that broadcasts to the output.
    """

    def register(vjp: VjpRule) -> VjpRule:
        def jvp(ctx: RuleContext, node: NodeProto, tangents: list[str | None]) -> list[str | None]:
            positions = range(len(node.input)) if factors is None else factors
            no_bias = {bias: ""} if bias is not None else {}
            terms = [emit.same_op(ctx, node, {**no_bias, i: tangents[i]})[0]  # type: ignore[dict-item]
                     for i in positions if i < len(tangents) and tangents[i] is not None]
            if bias is not None and bias < len(tangents) and tangents[bias] is not None:
                if bias_tangent is None:
                    raise emit.unsupported(ctx, node, "its bias depends on the input, which gradsal does not "
                                           "differentiate in forward mode here")
                terms.append(bias_tangent(ctx, node, tangents[bias]))  # type: ignore[arg-type]
            return [emit.total(ctx, terms)]

        positions = None if factors is None else (*factors, *(() if bias is None else (bias,)))
        vjp_rule(*op_types, differentiable=positions)(vjp)
        jvp_rule(*op_types)(jvp)
        return vjp

    return register
