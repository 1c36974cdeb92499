"""OnnxBackend's error contract: every bad model, argument or input is a gradsal error saying what and how.

Corrupt and truncated files, external data outside the model's folder, several inputs without
``input_name``, wrong input shape/dtype (the message names the declared shape), unknown output and layer
names (close matches listed), unsupported operators (op, node, opset and the fallback named) and the
finite-difference fallback itself, onnxruntime failures at run time, missing packages and providers.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from harness import make_model
from onnx import TensorProto, helper, numpy_helper

import gradsal.core as gs
from gradsal.backends.onnx import FiniteDifferenceWarning, OnnxBackend, plugin

RNG = np.random.default_rng(0)
W = RNG.standard_normal((6, 4)).astype(np.float32)


def linear_model(symbolic_batch: bool = True) -> onnx.ModelProto:
    """y = tanh(x W), x declared float32[batch, 6]."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
             helper.make_node("Tanh", ["h"], ["y"], name="tanh")]
    return make_model(nodes, {"x": np.zeros((2, 6), np.float32)}, ["y"], {"W": W}, symbolic_batch=symbolic_batch)


def det_model() -> onnx.ModelProto:
    """y = det(2 x): Det has no gradient rule in gradsal (and a closed-form gradient for the test)."""
    nodes = [helper.make_node("Mul", ["x", "two"], ["x2"], name="scale"),
             helper.make_node("Det", ["x2"], ["y"], name="the_det")]
    two = np.array(2.0, np.float32)
    return make_model(nodes, {"x": np.zeros((2, 3, 3), np.float32)}, ["y"], {"two": two}, symbolic_batch=True)


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


