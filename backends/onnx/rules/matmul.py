"""Rules of the matrix products MatMul, Gemm and Einsum: bilinear maps.

``C = A B`` is linear in each factor, so its JVP is ``tA B + A tB`` (registered with
:func:`~.registry.bilinear`) and its VJP is ``gA = g B^T``, ``gB = A^T g``, summed over the batch axes an
operand was broadcast along (numpy's matmul semantics). Gemm, ``Y = alpha A' B' + beta C`` (A' = A or
A^T, B' likewise), writes every gradient as one Gemm whose transpose flags absorb the transposes, and a
MatMul whose right operand is a matrix folds its batch into rows to do the same. Einsum is linear in each
operand: an operand's cotangent is the Einsum of the output's cotangent with the other operands, onto
that operand's labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import emit
from .emit import Names
from .registry import RuleContext, bilinear, jvp_rule, vjp_rule

if TYPE_CHECKING:
    from onnx import NodeProto


def _gemm(ctx: RuleContext, a: str, b: str, *, trans_a: int = 0, trans_b: int = 0, alpha: float = 1.0,
          c: str | None = None, beta: float = 1.0, like: str) -> str:
    """Gemm(a, b[, c]); before opset 11 C is required, so a scalar zero stands in."""
    inputs = [a, b]
    if c is not None:
        inputs.append(c)
    elif ctx.opset < 11:
        inputs.append(emit.scalar(ctx, 0.0, like))
    return ctx.emit1(
        "Gemm", inputs, transA=trans_a or None, transB=trans_b or None,
        alpha=None if alpha == 1.0 else float(alpha), beta=None if beta == 1.0 else float(beta),
    )


def _swap_last_two(ctx: RuleContext, name: str, padded: tuple[int, ...], rank: int) -> str:
    """``name`` (viewed with shape ``padded``) with its last two axes swapped; a free Reshape when
    one of them has size 1 (or the operand is 1-D), else a Transpose."""
    swapped = (*padded[:-2], padded[-1], padded[-2])
    if rank < 2 or 1 in padded[-2:]:
        return emit.reshape(ctx, name, swapped)
    return ctx.emit1("Transpose", [name], perm=[*range(len(padded) - 2), len(padded) - 1, len(padded) - 2])


def _matmul_vjp_rows(ctx: RuleContext, node: NodeProto, g: str, n_k_m: tuple[int, int, int]) -> Names:
    """a (..., n, k) @ W (k, m): fold the batch into rows and use Gemm's transpose flags."""
    a, w = node.input[:2]
    a_shape = ctx.shape(a)
    _, k, m = n_k_m
    flat = len(a_shape) > 2
    g2 = emit.reshape(ctx, g, (-1, m)) if flat else g
    ga = gw = None
    if ctx.needs_grad(a):
        ga = _gemm(ctx, g2, w, trans_b=1, like=a)
        ga = emit.reshape(ctx, ga, a_shape) if flat else ga
    if ctx.needs_grad(w):
        a2 = emit.reshape(ctx, a, (-1, k)) if flat else a
        gw = _gemm(ctx, a2, g2, trans_a=1, like=a)
    return [ga, gw]


@bilinear("MatMul")
def matmul_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """C = A B (numpy matmul semantics): gA = g B^T, gB = A^T g, summed over broadcast batch axes."""
    a, b = node.input[:2]
    sa, sb = ctx.shape(a), ctx.shape(b)
    pa = sa if len(sa) >= 2 else (1, *sa)
    pb = sb if len(sb) >= 2 else (*sb, 1)
    batch = emit.broadcast_shape(pa[:-2], pb[:-2])
    n, k, m = pa[-2], pa[-1], pb[-1]
    full = (*batch, n, m)
    g = grads[0]
    if ctx.shape(node.output[0]) != full:  # a 1-D operand dropped an axis of the product
        g = emit.reshape(ctx, g, full)
    if len(sb) == 2 and len(sa) >= 2:
        return _matmul_vjp_rows(ctx, node, g, (n, k, m))
    ga = gb = None
    if ctx.needs_grad(a):
        ga = ctx.emit1("MatMul", [g, _swap_last_two(ctx, b, pb, len(sb))])
        if len(sa) == 1:
            ga = emit.reshape(ctx, ga, (*batch, k))
        ga = ctx.unbroadcast(ga, a, (*batch, k) if len(sa) == 1 else (*batch, n, k))
    if ctx.needs_grad(b):
        gb = ctx.emit1("MatMul", [_swap_last_two(ctx, a, pa, len(sa)), g])
        if len(sb) == 1:
            gb = emit.reshape(ctx, gb, (*batch, k))
        gb = ctx.unbroadcast(gb, b, (*batch, k) if len(sb) == 1 else (*batch, k, m))
    return [ga, gb]


