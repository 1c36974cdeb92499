"""Property tests of the Gather and GatherElements rules (backends/onnx/rules/indexing.py).

Indices come from initializers (constant at a given shape: one index, a contiguous run, distinct,
repeated, negative) or from the input's values (ArgMax of x, so that they change with the data); the rule
takes a different form for each, and a different one again before opset 16 (no ScatterElements
reduction), so each test runs at opsets 11, 13 and 16. Reference: central finite differences of the
original float64 model and <J u, v> = <u, J^T v> (``assert_gradients_match``). The ArgMax indices stay put
under the finite-difference step because the inputs are distinct lattice values.
"""

from __future__ import annotations

import numpy as np
import pytest
from harness import assert_gradients_match, make_model
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import helper

from gradsal.backends.onnx._graph import build_gradient_model

OPSETS = [11, 13, 16]
SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


def arrays_of(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float64, shape, elements=st.floats(-2.0, 2.0, width=64))


def distinct(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    size = int(np.prod(shape))
    return st.permutations(list(np.linspace(-2.0, 2.0, size))).map(
        lambda v: np.asarray(v, dtype=np.float64).reshape(shape))


def node(op: str, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


@st.composite
def constant_indices(draw, dim: int) -> np.ndarray:
    """Indices into an axis of length ``dim``, of one of the forms the rule tells apart, some negative."""
    form = draw(st.sampled_from(["scalar", "run", "distinct", "repeated"]))
    if form == "scalar":
        flat = np.array(draw(st.integers(0, dim - 1)))
    elif form == "run":
        start = draw(st.integers(0, dim - 1))
        flat = np.arange(start, draw(st.integers(start + 1, dim)))
    elif form == "distinct":
        flat = np.array(draw(st.permutations(list(range(dim))))[:draw(st.integers(1, dim))])
    else:
        flat = np.array(draw(st.lists(st.integers(0, dim - 1), min_size=1, max_size=6)))
    negative = draw(hnp.arrays(np.bool_, flat.shape))
    flat = np.where(negative, flat - dim, flat).astype(np.int64)
    if flat.ndim == 1 and flat.size % 2 == 0 and draw(st.booleans()):
        flat = flat.reshape(2, -1)
    return flat


@pytest.mark.parametrize("opset", OPSETS)
@given(data=st.data())
def test_gather_constant_indices(opset, data):
    shape = data.draw(SHAPES)
    x = data.draw(arrays_of(shape))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    indices = data.draw(constant_indices(shape[axis]))
    model = make_model([node("Gather", ["x", "indices"], axis=axis)], {"x": x}, ["y"],
                       initializers={"indices": indices}, opset=opset)
    assert_gradients_match(model, x)


@pytest.mark.parametrize("opset", OPSETS)
@given(data=st.data())
def test_gather_data_dependent_indices(opset, data):
    """y = Gather(x, ArgMax(x) along another axis): indices that repeat and change with the data."""
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=4))
    x = data.draw(distinct(shape))
    source, axis = data.draw(st.permutations(list(range(len(shape)))))[:2]
    keepdims = data.draw(st.sampled_from([0, 1]))
    nodes = [node("ArgMax", ["x"], ["where"], axis=source, keepdims=keepdims)]
    if shape[source] > shape[axis]:  # keep the indices in range of the gathered axis
        nodes += [node("Mod", ["where", "dim"], ["indices"])]
    else:
        nodes += [node("Identity", ["where"], ["indices"])]
    nodes += [node("Gather", ["x", "indices"], axis=axis)]
    model = make_model(nodes, {"x": x}, ["y"], initializers={"dim": np.array(shape[axis], dtype=np.int64)},
                       opset=opset)
    assert_gradients_match(model, x)


@pytest.mark.parametrize("opset", OPSETS)
@given(data=st.data())
def test_gather_elements_constant_indices(opset, data):
    shape = data.draw(SHAPES)
    x = data.draw(arrays_of(shape))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    dim = shape[axis]
    # indices may be shorter than the data along every axis (the rest of the data gets no gradient)
    index_shape = tuple(data.draw(st.integers(1, d + 1 if a == axis % len(shape) else d))
                        for a, d in enumerate(shape))
    indices = data.draw(hnp.arrays(np.int64, index_shape, elements=st.integers(-dim, dim - 1)))
    model = make_model([node("GatherElements", ["x", "indices"], axis=axis)], {"x": x}, ["y"],
                       initializers={"indices": indices}, opset=opset)
    assert_gradients_match(model, x)


@pytest.mark.parametrize("opset", OPSETS)
@given(data=st.data())
def test_gather_elements_data_dependent_indices(opset, data):
    """y = GatherElements(x, ArgMax(x) (keepdims) broadcast along the axis): the max picked repeatedly."""
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    x = data.draw(distinct(shape))
    axis = data.draw(st.integers(0, len(shape) - 1))
    repeat = [1] * len(shape)
    repeat[axis] = data.draw(st.integers(1, 3))
    nodes = [node("ArgMax", ["x"], ["where"], axis=axis, keepdims=1),
             node("Tile", ["where", "repeat"], ["indices"]),
             node("GatherElements", ["x", "indices"], axis=axis)]
    model = make_model(nodes, {"x": x}, ["y"], initializers={"repeat": np.array(repeat, dtype=np.int64)},
                       opset=opset)
    assert_gradients_match(model, x)


@pytest.mark.parametrize("indices", [[2], [1, 2, 3], [3, 0, -3]])
def test_gather_with_distinct_constant_indices_needs_no_scatter(indices):
    """x[:, 2] (a CLS token), x[:, 1:4], a permutation: Pad or one Gather, never a scatter or a MatMul."""
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    model = make_model([node("Gather", ["x", "indices"], axis=1)], {"x": x}, ["y"],
                       initializers={"indices": np.array(indices, dtype=np.int64)}, opset=17)
    built = build_gradient_model(model, x.shape, input_name="x", output_name="y")
    ops = {n.op_type for n in built.model.graph.node}
    assert not ops & {"ScatterElements", "ScatterND", "MatMul", "OneHot"}, ops
    assert_gradients_match(model, x)


def test_gather_elements_with_distinct_constant_indices_before_opset_16():
    """No ScatterElements reduction before opset 16: indices that never repeat along the axis scatter
    without one (a permutation of each row here), repeated ones go through a one-hot product."""
    x = np.random.default_rng(1).standard_normal((3, 4))
    for indices, expected in [([[1, 0, 3, 2], [0, 1, 2, 3], [3, 2, 1, 0]], "ScatterElements"),
                              ([[1, 1, 3, 2], [0, 1, 2, 3], [3, 2, 1, 0]], "OneHot")]:
        model = make_model([node("GatherElements", ["x", "indices"], axis=1)], {"x": x}, ["y"],
                           initializers={"indices": np.array(indices, dtype=np.int64)}, opset=13)
        built = build_gradient_model(model, x.shape, input_name="x", output_name="y")
        assert expected in {n.op_type for n in built.model.graph.node}
        assert_gradients_match(model, x)


@pytest.mark.parametrize("opset", [13, 17])
def test_float32_data_dependent_gather(opset):
    """float32 models: the one-hot matrix needs no Cast, the scatter runs in float32 (looser tolerance)."""
    x = (np.random.default_rng(2).permutation(24).reshape(2, 3, 4) / 6.0 - 2.0).astype(np.float32)
    nodes = [node("ArgMax", ["x"], ["indices"], axis=1, keepdims=0), node("Gather", ["x", "indices"], axis=2)]
    assert_gradients_match(make_model(nodes, {"x": x}, ["y"], opset=opset), x)
