"""Property tests of the pooling rules (MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool) in
backends/onnx/rules/pooling.py.

Models are checked with ``assert_gradients_match`` (central finite differences of the original model
in onnxruntime, and <J u, v> = <u, J^T v>). MaxPool runs in float64 on inputs without ties (a scaled
random permutation), AveragePool and the global pools in float32 (their only onnxruntime kernels). The
tie rule (the first maximum of a window in scan order receives the whole cotangent) is checked against a
NumPy loop.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from harness import assert_gradients_match, make_model, run_vjp
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper

from gradsal.backends.onnx.rules import correlation

F32, F64 = np.float32, np.float64


def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def check(nodes, x, *, opset=17):
    assert_gradients_match(make_model(nodes, {"x": x}, ["y"], opset=opset), x)


def without_ties(seed: int, shape, dtype, spacing: float) -> np.ndarray:
    """Distinct values ``spacing`` apart, centred on 0, in random order."""
    count = int(np.prod(shape))
    order = np.random.default_rng(seed).permutation(count)
    return ((order - count / 2) * spacing).reshape(shape).astype(dtype)


def output_size(size: int, kernel: int, stride: int, dilation: int, pads: int, ceil_mode: int) -> int:
    span = size + pads - dilation * (kernel - 1) - 1
    return (-(-span // stride) if ceil_mode else span // stride) + 1


@st.composite
def pool_geometry(draw, *, dilations_allowed: bool):
    """Kernel, strides, dilations, pads (below the kernel, as onnxruntime requires) and sizes of a pool."""
    rank = draw(st.sampled_from([1, 2, 2, 3]))
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    kernel = [draw(st.integers(1, 2 if rank == 3 else 3)) for _ in range(rank)]
    strides = [draw(st.integers(1, 3)) for _ in range(rank)]
    if auto_pad.startswith("SAME"):  # onnxruntime's pools refuse the negative SAME padding of stride > kernel
        strides = [min(s, k) for s, k in zip(strides, kernel, strict=True)]
    dilated = dilations_allowed and auto_pad == "NOTSET"
    dilations = [draw(st.integers(1, 2)) if dilated else 1 for _ in range(rank)]
    pads = [0] * (2 * rank)
    if auto_pad == "NOTSET":
        pads = [draw(st.integers(0, kernel[a % rank] - 1)) for a in range(2 * rank)]
    ceil_mode = draw(st.integers(0, 1))
    sizes = []
    for a in range(rank):
        extent = dilations[a] * (kernel[a] - 1) + 1
        # a dilated window could fall entirely on padding (no maximum); an input at least one window long cannot
        low = extent if dilations[a] > 1 else max(1, extent - pads[a] - pads[rank + a])
        sizes.append(draw(st.integers(low, low + (5 if rank == 1 else 3 if rank == 2 else 1))))
        # a ceil_mode window starting in the end padding is dropped by onnxruntime but not by ONNX's
        # shape inference; keep clear of that disagreement
        out = output_size(sizes[a], kernel[a], strides[a], dilations[a], pads[a] + pads[rank + a], ceil_mode)
        if ceil_mode and auto_pad == "NOTSET" and (out - 1) * strides[a] >= sizes[a] + pads[a]:
            ceil_mode = 0
    attrs = dict(kernel_shape=kernel, strides=strides)
    if auto_pad == "NOTSET":
        attrs.update(pads=pads, ceil_mode=ceil_mode)
        if dilated:
            attrs["dilations"] = dilations
    else:
        attrs["auto_pad"] = auto_pad
    return sizes, attrs


# ------------------------------------------------------------------------------------------ MaxPool


@given(data=st.data())
def test_max_pool(data):
    """Scatter to the argmax: MaxUnpool (float32, disjoint windows), one ScatterElements (add from opset 16
    when windows overlap), per-phase scatters before opset 16."""
    sizes, attrs = data.draw(pool_geometry(dilations_allowed=True))
    shape = [data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), *sizes]
    if np.prod(shape) > 20 or data.draw(st.booleans()):  # float64: a negligible finite-difference step
        x = without_ties(data.draw(st.integers(0, 99)), shape, F64, 0.1)
    else:  # float32 (MaxUnpool path): values in [-1, 1] spaced >= 0.095, beyond the harness's steps
        x = without_ties(data.draw(st.integers(0, 99)), shape, F32, 1.9 / np.prod(shape))
    attrs["storage_order"] = data.draw(st.integers(0, 1)) if len(sizes) == 2 else 0
    outputs = ["y", "indices"] if data.draw(st.booleans()) else ["y"]
    check([node("MaxPool", ["x"], outputs, **attrs)], x, opset=data.draw(st.sampled_from([11, 12, 13, 16, 17, 21])))


def first_maximum_gradient(x: np.ndarray, v: np.ndarray, kernel, strides, pads) -> np.ndarray:
    """NumPy reference for 2-D max pooling: each window's first maximum (scan order) receives v."""
    grad = np.zeros_like(x)
    height, width = x.shape[2:]
    for n, c, oh, ow in itertools.product(*map(range, v.shape)):
        best = None
        for i, j in itertools.product(range(kernel[0]), range(kernel[1])):
            h, w = oh * strides[0] + i - pads[0], ow * strides[1] + j - pads[1]
            if 0 <= h < height and 0 <= w < width and (best is None or x[n, c, h, w] > x[n, c, best[0], best[1]]):
                best = (h, w)
        grad[n, c, best[0], best[1]] += v[n, c, oh, ow]
    return grad