def _gemm_attrs(ctx: RuleContext, node: NodeProto) -> tuple[int, int, float, float]:
    return (int(ctx.attr(node, "transA", 0)), int(ctx.attr(node, "transB", 0)),
            float(ctx.attr(node, "alpha", 1.0)), float(ctx.attr(node, "beta", 1.0)))


@vjp_rule("Gemm")
def gemm_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Y = alpha A' B' + beta C (A' = A or A^T, B' likewise): every gradient is one Gemm whose
    transpose flags absorb the transposes."""
    g = grads[0]
    a, b = node.input[:2]
    c = node.input[2] if len(node.input) > 2 and node.input[2] else None
    trans_a, trans_b, alpha, beta = _gemm_attrs(ctx, node)
    result: Names = emit.nothing(node)
    if ctx.needs_grad(a):
        if trans_a:  # gA = alpha B' g^T
            result[0] = _gemm(ctx, b, g, trans_a=trans_b, trans_b=1, alpha=alpha, like=a)
        else:  # gA = alpha g B'^T
            result[0] = _gemm(ctx, g, b, trans_b=1 - trans_b, alpha=alpha, like=a)
    if ctx.needs_grad(b):
        if trans_b:  # gB = alpha g^T A'
            result[1] = _gemm(ctx, g, a, trans_a=1, trans_b=trans_a, alpha=alpha, like=a)
        else:  # gB = alpha A'^T g
            result[1] = _gemm(ctx, a, g, trans_a=1 - trans_a, alpha=alpha, like=a)
    if c is not None and ctx.needs_grad(c):
        gc = ctx.unbroadcast(g, c, ctx.shape(node.output[0]))
        result[2] = gc if beta == 1.0 else ctx.emit1("Mul", [gc, emit.scalar(ctx, beta, c)])
    return result


def _bias_tangent(ctx: RuleContext, node: NodeProto, tc: str) -> str:
    """beta t_C, broadcast to the output's shape."""
    c, beta = node.input[2], _gemm_attrs(ctx, node)[3]
    scaled = tc if beta == 1.0 else ctx.emit1("Mul", [tc, emit.scalar(ctx, beta, c)])
    return emit.expand(ctx, scaled, ctx.shape(node.output[0]), from_shape=ctx.shape(c))


# Written by hand rather than with ``bilinear``: before opset 11 Gemm requires its C input, which the
# registrar's terms leave out, and t_C rides along as the C of the first product (one Gemm, no Add).
@jvp_rule("Gemm")
def gemm_jvp(ctx: RuleContext, node: NodeProto, tangents: Names) -> Names:
    """t_Y = alpha (tA' B' + A' tB') + beta t_C."""
    a, b = node.input[:2]
    trans_a, trans_b, alpha, beta = _gemm_attrs(ctx, node)
    tangents = emit.padded(tangents, 3)
    ta, tb, tc = tangents
    flags = {"trans_a": trans_a, "trans_b": trans_b, "alpha": alpha, "like": a}
    terms = []
    if ta is not None:  # t_C rides along as the C input of the first product
        terms.append(_gemm(ctx, ta, b, c=tc, beta=beta, **flags))
        tc = None
    if tb is not None:
        terms.append(_gemm(ctx, a, tb, c=tc, beta=beta, **flags))
        tc = None
    if tc is not None:
        terms.append(_bias_tangent(ctx, node, tc))
    return [emit.total(ctx, terms)]


# ------------------------------------------------------------------------------------------------ Einsum