# ------------------------------------------------------------------------------------------ bad files
def test_corrupted_file_names_the_file_and_the_parser_reason(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07garbage that is not a protobuf" * 3)
    with pytest.raises(gs.ModelError, match=r"broken\.onnx") as info:
        OnnxBackend(str(path))
    assert "protobuf parser failed" in str(info.value) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_file_is_a_model_error(tmp_path: Path, keep: float) -> None:
    data = linear_model().SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(gs.ModelError, match=r"truncated\.onnx.*(truncated|not a valid)"):
        OnnxBackend(path)


def test_empty_file_and_missing_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(gs.ModelError, match=r"empty\.onnx.*no ONNX graph"):
        OnnxBackend(empty)
    with pytest.raises(gs.ModelError, match="does not exist"):
        OnnxBackend(tmp_path / "nowhere.onnx")


def test_corrupted_bytes_and_wrong_model_type() -> None:
    with pytest.raises(gs.ModelError, match="model bytes"):
        OnnxBackend(b"\xff\xff\xff not onnx")
    with pytest.raises(gs.InputTypeError, match=r"path to an \.onnx file"):
        OnnxBackend(12345)


# ------------------------------------------------------------------------------------- external data
def _save_with_external_data(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "model"
    folder.mkdir()
    model = linear_model()
    path = folder / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return path, folder / "weights.bin"


def _relocate(path: Path, location: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


def test_external_data_inside_the_folder_is_loaded(tmp_path: Path) -> None:
    path, _ = _save_with_external_data(tmp_path)
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    np.testing.assert_allclose(OnnxBackend(path).forward(x), np.tanh(x @ W), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, where: str) -> None:
    path, weights = _save_with_external_data(tmp_path)
    outside = tmp_path / "secret.bin"
    outside.write_bytes(weights.read_bytes())  # a valid data file: refused for where it is, not what it holds
    if where == "parent":
        location = "../secret.bin"
    elif where == "absolute":
        location = str(outside)
    else:
        link = path.parent / "link.bin"
        link.symlink_to(outside)
        location = "link.bin"
    _relocate(path, location)
    with pytest.raises(gs.ModelError, match="outside the model's folder") as info:
        OnnxBackend(str(path))
    assert location in str(info.value)


def test_model_proto_with_unloaded_external_data_is_refused(tmp_path: Path) -> None:
    path, _ = _save_with_external_data(tmp_path)
    proto = onnx.load(str(path), load_external_data=False)
    with pytest.raises(gs.ModelError, match="Pass the path"):
        OnnxBackend(proto)


# --------------------------------------------------------------------------------- inputs and outputs
def two_input_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Mul", ["image", "scale"], ["y"])]
    inputs = {"image": np.zeros((2, 3), np.float32), "scale": np.zeros((1, 3), np.float32)}
    return make_model(nodes, inputs, ["y"])


def test_two_inputs_need_input_name() -> None:
    with pytest.raises(gs.ModelError, match="input_name") as info:
        OnnxBackend(two_input_model())
    assert "'image' float32[2, 3]" in str(info.value) and "'scale' float32[1, 3]" in str(info.value)
    with pytest.raises(gs.ModelError, match="constant_inputs"):
        OnnxBackend(two_input_model(), input_name="image")
    with pytest.raises(gs.ModelError, match=r"no input named 'imgae'.*'image'"):
        OnnxBackend(two_input_model(), input_name="imgae")


def test_other_inputs_fixed_by_constant_inputs() -> None:
    scale = np.array([[1.0, -2.0, 3.0]], np.float32)
    backend = OnnxBackend(two_input_model(), input_name="image", constant_inputs={"scale": scale})
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    v = RNG.standard_normal((2, 3)).astype(np.float32)
    y, g = backend.vjp(x, v)
    np.testing.assert_allclose(y, x * scale, rtol=1e-6)
    np.testing.assert_allclose(g, v * scale, rtol=1e-6)  # d(x s)/dx = s, elementwise


def test_wrong_input_shape_names_the_declared_shape() -> None:
    backend = OnnxBackend(linear_model())
    with pytest.raises(gs.InputError, match=r"declared float32\[batch, 6\]") as info:
        backend.forward(np.zeros((2, 5), np.float32))
    assert "axis 1 must be 6" in str(info.value)
    with pytest.raises(gs.InputError, match=r"rank 3.*declared float32\[batch, 6\]"):
        backend.vjp(np.zeros((2, 6, 1), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(gs.InputError, match=r"float32\[2, 6\]"):
        OnnxBackend(linear_model(symbolic_batch=False)).forward(np.zeros((3, 6), np.float32))


def test_symbolic_sizes_are_hints_as_for_onnxruntime() -> None:
    # a PaddleOCR classifier declares [-1, 3, "?", "?"] and takes 48x192 images: onnxruntime runs any sizes
    # for axes named alike, so gradsal does too; a fixed size is still checked
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "sq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "?", "?"])],
                              [helper.make_empty_tensor_value_info("y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = RNG.standard_normal((1, 3, 4)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": x})
    np.testing.assert_array_equal(OnnxBackend(model).forward(x), expected)


@pytest.mark.parametrize("bad", [np.zeros((2, 6), np.int64), np.zeros((2, 6), np.complex64),
                                 np.full((2, 6), "a"), np.zeros((2, 6), bool)])
def test_wrong_input_dtype_names_the_declared_shape(bad: np.ndarray) -> None:
    with pytest.raises(gs.InputTypeError, match=r"float32\[batch, 6\]"):
        OnnxBackend(linear_model()).forward(bad)


def test_float64_input_is_fed_as_the_declared_float32() -> None:
    x = RNG.standard_normal((2, 6))
    y = OnnxBackend(linear_model()).forward(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, np.tanh(x.astype(np.float32) @ W), rtol=1e-5, atol=1e-6)


def test_wrong_cotangent_and_tangent_shapes() -> None:
    backend = OnnxBackend(linear_model())
    x = np.zeros((2, 6), np.float32)
    with pytest.raises(gs.InputError, match=r"cotangent has shape \(2, 3\).*\(2, 4\)"):
        backend.vjp(x, np.zeros((2, 3), np.float32))
    with pytest.raises(gs.InputError, match=r"tangent has shape \(6,\)"):
        backend.jvp(x, np.zeros(6, np.float32))
    with pytest.raises(gs.InputError, match="cotangent"):
        backend.layer_vjp(x, "h", np.zeros((3, 4), np.float32))
    with pytest.raises(gs.InputTypeError, match="cotangent has dtype"):
        backend.vjp(x, np.zeros((2, 4), np.complex64))


def test_unknown_output_and_layer_names_list_close_matches() -> None:
    with pytest.raises(gs.ModelError, match=r"no tensor named 'Y'.*Close matches: 'y'") as info:
        OnnxBackend(linear_model(), output_name="Y")
    assert isinstance(info.value, ValueError)
    with pytest.raises(gs.ModelError, match=r"no tensor named 'zzz'.*The model's tensors: 'y', 'x', 'h'\."):
        OnnxBackend(linear_model(), output_name="zzz")
    nodes = [helper.make_node("Relu", ["x"], ["features_relu"]),
             helper.make_node("Tanh", ["features_relu"], ["features_tanh"])]
    model = make_model(nodes, {"x": np.zeros((1, 3), np.float32)}, ["features_tanh"])
    with pytest.raises(gs.ModelError, match="Close matches: 'features_relu'"):
        OnnxBackend(model, output_name="features_rleu")
    with pytest.raises(gs.ModelError, match=r"no tensor named 'features_rel'.*'features_relu'"):
        OnnxBackend(model).layer_vjp(np.ones((1, 3), np.float32), "features_rel", np.ones((1, 3), np.float32))


def test_bad_arguments() -> None:
    with pytest.raises(gs.InputError, match="fallback"):
        OnnxBackend(linear_model(), fallback="numeric")
    with pytest.raises(gs.InputTypeError, match="SessionOptions"):
        OnnxBackend(linear_model(), session_options={"threads": 2})
    with pytest.raises(gs.InputError, match="unknown ReLU rule"):
        OnnxBackend(linear_model()).with_relu_rule("guidedd")
    with pytest.raises(gs.ModelError, match=r"no initializer, node or tensor named 'w'.*Close matches: 'W'"):
        OnnxBackend(linear_model()).randomized(["w"], seed=0)


# ------------------------------------------------------------------------------ unsupported operators
def test_unsupported_operator_names_op_node_opset_and_fallback() -> None:
    backend = OnnxBackend(det_model())
    x = RNG.standard_normal((2, 3, 3)).astype(np.float32)
    with pytest.raises(gs.UnsupportedOperatorError) as info:
        backend.vjp(x, np.ones(2, np.float32))
    message = str(info.value)
    assert "Det" in message and "'the_det'" in message and "opset 17" in message
    assert "fallback='finite_differences'" in message and isinstance(info.value, NotImplementedError)
    np.testing.assert_allclose(backend.forward(x), np.linalg.det(2 * x), rtol=1e-4)  # forward still works


def test_finite_difference_fallback_warns_and_is_close_to_the_truth() -> None:
    backend = OnnxBackend(det_model(), fallback="finite_differences")
    x = (np.eye(3) + 0.3 * RNG.standard_normal((2, 3, 3))).astype(np.float32)
    v = np.array([1.0, -0.5], np.float32)
    with pytest.warns(FiniteDifferenceWarning, match="Det.*finite-difference fallback"):
        y, g = backend.vjp(x, v)
    x64 = 2 * x.astype(np.float64)
    # d det(2x)/dx = 2 det(2x) (2x)^-T, per sample, times v
    truth = 2 * v[:, None, None] * np.linalg.det(x64)[:, None, None] * np.linalg.inv(x64).transpose(0, 2, 1)
    np.testing.assert_allclose(y, np.linalg.det(x64), rtol=1e-4)
    np.testing.assert_allclose(g, truth, rtol=2e-2, atol=2e-2 * np.abs(truth).max())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend.vjp(x, v)  # the decision is cached per shape: no second build, no second warning


def test_piecewise_constant_operator_on_the_path_is_an_error_not_a_zero_gradient() -> None:
    nodes = [helper.make_node("Round", ["x"], ["r"], name="quantise"), helper.make_node("Mul", ["r", "x"], ["y"])]
    backend = OnnxBackend(make_model(nodes, {"x": np.zeros((1, 3), np.float32)}, ["y"]))
    with pytest.raises(gs.UnsupportedOperatorError, match=r"Round node 'quantise'.*piecewise constant.*fallback"):
        backend.vjp(np.full((1, 3), 0.3, np.float32), np.ones((1, 3), np.float32))


# --------------------------------------------------------------------------------- run-time failures
def test_onnxruntime_failure_is_a_backend_error_naming_what_was_fed() -> None:
    shape = np.array([2, 6], np.int64)  # a fixed reshape: the declared symbolic batch cannot really vary
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((2, 6), np.float32)}, ["y"], {"shape": shape}, symbolic_batch=True)
    backend = OnnxBackend(model)
    with pytest.raises(gs.BackendError, match=r"onnxruntime failed.*fed x float32\[3, 6\]") as info:
        backend.forward(np.zeros((3, 6), np.float32))
    assert "Reshape" in str(info.value) or "reshape" in str(info.value).lower()
    with pytest.raises(gs.BackendError, match=r"input shape \(3, 6\)"):
        backend.vjp(np.zeros((3, 6), np.float32), np.zeros((2, 6), np.float32))


def test_missing_onnxruntime_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(gs.MissingDependencyError, match=r"pip install 'gradsal\[onnx\]'") as info:
        OnnxBackend(linear_model())
    assert isinstance(info.value, ImportError)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA provider present")
def test_asking_for_an_unavailable_provider_is_an_error() -> None:
    with pytest.raises(gs.MissingDependencyError, match=r"CUDAExecutionProvider.*onnxruntime-gpu"):
        OnnxBackend(linear_model(), providers=["cuda"])


def test_importing_the_package_imports_neither_onnx_nor_onnxruntime() -> None:
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import gradsal.backends.onnx as backend
        assert backend.plugin.accepts("model.ONNX") and backend.plugin.accepts(Path("a/b.onnx"))
        assert not backend.plugin.accepts("model.pt") and not backend.plugin.accepts(b"bytes")
        assert not backend.plugin.accepts(object())
        assert "onnx" not in sys.modules and "onnxruntime" not in sys.modules, sorted(sys.modules)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_plugin_accepts_model_protos_and_paths(tmp_path: Path) -> None:
    model = linear_model()
    assert plugin.accepts(model) and plugin.name == "onnx" and plugin.extra == "onnx"
    path = save(model, tmp_path / "Model.ONNX")
    backend = gs.as_backend(str(path))
    assert isinstance(backend, OnnxBackend)
    x = RNG.standard_normal((1, 6)).astype(np.float32)
    np.testing.assert_allclose(backend.forward(x), np.tanh(x @ W), rtol=1e-5, atol=1e-6)
    assert isinstance(gs.as_backend(model), OnnxBackend)
    assert numpy_helper.to_array(model.graph.initializer[0]).shape == (6, 4)
