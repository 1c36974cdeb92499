"""Constants, shape arithmetic and value-dependent "constants" in the ONNX builder; the numerical fallback.

- Range whose start/delta are computed from the input's *values* is on the differentiated path (it used to
  end it silently: ``x * Range(ReduceMax(x), ReduceMax(x) + 3, 1)`` lost the ReduceMax term), and a tensor
  computed from the input's values through Range, ConstantOfShape or the Shape of a data-dependent shape is
  never read by a rule as a constant of the graph.
- ConstantOfShape, Range, Equal, Size and EyeLike off the path (shape arithmetic, Where conditions) leave the
  gradient intact; a comparison feeding Where's condition is fine, one feeding data is an error.
- ``fallback="finite_differences"`` on a model declared with a fixed batch size feeds its perturbations in
  batches of that size.

Every gradient is compared with central finite differences of the original model run by onnxruntime
(``harness.assert_gradients_match``, or differences written out here), or with a closed form.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from harness import assert_gradients_match, make_model, run_jvp, run_vjp
from onnx import TensorProto, helper

import gradsal.core as gs
from gradsal.backends.onnx import FiniteDifferenceWarning, OnnxBackend, _graph

RNG = np.random.default_rng(7)
F64 = np.float64


def node(op: str, inputs: list[str], outputs: list[str], **attrs: object) -> onnx.NodeProto:
    return helper.make_node(op, inputs, outputs, name=f"{op.lower()}_{outputs[0]}", **attrs)


def scalar(value: float, dtype: type = F64) -> np.ndarray:
    return np.array(value, dtype=dtype)


def forward_session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def declared_dtype(model: onnx.ModelProto) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type))


def central_vjp(model: onnx.ModelProto, x: np.ndarray, v: np.ndarray, h: float) -> np.ndarray:
    """d<f(x), v>/dx by central differences, one coordinate at a time, at x's own (fixed) shape, each
    point rounded to the model's input dtype (the step divided by is the one actually taken)."""
    session = forward_session(model)
    name, dtype = session.get_inputs()[0].name, declared_dtype(model)
    x = np.asarray(x, dtype=dtype)

    def objective(point: np.ndarray) -> float:
        return float(np.sum(session.run(None, {name: point})[0].astype(F64) * v))

    grad = np.zeros(x.size)
    for j in range(x.size):
        plus, minus = x.copy(), x.copy()
        plus.flat[j] += h
        minus.flat[j] -= h
        grad[j] = (objective(plus) - objective(minus)) / (float(plus.flat[j]) - float(minus.flat[j]))
    return grad.reshape(x.shape)


def central_jvp(model: onnx.ModelProto, x: np.ndarray, u: np.ndarray, h: float) -> np.ndarray:
    session = forward_session(model)
    name, dtype = session.get_inputs()[0].name, declared_dtype(model)
    plus, minus = (session.run(None, {name: (x + s * h * u).astype(dtype)})[0].astype(F64) for s in (1, -1))
    return (plus - minus) / (2 * h)


# ---------------------------------------------------------------------- Range computed from the values
def range_from_max_model() -> onnx.ModelProto:
    """y = x * Range(max(x), max(x) + 3, 1): the audit's model (x has 3 elements)."""
    nodes = [node("ReduceMax", ["x"], ["m"], keepdims=0),
             node("Add", ["m", "three"], ["limit"]),
             node("Range", ["m", "limit", "one"], ["r"]),
             node("Mul", ["x", "r"], ["y"])]
    return make_model(nodes, {"x": np.zeros(3, F64)}, ["y"], {"three": scalar(3.0), "one": scalar(1.0)})


