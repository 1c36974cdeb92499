"""Property tests of the shape-operator rules (backends/onnx/rules/shape.py; Slice in rules/indexing.py):
Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Concat, Split, Slice, Expand, Tile, DepthToSpace and
SpaceToDepth, at the opsets whose semantics (or the form of the nodes the rules emit) differ; and a
Paddle-style shape-arithmetic model with a symbolic batch dimension, differentiated at two batch sizes.

Each test builds a one- or few-node float64 model with random shapes and attributes and checks its VJP and
JVP graphs with ``assert_gradients_match``: central finite differences of the ORIGINAL model run by
onnxruntime (every coordinate), and <J u, v> = <u, J^T v>. These operators are linear in their data input,
so any finite values will do.
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest
from harness import assert_gradients_match, make_model, run_vjp
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import helper

from gradsal.backends.onnx._graph import build_gradient_model
from gradsal.backends.onnx.rules import forms
from gradsal.core.errors import UnsupportedOperatorError

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min
SHAPES = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4)


def arrays_of(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float64, shape, elements=st.floats(-2.0, 2.0, width=64))


def node(op: str, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def ints(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def check(nodes, x, *, initializers=None, opset=17, outputs=("y",)) -> None:
    model = make_model(nodes, {"x": x}, list(outputs), initializers=initializers, opset=opset)
    assert_gradients_match(model, x)


def built_ops(nodes, x, *, initializers=None, opset=17, mode="vjp") -> list[str]:
    """The op types the rules emitted (the gradient graph minus the forward nodes)."""
    model = make_model(nodes, {"x": x}, ["y"], initializers=initializers, opset=opset)
    built = build_gradient_model(model, x.shape, input_name="x", output_name="y", mode=mode)
    forward = len(model.graph.node)
    return [n.op_type for n in built.model.graph.node[forward:] if n.name != "gradsal_result"]


# ------------------------------------------------------------------------- Reshape, Flatten, Squeeze...


@st.composite
def regrouped(draw, shape: tuple[int, ...]) -> list[int]:
    """A target shape for Reshape with the same number of elements: the dims shuffled and some merged."""
    dims = draw(st.permutations(list(shape)))
    target: list[int] = []
    for d in dims:
        if target and draw(st.booleans()):
            target[-1] *= d
        else:
            target.append(d)
    if draw(st.booleans()):
        target.insert(draw(st.integers(0, len(target))), 1)
    return target


@pytest.mark.parametrize("opset", [11, 13, 14])
@given(data=st.data())
def test_reshape(opset, data):
    shape = data.draw(SHAPES)
    x = data.draw(arrays_of(shape))
    target = data.draw(regrouped(shape))
    special = data.draw(st.sampled_from(["none", "infer", "copy"]))
    if special == "infer":
        target[data.draw(st.integers(0, len(target) - 1))] = -1
    elif special == "copy":  # 0 copies the input's dimension (when allowzero is 0)
        same = [i for i in range(min(len(shape), len(target))) if shape[i] == target[i]]
        if same:
            target[data.draw(st.sampled_from(same))] = 0
    attrs = {"allowzero": 0} if opset >= 14 and special == "copy" else {}
    if opset >= 14 and special != "copy" and data.draw(st.booleans()):
        attrs = {"allowzero": 1}
    check([node("Reshape", ["x", "shape"], **attrs)], x, initializers={"shape": ints(target)}, opset=opset)


@pytest.mark.parametrize("opset", [11, 13])
@given(data=st.data())
def test_flatten(opset, data):
    shape = data.draw(SHAPES)
    x = data.draw(arrays_of(shape))
    axis = data.draw(st.integers(-len(shape), len(shape)))
    check([node("Flatten", ["x"], axis=axis)], x, opset=opset)


@given(data=st.data(), opset=st.sampled_from([11, 13, 18]))
def test_transpose(data, opset):
    shape = data.draw(SHAPES)
    x = data.draw(arrays_of(shape))
    perm = data.draw(st.none() | st.permutations(list(range(len(shape)))))
    attrs = {} if perm is None else {"perm": list(perm)}
    check([node("Transpose", ["x"], **attrs)], x, opset=opset)


def axes_node(op: str, axes, opset: int, inputs=("x",)) -> tuple[list, dict]:
    """``op`` with ``axes`` as an attribute (opset < 13) or an input (from 13); None: no axes at all."""
    if axes is None:
        return [node(op, list(inputs))], {}
    if opset < 13:
        return [node(op, list(inputs), axes=list(axes))], {}
    return [node(op, [*inputs, "axes"])], {"axes": ints(axes)}


@pytest.mark.parametrize("opset", [11, 13, 18])
@given(data=st.data())
def test_squeeze(opset, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=3))
    ones = [i for i, d in enumerate(shape) if d == 1]
    x = data.draw(arrays_of(shape))
    axes = None
    if ones and data.draw(st.booleans()):
        chosen = data.draw(st.lists(st.sampled_from(ones), min_size=1, unique=True))
        axes = [a - len(shape) if data.draw(st.booleans()) else a for a in chosen]
    nodes, inits = axes_node("Squeeze", axes, opset)
    check(nodes, x, initializers=inits, opset=opset)


@pytest.mark.parametrize("opset", [11, 13, 18])
@given(data=st.data())
def test_unsqueeze(opset, data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4))
    shape = shape or (1,)
    x = data.draw(arrays_of(shape))
    out_rank = len(shape) + data.draw(st.integers(1, 2))
    chosen = data.draw(st.lists(st.integers(0, out_rank - 1), min_size=out_rank - len(shape),
                                max_size=out_rank - len(shape), unique=True))
    axes = [a - out_rank if data.draw(st.booleans()) else a for a in chosen]
    nodes, inits = axes_node("Unsqueeze", axes, opset)
    check(nodes, x, initializers=inits, opset=opset)


# ------------------------------------------------------------------------------------- Concat, Split


@pytest.mark.parametrize("opset", [9, 11, 13])
@given(data=st.data())
def test_concat(opset, data):
    shape = data.draw(SHAPES)
    x = data.draw(arrays_of(shape))
    rank = len(shape)
    axis = data.draw(st.integers(-rank, rank - 1) if opset >= 11 else st.integers(0, rank - 1))
    names = data.draw(st.lists(st.sampled_from(["x", "c0", "c1"]), min_size=1, max_size=4)
                      .filter(lambda n: "x" in n))
    inits = {}
    for name in {"c0", "c1"} & set(names):
        const_shape = list(shape)
        const_shape[axis] = data.draw(st.integers(0 if opset >= 11 else 1, 3))
        inits[name] = data.draw(arrays_of(tuple(const_shape)))
    check([node("Concat", names, axis=axis)], x, initializers=inits, opset=opset)


@st.composite
def split_spec(draw, dim: int, opset: int) -> tuple[list[int] | None, int | None, int]:
    """(split sizes or None, num_outputs or None, number of outputs)."""
    # opset 18 requires either the sizes or num_outputs; before, neither means equal pieces
    form = draw(st.sampled_from(["sizes", "num_outputs" if opset >= 18 else "equal"]))
    if form == "sizes":
        cuts = sorted(draw(st.lists(st.integers(1, dim - 1), unique=True, max_size=3))) if dim > 1 else []
        edges = [0, *cuts, dim]
        return [b - a for a, b in itertools.pairwise(edges)], None, len(edges) - 1
    if form == "num_outputs":  # chunks of ceil(dim / n), the last one smaller
        count = draw(st.integers(1, dim).filter(lambda n: -(-dim // n) * (n - 1) < dim))
        return None, count, count
    divisors = [n for n in range(1, dim + 1) if dim % n == 0]
    count = draw(st.sampled_from(divisors))
    return None, None, count


@pytest.mark.parametrize("opset", [11, 13, 18])
@given(data=st.data())
def test_split(opset, data):
    """Split, with the model's output a Concat of some of the pieces: pieces with no cotangent get zeros."""
    shape = data.draw(SHAPES)
    x = data.draw(arrays_of(shape))
    rank = len(shape)
    axis = data.draw(st.integers(-rank, rank - 1))
    sizes, num_outputs, count = data.draw(split_spec(shape[axis], opset))
    pieces = [f"p{i}" for i in range(count)]
    inits = {}
    if sizes is not None and opset >= 13:
        split = node("Split", ["x", "split"], pieces, axis=axis)
        inits["split"] = ints(sizes)
    elif sizes is not None:
        split = node("Split", ["x"], pieces, axis=axis, split=sizes)
    elif num_outputs is not None:
        split = node("Split", ["x"], pieces, axis=axis, num_outputs=num_outputs)
    else:
        split = node("Split", ["x"], pieces, axis=axis)
    used = data.draw(st.lists(st.sampled_from(pieces), min_size=1, max_size=3))
    check([split, node("Concat", used, axis=axis)], x, initializers=inits, opset=opset)


