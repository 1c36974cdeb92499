"""OnnxBackend's API on hand-written ONNX models, against closed-form gradients computed in NumPy.

The models are small MLPs written node by node, so every expected value is a formula (J^T v of
``tanh(x W1 + b1) W2 + b2`` and the like), independent of the gradient graphs under test. Covers the
protocol (forward, vjp, jvp, layer_vjp), dtypes (float16/32/64 in, float32/64 out), output selection
(Softmax logits, intermediate tensors), ReLU rules, randomisation, the graph cache, and that nothing the
caller passed is modified.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from harness import make_model
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

import gradsal.core as gs
from gradsal.backends.onnx import LogitsWarning, OnnxBackend, supported_operators
from gradsal.backends.onnx import backend as backend_module

FLOATS = st.floats(-2.0, 2.0, allow_nan=False, width=32)


def mlp_model(w1, b1, w2, b2, *, activation: str = "Tanh", head: str | None = None, dtype=np.float64,
              opset: int = 17) -> onnx.ModelProto:
    """``act(x W1 + b1) W2 + b2`` (then ``head``, e.g. Softmax), x declared [batch, features]."""
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["a1"], name="fc1"),
        helper.make_node("Add", ["a1", "b1"], ["z1"], name="bias1"),
        helper.make_node(activation, ["z1"], ["h"], name="act"),
        helper.make_node("MatMul", ["h", "W2"], ["a2"], name="fc2"),
        helper.make_node("Add", ["a2", "b2"], ["logits"], name="bias2"),
    ]
    outputs = ["logits"]
    if head is not None:
        nodes.append(helper.make_node(head, ["logits"], ["probs"], name="head", axis=-1))
        outputs = ["probs"]
    weights = {k: np.asarray(v, dtype) for k, v in {"W1": w1, "b1": b1, "W2": w2, "b2": b2}.items()}
    x = np.zeros((1, np.shape(w1)[0]), dtype)
    return make_model(nodes, {"x": x}, outputs, weights, opset=opset, symbolic_batch=True)


def tanh_mlp_vjp(x, w1, b1, w2, v):
    h = np.tanh(x @ w1 + b1)
    return ((v @ w2.T) * (1 - h**2)) @ w1.T


def random_mlp(seed: int = 0, sizes=(5, 7, 3), dtype=np.float64):
    rng = np.random.default_rng(seed)
    n_in, n_hidden, n_out = sizes
    w1 = rng.standard_normal((n_in, n_hidden)) / np.sqrt(n_in)
    b1 = 0.1 * rng.standard_normal(n_hidden)
    w2 = rng.standard_normal((n_hidden, n_out)) / np.sqrt(n_hidden)
    b2 = 0.1 * rng.standard_normal(n_out)
    return w1, b1, w2, b2


@st.composite
def mlp_cases(draw):
    n_in, n_hidden, n_out, batch = (draw(st.integers(1, 5)) for _ in range(4))
    arrays = [draw(hnp.arrays(np.float64, shape, elements=FLOATS))
              for shape in [(n_in, n_hidden), (n_hidden,), (n_hidden, n_out), (n_out,), (batch, n_in),
                            (batch, n_out), (batch, n_in)]]
    return arrays


# -------------------------------------------------------------------------------------- the protocol
@given(mlp_cases())
def test_vjp_and_jvp_equal_the_closed_form(case) -> None:
    w1, b1, w2, b2, x, v, u = case
    backend = OnnxBackend(mlp_model(w1, b1, w2, b2))
    y, g = backend.vjp(x, v)
    h = np.tanh(x @ w1 + b1)
    np.testing.assert_allclose(y, h @ w2 + b2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g, tanh_mlp_vjp(x, w1, b1, w2, v), rtol=1e-10, atol=1e-12)
    y_jvp, ju = backend.jvp(x, u)
    np.testing.assert_allclose(ju, ((u @ w1) * (1 - h**2)) @ w2, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y_jvp, y, rtol=1e-12, atol=1e-12)
    assert g.dtype == np.float64 and ju.dtype == np.float64
    np.testing.assert_allclose(backend.forward(x), y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float16, 2e-2)])
def test_narrow_models_are_fed_their_dtype_and_answer_float32(dtype, rtol: float) -> None:
    w1, b1, w2, b2 = random_mlp(1)
    backend = OnnxBackend(mlp_model(w1, b1, w2, b2, dtype=dtype))
    assert backend.input_dtype == dtype
    x = np.random.default_rng(2).standard_normal((4, 5))  # float64 in: cast to the model's dtype
    v = np.random.default_rng(3).standard_normal((4, 3))
    y, g = backend.vjp(x, v)
    assert y.dtype == np.float32 and g.dtype == np.float32 and backend.forward(x).dtype == np.float32
    weights = [np.asarray(a, dtype).astype(np.float64) for a in (w1, b1, w2)]
    expected = tanh_mlp_vjp(x.astype(dtype).astype(np.float64), *weights, v.astype(dtype).astype(np.float64))
    np.testing.assert_allclose(g, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def test_layer_vjp_at_an_intermediate_tensor_and_at_the_input() -> None:
    w1, b1, w2, b2 = random_mlp(4)
    backend = OnnxBackend(mlp_model(w1, b1, w2, b2))
    rng = np.random.default_rng(5)
    x, v = rng.standard_normal((3, 5)), rng.standard_normal((3, 3))
    activation, grad = backend.layer_vjp(x, "h", v)
    np.testing.assert_allclose(activation, np.tanh(x @ w1 + b1), rtol=1e-12)
    np.testing.assert_allclose(grad, v @ w2.T, rtol=1e-12, atol=1e-14)  # d<h W2 + b2, v>/dh
    activation, grad = backend.layer_vjp(x, "z1", v)
    np.testing.assert_allclose(grad, (v @ w2.T) * (1 - activation_tanh(x, w1, b1) ** 2), rtol=1e-10)
    activation, grad = backend.layer_vjp(x, "x", v)
    np.testing.assert_allclose(activation, x)
    np.testing.assert_allclose(grad, tanh_mlp_vjp(x, w1, b1, w2, v), rtol=1e-10)


def activation_tanh(x, w1, b1):
    return np.tanh(x @ w1 + b1)


def test_an_intermediate_output_name_is_explained() -> None:
    w1, b1, w2, b2 = random_mlp(6)
    backend = OnnxBackend(mlp_model(w1, b1, w2, b2), output_name="h")
    rng = np.random.default_rng(7)
    x, v = rng.standard_normal((2, 5)), rng.standard_normal((2, 7))
    y, g = backend.vjp(x, v)
    h = np.tanh(x @ w1 + b1)
    np.testing.assert_allclose(backend.forward(x), h, rtol=1e-12)
    np.testing.assert_allclose(y, h, rtol=1e-12)
    np.testing.assert_allclose(g, (v * (1 - h**2)) @ w1.T, rtol=1e-10)


# ------------------------------------------------------------------------------------ output choice
@pytest.mark.parametrize("head", ["Softmax", "LogSoftmax"])
def test_softmax_output_explains_the_logits_and_warns(head: str) -> None:
    w1, b1, w2, b2 = random_mlp(8)
    model = mlp_model(w1, b1, w2, b2, head=head)
    with pytest.warns(LogitsWarning, match=rf"'probs' is the {head} of 'logits'.*explain_logits=False"):
        backend = OnnxBackend(model)
    assert backend.output_name == "logits"
    rng = np.random.default_rng(9)
    x, v = rng.standard_normal((2, 5)), rng.standard_normal((2, 3))
    np.testing.assert_allclose(backend.vjp(x, v)[1], tanh_mlp_vjp(x, w1, b1, w2, v), rtol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kept in (OnnxBackend(model, explain_logits=False), OnnxBackend(model, output_name="probs")):
            assert kept.output_name == "probs"
            probs = kept.forward(x)
            if head == "Softmax":
                np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)


def test_softmax_behind_identity_is_seen_through() -> None:
    w1, b1, w2, b2 = random_mlp(10)
    model = mlp_model(w1, b1, w2, b2, head="Softmax")
    model.graph.node.append(helper.make_node("Identity", ["probs"], ["output"]))
    model.graph.output[0].name = "output"
    with pytest.warns(LogitsWarning):
        assert OnnxBackend(model).output_name == "logits"


def test_a_model_not_ending_in_softmax_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert OnnxBackend(mlp_model(*random_mlp(11))).output_name == "logits"


# -------------------------------------------------------------------------------------- ReLU rules
def test_guided_and_deconvnet_rules_match_their_definitions() -> None:
    w1, b1, w2, b2 = random_mlp(12, sizes=(6, 9, 4))
    backend = OnnxBackend(mlp_model(w1, b1, w2, b2, activation="Relu"))
    rng = np.random.default_rng(13)
    x, v = rng.standard_normal((3, 6)), rng.standard_normal((3, 4))
    z = x @ w1 + b1
    upstream = v @ w2.T  # cotangent arriving at the Relu's output
    expected = {
        "standard": (upstream * (z > 0)) @ w1.T,
        "guided": (np.maximum(upstream, 0) * (z > 0)) @ w1.T,  # Springenberg et al. 2015
        "deconvnet": np.maximum(upstream, 0) @ w1.T,
    }
    for rule, truth in expected.items():
        twin = backend.with_relu_rule(rule)
        assert twin.relu_rule == rule
        np.testing.assert_allclose(twin.vjp(x, v)[1], truth, rtol=1e-10, atol=1e-12, err_msg=rule)
    assert backend.relu_rule == "standard"
    np.testing.assert_allclose(backend.vjp(x, v)[1], expected["standard"], rtol=1e-10, atol=1e-12)
    guided = backend.with_relu_rule("guided")
    np.testing.assert_allclose(guided.layer_vjp(x, "z1", v)[1], np.maximum(upstream, 0) * (z > 0), rtol=1e-10)


def test_relu_rule_twins_share_the_model_and_cache() -> None:
    backend = OnnxBackend(mlp_model(*random_mlp(14), activation="Relu"))
    guided = backend.with_relu_rule("guided")
    assert guided._shared is backend._shared
    x, v = np.ones((1, 5)), np.ones((1, 3))
    backend.vjp(x, v)
    guided.vjp(x, v)
    assert {key[3] for key in backend._shared.cache} == {"standard", "guided"}


# ------------------------------------------------------------------------------------ randomisation
def test_randomized_redraws_the_named_weights_only() -> None:
    w1, b1, w2, b2 = random_mlp(15)
    model = mlp_model(w1, b1, w2, b2)
    before = model.SerializeToString()
    backend = OnnxBackend(model)
    x = np.random.default_rng(16).standard_normal((2, 5))
    y = backend.forward(x)
    twin = backend.randomized(["fc2"], seed=3)  # a node name: its weight initializer W2
    weights = {i.name: numpy_helper.to_array(i) for i in twin._shared.proto.graph.initializer}
    assert not np.allclose(weights["W2"], w2) and weights["W2"].shape == w2.shape
    np.testing.assert_array_equal(weights["W1"], w1)
    np.testing.assert_array_equal(weights["b2"], b2)
    h = np.tanh(x @ w1 + b1)
    np.testing.assert_allclose(twin.forward(x), h @ weights["W2"] + b2, rtol=1e-12)
    np.testing.assert_allclose(twin.vjp(x, np.ones((2, 3)))[1],
                               tanh_mlp_vjp(x, w1, b1, weights["W2"], np.ones((2, 3))), rtol=1e-10)
    np.testing.assert_array_equal(backend.forward(x), y)  # the original backend is untouched
    assert model.SerializeToString() == before
    same = backend.randomized(["W2"], seed=3)  # the initializer's own name
    np.testing.assert_array_equal(same.forward(x), twin.forward(x))
    assert not np.allclose(backend.randomized(["a2"], seed=4).forward(x), twin.forward(x))  # a tensor name


def test_randomized_keeps_the_scale_and_sign_of_the_weights() -> None:
    rng = np.random.default_rng(17)
    scale = np.abs(rng.standard_normal(64)) * 5.0  # non-negative, like a variance
    nodes = [helper.make_node("Mul", ["x", "scale"], ["y"], name="scaler")]
    backend = OnnxBackend(make_model(nodes, {"x": np.zeros((1, 64))}, ["y"], {"scale": scale}))
    new = numpy_helper.to_array(backend.randomized("scaler", seed=0)._shared.proto.graph.initializer[0])
    assert new.min() >= 0 and 0.5 < new.std() / scale.std() < 2.0


# ------------------------------------------------------------------------------------ graph caching
def test_graphs_are_cached_per_shape_in_a_bounded_lru(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradsal.backends.onnx import _graph

    calls = []
    real = _graph.build_gradient_model

    def counting(*args, **kwargs):
        calls.append(tuple(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(_graph, "build_gradient_model", counting)
    w1, b1, w2, b2 = random_mlp(18)
    backend = OnnxBackend(mlp_model(w1, b1, w2, b2))
    for _ in range(3):
        backend.vjp(np.ones((2, 5)), np.ones((2, 3)))
    assert calls == [(2, 5)]
    for batch in range(1, backend_module.CACHE_SIZE + 3):
        x = np.full((batch, 5), 0.5)
        np.testing.assert_allclose(backend.vjp(x, np.ones((batch, 3)))[1],
                                   tanh_mlp_vjp(x, w1, b1, w2, np.ones((batch, 3))), rtol=1e-10)
    assert len(backend._shared.cache) == backend_module.CACHE_SIZE


def test_session_options_are_used_for_every_session() -> None:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    w1, b1, w2, b2 = random_mlp(19)
    slow = OnnxBackend(mlp_model(w1, b1, w2, b2), session_options=options)
    fast = OnnxBackend(mlp_model(w1, b1, w2, b2))
    x, v = np.full((2, 5), 0.3), np.ones((2, 3))
    np.testing.assert_allclose(slow.vjp(x, v)[1], fast.vjp(x, v)[1], rtol=1e-12)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert slow.providers == ["CPUExecutionProvider"]


# ----------------------------------------------------------------------------- no side effects, misc
def test_nothing_the_caller_passed_is_modified() -> None:
    w1, b1, w2, b2 = random_mlp(20)
    model = mlp_model(w1, b1, w2, b2, head="Softmax")
    before = model.SerializeToString()
    x, v, u = np.full((2, 5), 0.2), np.ones((2, 3)), np.ones((2, 5))
    copies = [a.copy() for a in (x, v, u)]
    with pytest.warns(LogitsWarning):
        backend = OnnxBackend(model)
    backend.vjp(x, v)
    backend.jvp(x, u)
    backend.layer_vjp(x, "h", v)
    backend.randomized(["fc1"], seed=0).vjp(x, v)
    with pytest.warns(UserWarning, match="No Relu node"):  # a Tanh network: the rule changes nothing
        backend.with_relu_rule("guided").vjp(x, v)
    assert model.SerializeToString() == before
    for array, copy in zip((x, v, u), copies, strict=True):
        np.testing.assert_array_equal(array, copy)


def test_bytes_input_and_properties() -> None:
    w1, b1, w2, b2 = random_mlp(21)
    backend = OnnxBackend(mlp_model(w1, b1, w2, b2).SerializeToString())
    assert backend.input_name == "x" and backend.input_shape == ("batch", 5)
    assert isinstance(backend, gs.GradientBackend) and isinstance(backend, gs.SupportsJVP)
    assert isinstance(backend, gs.SupportsLayers) and isinstance(backend, gs.SupportsReluRule)
    assert isinstance(backend, gs.SupportsRandomization)
    assert {"Conv", "MatMul", "Relu", "Softmax"} <= set(supported_operators())


def test_layer_names_lists_the_conv_outputs_the_output_depends_on() -> None:
    rng = np.random.default_rng(22)
    weights = {"w1": rng.standard_normal((2, 1, 3, 3)).astype(np.float32),
               "w2": rng.standard_normal((2, 2, 3, 3)).astype(np.float32),
               "w_dead": rng.standard_normal((1, 1, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w_dead"], ["unused"]),
             helper.make_node("GlobalAveragePool", ["c2"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((1, 1, 5, 5), np.float32)}, ["y", "unused"], weights)
    backend = OnnxBackend(model)
    assert backend.layer_names() == ["c1", "c2"]
    assert backend.layer_names(("Relu", "Conv")) == ["c1", "r1", "c2"]
    x = rng.standard_normal((1, 1, 5, 5)).astype(np.float32)
    activation, grad = backend.layer_vjp(x, "c2", np.ones((1, 2, 1, 1), np.float32))
    assert activation.shape == (1, 2, 5, 5)
    np.testing.assert_allclose(grad, np.full((1, 2, 5, 5), 1 / 25), rtol=1e-6)  # d mean / d pixel


def test_integer_input_models_explain_layers_but_have_no_input_gradient() -> None:
    table = np.random.default_rng(23).standard_normal((10, 4))
    w = np.random.default_rng(24).standard_normal((4, 2))
    nodes = [helper.make_node("Gather", ["table", "tokens"], ["embedded"]),
             helper.make_node("MatMul", ["embedded", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "embed", [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", 3])],
        [helper.make_empty_tensor_value_info("y")],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    backend = OnnxBackend(model)
    tokens = np.array([[1, 2, 3], [4, 5, 9]])
    v = np.ones((2, 3, 2))
    with pytest.raises(gs.ModelError, match=r"no gradient with respect to integers.*layer_vjp"):
        backend.vjp(tokens, v)
    activation, grad = backend.layer_vjp(tokens, "embedded", v)
    np.testing.assert_allclose(activation, table[tokens])
    np.testing.assert_allclose(grad, v @ w.T, rtol=1e-12)
    with pytest.raises(gs.InputTypeError, match=r"int64\[batch, 3\]"):
        backend.forward(tokens.astype(np.float32))


@pytest.mark.cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
def test_cuda_provider_gives_the_cpu_gradients() -> None:
    w1, b1, w2, b2 = random_mlp(25)
    model = mlp_model(w1, b1, w2, b2, dtype=np.float32)
    gpu = OnnxBackend(model, providers=["cuda"])
    assert gpu.providers[0] == "CUDAExecutionProvider"
    x = np.random.default_rng(26).standard_normal((4, 5)).astype(np.float32)
    v = np.ones((4, 3), np.float32)
    np.testing.assert_allclose(gpu.vjp(x, v)[1], OnnxBackend(model).vjp(x, v)[1], rtol=1e-5, atol=1e-6)
