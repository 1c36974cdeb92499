"""Property tests of the reduction rules (backends/onnx/rules/reductions.py): ReduceSum, ReduceMean, ReduceMax,
ReduceMin, ReduceSumSquare, ReduceL2, ReduceL1, ReduceLogSum and ReduceLogSumExp with random axes
(negative, empty, omitted), keepdims and noop_with_empty_axes, at opsets 11 (axes attribute everywhere),
13 (ReduceSum takes axes as an input) and 18 (all of them do).

References: central finite differences of the original float64 model (``assert_gradients_match``), and,
for ReduceMax ties, where finite differences are meaningless, the documented closed form g / #ties.
Inputs are distinct lattice values, so that the maximum is never tied within the finite-difference step
(nor is any value 0, ReduceL1's kink). With noop_with_empty_axes=1 onnxruntime still applies the
elementwise part of ReduceSumSquare/L2/L1/LogSum (x^2, |x|, |x|, log x): the finite differences check that.
"""

from __future__ import annotations

import numpy as np
import pytest
from harness import assert_gradients_match, make_model, run_jvp, run_vjp
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import helper

REDUCTIONS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSumSquare", "ReduceL2",
              "ReduceLogSumExp", "ReduceL1", "ReduceLogSum"]


def axes_as_input(op: str, opset: int) -> bool:
    return opset >= (13 if op == "ReduceSum" else 18)


def distinct(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """Distinct values in [-2, 2], at least 4 / size apart (no ties for Max/Min, L2 away from 0)."""
    size = int(np.prod(shape))
    steps = np.linspace(-2.0, 2.0, size + 1)[:-1] + 2.0 / (size + 1)
    return st.permutations(list(steps)).map(lambda v: np.asarray(v, dtype=np.float64).reshape(shape))


def reduce_node(op: str, opset: int, axes: list[int] | None, keepdims: int | None,
                noop: int | None) -> tuple[helper.NodeProto, dict[str, np.ndarray]]:
    attrs: dict[str, object] = {}
    if keepdims is not None:
        attrs["keepdims"] = keepdims
    inputs, inits = ["x"], {}
    if axes_as_input(op, opset):
        if noop is not None:
            attrs["noop_with_empty_axes"] = noop
        if axes is not None:
            inputs.append("axes")
            inits["axes"] = np.asarray(axes, dtype=np.int64)
    elif axes is not None:
        attrs["axes"] = axes
    return helper.make_node(op, inputs, ["y"], **attrs), inits


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("op", REDUCTIONS)
@given(data=st.data())
def test_reduction(op, opset, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4))
    rank = len(shape)
    x = data.draw(distinct(shape))
    if op == "ReduceLogSum":  # log of a sum: keep the sums positive
        x = x + 2.5
    chosen = data.draw(st.lists(st.integers(0, rank - 1), max_size=rank, unique=True))
    axes = [a - rank if data.draw(st.booleans()) else a for a in chosen]
    if not axes:  # an empty attribute list is not valid ONNX: omit it (reduce all, or no-op)
        axes = None if not axes_as_input(op, opset) or data.draw(st.booleans()) else []
    keepdims = data.draw(st.sampled_from([None, 0, 1]))
    noop = data.draw(st.sampled_from([None, 0, 1])) if axes_as_input(op, opset) else None
    reduce, inits = reduce_node(op, opset, axes, keepdims, noop)
    model = make_model([reduce], {"x": x}, ["y"], initializers=inits, opset=opset)
    assert_gradients_match(model, x)


@pytest.mark.parametrize("opset", [11, 18])
@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_ties_share_the_cotangent_equally(op, opset):
    """At ties the rule's documented choice: each tied element gets g / #ties (closed form), and the JVP
    is the same linear map (the mean of the tied tangents), so <J u, v> = <u, J^T v> still holds."""
    x = np.array([[1.0, 3.0, 3.0, -1.0], [2.0, 2.0, 2.0, 2.0], [0.5, -4.0, 0.25, -4.0]])
    reduce, inits = reduce_node(op, opset, [1], 0, None)
    model = make_model([reduce], {"x": x}, ["y"], initializers=inits, opset=opset)
    v = np.array([1.0, 2.0, 3.0])
    _, g = run_vjp(model, x, v)
    extreme = x.max(axis=1, keepdims=True) if op == "ReduceMax" else x.min(axis=1, keepdims=True)
    mask = (x == extreme).astype(np.float64)
    expected = mask / mask.sum(axis=1, keepdims=True) * v[:, None]
    np.testing.assert_allclose(g, expected, rtol=1e-12)
    u = np.random.default_rng(0).standard_normal(x.shape)
    _, ju = run_jvp(model, x, u)
    np.testing.assert_allclose(float(np.sum(ju * v)), float(np.sum(u * g)), rtol=1e-12)


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_l2_of_a_zero_group_has_zero_gradient(opset):
    """sqrt(sum x^2) has no derivative at 0; the rule returns the 0 subgradient there, not NaN."""
    x = np.array([[0.0, 0.0, 0.0], [3.0, -4.0, 0.0]])
    reduce, inits = reduce_node("ReduceL2", opset, [1], 1, None)
    model = make_model([reduce], {"x": x}, ["y"], initializers=inits, opset=opset)
    _, g = run_vjp(model, x, np.ones((2, 1)))
    np.testing.assert_allclose(g, [[0.0, 0.0, 0.0], [0.6, -0.8, 0.0]], rtol=1e-12)