def test_range_started_at_the_input_maximum_gets_its_gradient() -> None:
    """The audit's case: at x = (0.5, 1, 2) the VJP of ones is (2, 3, 4 + sum(x)) = (2, 3, 7.5), not (2, 3, 4)."""
    model = range_from_max_model()
    x = np.array([0.5, 1.0, 2.0])
    v = np.ones(3)
    _, grad = run_vjp(model, x, v)
    np.testing.assert_allclose(grad, [2.0, 3.0, 7.5], rtol=1e-12)
    np.testing.assert_allclose(grad, central_vjp(model, x, v, 1e-6), rtol=1e-7)
    u = np.array([0.3, -0.2, 0.7])
    _, product = run_jvp(model, x, u)
    np.testing.assert_allclose(product, central_jvp(model, x, u, 1e-6), rtol=1e-7)
    assert_gradients_match(model, np.array([1.5, -0.25, 0.75]))  # the maximum elsewhere, JVP and VJP


def test_range_with_start_and_delta_from_the_values() -> None:
    """Range(lo, lo + 3.5 d, d), lo = min(x), d = max(x) + 1, has 4 elements lo + i d: d/dlo = 1, d/dd = i."""
    nodes = [node("ReduceMin", ["x"], ["lo"], keepdims=0),
             node("ReduceMax", ["x"], ["hi"], keepdims=0),
             node("Add", ["hi", "one"], ["delta"]),
             node("Mul", ["delta", "three_and_a_half"], ["span"]),
             node("Add", ["lo", "span"], ["limit"]),
             node("Range", ["lo", "limit", "delta"], ["r"]),
             node("Tanh", ["x"], ["t"]),
             node("Mul", ["t", "r"], ["y"])]
    model = make_model(nodes, {"x": np.zeros(4, F64)}, ["y"], {"three_and_a_half": scalar(3.5), "one": scalar(1.0)})
    x = np.array([0.4, 1.3, 0.9, 0.2])
    assert_gradients_match(model, x)
    t = np.tanh(x)
    # closed form of <y, 1>: sum_i t_i (lo + i d); lo = x_3, d = x_1 + 1
    expected = (1 - t**2) * (x[3] + np.arange(4) * (x[1] + 1))
    expected[3] += t.sum()
    expected[1] += (np.arange(4) * t).sum()
    np.testing.assert_allclose(run_vjp(model, x, np.ones(4))[1], expected, rtol=1e-12)


def test_integer_range_from_the_values_on_the_path_is_an_error() -> None:
    nodes = [node("ReduceMax", ["x"], ["m"], keepdims=0),
             node("Cast", ["m"], ["mi"], to=TensorProto.INT64),
             node("Add", ["mi", "three"], ["limit"]),
             node("Range", ["mi", "limit", "one"], ["r"]),
             node("Cast", ["r"], ["rf"], to=TensorProto.DOUBLE),
             node("Mul", ["x", "rf"], ["y"])]
    model = make_model(nodes, {"x": np.zeros(3, F64)}, ["y"],
                       {"three": np.array(3, np.int64), "one": np.array(1, np.int64)})
    for run in (run_vjp, run_jvp):
        with pytest.raises(gs.UnsupportedOperatorError, match=r"(Range|Cast) node .*opset 17.*fallback"):
            run(model, np.array([0.5, 1.0, 2.0]), np.ones(3))


def varying_length_model() -> onnx.ModelProto:
    """y = x * sum(Range(m, m + floor(|sum x|) + 1, 1)), m = max(x): the Range's length follows the values."""
    nodes = [node("ReduceMax", ["x"], ["m"], keepdims=0),
             node("ReduceSum", ["x"], ["s"], keepdims=0),
             node("Abs", ["s"], ["a"]),
             node("Floor", ["a"], ["k"]),
             node("Add", ["m", "k"], ["mk"]),
             node("Add", ["mk", "one"], ["limit"]),
             node("Range", ["m", "limit", "one"], ["r"]),
             node("ReduceSum", ["r"], ["total"], keepdims=0),
             node("Mul", ["x", "total"], ["y"])]
    return make_model(nodes, {"x": np.zeros((1, 4), F64)}, ["y"], {"one": scalar(1.0)})