# ----------------------------------------------------------------------------------------------- Slice


@st.composite
def slice_args(draw, shape: tuple[int, ...], opset: int):
    """(starts, ends, axes or None, steps or None) over a random subset of axes, out-of-range values and
    the INT64 extremes included; unit steps below opset 10."""
    rank = len(shape)
    axes = draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    starts, ends, steps = [], [], []
    for a in axes:
        dim = shape[a]
        bound = st.integers(-dim - 2, dim + 2)
        step = draw(st.sampled_from([1, 1, 2, 3, -1, -2]) if opset >= 10 else st.just(1))
        starts.append(draw(bound | st.sampled_from([0, INT64_MAX if step < 0 else 0])))
        # INT64_MIN for "through the beginning" (onnxruntime also reads INT64_MAX so with a negative
        # step, but ONNX's shape inference does not, so such a model fails onnx.checker)
        ends.append(draw(bound | st.just(INT64_MIN if step < 0 else INT64_MAX)))
        steps.append(step)
    if opset >= 11:
        axes = [a - rank if draw(st.booleans()) else a for a in axes]
    omit_axes = axes == list(range(len(axes))) and draw(st.booleans())
    omit_steps = all(s == 1 for s in steps) and draw(st.booleans())
    return starts, ends, None if omit_axes else axes, None if omit_steps else steps