def test_max_pool_ties_go_to_the_first_maximum():
    """Documented tie rule: with equal values the first one in scan order wins the whole cotangent."""
    rng = np.random.default_rng(0)
    x = np.round(rng.random((1, 2, 6, 5)) * 2) / 2  # values 0, 0.5, 1: ties everywhere
    for opset, (kernel, strides, pads) in itertools.product(
        [13, 17], [([2, 2], [2, 2], [0, 0, 0, 0]), ([3, 3], [1, 2], [1, 1, 1, 1]), ([3, 2], [2, 1], [2, 0, 1, 1])]
    ):
        model = make_model([node("MaxPool", ["x"], kernel_shape=kernel, strides=strides, pads=pads)],
                           {"x": x}, ["y"], opset=opset)
        y_shape = [1, 2, *[(s + p0 + p1 - k) // st + 1 for s, p0, p1, k, st in
                           zip(x.shape[2:], pads[:2], pads[2:], kernel, strides, strict=True)]]
        v = rng.standard_normal(y_shape)
        _, g = run_vjp(model, x, v)
        np.testing.assert_allclose(g, first_maximum_gradient(x, v, kernel, strides, pads), rtol=1e-12, atol=1e-12)


def _tiled_pool(x: np.ndarray, kernel, relu: bool = False):
    nodes = [node("Relu", ["x"], ["r"])] if relu else []
    nodes.append(node("MaxPool", ["r" if relu else "x"], kernel_shape=kernel, strides=kernel))
    return make_model(nodes, {"x": x}, ["y"])


def _flags_raised(model, x, v) -> bool:
    from harness import _session
    from onnxruntime import GraphOptimizationLevel

    from gradsal.backends.onnx._graph import build_gradient_model

    built = build_gradient_model(model, x.shape, input_name="x", output_name="y")
    assert built.guards, "a float32 max pool that tiles its input takes the mask form"
    session = _session(built.model, GraphOptimizationLevel.ORT_ENABLE_ALL)
    flags = session.run([guard.output for guard in built.guards], {built.input_name: x, built.seed_name: v})
    return any(bool(f) for f in flags)