def _einsum_terms(ctx: RuleContext, node: NodeProto) -> tuple[list[str], str, int]:
    """(input terms, explicit output term, rank of ``...``) of an Einsum. An implicit output follows
    numpy's rule: ``...`` first, then the labels used exactly once, sorted. ``...`` stays in the terms:
    ONNX allows broadcasting only there."""
    equation = str(ctx.attr(node, "equation")).replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    ellipsis_rank = max((len(ctx.shape(name)) - len(term) + 3
                         for term, name in zip(terms, node.input, strict=True) if "..." in term), default=0)
    if arrow:
        return terms, rhs, ellipsis_rank
    labels = lhs.replace("...", "").replace(",", "")
    singles = "".join(sorted(c for c in set(labels) if labels.count(c) == 1))
    return terms, ("..." if "..." in lhs else "") + singles, ellipsis_rank


def _einsum_tokens(term: str) -> list[str]:
    """``"a...bc"`` -> ``["a", "...", "b", "c"]``."""
    head, dots, tail = term.partition("...")
    return [*head, *([dots] if dots else []), *tail]


def _einsum_axis_sizes(term: str, shape: Sequence[int], ellipsis_rank: int) -> dict[str, int]:
    """Size of each label of ``term`` and of each ``...`` axis (keyed "0", "1", ... right-aligned)."""
    sizes: dict[str, int] = {}
    position = 0
    for token in _einsum_tokens(term):
        if token == "...":
            own = len(shape) - len(term) + 3
            for j in range(own):
                sizes[str(ellipsis_rank - own + j)] = int(shape[position + j])
            position += own
        else:
            sizes[token] = int(shape[position])
            position += 1
    return sizes


def _einsum_operand_grad(ctx: RuleContext, node: NodeProto, g: str, position: int,
                         terms: list[str], output: str, ellipsis_rank: int) -> str:
    """g_i = einsum(g, other operands -> axes of operand i). Axes only operand i has (summed away in
    the forward) are broadcast back; axes along which operand i was broadcast are summed."""
    own, operand = terms[position], node.input[position]
    labels = own.replace("...", "")
    if len(set(labels)) != len(labels):
        raise emit.unsupported(ctx, node, f"operand {position} repeats a label ({own!r}: a diagonal), whose "
                                      "gradient gradsal does not build")
    sources = [(output, g, ctx.shape(node.output[0]))] + [
        (term, name, ctx.shape(name)) for i, (term, name) in enumerate(zip(terms, node.input, strict=True))
        if i != position]
    sizes: dict[str, int] = {}
    for term, _, shape in sources:
        for key, size in _einsum_axis_sizes(term, shape, ellipsis_rank).items():
            sizes[key] = max(sizes.get(key, 1), size)
    own_rank = len(ctx.shape(operand)) - len(own) + 3 if "..." in own else 0
    kept, full = [], []
    for token in _einsum_tokens(own):
        if token == "...":
            keys = [str(ellipsis_rank - own_rank + j) for j in range(own_rank)]
            ellipsis_known = any("..." in term for term, _, _ in sources)
            kept += [token] if ellipsis_known else []
            full += [sizes.get(key, 1) if ellipsis_known else 1 for key in keys]
        else:
            kept += [token] if token in sizes else []
            full.append(sizes.get(token, 1))
    equation = ",".join(term for term, _, _ in sources) + "->" + "".join(kept)
    grad = ctx.emit1("Einsum", [name for _, name, _ in sources], equation=equation)
    if len(kept) != len(_einsum_tokens(own)):
        grad = emit.reshape(ctx, grad, full)
    widened = emit.broadcast_shape(full, ctx.shape(operand))
    grad = emit.expand(ctx, grad, widened, from_shape=full)
    return ctx.unbroadcast(grad, operand, widened)


@bilinear("Einsum", factors=None)
def einsum_vjp(ctx: RuleContext, node: NodeProto, grads: Names) -> Names:
    """Einsum is linear in each operand: its gradient is the Einsum of the cotangent with the others."""
    terms, output, ellipsis_rank = _einsum_terms(ctx, node)
    return [_einsum_operand_grad(ctx, node, grads[0], i, terms, output, ellipsis_rank)
            if ctx.needs_grad(name) else None for i, name in enumerate(node.input)]