@pytest.mark.parametrize("opset", [9, 10, 11, 13])
@given(data=st.data())
def test_slice(opset, data):
    """Opset 9: attributes; 10: inputs, no negative axes, and the adjoint's Pad takes an attribute."""
    shape = data.draw(SHAPES)
    x = data.draw(arrays_of(shape))
    starts, ends, axes, steps = data.draw(slice_args(shape, opset))
    if opset < 10:
        attrs = {"starts": starts, "ends": ends, **({} if axes is None else {"axes": axes})}
        check([node("Slice", ["x"], **attrs)], x, opset=opset)
        return
    inputs, inits = ["x", "starts", "ends"], {"starts": ints(starts), "ends": ints(ends)}
    if axes is not None or steps is not None:
        inputs.append("axes" if axes is not None else "")
        if axes is not None:
            inits["axes"] = ints(axes)
    if steps is not None:
        inputs.append("steps")
        inits["steps"] = ints(steps)
    check([node("Slice", inputs)], x, initializers=inits, opset=opset)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize(("height", "width", "starts", "step"), [
    (6, 6, [1, 0], 2),   # YOLOv5's Focus: x[..., 1::2, ::2]
    (5, 7, [0, 1], 2),   # the blocks overhang the input: the last one is cropped
    (7, 6, [2, -1], 3),  # a negative start, step 3
])
@pytest.mark.parametrize("plain", [False, True])
def test_slice_strided_spatial_adjoint_is_dense(opset, height, width, starts, step, plain):
    """Strided slices of both spatial axes: the adjoint is Reshape/Pad/DepthToSpace (Reshape/Pad in the
    plain form), no scatter."""
    x = np.random.default_rng(0).standard_normal((2, 3, height, width))
    inits = {"s": ints(starts), "e": ints([INT64_MAX, INT64_MAX]), "a": ints([2, 3]), "k": ints([step, step])}
    nodes = [node("Slice", ["x", "s", "e", "a", "k"])]
    with forms.plain() if plain else contextlib.nullcontext():
        ops = built_ops(nodes, x, initializers=inits, opset=opset)
        assert set(ops) <= ({"Reshape", "Pad", "Slice"} if plain else {"Reshape", "Pad", "DepthToSpace", "Slice"})
        check(nodes, x, initializers=inits, opset=opset)


def test_slice_strided_spatial_adjoint_fast_form_equals_plain_form():
    """The DepthToSpace spelling moves the cotangent's values to the same places as the Pad spelling."""
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 8)).astype(np.float32)
    inits = {"s": ints([1, 2]), "e": ints([INT64_MAX, INT64_MAX]), "a": ints([2, 3]), "k": ints([3, 3])}
    model = make_model([node("Slice", ["x", "s", "e", "a", "k"])], {"x": x}, ["y"], initializers=inits)
    v = np.random.default_rng(2).standard_normal((2, 3, 3, 2)).astype(np.float32)
    _, fast = run_vjp(model, x, v)
    with forms.plain():
        assert "DepthToSpace" not in built_ops(model.graph.node, x, initializers=inits)
        _, plain = run_vjp(model, x, v)
    assert "DepthToSpace" in built_ops(model.graph.node, x, initializers=inits)
    np.testing.assert_array_equal(fast, plain)
    assert np.count_nonzero(plain) == v.size  # each cotangent value lands once, zeros around it


# ---------------------------------------------------------------------------------------- Expand, Tile


@pytest.mark.parametrize("opset", [11, 13])
@given(data=st.data())
def test_expand(opset, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3))
    x = data.draw(arrays_of(shape))
    lead = data.draw(st.lists(st.integers(1, 3), max_size=2))
    # a target 1 leaves the input's dimension alone; an input 1 grows to the target
    target = [data.draw(st.integers(1, 3)) if d == 1 else data.draw(st.sampled_from([1, d])) for d in shape]
    check([node("Expand", ["x", "shape"])], x, initializers={"shape": ints([*lead, *target])}, opset=opset)