def test_tiled_max_pool_speculates_only_when_allowed():
    """The speculative graph holds the mask form and lists its guard; the exact one reads the Indices
    (MaxUnpool) and has no guard."""
    from gradsal.backends.onnx._graph import build_gradient_model

    x = np.random.default_rng(5).permutation(2 * 3 * 4 * 6).reshape(2, 3, 4, 6).astype(F32)
    model = _tiled_pool(x, [2, 2])
    speculative = build_gradient_model(model, x.shape, input_name="x", output_name="y")
    exact = build_gradient_model(model, x.shape, input_name="x", output_name="y", speculative=False)
    assert len(speculative.guards) == 1 and speculative.guards[0].why
    assert exact.guards == ()
    graph_outputs = {o.name for o in speculative.model.graph.output}
    assert speculative.guards[0].output in graph_outputs
    assert "MaxUnpool" in {n.op_type for n in exact.model.graph.node}
    assert "MaxUnpool" not in {n.op_type for n in speculative.model.graph.node}


@pytest.mark.parametrize("kernel", [[2, 2], [2, 1], [3, 2]])
def test_tiled_max_pool_mask_hands_ties_to_the_indices(kernel):
    """float32 windows that tile x take the mask form; a window with two maxima raises the tie flag and
    the run is redone with the Indices (first maximum in scan order), here and in OnnxBackend."""
    from gradsal.backends.onnx import OnnxBackend

    rng = np.random.default_rng(0)
    shape = (2, 3, 6 * kernel[0], 4 * kernel[1])
    tied = (np.round(rng.random(shape) * 2) / 2).astype(F32)  # values 0, 0.5, 1: ties everywhere
    untied = rng.permutation(np.prod(shape)).reshape(shape).astype(F32)
    for x, expect_flag in ((tied, True), (untied, False)):
        model = _tiled_pool(x, kernel)
        v = rng.standard_normal((shape[0], shape[1], 6, 4)).astype(F32)
        assert _flags_raised(model, x, v) == expect_flag
        expected = first_maximum_gradient(x, v, kernel, kernel, [0, 0, 0, 0])
        _, g = run_vjp(model, x, v)
        np.testing.assert_array_equal(g, expected)
        np.testing.assert_array_equal(OnnxBackend(model).vjp(x, v)[1], expected)


def test_tiled_max_pool_after_relu_ignores_ties_among_zeros():
    """Relu -> MaxPool: windows whose maximum is 0 (all inputs <= 0) tie, but the cotangent they get is
    zeroed by the Relu's VJP, so no flag is raised and the mask form's gradient is the argmax rule's."""
    rng = np.random.default_rng(1)
    shape = (2, 4, 8, 8)
    x = (rng.permutation(np.prod(shape)).reshape(shape) - 0.7 * np.prod(shape)).astype(F32)  # 70% negative
    model = _tiled_pool(x, [2, 2], relu=True)
    v = rng.standard_normal((2, 4, 4, 4)).astype(F32)
    assert (np.maximum(x, 0).reshape(2, 4, 4, 2, 4, 2).max(axis=(3, 5)) == 0).any()  # zero windows exist
    assert not _flags_raised(model, x, v)
    relu = np.maximum(x, 0)
    expected = first_maximum_gradient(relu, v, [2, 2], [2, 2], [0, 0, 0, 0]) * (x > 0)
    _, g = run_vjp(model, x, v)
    np.testing.assert_array_equal(g, expected)


def test_tiled_max_pool_after_relu_flags_ties_among_positive_values():
    """Relu -> MaxPool with zero windows beside one window whose two largest inputs are equal and positive:
    the tie among positives raises the flag (the zero windows do not hide it), and the backend's answer is
    the argmax rule's."""
    from gradsal.backends.onnx import OnnxBackend

    rng = np.random.default_rng(2)
    shape = (2, 4, 8, 8)
    x = (rng.permutation(np.prod(shape)).reshape(shape) - 0.7 * np.prod(shape)).astype(F32)
    x[0, 1, 2:4, 4:6] = [[-1.0, 5000.0], [5000.0, 3.0]]  # one window, two equal positive maxima
    model = _tiled_pool(x, [2, 2], relu=True)
    v = rng.standard_normal((2, 4, 4, 4)).astype(F32)
    assert _flags_raised(model, x, v)
    expected = first_maximum_gradient(np.maximum(x, 0), v, [2, 2], [2, 2], [0, 0, 0, 0]) * (x > 0)
    np.testing.assert_array_equal(OnnxBackend(model).vjp(x, v)[1], expected)


