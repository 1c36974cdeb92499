"""VJP and JVP of a fused LSTM node, batched over time: only the recurrence itself is stepped.

ONNX's LSTM with its default activations (gates in the order i, o, f, c; Hochreiter & Schmidhuber 1997):

    z_t = x_t W^T + h_{t-1} R^T + Wb + Rb,   [i, o, f] = s(z_t[i, o, f]),   g = tanh(z_t[c])
    c_t = f c_{t-1} + i g,                    h_t = o tanh(c_t)

The model's own LSTM node stays in the gradient graph's forward, and its output ``Y`` holds every h_t, so
the pre-activations of all steps are one batched product (H_prev = [h_0, h_1 .. h_{T-1}]); only the cell
states are stepped (c_t: a Mul and an Add). Backpropagation through time (Werbos 1990) then steps only
the adjoint recurrence,

    dh_t = dY_t + dz_{t+1} R,    dc_t = dc_{t+1} f_{t+1} + dh_t P_t,    dz_t = [dc_t, dh_t, dc_t, dc_t] M_t

with P = o (1 - tanh^2 c) and M = [g s'(z_i), tanh(c) s'(z_o), c_{t-1} s'(z_f), i (1 - g^2)] computed for
all steps at once (s' = s (1 - s)); dx = dz W, dW = dz^T x, dR = dz^T H_prev and dWb = dRb = sum dz are
batched again. The JVP steps its tangents the same way: dz_t = (dx_t W^T + x_t dW^T + h_{t-1} dR^T + db)
+ dh_{t-1} R^T, a = dz_t M_t, dc_t = f dc_{t-1} + a_i + a_f + a_g, dh_t = a_o + P_t dc_t. The directions
of a bidirectional node step together, stacked on a leading direction axis, the reverse one in its own
processing order. Other forms (peepholes, other activations, clip, input_forget, sequences shorter than
the tensor, no ``Y`` output) are unrolled into standard operators before the rules run (``_recurrent``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .._model_io import node_attribute as _attribute
from . import emit
from .registry import RuleContext, jvp_rule, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto

Names = list[str | None]
_DEFAULT_ACTIVATIONS = ["Sigmoid", "Tanh", "Tanh"]


def batched_form_problem(node: NodeProto, value_of: Callable[[str], np.ndarray | None], steps: int) -> str | None:
    """Why an LSTM node is not of the form this rule differentiates (it is then unrolled), or None."""
    directions = 2 if _attribute(node, "direction", "forward") == "bidirectional" else 1
    activations = _attribute(node, "activations")
    if activations is not None and list(activations) != _DEFAULT_ACTIVATIONS * directions:  # type: ignore[arg-type]
        return f"its activations {activations} are not the default ({', '.join(_DEFAULT_ACTIVATIONS)})"
    if _attribute(node, "clip") is not None:
        return "it clips its cell input (clip)"
    if int(_attribute(node, "input_forget", 0)):  # type: ignore[arg-type]
        return "it couples its input and forget gates (input_forget=1)"
    if int(_attribute(node, "layout", 0)):  # type: ignore[arg-type]
        return "it is batch-first (layout=1)"
    if not node.output or not node.output[0]:
        return "it has no Y output (the hidden states of every step)"
    if emit.optional_input(node, 7):
        return "it has peepholes"
    lengths = emit.optional_input(node, 4)
    if lengths:
        known = value_of(lengths)
        if known is None or np.any(np.asarray(known) < steps):
            return "its sequence_lens may end a sequence early"
    return None


class _Lstm:
    """One LSTM node: its dimensions, and the primal tensors its VJP and JVP share (emitted on demand)."""

    def __init__(self, ctx: RuleContext, node: NodeProto) -> None:
        self.ctx, self.node = ctx, node
        self.x, self.w, self.r, self.b = (emit.optional_input(node, i) for i in range(4))
        self.h0, self.c0 = emit.optional_input(node, 5), emit.optional_input(node, 6)
        self.steps, self.batch, self.features = (int(d) for d in ctx.shape(self.x))
        problem = batched_form_problem(node, ctx.value, self.steps)
        if problem is not None:
            raise emit.unsupported(ctx, node, f"{problem}, which this rule does not cover (it is unrolled first)")
        self.hidden = int(_attribute(node, "hidden_size"))  # type: ignore[arg-type]
        direction = _attribute(node, "direction", "forward")
        self.reversed = [False, True] if direction == "bidirectional" else [direction == "reverse"]
        self.directions = len(self.reversed)

    # ------------------------------------------------------------------------------- layout helpers

    def shape(self, *last: int, steps: int | None = None) -> tuple[int, ...]:
        """(directions, steps, batch, *last): the layout every batched tensor here has."""
        return (self.directions, self.steps if steps is None else steps, self.batch, *last)

    def reshape(self, name: str, shape: tuple[int, ...]) -> str:
        return self.ctx.emit1("Reshape", [name, self.ctx.const(list(shape))])

    def processing_order(self, name: str, last: int) -> str:
        """A ``(directions, steps, batch, last)`` tensor with each direction's steps in the order it takes
        them (the reverse direction's reversed); the same map takes them back."""
        if not any(self.reversed):
            return name
        steps = self.steps
        if self.directions == 1:
            return self.ctx.emit1("Gather", [name, self.ctx.const(np.arange(steps)[::-1].copy())], axis=1)
        index = np.concatenate([d * steps + (np.arange(steps)[::-1] if back else np.arange(steps))
                                for d, back in enumerate(self.reversed)])
        flat = self.reshape(name, (self.directions * steps, self.batch, last))
        picked = self.ctx.emit1("Gather", [flat, self.ctx.const(index)], axis=0)
        return self.reshape(picked, self.shape(last))

    def per_step(self, name: str) -> list[str]:
        """A batched tensor cut along its step axis, by one Split (its adjoint would be one Concat)."""
        if self.steps == 1:
            return [name]
        return emit.split(self.ctx, name, [1] * self.steps, 1)

    def step_state(self, name: str) -> str:
        """An initial state ``(directions, batch, hidden)`` as one step ``(directions, 1, batch, hidden)``."""
        return self.reshape(name, self.shape(self.hidden, steps=1))

    def zeros(self, shape: tuple[int, ...]) -> str:
        return self.ctx.const(np.zeros(shape, dtype=self.ctx.dtype(self.x)))

    def one(self) -> str:
        return emit.scalar(self.ctx, 1.0, self.x)

    def input_projection(self, x: str, w: str) -> str:
        """x_t W_d^T for every step and direction, in processing order: one MatMul over all of them."""
        ctx, gates = self.ctx, 4 * self.hidden
        rows = self.reshape(x, (self.steps * self.batch, self.features))
        weights = self.reshape(ctx.emit1("Transpose", [w], perm=[2, 0, 1]), (self.features, self.directions * gates))
        product = self.reshape(ctx.emit1("MatMul", [rows, weights]),
                               (self.steps, self.batch, self.directions, gates))
        return self.processing_order(ctx.emit1("Transpose", [product], perm=[2, 0, 1, 3]), gates)

    def recurrent_projection(self, h: str, r: str) -> str:
        """h_{t-1} R_d^T for every step and direction at once (``h`` in processing order)."""
        ctx, gates = self.ctx, 4 * self.hidden
        rows = self.reshape(h, (self.directions, self.steps * self.batch, self.hidden))
        product = ctx.emit1("MatMul", [rows, ctx.emit1("Transpose", [r], perm=[0, 2, 1])])
        return self.reshape(product, self.shape(gates))

    def bias(self, b: str) -> str:
        """Wb + Rb, shaped to broadcast against the batched pre-activations."""
        halves = self.reshape(b, (self.directions, 2, 4 * self.hidden))
        return self.reshape(emit.reduce_sum(self.ctx, halves, [1], keepdims=0), (self.directions, 1, 1, 4 * self.hidden))

    # ----------------------------------------------------------------------------- the primal pass

    def primal(self) -> None:
        """Every gate of every step from the model's Y; the cell states stepped; the factors P and M."""
        ctx, hidden = self.ctx, self.hidden
        y = ctx.emit1("Transpose", [self.node.output[0]], perm=[1, 0, 2, 3])  # (directions, steps, batch, hidden)
        hidden_states = self.processing_order(y, hidden)
        self.h_first = self.step_state(self.h0) if self.h0 else self.zeros(self.shape(hidden, steps=1))
        if self.steps > 1:
            earlier = emit.slice_axes(ctx, hidden_states, [1], [0], [self.steps - 1])
            self.h_previous = ctx.emit1("Concat", [self.h_first, earlier], axis=1)
        else:
            self.h_previous = self.h_first
        z = ctx.emit1("Add", [self.input_projection(self.x, self.w), self.recurrent_projection(self.h_previous, self.r)])
        if self.b:
            z = ctx.emit1("Add", [z, self.bias(self.b)])
        to_sigmoid, to_tanh = emit.split(ctx, z, [3 * hidden, hidden], 3)
        sigmoids, g = ctx.emit1("Sigmoid", [to_sigmoid]), ctx.emit1("Tanh", [to_tanh])
        i, o, f = emit.split(ctx, sigmoids, [hidden] * 3, 3)
        self.forget = self.per_step(f)
        cells, c_previous = self.cell_states(ctx.emit1("Mul", [i, g]))
        tanh_c = ctx.emit1("Tanh", [cells])
        one = self.one()
        self.p = ctx.emit1("Mul", [o, ctx.emit1("Sub", [one, ctx.emit1("Mul", [tanh_c, tanh_c])])])
        slopes = ctx.emit1("Mul", [sigmoids, ctx.emit1("Sub", [one, sigmoids])])
        by = ctx.emit1("Concat", [g, tanh_c, c_previous], axis=3)
        m_g = ctx.emit1("Mul", [i, ctx.emit1("Sub", [one, ctx.emit1("Mul", [g, g])])])
        self.m = ctx.emit1("Concat", [ctx.emit1("Mul", [slopes, by]), m_g], axis=3)

    def cell_states(self, input_times_candidate: str) -> tuple[str, str]:
        """(c_t of every step, c_{t-1} of every step): c_t = f_t c_{t-1} + i_t g_t, two nodes a step."""
        ctx = self.ctx
        c = self.step_state(self.c0) if self.c0 else None
        first = c if c is not None else self.zeros(self.shape(self.hidden, steps=1))
        cells = []
        for forget, added in zip(self.forget, self.per_step(input_times_candidate), strict=True):
            c = added if c is None else ctx.emit1("Add", [ctx.emit1("Mul", [forget, c]), added])
            cells.append(c)
        every = ctx.emit1("Concat", cells, axis=1) if len(cells) > 1 else cells[0]
        previous = ctx.emit1("Concat", [first, *cells[:-1]], axis=1) if len(cells) > 1 else first
        return every, previous

    # ---------------------------------------------------------------------------------- reverse mode

    def vjp(self, grads: Names) -> Names:
        ctx, hidden = self.ctx, self.hidden
        g_y, g_last_h, g_last_c = emit.padded(grads, 3)[:3]
        self.primal()
        dy = [None] * self.steps
        if g_y is not None:
            dy = self.per_step(self.processing_order(ctx.emit1("Transpose", [g_y], perm=[1, 0, 2, 3]), hidden))
        m, p = self.per_step(self.m), self.per_step(self.p)
        recurrence = self.reshape(self.r, (self.directions, 1, 4 * hidden, hidden))
        want_h0, want_c0 = self.needs(self.h0), self.needs(self.c0)
        carried_c = self.step_state(g_last_c) if g_last_c is not None else None
        carried_h = self.step_state(g_last_h) if g_last_h is not None else None
        dz = [""] * self.steps
        for t in reversed(range(self.steps)):
            terms = [name for name in (dy[t], carried_h) if name is not None]
            dh = emit.total(ctx, terms) if terms else self.zeros(self.shape(hidden, steps=1))
            dc = ctx.emit1("Mul", [dh, p[t]])
            if carried_c is not None:
                dc = ctx.emit1("Add", [carried_c, dc])
            dz[t] = ctx.emit1("Mul", [ctx.emit1("Concat", [dc, dh, dc, dc], axis=3), m[t]])
            if t > 0 or want_c0:
                carried_c = ctx.emit1("Mul", [dc, self.forget[t]])
            if t > 0 or want_h0:
                carried_h = ctx.emit1("MatMul", [dz[t], recurrence])
        dz_all = ctx.emit1("Concat", dz, axis=1) if self.steps > 1 else dz[0]
        grads_in: Names = [None] * len(self.node.input)
        for position, grad in ((0, self.input_grad), (1, self.w_grad), (2, self.r_grad), (3, self.b_grad)):
            if position < len(grads_in) and self.needs(self.node.input[position]):
                grads_in[position] = grad(dz_all)
        state_shape = (self.directions, self.batch, hidden)
        if want_h0:
            grads_in[5] = self.reshape(carried_h, state_shape)  # type: ignore[arg-type]
        if want_c0:
            grads_in[6] = self.reshape(carried_c, state_shape)  # type: ignore[arg-type]
        return grads_in

    def needs(self, name: str) -> bool:
        return bool(name) and self.ctx.needs_grad(name)

    def natural_rows(self, dz: str) -> str:
        """dz in time order as ``(steps batch, directions 4 hidden)`` rows."""
        gates = 4 * self.hidden
        ordered = self.ctx.emit1("Transpose", [self.processing_order(dz, gates)], perm=[1, 2, 0, 3])
        return self.reshape(ordered, (self.steps * self.batch, self.directions * gates))

    def input_grad(self, dz: str) -> str:
        """dx_t = sum over directions of dz_t W_d: one MatMul over every step and both directions."""
        weights = self.reshape(self.w, (self.directions * 4 * self.hidden, self.features))
        return self.reshape(self.ctx.emit1("MatMul", [self.natural_rows(dz), weights]),
                            (self.steps, self.batch, self.features))

    def transposed_rows(self, dz: str) -> str:
        """dz as ``(directions, 4 hidden, steps batch)``, to contract over every step at once."""
        rows = self.reshape(dz, (self.directions, self.steps * self.batch, 4 * self.hidden))
        return self.ctx.emit1("Transpose", [rows], perm=[0, 2, 1])

    def w_grad(self, dz: str) -> str:
        x_rows = self.reshape(self.processing_order(self.stacked_input(), self.features),
                              (self.directions, self.steps * self.batch, self.features))
        return self.ctx.emit1("MatMul", [self.transposed_rows(dz), x_rows])

    def stacked_input(self) -> str:
        """x once per direction, ``(directions, steps, batch, features)``."""
        one = self.reshape(self.x, (1, self.steps, self.batch, self.features))
        return self.ctx.emit1("Concat", [one] * self.directions, axis=0) if self.directions > 1 else one

    def r_grad(self, dz: str) -> str:
        h_rows = self.reshape(self.h_previous, (self.directions, self.steps * self.batch, self.hidden))
        return self.ctx.emit1("MatMul", [self.transposed_rows(dz), h_rows])

    def b_grad(self, dz: str) -> str:
        total = emit.reduce_sum(self.ctx, dz, [1, 2], keepdims=0)  # (directions, 4 hidden)
        return self.ctx.emit1("Concat", [total, total], axis=1)

    # ---------------------------------------------------------------------------------- forward mode

    def jvp(self, tangents: Names) -> Names:
        ctx, hidden = self.ctx, self.hidden
        tangents = emit.padded(tangents, 8)
        self.primal()
        batched, has_steps = self.batched_tangent(tangents)
        per_step = self.per_step(batched) if batched is not None and has_steps else None
        m, p = self.per_step(self.m), self.per_step(self.p)
        recurrence = self.reshape(self.ctx.emit1("Transpose", [self.r], perm=[0, 2, 1]),
                                  (self.directions, 1, hidden, 4 * hidden))
        th = self.step_state(tangents[5]) if tangents[5] is not None else None
        tc = self.step_state(tangents[6]) if tangents[6] is not None else None
        outputs: list[str] = []
        for t in range(self.steps):
            terms = [per_step[t] if per_step is not None else batched]
            terms.append(ctx.emit1("MatMul", [th, recurrence]) if th is not None else None)
            terms = [term for term in terms if term is not None]
            if terms:
                a_i, a_o, a_f, a_g = emit.split(ctx, ctx.emit1("Mul", [emit.total(ctx, terms), m[t]]), [hidden] * 4, 3)
                tc = emit.total(ctx, [a_i, a_f, a_g] + ([ctx.emit1("Mul", [self.forget[t], tc])] if tc else []))
                th = ctx.emit1("Add", [a_o, ctx.emit1("Mul", [p[t], tc])])
            elif tc is not None:
                tc = ctx.emit1("Mul", [self.forget[t], tc])
                th = ctx.emit1("Mul", [p[t], tc])
            outputs.append(th if th is not None else self.zeros(self.shape(hidden, steps=1)))
        return self.output_tangents(outputs, th, tc)

    def batched_tangent(self, tangents: Names) -> tuple[str | None, bool]:
        """(the part of every step's pre-activation tangent that does not go through the recurrence, whether
        it has a step axis: a bias tangent alone broadcasts over the steps)."""
        t_x, t_w, t_r, t_b = tangents[:4]
        terms = []
        if t_x is not None:
            terms.append(self.input_projection(t_x, self.w))
        if t_w is not None:
            terms.append(self.input_projection(self.x, t_w))
        if t_r is not None:
            terms.append(self.recurrent_projection(self.h_previous, t_r))
        has_steps = bool(terms)
        if t_b is not None:
            terms.append(self.bias(t_b))
        return (emit.total(self.ctx, terms) if terms else None), has_steps

    def output_tangents(self, outputs: list[str], th: str | None, tc: str | None) -> Names:
        ctx, hidden = self.ctx, self.hidden
        state_shape = (self.directions, self.batch, hidden)
        every = ctx.emit1("Concat", outputs, axis=1) if len(outputs) > 1 else outputs[0]
        result: Names = [ctx.emit1("Transpose", [self.processing_order(every, hidden)], perm=[1, 0, 2, 3])]
        result.append(self.reshape(th, state_shape) if th is not None else None)
        result.append(self.reshape(tc, state_shape) if tc is not None else None)
        return [value if i < len(self.node.output) and self.node.output[i] else None
                for i, value in enumerate(result)][:len(self.node.output)]


@vjp_rule("LSTM", differentiable=(0, 1, 2, 3, 5, 6, 7))
def _lstm_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    return _Lstm(ctx, node).vjp(grads)


@jvp_rule("LSTM")
def _lstm_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    return _Lstm(ctx, node).jvp(tangents)