def test_a_range_whose_length_varies_with_the_values_is_rebuilt_per_length() -> None:
    """The graph is built at the first x; a second x of the same shape with another Range length is
    detected by the graph's shape checks and gets a graph of its own (the closed form holds at both)."""
    model = varying_length_model()
    backend = OnnxBackend(model)
    built = []
    for x in (np.array([[0.3, 0.8, 0.2, 0.1]]), np.array([[1.2, 2.9, 0.5, 0.6]]), np.array([[0.3, 0.8, 0.2, 0.1]])):
        m, n = x.max(), int(np.floor(abs(x.sum()))) + 1
        total = n * m + n * (n - 1) / 2
        v = RNG.standard_normal(x.shape)
        expected = total * v
        expected.flat[np.argmax(x)] += n * float(np.sum(v * x))  # d total / d max = n
        _, grad = backend.vjp(x, v)
        np.testing.assert_allclose(grad, expected, rtol=1e-10)
        np.testing.assert_allclose(grad, central_vjp(model, x, v, 1e-6), rtol=1e-6)
        u = RNG.standard_normal(x.shape)
        np.testing.assert_allclose(backend.jvp(x, u)[1], central_jvp(model, x, u, 1e-6), rtol=1e-6)
        entry = backend._shared.cache[(x.shape, "vjp", None, "standard", False)]
        assert [check[1] for check in entry.graph.shape_checks] == ["r"]
        built.append(entry)
    assert built[0] is not built[1] and built[1] is not built[2]  # rebuilt when the length changed


def test_indices_computed_from_the_values_are_not_read_as_constants() -> None:
    """Gather indices Range(floor(max x), floor(max x) + 2): probed at x = 0 they were (0, 1) and the rule
    used them as constants; at max x = 2.5 the gathered elements are 2 and 3."""
    nodes = [node("ReduceMax", ["x"], ["m"], keepdims=0),
             node("Floor", ["m"], ["f"]),
             node("Cast", ["f"], ["start"], to=TensorProto.INT64),
             node("Add", ["start", "two"], ["limit"]),
             node("Range", ["start", "limit", "one"], ["idx"]),
             node("Gather", ["x", "idx"], ["picked"], axis=0),
             node("Tanh", ["picked"], ["y"])]
    model = make_model(nodes, {"x": np.zeros(6, F64)}, ["y"],
                       {"two": np.array(2, np.int64), "one": np.array(1, np.int64)})
    x = np.array([0.1, 2.5, 0.7, -0.4, 1.1, 0.3])
    assert_gradients_match(model, x)
    grad = run_vjp(model, x, np.ones(2))[1]
    np.testing.assert_allclose(grad, [0, 0, 1 - np.tanh(0.7) ** 2, 1 - np.tanh(-0.4) ** 2, 0, 0], rtol=1e-12)


def test_the_shape_of_a_value_dependent_shape_is_not_a_constant() -> None:
    """Slice(x, 0, #positive(x)): the ends are the Shape of a NonZero, so they vary with the values. The
    Slice rule needs constant ends: an error naming the node, op, opset and fallback, never a gradient
    computed with the count at x = 0."""
    nodes = [node("Greater", ["x", "zero"], ["positive"]),
             node("NonZero", ["positive"], ["where"]),
             node("Shape", ["where"], ["where_shape"]),
             node("Slice", ["where_shape", "one", "two"], ["count"]),
             node("Slice", ["x", "zero_i", "count"], ["head"]),
             node("Tanh", ["head"], ["y"])]
    model = make_model(nodes, {"x": np.zeros(5, F64)}, ["y"], {
        "zero": scalar(0.0), "one": np.array([1], np.int64), "two": np.array([2], np.int64),
        "zero_i": np.array([0], np.int64)})
    x = np.array([0.5, -1.0, 2.0, 0.3, -0.2])
    dependent, varying_shapes = _graph._dependence(model.graph, {"x"})
    assert {"where", "head", "y"} <= varying_shapes and {"where_shape", "count"} <= dependent
    with pytest.raises(gs.UnsupportedOperatorError, match=r"Slice node 'slice_head' \(opset 17\).*ends.*fallback"):
        run_vjp(model, x, np.ones(3))


