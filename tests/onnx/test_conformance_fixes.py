"""What ONNX's conformance data and real models found wrong, each checked against an independent result.

Gradients against closed forms (Clip with min > max, Pow's exponent at base 0, Range, Einsum to a scalar);
rank-0 inputs, seeds and results keeping their shape; the caller's arrays never written (training-mode
BatchNormalization: onnxruntime updates what it is fed); ``constant_inputs`` checked like a fed input;
external data of every kind confined to the model's folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from harness import make_model
from onnx import TensorProto, helper, numpy_helper
from quantised_models import dynamically_quantised_matmul

import gradsal.core as gs
from gradsal.backends.onnx import OnnxBackend

RNG = np.random.default_rng(7)


def _backend(model: onnx.ModelProto, x_name: str, out: str, constants: dict[str, np.ndarray]) -> OnnxBackend:
    return OnnxBackend(model, input_name=x_name, output_name=out, constant_inputs=constants, explain_logits=False)


# ------------------------------------------------------------------------------------------------- Clip
@pytest.mark.parametrize(("low", "high"), [(-0.5, 0.5), (1.0, -1.0)])
def test_clip_bound_gradients_follow_onnx_definition(low: float, high: float) -> None:
    # ONNX: y = min(max(x, low), high), so where low > high, y = high everywhere: dy/dhigh = 1, dy/dlow = 0
    x = np.array([-2.0, -0.25, 0.0, 0.3, 2.0])
    arrays = {"x": x, "low": np.array(low), "high": np.array(high)}
    model = make_model([helper.make_node("Clip", ["x", "low", "high"], ["y"])], arrays, ["y"])
    v = RNG.standard_normal(5)
    below, above = x < low, np.maximum(x, low) > high
    expected = {"low": np.sum(v * below * (low < high)), "high": np.sum(v * above),
                "x": v * ((x > low) & (x < high))}
    for name in ("low", "high", "x"):
        backend = _backend(model, name, "y", {k: a for k, a in arrays.items() if k != name})
        _, grad = backend.vjp(arrays[name], v)
        assert grad.shape == arrays[name].shape
        np.testing.assert_allclose(grad, expected[name], atol=1e-12)
        _, tangent_out = backend.jvp(arrays[name], np.ones_like(arrays[name]))
        np.testing.assert_allclose(np.sum(tangent_out * v), np.sum(grad), atol=1e-12)


# -------------------------------------------------------------------------------------------------- Pow
def test_pow_exponent_gradient_is_zero_at_base_zero() -> None:
    # d/db a^b = a^b log a, which tends to 0 as a -> 0 for b > 0 (torch returns 0 there too), never NaN
    a = np.array([0.0, 0.5, 1.0, 2.0])
    model = make_model([helper.make_node("Pow", ["a", "b"], ["y"])], {"a": a, "b": np.array(3.0)}, ["y"])
    backend = _backend(model, "b", "y", {"a": a})
    v = np.array([1.5, -1.0, 2.0, 0.5])
    _, grad = backend.vjp(np.array(3.0), v)
    logs = np.log(np.where(a > 0, a, 1.0))
    assert grad.shape == ()
    np.testing.assert_allclose(grad, np.sum(v * a**3 * logs), rtol=1e-12)


# ------------------------------------------------------------------------------------------------ scalars
def test_rank0_input_and_seeds_keep_their_shape() -> None:
    model = make_model([helper.make_node("Mul", ["x", "x"], ["y"])], {"x": np.array(3.0)}, ["y"])
    backend = OnnxBackend(model)
    assert backend.forward(np.array(3.0)).shape == ()
    y, grad = backend.vjp(np.array(3.0), np.array(2.0))
    assert y.shape == () and grad.shape == ()
    assert float(grad) == pytest.approx(12.0)  # 2 x v
    _, product = backend.jvp(np.array(3.0), np.array(1.0))
    assert product.shape == () and float(product) == pytest.approx(6.0)


def test_einsum_to_a_scalar() -> None:
    x, w = RNG.standard_normal(5), RNG.standard_normal(5)
    model = make_model([helper.make_node("Einsum", ["x", "w"], ["z"], equation="i,i")], {"x": x, "w": w}, ["z"],
                       opset=12)
    backend = _backend(model, "x", "z", {"w": w})
    z, grad = backend.vjp(x, np.array(2.0))
    assert z.shape == () and float(z) == pytest.approx(float(x @ w))
    np.testing.assert_allclose(grad, 2.0 * w, rtol=1e-12)


def test_range_with_scalar_start_and_delta() -> None:
    # output[i] = start + i delta (i < ceil((limit - start) / delta)): d/dstart = sum v, d/ddelta = sum i v
    arrays = {"start": np.array(1.0), "limit": np.array(6.5), "delta": np.array(2.0)}
    model = make_model([helper.make_node("Range", ["start", "limit", "delta"], ["y"])], arrays, ["y"], opset=11)
    v = np.array([1.0, -2.0, 0.5])
    for name, expected in (("start", v.sum()), ("delta", np.sum(np.arange(3) * v))):
        backend = _backend(model, name, "y", {k: a for k, a in arrays.items() if k != name})
        _, grad = backend.vjp(arrays[name], v)
        assert grad.shape == ()
        assert float(grad) == pytest.approx(float(expected))


def test_dropout_with_a_scalar_ratio_input() -> None:
    # inference Dropout is the identity, whatever its (rank-0) ratio: the output does not depend on it
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    model = make_model([helper.make_node("Dropout", ["x", "r"], ["y"])], {"x": x, "r": np.array(0.3, np.float32)},
                       ["y"], opset=13)
    backend = _backend(model, "x", "y", {"r": np.array(0.3, np.float32)})
    _, grad = backend.vjp(x, np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(grad, np.ones((2, 3), np.float32))
    with pytest.raises(gs.ModelError, match="does not depend"):
        _backend(model, "r", "y", {"x": x}).vjp(np.array(0.3, np.float32), np.ones((2, 3), np.float32))


# ------------------------------------------------------------------------------------------------- Resize
def test_resize_with_input_dependent_scales_is_refused_not_called_constant() -> None:
    x = RNG.standard_normal((1, 1, 2, 2)).astype(np.float32)
    scales = np.array([1.0, 1.0, 2.0, 2.0], np.float32)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")
    model = make_model([node], {"x": x, "scales": scales}, ["y"], opset=13)
    with pytest.raises(gs.UnsupportedOperatorError, match="scales or roi computed from the input"):
        _backend(model, "scales", "y", {"x": x}).vjp(scales, np.ones((1, 1, 4, 4), np.float32))


# ------------------------------------------------------------------------------------ the caller's arrays
def test_training_mode_batchnorm_leaves_the_callers_arrays_alone() -> None:
    x = RNG.standard_normal((2, 3, 2, 2)).astype(np.float32)
    params = {name: np.full(3, value, np.float32) for name, value in
              (("scale", 1.5), ("bias", 0.1), ("mean", 0.2), ("var", 0.9))}
    node = helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"],
                            ["y", "running_mean", "running_var"], training_mode=1)
    model = make_model([node], {"x": x, **params}, ["y", "running_mean", "running_var"], opset=15)
    for name in ("x", "mean", "var"):
        arrays = {"x": x, **params}
        copies = {k: a.copy() for k, a in arrays.items()}
        backend = _backend(model, name, "running_mean", {k: a for k, a in arrays.items() if k != name})
        backend.forward(arrays[name])
        for key in arrays:
            np.testing.assert_array_equal(arrays[key], copies[key], err_msg=f"{key} changed (input {name})")


# -------------------------------------------------------------------------------------- constant_inputs
def _two_input_model() -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 5]),
              helper.make_tensor_value_info("bias", TensorProto.FLOAT, [3, 4, 5]),
              helper.make_tensor_value_info("k", TensorProto.INT64, [])]
    nodes = [helper.make_node("Add", ["x", "bias"], ["s"]), helper.make_node("Cast", ["k"], ["kf"], to=1),
             helper.make_node("Mul", ["s", "kf"], ["y"])]
    graph = helper.make_graph(nodes, "two", inputs, [helper.make_empty_tensor_value_info("y")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_constant_inputs_are_checked_like_fed_inputs() -> None:
    good = {"bias": np.ones((3, 4, 5), np.float32), "k": np.array(2)}
    x = np.ones((3, 4, 5), np.float32)
    np.testing.assert_array_equal(OnnxBackend(_two_input_model(), input_name="x", constant_inputs=good).forward(x),
                                  np.full((3, 4, 5), 4.0, np.float32))
    with pytest.raises(gs.InputError, match=r"constant_inputs\['bias'\] has shape \(4, 5\)"):
        OnnxBackend(_two_input_model(), input_name="x", constant_inputs={**good, "bias": np.ones((4, 5))})
    with pytest.raises(gs.InputTypeError, match=r"constant_inputs\['bias'\] has dtype <U1"):
        OnnxBackend(_two_input_model(), input_name="x", constant_inputs={**good, "bias": np.full((3, 4, 5), "a")})
    with pytest.raises(gs.InputTypeError, match=r"constant_inputs\['k'\] has dtype float64"):
        OnnxBackend(_two_input_model(), input_name="x", constant_inputs={**good, "k": np.array(2.5)})


# ------------------------------------------------------------------------------------------ external data
def _external(name: str, location: str, values: np.ndarray) -> TensorProto:
    tensor = numpy_helper.from_array(values, name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(values.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _sparse_constant_model(location: str) -> onnx.ModelProto:
    values = _external("sv", location, np.array([5.0, 7.0], np.float32))
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([1, 3], np.int64), "si"), [4])
    nodes = [helper.make_node("Constant", [], ["c"], sparse_value=sparse), helper.make_node("Add", ["x", "c"], ["y"])]
    graph = helper.make_graph(nodes, "sparse", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_sparse_constant_external_data_inside_the_folder_is_loaded(tmp_path: Path) -> None:
    (tmp_path / "values.bin").write_bytes(np.array([5.0, 7.0], np.float32).tobytes())
    path = tmp_path / "model.onnx"
    path.write_bytes(_sparse_constant_model("values.bin").SerializeToString())
    y = OnnxBackend(path).forward(np.zeros(4, np.float32))
    np.testing.assert_array_equal(y, [0.0, 5.0, 0.0, 7.0])


@pytest.mark.parametrize("kind", ["sparse Constant", "local function"])
def test_external_data_outside_the_folder_is_refused_for_every_kind(tmp_path: Path, kind: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "secret.bin"
    outside.write_bytes(np.array([5.0, 7.0], np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    if kind == "sparse Constant":
        model = _sparse_constant_model("../secret.bin")
    else:
        constant = helper.make_node("Constant", [], ["c"], value=_external("fv", "../secret.bin",
                                                                           np.array([5.0, 7.0], np.float32)))
        body = [constant, helper.make_node("Add", ["a", "c"], ["b"])]
        function = helper.make_function("local", "AddSecret", ["a"], ["b"], body,
                                        [helper.make_opsetid("", 17)])
        graph = helper.make_graph([helper.make_node("AddSecret", ["x"], ["y"], domain="local")], "f",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
        model = helper.make_model(graph, functions=[function], ir_version=8,
                                  opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    monkeypatch.chdir(folder)  # where onnxruntime would resolve '../secret.bin' itself
    with pytest.raises(gs.ModelError, match="outside the model's folder"):
        OnnxBackend(path)
    with pytest.raises(gs.ModelError, match="external data"):
        OnnxBackend(model)  # a ModelProto has no folder: refused, never resolved against the cwd


def test_onnxruntime_itself_reads_a_sparse_constant_from_the_cwd(tmp_path: Path, monkeypatch) -> None:
    # why the check above matters: handed the bytes, onnxruntime resolves the location itself
    (tmp_path / "values.bin").write_bytes(np.array([5.0, 7.0], np.float32).tobytes())
    monkeypatch.chdir(tmp_path)
    try:
        session = ort.InferenceSession(_sparse_constant_model("values.bin").SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # a later onnxruntime may confine it itself
        pytest.skip(f"this onnxruntime does not resolve it: {exc}")
    (y,) = session.run(None, {"x": np.zeros(4, np.float32)})
    np.testing.assert_array_equal(y, [0.0, 5.0, 0.0, 7.0])


# ------------------------------------------------------------------------------------------- quantised


def test_a_quantised_model_is_refused_naming_the_quantisation() -> None:
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    backend = OnnxBackend(dynamically_quantised_matmul())
    assert backend.forward(x).shape == (2, 2)
    with pytest.raises(gs.UnsupportedOperatorError, match="the model is quantised: DynamicQuantizeLinear, "
                                                          "MatMulInteger") as info:
        backend.vjp(x, np.ones((2, 2), np.float32))
    assert "float side" not in str(info.value)
    with pytest.raises(gs.UnsupportedOperatorError, match="quantised"):
        backend.jvp(x, np.ones((2, 3), np.float32))


# ------------------------------------------------------------------------------------ subgraph reads
def _if_reading_the_outer_scope() -> onnx.ModelProto:
    # y = If(flag, then: tanh(h), else: -h) with h = 2 x computed outside the branches
    then_branch = helper.make_graph([helper.make_node("Tanh", ["h"], ["t"])], "then", [],
                                    [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_branch = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "else", [],
                                    [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Add", ["x", "x"], ["h"]),
             helper.make_node("If", ["flag"], ["y"], then_branch=then_branch, else_branch=else_branch)]
    graph = helper.make_graph(nodes, "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              [numpy_helper.from_array(np.array(True), "flag")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_branch_reading_x_from_the_outer_scope_is_not_called_independent() -> None:
    # the If's condition is a constant: the If is its then-branch, tanh(2 x), read from the outer scope
    x = RNG.standard_normal((1, 3)).astype(np.float32)
    _, grad = OnnxBackend(_if_reading_the_outer_scope()).vjp(x, np.ones((1, 3), np.float32))
    np.testing.assert_allclose(grad, 2 * (1 - np.tanh(2 * x) ** 2), rtol=1e-5, atol=1e-6)


def test_weight_only_quantisation_is_off_the_path_and_differentiates() -> None:
    # y = x @ dequantize(w_int8): the DequantizeLinear reads constants only, so J^T v = v @ W^T
    w_int8 = np.array([[3, -20], [17, 90], [-128, 40]], np.int8)
    scale, zero_point = np.float32(0.05), np.int8(2)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "wq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
                              [numpy_helper.from_array(w_int8, "wq"), numpy_helper.from_array(np.array(scale), "ws"),
                               numpy_helper.from_array(np.array(zero_point), "wz")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    v = RNG.standard_normal((2, 2)).astype(np.float32)
    _, grad = OnnxBackend(model).vjp(x, v)
    weight = (w_int8.astype(np.float32) - zero_point) * scale
    np.testing.assert_allclose(grad, v @ weight.T, rtol=1e-5, atol=1e-6)