def _positive_windows_unique(shape, seed: int) -> np.ndarray:
    """Distinct values, 70% negative: after a Relu, all-zero windows beside windows with one maximum."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(np.prod(shape)).reshape(shape) - 0.7 * np.prod(shape)).astype(F32)


def test_relu_after_the_pool_mask_is_not_masked_twice():
    """Relu -> MaxPool: the mask is already zero wherever the Relu's output is 0, so the Relu's VJP adds no
    second full-size mask; a Relu whose output also feeds another node keeps its mask (its cotangent is a
    total). Both gradients against the argmax rule written in NumPy."""
    from gradsal.backends.onnx._graph import build_gradient_model

    shape = (2, 4, 8, 8)
    x = _positive_windows_unique(shape, 3)
    v = np.random.default_rng(4).standard_normal((2, 4, 4, 4)).astype(F32)
    relu = np.maximum(x, 0)
    alone = _tiled_pool(x, [2, 2], relu=True)
    built = build_gradient_model(alone, x.shape, input_name="x", output_name="y")
    assert not [n.op_type for n in built.model.graph.node if n.name.endswith("/Relu")]  # gradient nodes: op/model node
    _, g = run_vjp(alone, x, v)
    np.testing.assert_array_equal(g, first_maximum_gradient(relu, v, [2, 2], [2, 2], [0, 0, 0, 0]) * (x > 0))

    shared = make_model([node("Relu", ["x"], ["r"]), node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
                         node("AveragePool", ["r"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
                         node("Add", ["m", "a"])], {"x": x}, ["y"])
    spread = np.repeat(np.repeat(v, 2, axis=2), 2, axis=3) / 4
    expected = (first_maximum_gradient(relu, v, [2, 2], [2, 2], [0, 0, 0, 0]) + spread) * (x > 0)
    _, g = run_vjp(shared, x, v)
    np.testing.assert_allclose(g, expected, rtol=1e-6, atol=1e-7)


def test_guided_relu_after_the_pool_mask():
    """Guided backpropagation through Relu -> MaxPool: relu(g) [x > 0] with g the argmax rule's cotangent."""
    shape = (2, 4, 8, 8)
    x = _positive_windows_unique(shape, 5)
    v = np.random.default_rng(6).standard_normal((2, 4, 4, 4)).astype(F32)
    _, g = run_vjp(_tiled_pool(x, [2, 2], relu=True), x, v, relu_rule="guided")
    pooled = first_maximum_gradient(np.maximum(x, 0), v, [2, 2], [2, 2], [0, 0, 0, 0])
    np.testing.assert_array_equal(g, np.maximum(pooled, 0) * (x > 0))


# -------------------------------------------------------------------------------------- AveragePool


@given(data=st.data())
def test_average_pool(data):
    """count_include_pad, ceil_mode, auto_pad; dilations at opset 19."""
    opset = data.draw(st.sampled_from([11, 13, 17, 19, 21]))
    sizes, attrs = data.draw(pool_geometry(dilations_allowed=opset >= 19))
    attrs["count_include_pad"] = data.draw(st.integers(0, 1))
    x = np.random.default_rng(data.draw(st.integers(0, 99))).standard_normal(
        [data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), *sizes]).astype(F32)
    check([node("AveragePool", ["x"], **attrs)], x, opset=opset)


# ------------------------------------------------------------------------------------- global pools