# -------------------------------------------------------------------- constants off the differentiated path
def test_constant_of_shape_from_shape_added_to_x() -> None:
    nodes = [node("Shape", ["x"], ["s"]),
             node("ConstantOfShape", ["s"], ["c"], value=helper.make_tensor("value", TensorProto.DOUBLE, [1], [2.5])),
             node("Tanh", ["x"], ["t"]),
             node("Mul", ["t", "c"], ["tc"]),
             node("Add", ["tc", "c"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((2, 3), F64)}, ["y"], symbolic_batch=True)
    x = RNG.standard_normal((2, 3))
    assert_gradients_match(model, x)
    np.testing.assert_allclose(run_vjp(model, x, np.ones((2, 3)))[1], 2.5 * (1 - np.tanh(x) ** 2), rtol=1e-12)


def test_range_over_a_shape_derived_limit_as_gather_indices() -> None:
    nodes = [node("Shape", ["x"], ["s"]),
             node("Gather", ["s", "one"], ["width"], axis=0),
             node("Range", ["zero", "width", "two"], ["idx"]),
             node("Gather", ["x", "idx"], ["even"], axis=1),
             node("Sin", ["even"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((2, 5), F64)}, ["y"], {
        "one": np.array(1, np.int64), "zero": np.array(0, np.int64), "two": np.array(2, np.int64)})
    x = RNG.standard_normal((2, 5))
    assert_gradients_match(model, x)
    expected = np.zeros((2, 5))
    expected[:, ::2] = np.cos(x[:, ::2])
    np.testing.assert_allclose(run_vjp(model, x, np.ones((2, 3)))[1], expected, rtol=1e-12)


@pytest.mark.parametrize("source", ["shape", "constant"])
def test_equal_feeding_where_condition_off_the_path(source: str) -> None:
    """cond = Equal(Range(0, width), 2) (from Shape) or Equal(a, b) of constants picks x^2 or tanh(x)."""
    if source == "shape":
        condition = [node("Shape", ["x"], ["s"]),
                     node("Gather", ["s", "one"], ["width"], axis=0),
                     node("Range", ["zero", "width", "one"], ["columns"]),
                     node("Equal", ["columns", "two"], ["cond"])]
        inits = {"one": np.array(1, np.int64), "zero": np.array(0, np.int64), "two": np.array(2, np.int64)}
        chosen = np.arange(4) == 2
    else:
        condition = [node("Equal", ["a", "b"], ["cond"])]
        inits = {"a": np.array([1, 2, 3, 4], np.int64), "b": np.array([1, 0, 3, 0], np.int64)}
        chosen = np.array([True, False, True, False])
    nodes = [*condition,
             node("Mul", ["x", "x"], ["square"]),
             node("Tanh", ["x"], ["t"]),
             node("Where", ["cond", "square", "t"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((3, 4), F64)}, ["y"], inits)
    x = RNG.standard_normal((3, 4))
    assert_gradients_match(model, x)
    expected = np.where(chosen, 2 * x, 1 - np.tanh(x) ** 2)
    np.testing.assert_allclose(run_vjp(model, x, np.ones((3, 4)))[1], expected, rtol=1e-12)


def test_size_scales_x() -> None:
    """y = x^2 / Size(x)."""
    nodes = [node("Size", ["x"], ["n"]),
             node("Cast", ["n"], ["nf"], to=TensorProto.DOUBLE),
             node("Mul", ["x", "x"], ["square"]),
             node("Div", ["square", "nf"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((2, 3), F64)}, ["y"], symbolic_batch=True)
    x = RNG.standard_normal((2, 3))
    assert_gradients_match(model, x)
    np.testing.assert_allclose(run_vjp(model, x, np.ones((2, 3)))[1], 2 * x / 6, rtol=1e-12)


def test_eye_like_masks_the_diagonal() -> None:
    """y = x * EyeLike(x) + tanh(x)."""
    nodes = [node("EyeLike", ["x"], ["eye"]),
             node("Mul", ["x", "eye"], ["diagonal"]),
             node("Tanh", ["x"], ["t"]),
             node("Add", ["diagonal", "t"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((3, 3), F64)}, ["y"])
    x = RNG.standard_normal((3, 3))
    assert_gradients_match(model, x)
    np.testing.assert_allclose(run_vjp(model, x, np.ones((3, 3)))[1], np.eye(3) + 1 - np.tanh(x) ** 2, rtol=1e-12)


@pytest.mark.parametrize("comparison", ["Greater", "Equal"])
def test_comparison_of_x_feeding_where_condition_differentiates_the_branches(comparison: str) -> None:
    """Where(x > 0, x^2, 3x) and Where(x == rowmax(x), 2x, x^2): the condition is piecewise constant, the
    gradient flows through the chosen branch (checked away from ties)."""
    if comparison == "Greater":
        condition = [node("Greater", ["x", "zero"], ["cond"])]
        a, b = node("Mul", ["x", "x"], ["a"]), node("Mul", ["x", "three"], ["b"])
    else:
        condition = [node("ReduceMax", ["x"], ["rowmax"], axes=[1], keepdims=1),
                     node("Equal", ["x", "rowmax"], ["cond"])]
        a, b = node("Mul", ["x", "two"], ["a"]), node("Mul", ["x", "x"], ["b"])
    nodes = [*condition, a, b, node("Where", ["cond", "a", "b"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((3, 4), F64)}, ["y"],
                       {"zero": scalar(0.0), "two": scalar(2.0), "three": scalar(3.0)})
    x = RNG.uniform(0.2, 1.0, (3, 4)) * RNG.choice([-1.0, 1.0], (3, 4))
    assert_gradients_match(model, x)
    grad = run_vjp(model, x, np.ones((3, 4)))[1]
    if comparison == "Greater":
        expected = np.where(x > 0, 2 * x, 3.0)
    else:
        expected = np.where(x == x.max(axis=1, keepdims=True), 2.0, 2 * x)
    np.testing.assert_allclose(grad, expected, rtol=1e-12)


@pytest.mark.parametrize(("made", "culprits"), [
    ([node("Greater", ["x", "zero"], ["g"]), node("Cast", ["g"], ["c"], to=TensorProto.DOUBLE)], "Greater|Cast"),
    ([node("Equal", ["x", "zero"], ["e"]), node("Cast", ["e"], ["c"], to=TensorProto.DOUBLE)], "Equal|Cast"),
    ([node("ArgMax", ["x"], ["i"], axis=1), node("Cast", ["i"], ["c"], to=TensorProto.DOUBLE)], "ArgMax|Cast"),
    ([node("Cast", ["x"], ["i"], to=TensorProto.INT64), node("Cast", ["i"], ["c"], to=TensorProto.DOUBLE)], "Cast"),
], ids=["greater", "equal", "argmax", "integer-cast"])
def test_piecewise_constant_operator_feeding_data_is_an_error(made: list, culprits: str) -> None:
    nodes = [*made, node("Mul", ["x", "c"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((2, 3), F64)}, ["y"], {"zero": scalar(0.0)})
    x = RNG.standard_normal((2, 3))
    for run in (run_vjp, run_jvp):
        with pytest.raises(gs.UnsupportedOperatorError, match=rf"({culprits}) node '.*' \(opset 17\).*fallback"):
            run(model, x, np.ones((2, 3)))


# ----------------------------------------------------------------------- fallback at a fixed batch size
def det_model_fixed_batch() -> onnx.ModelProto:
    """y = det(2 x) declared float32[2, 3, 3] (fixed batch): Det has no rule."""
    nodes = [node("Mul", ["x", "two"], ["x2"]), node("Det", ["x2"], ["y"])]
    return make_model(nodes, {"x": np.zeros((2, 3, 3), np.float32)}, ["y"], {"two": scalar(2.0, np.float32)})


def test_fallback_on_a_fixed_batch_model_feeds_batches_of_its_size() -> None:
    model = det_model_fixed_batch()
    backend = OnnxBackend(model, fallback="finite_differences")
    x = (np.eye(3) + 0.3 * RNG.standard_normal((2, 3, 3))).astype(np.float32)
    v = np.array([1.0, -0.5], np.float32)
    with pytest.warns(FiniteDifferenceWarning, match="Det"):
        y, grad = backend.vjp(x, v)
    np.testing.assert_allclose(y, np.linalg.det(2 * x.astype(F64)), rtol=1e-4)
    reference = central_vjp(model, x.astype(F64), v.astype(F64), 1e-2)
    np.testing.assert_allclose(grad, reference, rtol=2e-2, atol=2e-2 * np.abs(reference).max())
    x2 = 2 * x.astype(F64)  # closed form: d det(2x)/dx = 2 det(2x) (2x)^-T
    closed = 2 * np.linalg.det(x2)[:, None, None] * np.linalg.inv(x2).transpose(0, 2, 1) * v[:, None, None]
    np.testing.assert_allclose(grad, closed, rtol=2e-2, atol=2e-2 * np.abs(closed).max())
    u = RNG.standard_normal(x.shape).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FiniteDifferenceWarning)
        _, product = backend.jvp(x, u)
    reference = central_jvp(model, x.astype(F64), u.astype(F64), 1e-2)
    np.testing.assert_allclose(product, reference, rtol=2e-2, atol=2e-2 * np.abs(reference).max())


def test_fallback_on_a_fixed_batch_float64_model_with_tight_tolerance() -> None:
    """y = ReduceProd(tanh(x), axis 1) declared float64[3, 4]: ReduceProd has no rule."""
    nodes = [node("Tanh", ["x"], ["t"]), node("ReduceProd", ["t"], ["y"], axes=[1], keepdims=0)]
    model = make_model(nodes, {"x": np.zeros((3, 4), F64)}, ["y"])
    backend = OnnxBackend(model, fallback="finite_differences")
    x = RNG.uniform(0.3, 1.5, (3, 4))
    v = RNG.standard_normal(3)
    with pytest.warns(FiniteDifferenceWarning, match="ReduceProd"):
        _, grad = backend.vjp(x, v)
    t = np.tanh(x)
    closed = v[:, None] * t.prod(axis=1, keepdims=True) / t * (1 - t**2)
    np.testing.assert_allclose(grad, closed, rtol=1e-7)
    np.testing.assert_allclose(grad, central_vjp(model, x, v, 1e-6), rtol=1e-7)
    u = RNG.standard_normal(x.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FiniteDifferenceWarning)
        np.testing.assert_allclose(backend.jvp(x, u)[1], central_jvp(model, x, u, 1e-6), rtol=1e-7)


def test_fallback_pads_a_last_partial_batch_and_drops_its_rows() -> None:
    model = det_model_fixed_batch()
    backend = OnnxBackend(model, fallback="finite_differences")
    rows = (np.eye(3) + 0.3 * RNG.standard_normal((5, 3, 3))).astype(np.float32)
    forward = backend._numeric().f  # what the numerical backend differentiates: any number of rows
    np.testing.assert_allclose(forward(rows), np.linalg.det(2 * rows.astype(F64)), rtol=1e-4)
    with pytest.raises(gs.InputError, match=r"axis 0 must be 2, not 5"):
        backend.forward(rows)  # the caller's own x still has to match the declared batch


def test_fallback_refuses_a_fixed_batch_output_without_one_row_per_sample() -> None:
    nodes = [node("Mul", ["x", "two"], ["x2"]), node("Det", ["x2"], ["d"]),
             node("ReduceSum", ["d"], ["y"], keepdims=1)]
    model = make_model(nodes, {"x": np.zeros((2, 3, 3), np.float32)}, ["y"], {"two": scalar(2.0, np.float32)})
    backend = OnnxBackend(model, fallback="finite_differences")
    rows = (np.eye(3) + 0.3 * RNG.standard_normal((4, 3, 3))).astype(np.float32)
    with pytest.raises(gs.BackendError, match=r"one row per sample.*output_name="):
        backend._numeric().f(rows)