@pytest.mark.parametrize("opset", [11, 13])
@given(data=st.data())
def test_tile(opset, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3))
    x = data.draw(arrays_of(shape))
    repeats = data.draw(st.lists(st.integers(1, 3), min_size=len(shape), max_size=len(shape)))
    check([node("Tile", ["x", "repeats"])], x, initializers={"repeats": ints(repeats)}, opset=opset)


# -------------------------------------------------------------------------- DepthToSpace, SpaceToDepth


@pytest.mark.parametrize("opset", [11, 13])
@given(data=st.data())
def test_depth_to_space(opset, data):
    block = data.draw(st.integers(1, 3))
    n, c, h, w = data.draw(st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 3),
                                     st.integers(1, 3)))
    x = data.draw(arrays_of((n, c * block * block, h, w)))
    mode = data.draw(st.sampled_from(["DCR", "CRD"]))
    check([node("DepthToSpace", ["x"], blocksize=block, mode=mode)], x, opset=opset)


@pytest.mark.parametrize("opset", [11, 13])
@given(data=st.data())
def test_space_to_depth(opset, data):
    block = data.draw(st.integers(1, 3))
    n, c, h, w = data.draw(st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2),
                                     st.integers(1, 2)))
    x = data.draw(arrays_of((n, c, h * block, w * block)))
    check([node("SpaceToDepth", ["x"], blocksize=block)], x, opset=opset)


# ------------------------------------------------------------------- Paddle-style shape arithmetic


def paddle_style_model(opset: int):
    """x (batch, 3, 4, 4) -> Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [3, 16])) -> Transpose ->
    Slice(ends from Shape) -> ReduceMean: every shape is computed from the input's, as Paddle exports do."""
    unsqueeze = (node("Unsqueeze", ["batch"], ["batch_1d"], axes=[0]) if opset < 13
                 else node("Unsqueeze", ["batch", "zero_axis"], ["batch_1d"]))
    mean = (node("ReduceMean", ["cropped"], ["y"], axes=[1], keepdims=0) if opset < 18
            else node("ReduceMean", ["cropped", "one_axis"], ["y"], keepdims=0))
    nodes = [
        node("Shape", ["x"], ["shape"]),
        node("Gather", ["shape", "zero"], ["batch"], axis=0),
        unsqueeze,
        node("Concat", ["batch_1d", "rest"], ["target"], axis=0),
        node("Reshape", ["x", "target"], ["flat"]),
        node("Transpose", ["flat"], ["moved"], perm=[0, 2, 1]),
        node("Gather", ["shape", "last_two"], ["hw"], axis=0),
        node("ReduceProd", ["hw"], ["area"], keepdims=1),
        node("Sub", ["area", "one"], ["end"]),
        node("Slice", ["moved", "one", "end", "one"], ["cropped"]),
        mean,
    ]
    inits = {"zero": np.array(0, dtype=np.int64), "zero_axis": ints([0]), "rest": ints([3, 16]),
             "last_two": ints([2, 3]), "one": ints([1]), "one_axis": ints([1])}
    example = np.zeros((2, 3, 4, 4))
    return make_model(nodes, {"x": example}, ["y"], initializers=inits, opset=opset, symbolic_batch=True)


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_paddle_style_shape_arithmetic_at_two_batch_sizes(opset):
    model = paddle_style_model(opset)
    rng = np.random.default_rng(opset)
    for batch in (2, 5):
        x = rng.standard_normal((batch, 3, 4, 4))
        assert_gradients_match(model, x)
        _, g = run_vjp(model, x, np.ones((batch, 3)))
        # closed form: each output averages positions 1..14 of the 16 spatial cells of one channel
        expected = np.zeros((batch, 3, 16))
        expected[:, :, 1:15] = 1.0 / 14
        np.testing.assert_allclose(g, expected.reshape(x.shape), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------- errors


def test_slice_with_data_dependent_starts_is_a_clear_error():
    """A Slice whose starts are computed from the input's values cannot be differentiated by rule."""
    x = np.random.default_rng(0).standard_normal((3, 4))
    nodes = [
        node("ArgMax", ["x"], ["argmax"], axis=1, keepdims=0),
        node("Slice", ["argmax", "zero", "one"], ["where"]),
        node("Slice", ["x", "where", "end", "axis"]),
    ]
    inits = {"zero": ints([0]), "one": ints([1]), "end": ints([INT64_MAX]), "axis": ints([1])}
    model = make_model(nodes, {"x": x}, ["y"], initializers=inits, opset=13)
    with pytest.raises(UnsupportedOperatorError, match=r"Slice node .*starts.*finite_differences"):
        build_gradient_model(model, x.shape, input_name="x", output_name="y")