@given(data=st.data())
def test_global_average_pool(data):
    rank = data.draw(st.integers(3, 5))
    shape = [data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), *[data.draw(st.integers(1, 3))
                                                                          for _ in range(rank - 2)]]
    x = np.random.default_rng(data.draw(st.integers(0, 99))).standard_normal(shape).astype(F32)
    check([node("GlobalAveragePool", ["x"])], x, opset=data.draw(st.sampled_from([11, 13, 17, 21])))


@given(data=st.data())
def test_global_max_pool(data):
    """Values 0.03 apart (well beyond the float32 finite-difference step), so every maximum is clear."""
    rank = data.draw(st.integers(3, 4))
    shape = [data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), *[data.draw(st.integers(1, 3))
                                                                          for _ in range(rank - 2)]]
    x = without_ties(data.draw(st.integers(0, 99)), shape, F32, 0.03)
    check([node("GlobalMaxPool", ["x"])], x, opset=data.draw(st.sampled_from([11, 13, 17, 21])))


def test_global_max_pool_ties_go_to_the_first_maximum():
    x = np.zeros((2, 3, 2, 2), F32)
    x[1, 2] = [[0.0, 1.0], [1.0, 0.0]]
    v = np.arange(1, 7, dtype=F32).reshape(2, 3, 1, 1)
    _, g = run_vjp(make_model([node("GlobalMaxPool", ["x"])], {"x": x}, ["y"]), x, v)
    expected = np.zeros_like(x)
    expected[:, :, 0, 0] = v[:, :, 0, 0]
    expected[1, 2] = [[0.0, 6.0], [0.0, 0.0]]
    np.testing.assert_array_equal(g, expected)


AVERAGE_POOL_CASES = [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 2], strides=[2, 3], pads=[1, 0, 2, 1], count_include_pad=1),
    dict(kernel_shape=[3], strides=[2], pads=[2, 1], ceil_mode=1),
]


@pytest.mark.parametrize("strategy", ["transpose", "conv"])
@pytest.mark.parametrize("attrs", AVERAGE_POOL_CASES, ids=[f"case{i}" for i in range(len(AVERAGE_POOL_CASES))])
def test_average_pool_strategies(strategy, attrs):
    """Both ways of writing the window-sum adjoint (the benchmark's alternative too) are exact."""
    spatial = [7] * len(attrs["kernel_shape"])
    x = np.random.default_rng(3).standard_normal([2, 3, *spatial]).astype(F32)
    with correlation.forced(window_sum=strategy):
        check([node("AveragePool", ["x"], **attrs)], x)


