"""at_tensor on ONNX models: the graph cut at a float tensor, found or named, other inputs held fixed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gradsal.core as gs
from gradsal.backends import at_tensor

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from text_helpers import PAD, sample_ids  # noqa: E402

from gradsal.backends.onnx import OnnxBackend, OutputChoiceWarning  # noqa: E402


def _model(nodes: list, inputs: list, outputs: list, inits: dict) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _masked_sum_model() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """y = sum_t (table[ids] * mask)_t @ w: an embedding and a mask input, as in a BERT-style model."""
    rng = np.random.default_rng(3)
    table, w = rng.standard_normal((10, 4)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["embedded"]),
             helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mask_f", "last"], ["mask_3d"]),
             helper.make_node("Mul", ["embedded", "mask_3d"], ["masked"]),
             helper.make_node("ReduceSum", ["masked", "tokens_axis"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["y"])]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "tokens"]),
              helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "tokens"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])]
    inits = {"table": table, "w": w, "last": np.array([-1]), "tokens_axis": np.array([1])}
    return _model(nodes, inputs, outputs, inits), table, w


def test_the_embedding_lookup_is_found_and_the_mask_held_fixed() -> None:
    model, table, w = _masked_sum_model()
    ids = np.array([[1, 2, 3], [4, 5, 0]])
    mask = np.array([[1, 1, 0], [1, 0, 1]])
    at = at_tensor(model, {"ids": ids, "mask": mask})
    assert at.name == "embedded"
    np.testing.assert_array_equal(at.value, table[ids])
    v = np.random.default_rng(4).standard_normal((2, 3))
    grad = gs.vanilla_gradient(at, at.value, target=v)
    expected = mask[:, :, None] * (v @ w.T)[:, None, :]  # d<y, v>/dE in closed form
    np.testing.assert_allclose(grad, expected, rtol=1e-6)
    one = at.sample(1)  # a chunk of one sample's rows gets that sample's mask
    np.testing.assert_allclose(gs.vanilla_gradient(one, one.value, target=v[1:]), expected[1:], rtol=1e-6)
    attributions, delta = gs.integrated_gradients(one, one.value, target=v[1:], baseline=one.baseline(token_id=0),
                                                  return_delta=True)
    assert abs(delta[0]) < 1e-5
    np.testing.assert_allclose(attributions, (table[ids[1:]] - table[0]) * expected[1:], rtol=1e-5, atol=1e-6)


def test_a_one_hot_input_is_found_when_there_is_no_lookup() -> None:
    nodes = [helper.make_node("Unsqueeze", ["bytes", "last"], ["b3"]),
             helper.make_node("Equal", ["b3", "values"], ["hot"]),
             helper.make_node("Cast", ["hot"], ["one_hot"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["one_hot", "tokens_axis"], ["counts"], keepdims=0),
             helper.make_node("MatMul", ["counts", "w"], ["y"])]
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    model = _model(nodes, [helper.make_tensor_value_info("bytes", TensorProto.INT32, ["batch", 5])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
                   {"w": w, "last": np.array([-1]), "values": np.arange(4, dtype=np.int32),
                    "tokens_axis": np.array([1])})
    data = np.array([[0, 3, 3, 1, 2]], dtype=np.int32)
    at = at_tensor(model, data)
    assert at.name == "one_hot"
    np.testing.assert_array_equal(at.value, np.eye(4)[data])
    scores = gs.token_scores(gs.gradient_x_input(at, at.value, target=1))
    np.testing.assert_allclose(scores, w[data, 1])


def test_several_lookups_need_a_name() -> None:
    nodes = [helper.make_node("Gather", ["t1", "a"], ["ea"]), helper.make_node("Gather", ["t2", "b"], ["eb"]),
             helper.make_node("Add", ["ea", "eb"], ["y"])]
    table = np.ones((5, 2), np.float32)
    model = _model(nodes, [helper.make_tensor_value_info(n, TensorProto.INT64, [1, 3]) for n in "ab"],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 2])], {"t1": table, "t2": 2 * table})
    inputs = {"a": np.array([[1, 2, 3]]), "b": np.array([[0, 0, 1]])}
    with pytest.raises(gs.ModelError, match=r"'ea' \(from 'a'\), 'eb' \(from 'b'\).*tensor="):
        at_tensor(model, inputs)
    at = at_tensor(model, inputs, "eb")
    np.testing.assert_array_equal(at.ids, inputs["b"])
    np.testing.assert_array_equal(at.baseline(token_id=4), 2 * np.ones((1, 3, 2)))
    with pytest.raises(gs.ModelError, match="no node output named 'ec'"):
        at_tensor(model, inputs, "ec")
    with pytest.raises(gs.InputError, match="pass 'b' too"):
        at_tensor(model, {"a": inputs["a"]})


def test_onnx_export_matches_captum_on_the_torch_model() -> None:
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr", reason="Captum (the test extra) is the reference here")
    from gradsal.reference_models import load_text_classifier

    net = load_text_classifier("torch")
    ids = sample_ids(1)
    at = at_tensor(load_text_classifier("onnx"), {"input_ids": ids})
    ours = gs.integrated_gradients(at, at.value, target=1, baseline=at.baseline(token_id=PAD), n_steps=32)
    theirs = captum_attr.LayerIntegratedGradients(net, net.embedding).attribute(
        torch.from_numpy(ids), baselines=torch.full(ids.shape, PAD), target=1, n_steps=32,
        method="gausslegendre").detach().numpy()
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5 * scale)  # float32 on both sides
    np.testing.assert_allclose(gs.token_scores(ours), theirs.sum(-1), rtol=0, atol=2e-5 * scale * ids.shape[1])


def test_integer_outputs_are_never_the_default() -> None:
    nodes = [helper.make_node("Identity", ["ids"], ["ids_copy"]), helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("ReduceSum", ["e", "axes"], ["y"], keepdims=0)]
    model = _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 2])],
                   [helper.make_tensor_value_info("ids_copy", TensorProto.INT64, ["batch", 2]),
                    helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
                   {"table": np.ones((4, 3), np.float32), "axes": np.array([1])})
    with pytest.warns(OutputChoiceWarning, match=r"first float output 'y', not 'ids_copy' \(int64\)"):
        assert OnnxBackend(model).output_name == "y"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert OnnxBackend(model, output_name="y").output_name == "y"


def test_integer_input_messages_agree() -> None:
    model, _, _ = _masked_sum_model()
    backend = OnnxBackend(model, input_name="ids", constant_inputs={"mask": np.ones((1, 3), np.int64)})
    ids = np.array([[1, 2, 3]])
    with pytest.raises(gs.InputTypeError) as from_core:
        gs.vanilla_gradient(backend, ids)
    with pytest.raises(gs.InputTypeError) as from_onnx:
        gs.vanilla_gradient(backend, ids.astype(np.float32))
    with pytest.raises(gs.ModelError) as from_vjp:
        backend.vjp(ids, np.ones((1, 3)))
    for caught in (from_core, from_onnx, from_vjp):  # each points to the same way out
        assert "at_tensor" in str(caught.value)
    assert "pass floating" not in str(from_onnx.value) and "no gradient" in str(from_onnx.value)
