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

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

import numpy as np

from .._model_io import node_attribute as _attribute
from .._recurrent import unsupported_form
from . import emit
from .registry import RuleContext, jvp_rule, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto

Names = list[str | None]
_UNROLLED: ContextVar[bool] = ContextVar("gradsal_lstm_unrolled", default=False)


@contextlib.contextmanager
def unrolled() -> Iterator[None]:
    """Within this block every LSTM takes the general form (unrolled into standard operators), as one with
    peepholes does: for comparing the two in tests and benchmarks."""
    token = _UNROLLED.set(True)
    try:
        yield
    finally:
        _UNROLLED.reset(token)


def batched_form_problem(node: NodeProto, value_of: Callable[[str], np.ndarray | None], steps: int) -> str | None:
    """Why an LSTM node is not of the form this rule differentiates (it is then unrolled), or None: a form
    that cannot be unrolled either (:func:`~.._recurrent.unsupported_form`), or one only unrolling covers."""
    unrollable = unsupported_form(node)
    if unrollable is not None:
        return unrollable
    if _UNROLLED.get():
        return "every LSTM is unrolled here (rules.lstm.unrolled())"
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
    """One LSTM node: its dimensions, and the primal tensors its VJP and JVP share.

    Batched tensors are ``(directions, steps, batch, width)`` with each direction's steps in the order it
    takes them (the reverse direction's reversed), so that step k of every direction is one slice. Their
    rows are picked from the model's tensors, and put back, by one Gather each.
    """

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
        self.recurrence: dict[int, str] = {}  # R_d, picked once

    # ------------------------------------------------------------------------------------ layout

    def time_of(self, d: int, k: int) -> int:
        """The time step that direction ``d`` takes ``k``-th (the map is its own inverse)."""
        return self.steps - 1 - k if self.reversed[d] else k

    def pairs(self) -> list[tuple[int, int]]:
        """(direction, k) in the row order of the batched tensors."""
        return [(d, k) for d in range(self.directions) for k in range(self.steps)]

    def rows(self, name: str, index: list[int], available: int) -> str:
        """Rows ``index`` of ``name`` along its first axis, of ``available`` rows (nothing for all, in order)."""
        if index == list(range(available)):
            return name
        return self.ctx.emit1("Gather", [name, self.ctx.const(np.asarray(index, np.int64))], axis=0)

    def reshape(self, name: str, shape: tuple[int, ...]) -> str:
        return self.ctx.emit1("Reshape", [name, self.ctx.const(list(shape))])

    def shape(self, *last: int, steps: int | None = None) -> tuple[int, ...]:
        """(directions, steps, batch, *last): the layout of every batched tensor here."""
        return (self.directions, self.steps if steps is None else steps, self.batch, *last)

    def in_order(self, name: str, d: int, width: int) -> str:
        """A time-major ``(steps, batch, width)`` tensor in the order direction ``d`` takes its steps, as
        ``(steps batch, width)`` rows."""
        index = [self.time_of(d, k) for k in range(self.steps)]
        return self.reshape(self.rows(name, index, self.steps), (self.steps * self.batch, width))

    def pick(self, name: str, d: int) -> str:
        """Direction ``d``'s slice of a weight (a constant, which onnxruntime folds and packs once)."""
        return self.ctx.emit1("Gather", [name, self.ctx.const(np.asarray(d, np.int64))], axis=0)

    def matrix_t(self, name: str) -> str:
        return self.ctx.emit1("Transpose", [name], perm=[1, 0])

    def stack(self, parts: list[str], shape: tuple[int, ...]) -> str:
        """Per-direction tensors of ``shape`` as one ``(directions, *shape)`` tensor."""
        whole = self.ctx.emit1("Concat", parts, axis=0) if len(parts) > 1 else parts[0]
        return self.reshape(whole, (self.directions, *shape))

    def unstack(self, name: str, shape: tuple[int, ...]) -> list[str]:
        """A ``(directions, ...)`` tensor as one tensor of ``shape`` per direction."""
        parts = emit.split(self.ctx, name, [1] * self.directions, 0) if self.directions > 1 else [name]
        return [self.reshape(part, shape) for part in parts]

    def from_steps(self, name: str, width: int) -> str:
        """A batched tensor as ONNX's ``(steps, directions, batch, width)`` (the inverse of :meth:`to_steps`)."""
        index = [d * self.steps + self.time_of(d, t) for t in range(self.steps) for d in range(self.directions)]
        flat = self.reshape(name, (self.directions * self.steps, self.batch, width))
        return self.reshape(self.rows(flat, index, len(index)), (self.steps, self.directions, self.batch, width))

    def per_step(self, name: str) -> list[str]:
        """A batched tensor cut along its step axis, by one Split."""
        if self.steps == 1:
            return [name]
        return emit.split(self.ctx, name, [1] * self.steps, 1)

    def step_state(self, name: str) -> str:
        """A state ``(directions, batch, hidden)`` as one step ``(directions, 1, batch, hidden)``."""
        return self.reshape(name, self.shape(self.hidden, steps=1))

    def zeros(self, shape: tuple[int, ...]) -> str:
        return self.ctx.const(np.zeros(shape, dtype=self.ctx.dtype(self.x)))

    def one(self) -> str:
        return emit.scalar(self.ctx, 1.0, self.x)

    def needs(self, name: str) -> bool:
        return bool(name) and self.ctx.needs_grad(name)

    def transposed(self, name: str) -> str:
        return self.ctx.emit1("Transpose", [name], perm=[0, 2, 1])

    def bias_row(self, b: str) -> str:
        """Wb + Rb as ``(directions, 1, 4 hidden)``."""
        halves = self.reshape(b, (self.directions, 2, 4 * self.hidden))
        return emit.reduce_sum(self.ctx, halves, [1], keepdims=1)

    def bias_of(self, b: str, d: int) -> str:
        """Wb + Rb of direction ``d`` as a ``(1, 4 hidden)`` row."""
        return emit.reduce_sum(self.ctx, self.reshape(self.pick(b, d), (2, 4 * self.hidden)), [0], keepdims=1)

    # --------------------------------------------------------------------------------- primal pass

    def primal(self) -> None:
        """Every gate of every step from the model's Y; the cell states stepped; the factors P and M."""
        ctx, hidden = self.ctx, self.hidden
        to_sigmoid, to_tanh = emit.split(ctx, self.pre_activations(), [3 * hidden, hidden], 3)
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

    def pre_activations(self) -> str:
        """z_t of every step and direction, batched: ``[x_t | h_{t-1} | 1] [W | R | Wb + Rb]^T``, one
        two-dimensional MatMul per direction (onnxruntime packs its constant right operand once)."""
        ctx, hidden, rows = self.ctx, self.hidden, self.steps * self.batch
        first = self.h0 or self.zeros((self.directions, self.batch, hidden))
        ys = self.reshape(self.node.output[0], (self.steps * self.directions, self.batch, hidden))
        states = ctx.emit1("Concat", [ys, first], axis=0)  # every h_t, then h_0 of each direction
        self.x_steps: list[str] = []  # per direction, (steps batch, features) rows in its order
        self.h_steps: list[str] = []  # per direction, h_{t-1} as (steps batch, hidden) rows in its order
        z = []
        for d in range(self.directions):
            index = [self.steps * self.directions + d] + [
                self.time_of(d, k - 1) * self.directions + d for k in range(1, self.steps)]
            self.x_steps.append(self.in_order(self.x, d, self.features))
            picked = self.rows(states, index, (self.steps + 1) * self.directions)
            self.h_steps.append(self.reshape(picked, (rows, hidden)))
            operands = [self.x_steps[d], self.h_steps[d]]
            weights = [self.matrix_t(self.pick(self.w, d)), self.matrix_t(self.pick(self.r, d))]
            if self.b:  # the bias as the weight of a column of ones
                operands.append(ctx.const(np.ones((rows, 1), dtype=ctx.dtype(self.x))))
                weights.append(self.bias_of(self.b, d))
            z.append(ctx.emit1("MatMul", [ctx.emit1("Concat", operands, axis=1), ctx.emit1("Concat", weights, axis=0)]))
        return self.stack(z, (self.steps, self.batch, 4 * hidden))

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

    # --------------------------------------------------------------------------------- reverse mode

    def vjp(self, grads: Names) -> Names:
        ctx, hidden = self.ctx, self.hidden
        g_y, g_last_h, g_last_c = emit.padded(grads, 3)[:3]
        self.primal()
        m, p = self.per_step(self.m), self.per_step(self.p)
        dy = self.per_step(self.to_steps(g_y, hidden)) if g_y is not None else [None] * self.steps
        want_h0, want_c0 = self.needs(self.h0), self.needs(self.c0)
        from_later = self.step_state(g_last_h) if g_last_h is not None else None  # dz_{k+1} R, or Y_h's
        carried = self.step_state(g_last_c) if g_last_c is not None else None  # dc_{k+1} f_{k+1}, or Y_c's
        dz = [""] * self.steps
        for k in reversed(range(self.steps)):
            terms = [name for name in (dy[k], from_later) if name is not None]
            dh = emit.total(ctx, terms) if terms else self.zeros(self.shape(hidden, steps=1))
            dc = ctx.emit1("Mul", [dh, p[k]])
            if carried is not None:
                dc = ctx.emit1("Add", [carried, dc])
            dz[k] = ctx.emit1("Mul", [ctx.emit1("Concat", [dc, dh, dc, dc], axis=3), m[k]])
            if k > 0 or want_c0:
                carried = ctx.emit1("Mul", [dc, self.forget[k]])
            if k > 0 or want_h0:
                from_later = self.times_recurrence(dz[k])
        dz_rows = self.reshape(ctx.emit1("Concat", dz, axis=1) if self.steps > 1 else dz[0],
                               (self.directions, self.steps * self.batch, 4 * hidden))
        grads_in: Names = [None] * len(self.node.input)
        for position, grad in ((0, self.x_grad), (1, self.w_grad), (2, self.r_grad), (3, self.b_grad)):
            if position < len(grads_in) and self.needs(self.node.input[position]):
                grads_in[position] = grad(dz_rows)
        state_shape = (self.directions, self.batch, hidden)
        if want_h0:
            grads_in[5] = self.reshape(from_later, state_shape)  # type: ignore[arg-type]
        if want_c0:
            grads_in[6] = self.reshape(carried, state_shape)  # type: ignore[arg-type]
        return grads_in

    def to_steps(self, name: str, width: int) -> str:
        """A ``(steps, directions, batch, width)`` tensor (ONNX's Y) in the batched layout."""
        index = [self.time_of(d, k) * self.directions + d for d, k in self.pairs()]
        flat = self.reshape(name, (self.steps * self.directions, self.batch, width))
        return self.reshape(self.rows(flat, index, len(index)), self.shape(width))

    def times_recurrence(self, dz: str) -> str:
        """dz_k R_d for every direction, by a two-dimensional MatMul each: onnxruntime packs a constant
        two-dimensional right operand once, where a MatMul batched over the directions repacks it."""
        ctx = self.ctx
        parts = emit.split(ctx, dz, [1] * self.directions, 0) if self.directions > 1 else [dz]
        products = [ctx.emit1("MatMul", [part, self.direction_weights(d)]) for d, part in enumerate(parts)]
        return ctx.emit1("Concat", products, axis=0) if len(products) > 1 else products[0]

    def direction_weights(self, d: int) -> str:
        """R_d as a ``(4 hidden, hidden)`` matrix (picked once)."""
        if d not in self.recurrence:
            self.recurrence[d] = self.pick(self.r, d)
        return self.recurrence[d]

    def x_grad(self, dz_rows: str) -> str:
        """dx_t = sum over directions of dz W_d, back in time order: one MatMul per direction."""
        ctx, steps, batch, features = self.ctx, self.steps, self.batch, self.features
        total = None
        for d, dz in enumerate(self.unstack(dz_rows, (steps * batch, 4 * self.hidden))):
            part = self.reshape(ctx.emit1("MatMul", [dz, self.pick(self.w, d)]), (steps, batch, features))
            if self.reversed[d]:
                part = self.rows(part, list(range(steps - 1, -1, -1)), steps)
            total = part if total is None else ctx.emit1("Add", [total, part])
        return total  # type: ignore[return-value]

    def w_grad(self, dz_rows: str) -> str:
        return self.weight_grad(dz_rows, self.x_steps, self.features)

    def r_grad(self, dz_rows: str) -> str:
        return self.weight_grad(dz_rows, self.h_steps, self.hidden)

    def weight_grad(self, dz_rows: str, inputs: list[str], width: int) -> str:
        """dz^T (inputs) of every direction, summed over all steps by one MatMul each."""
        gates, rows = 4 * self.hidden, self.steps * self.batch
        parts = [self.ctx.emit1("MatMul", [self.matrix_t(dz), inputs[d]])
                 for d, dz in enumerate(self.unstack(dz_rows, (rows, gates)))]
        return self.stack(parts, (gates, width))

    def b_grad(self, dz_rows: str) -> str:
        total = emit.reduce_sum(self.ctx, dz_rows, [1], keepdims=0)  # (directions, 4 hidden)
        return self.ctx.emit1("Concat", [total, total], axis=1)

    # --------------------------------------------------------------------------------- forward mode

    def jvp(self, tangents: Names) -> Names:
        ctx, hidden = self.ctx, self.hidden
        tangents = emit.padded(tangents, 8)
        self.primal()
        batched, has_steps = self.batched_tangent(tangents)
        per_step = self.per_step(batched) if batched is not None and has_steps else None
        m, p = self.per_step(self.m), self.per_step(self.p)
        recurrence = self.reshape(self.transposed(self.r), (self.directions, 1, hidden, 4 * hidden))
        th = self.step_state(tangents[5]) if tangents[5] is not None else None
        tc = self.step_state(tangents[6]) if tangents[6] is not None else None
        outputs: list[str] = []
        for k in range(self.steps):
            terms = [per_step[k] if per_step is not None else batched]
            terms.append(ctx.emit1("MatMul", [th, recurrence]) if th is not None else None)
            present = [term for term in terms if term is not None]
            if present:
                tz = ctx.emit1("Mul", [emit.total(ctx, present), m[k]])
                a_i, a_o, a_f, a_g = emit.split(ctx, tz, [hidden] * 4, 3)
                tc = emit.total(ctx, [a_i, a_f, a_g] + ([ctx.emit1("Mul", [self.forget[k], tc])] if tc else []))
                th = ctx.emit1("Add", [a_o, ctx.emit1("Mul", [p[k], tc])])
            elif tc is not None:
                tc = ctx.emit1("Mul", [self.forget[k], tc])
                th = ctx.emit1("Mul", [p[k], tc])
            outputs.append(th if th is not None else self.zeros(self.shape(hidden, steps=1)))
        return self.output_tangents(outputs, th, tc)

    def batched_tangent(self, tangents: Names) -> tuple[str | None, bool]:
        """(the part of every step's pre-activation tangent that does not go through the recurrence, whether
        it has a step axis: a bias tangent alone broadcasts over the steps)."""
        ctx = self.ctx
        t_x, t_w, t_r, t_b = tangents[:4]
        per_direction = []
        for d in range(self.directions):
            terms = []
            if t_x is not None:
                terms.append(ctx.emit1("MatMul", [self.in_order(t_x, d, self.features),
                                                  self.matrix_t(self.pick(self.w, d))]))
            if t_w is not None:
                terms.append(ctx.emit1("MatMul", [self.x_steps[d], self.matrix_t(self.pick(t_w, d))]))
            if t_r is not None:
                terms.append(ctx.emit1("MatMul", [self.h_steps[d], self.matrix_t(self.pick(t_r, d))]))
            if terms:
                per_direction.append(emit.total(ctx, terms))
        terms = [self.stack(per_direction, (self.steps, self.batch, 4 * self.hidden))] if per_direction else []
        if t_b is not None:
            terms.append(self.reshape(self.bias_row(t_b), (self.directions, 1, 1, 4 * self.hidden)))
        return (emit.total(ctx, terms) if terms else None), bool(per_direction)

    def output_tangents(self, outputs: list[str], th: str | None, tc: str | None) -> Names:
        ctx, hidden = self.ctx, self.hidden
        state_shape = (self.directions, self.batch, hidden)
        every = ctx.emit1("Concat", outputs, axis=1) if len(outputs) > 1 else outputs[0]
        result: Names = [self.from_steps(every, hidden)]
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