@pytest.mark.parametrize("opset", [13, 17])
def test_conv_max_pool_chain_matches_torch(opset):
    """Conv(s2) -> MaxPool(3x3 s2 p1, overlapping) -> depthwise Conv(s2) on float32 data from a Conv (no
    ties by construction of random data), against torch autograd: an independent reference at a size where
    finite differences would step across the pooling's kinks."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 13, 11)).astype(F32)
    w1, w2 = rng.standard_normal((8, 4, 3, 3)).astype(F32), rng.standard_normal((8, 1, 3, 3)).astype(F32)
    nodes = [node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
             node("MaxPool", ["c1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             node("Conv", ["p1", "W2"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2], group=8)]
    model = make_model(nodes, {"x": x}, ["y"], initializers={"W1": w1, "W2": w2}, opset=opset)
    x_t = torch.tensor(x, requires_grad=True)
    hidden = torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(x_t, torch.tensor(w1), padding=1, stride=2),
                                            3, 2, 1)
    y_t = torch.nn.functional.conv2d(hidden, torch.tensor(w2), padding=1, stride=2, groups=8)
    v = rng.standard_normal(tuple(y_t.shape)).astype(F32)
    y_t.backward(torch.tensor(v))
    y, g = run_vjp(model, x, v)
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g, x_t.grad.numpy(), rtol=1e-4, atol=1e-4 * np.abs(g).max())


def test_tiled_max_pool_with_an_infinite_maximum_takes_the_indices():
    """inf - inf is NaN in the mask; the NaN raises the tie flag, and the exact graph gives the argmax rule."""
    x = np.arange(2 * 1 * 4 * 4, dtype=F32).reshape(2, 1, 4, 4)
    x[0, 0, 1, 1] = np.inf
    v = np.ones((2, 1, 2, 2), F32)
    model = _tiled_pool(x, [2, 2])
    assert _flags_raised(model, x, v)
    _, g = run_vjp(model, x, v)
    np.testing.assert_array_equal(g, first_maximum_gradient(x, v, [2, 2], [2, 2], [0, 0, 0, 0]))


def test_backend_goes_straight_to_the_exact_graph_for_a_while_after_a_tie(monkeypatch):
    """Inputs with flat regions tie on every call: after a guard fired, the next calls at that shape skip the
    speculative (mask) graph, EXACT_CALLS_AFTER_A_GUARD of them, then it is tried again; results are exact
    throughout. Which graph each call runs is read off the sessions onnxruntime is asked to run."""
    import onnxruntime

    from gradsal.backends.onnx import OnnxBackend
    from gradsal.backends.onnx._graph import RESULT_NAME
    from gradsal.backends.onnx.backend import EXACT_CALLS_AFTER_A_GUARD

    runs: list[str] = []
    original_run = onnxruntime.InferenceSession.run

    def spying_run(session, output_names, *args, **kwargs):
        if RESULT_NAME in (output_names or []):  # a gradient graph, not a probe
            guards = {o.name for o in session.get_outputs() if o.type == "tensor(bool)"}
            runs.append("speculative" if guards & set(output_names) else "exact")
        return original_run(session, output_names, *args, **kwargs)

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", spying_run)
    rng = np.random.default_rng(3)
    tied = (np.round(rng.random((1, 2, 4, 4)) * 2) / 2).astype(F32)
    untied = rng.permutation(32).reshape(1, 2, 4, 4).astype(F32)
    backend = OnnxBackend(_tiled_pool(tied, [2, 2]))
    v = rng.standard_normal((1, 2, 2, 2)).astype(F32)
    calls = [tied, *[untied] * (EXACT_CALLS_AFTER_A_GUARD + 1), tied, untied]
    graphs_run = []
    for x in calls:
        runs.clear()
        np.testing.assert_array_equal(backend.vjp(x, v)[1], first_maximum_gradient(x, v, [2, 2], [2, 2], [0, 0, 0, 0]))
        graphs_run.append(list(runs))
    assert graphs_run == [["speculative", "exact"], *[["exact"]] * EXACT_CALLS_AFTER_A_GUARD, ["speculative"],
                          ["speculative", "exact"], ["exact"]]


@given(data=st.data())
def test_tiled_max_pool_through_the_backend_is_the_argmax_rule(data):
    """Random tiling geometry, float32 values from a small lattice (ties in some windows, none in others),
    with or without a ReLU in front: OnnxBackend's VJP equals the first-maximum rule, whichever graph runs."""
    from gradsal.backends.onnx import OnnxBackend

    kernel = [data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))]
    out = [data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))]
    shape = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), out[0] * kernel[0], out[1] * kernel[1])
    rng = np.random.default_rng(data.draw(st.integers(0, 999)))
    levels = data.draw(st.sampled_from([3, 50, 10_000]))  # 3: ties almost everywhere; 10,000: almost none
    x = (rng.integers(0, levels, shape) / levels - 0.3).astype(F32)
    relu = data.draw(st.booleans())
    v = rng.standard_normal((shape[0], shape[1], *out)).astype(F32)
    _, g = OnnxBackend(_tiled_pool(x, kernel, relu=relu)).vjp(x, v)
    pooled_input = np.maximum(x, 0) if relu else x
    expected = first_maximum_gradient(pooled_input, v, kernel, kernel, [0, 0, 0, 0])
    np.testing.assert_array_equal(g, expected * (x > 0) if relu else expected)
