"""The command line on ONNX models built here: layouts, channel order, tensor flags, ``inspect``, ``--layer auto``,
warnings in the flags' terms, and the one-line error contract for the failure modes of real models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradsal import core

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
Image = pytest.importorskip("PIL.Image")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from gradsal.backends.onnx import OnnxBackend  # noqa: E402
from gradsal.cli.main import main  # noqa: E402

RNG = np.random.default_rng(7)
CONV_W = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
DENSE_W = RNG.normal(size=(4, 3)).astype(np.float32)
HEAD_W = RNG.normal(size=(3, 4, 1, 1)).astype(np.float32)


def save(path: Path, nodes: list, inputs: list, outputs: list, weights: dict[str, np.ndarray]) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def float_input(name: str, shape: list) -> object:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def nhwc_classifier(path: Path) -> Path:
    """(N, 8, 8, 3) -> Transpose -> Conv -> Relu -> GlobalAveragePool -> Gemm -> Softmax, like a tf2onnx export."""
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w"], ["features"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["features"], ["act"]),
        helper.make_node("GlobalAveragePool", ["act"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "dense_w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"]),
    ]
    return save(path, nodes, [float_input("image", ["batch", 8, 8, 3])], [float_input("prob", ["batch", 3])],
                {"conv_w": CONV_W, "dense_w": DENSE_W})


def pooled_head(path: Path, activation: str = "Relu", input_shape: list | None = None) -> Path:
    """(N, 3, 8, 8) -> Conv -> activation -> GlobalAveragePool -> 1x1 Conv -> Flatten: the last Conv sees 1x1."""
    act = (helper.make_node("Relu", ["features"], ["act"]) if activation == "Relu"
           else helper.make_node("Clip", ["features", "zero", "six"], ["act"]))
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["features"], pads=[1, 1, 1, 1]), act,
        helper.make_node("GlobalAveragePool", ["act"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "head_w"], ["head"]),
        helper.make_node("Flatten", ["head"], ["logits"]),
    ]
    weights = {"conv_w": CONV_W, "head_w": HEAD_W, "zero": np.array(0, np.float32), "six": np.array(6, np.float32)}
    return save(path, nodes, [float_input("x", input_shape or ["n", 3, 8, 8])], [float_input("logits", ["n", 3])],
                weights)


def write_image(path: Path, size: tuple[int, int] = (8, 8), seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status: int, err: str, phrase: str) -> None:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("gradsal: error:"), err
    assert phrase in lines[0], lines[0]


def explain_npy(capsys, model: Path, image: Path, out: Path, *options: str) -> tuple[np.ndarray, str]:
    status, _, err = run(capsys, "explain", model, image, "--out", out, "--format", "npy", "json", "--quiet", *options)
    assert status == 0, err
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return np.load(out / summary[0]["files"][0]), err


# --------------------------------------------------------------------------------------- layouts
def test_nhwc_model_is_detected_and_fed_channels_last(tmp_path: Path, capsys) -> None:
    model = nhwc_classifier(tmp_path / "nhwc.onnx")
    pixels = write_image(tmp_path / "cat.png")
    status, _, err = run(capsys, "explain", model, tmp_path / "cat.png", "--out", tmp_path / "a", "--format", "npy")
    assert status == 0, err
    assert "channels last: images are fed as NHWC" in err  # said in one line, without a flag
    attribution = np.load(tmp_path / "a" / "cat_vanilla.npy")
    x = (pixels / 255.0).astype(np.float32)[None]  # NHWC, as the model takes it
    expected = core.vanilla_gradient(OnnxBackend(str(model), output_name="logits"), x)[0].transpose(2, 0, 1)
    np.testing.assert_allclose(attribution, expected, rtol=1e-5, atol=1e-7)


def test_bgr_pixel_range_and_means_on_an_nhwc_model(tmp_path: Path, capsys) -> None:
    model = nhwc_classifier(tmp_path / "nhwc.onnx")
    pixels = write_image(tmp_path / "cat.png", seed=1)
    got, _ = explain_npy(capsys, model, tmp_path / "cat.png", tmp_path / "a", "--channel-order", "bgr",
                         "--pixel-range", "0", "255", "--mean", "10", "20", "30", "--method", "gradxinput")
    x = (pixels[:, :, ::-1].astype(np.float64) - [10, 20, 30]).astype(np.float32)[None]  # B, G, R minus means
    expected = core.gradient_x_input(OnnxBackend(str(model), output_name="logits"), x)[0].transpose(2, 0, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_preprocessing_json_beside_the_model(tmp_path: Path, capsys) -> None:
    model = nhwc_classifier(tmp_path / "nhwc.onnx")
    (tmp_path / "nhwc.preprocess.json").write_text(json.dumps({"preset": "caffe-bgr"}), encoding="utf-8")
    pixels = write_image(tmp_path / "cat.png", seed=2)
    got, _ = explain_npy(capsys, model, tmp_path / "cat.png", tmp_path / "a", "--method", "gradxinput")
    x = (pixels[:, :, ::-1].astype(np.float64) - [104, 117, 123]).astype(np.float32)[None]
    expected = core.gradient_x_input(OnnxBackend(str(model), output_name="logits"), x)[0].transpose(2, 0, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_letterbox_overlay_is_drawn_on_the_original_picture(tmp_path: Path, capsys) -> None:
    model = pooled_head(tmp_path / "head.onnx")
    write_image(tmp_path / "wide.png", size=(8, 24))
    status, _, err = run(capsys, "explain", model, tmp_path / "wide.png", "--resize", "letterbox", "--out",
                         tmp_path / "a", "--format", "png", "npy")
    assert status == 0, err
    assert np.load(tmp_path / "a" / "wide_vanilla.npy").shape == (3, 8, 8)  # the model's canvas
    with Image.open(tmp_path / "a" / "wide_vanilla.png") as picture:
        assert picture.width > 2.5 * picture.height  # three panels of the 8 x 24 picture, not of the 8 x 8 canvas


# ------------------------------------------------------------------------------------------- tensors
def two_input_model(path: Path) -> Path:
    nodes = [helper.make_node("Mul", ["x", "scale"], ["scaled"]),
             helper.make_node("MatMul", ["scaled", "w"], ["y"])]
    return save(path, nodes, [float_input("x", ["n", 4]), float_input("scale", [4])], [float_input("y", ["n", 2])],
                {"w": RNG.normal(size=(4, 2)).astype(np.float32)})


def test_input_name_and_constant_input(tmp_path: Path, capsys) -> None:
    model = two_input_model(tmp_path / "two.onnx")
    scale = np.array([1.0, -2.0, 3.0, 0.5], np.float32)
    np.save(tmp_path / "scale.npy", scale)
    np.save(tmp_path / "x.npy", np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    got, _ = explain_npy(capsys, model, tmp_path / "x.npy", tmp_path / "a", "--input-name", "x",
                         "--constant-input", f"scale={tmp_path / 'scale.npy'}", "--target", "1")
    w = numpy_helper.to_array(onnx.load(str(model)).graph.initializer[0])
    np.testing.assert_allclose(got, scale * w[:, 1], rtol=1e-6)  # d(x * scale @ w)[1] / dx, by hand


def test_several_inputs_error_names_the_flags(tmp_path: Path, capsys) -> None:
    model = two_input_model(tmp_path / "two.onnx")
    np.save(tmp_path / "x.npy", np.zeros(4, np.float32))
    status, _, err = run(capsys, "explain", model, tmp_path / "x.npy", "--out", tmp_path / "a")
    assert_one_line_error(status, err, "--input-name NAME")
    assert "--constant-input NAME=FILE.npy" in err and "input_name=" not in err and "constant_inputs" not in err
    status, _, err = run(capsys, "explain", model, tmp_path / "x.npy", "--constant-input", "scale", "--out", tmp_path)
    assert_one_line_error(status, err, "NAME=FILE.npy")


def test_logits_warning_names_the_flag_without_a_source_line(tmp_path: Path) -> None:
    model = nhwc_classifier(tmp_path / "nhwc.onnx")
    write_image(tmp_path / "cat.png")
    result = subprocess.run([sys.executable, "-m", "gradsal.cli.main", "explain", str(model), str(tmp_path / "cat.png"),
                             "--out", str(tmp_path / "a")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("gradsal: warning:"), result.stderr
    assert "--output-name 'prob'" in warnings[0]
    assert "output_name=" not in result.stderr and "explain_logits" not in result.stderr
    assert all(line.startswith("gradsal: ") for line in result.stderr.splitlines()), result.stderr  # no source


def test_guided_backprop_without_relu_warns(tmp_path: Path, capsys) -> None:
    clipped = OnnxBackend(str(pooled_head(tmp_path / "relu6.onnx", activation="Clip")))
    x = np.random.default_rng(0).random((1, 3, 8, 8)).astype(np.float32)
    with pytest.warns(UserWarning, match="No Relu node") as caught:
        guided = core.guided_backprop(clipped, x)
    assert caught[0].filename == __file__  # points at the caller's line
    np.testing.assert_allclose(guided, core.vanilla_gradient(clipped, x), rtol=1e-6)
    with_relu = OnnxBackend(str(pooled_head(tmp_path / "relu.onnx")))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        core.guided_backprop(with_relu, x)
    write_image(tmp_path / "cat.png")
    status, _, err = run(capsys, "explain", tmp_path / "relu6.onnx", tmp_path / "cat.png", "--method", "guided",
                         "--out", tmp_path / "a")
    assert status == 0 and "gradsal: warning: No Relu node" in err, err


# ------------------------------------------------------------------------------ inspect, --layer auto
def test_inspect_lists_io_preprocessing_and_grid_layers(tmp_path: Path, capsys) -> None:
    model = pooled_head(tmp_path / "head.onnx")
    status, out, err = run(capsys, "inspect", model)
    assert status == 0, err
    assert "x: (n, 3, 8, 8) float32" in out and "logits: (n, 3) float32" in out
    assert "preprocessing: NCHW, RGB, pixels in [0, 1], stretch to 8 x 8" in out
    layers = out.split("Grad-CAM layers")[1]
    assert "features: (1, 4, 8, 8)" in layers and "act: (1, 4, 8, 8)" in layers
    assert "head" not in layers and "pooled" not in layers  # 1x1 grids
    status, out, _ = run(capsys, "inspect", nhwc_classifier(tmp_path / "nhwc.onnx"))
    assert "preprocessing: NHWC" in out and "act: (1, 4, 8, 8)" in out


def test_layer_auto_takes_the_last_grid_not_the_1x1_conv(tmp_path: Path, capsys) -> None:
    model = pooled_head(tmp_path / "head.onnx")
    write_image(tmp_path / "cat.png")
    got, _ = explain_npy(capsys, model, tmp_path / "cat.png", tmp_path / "a", "--method", "gradcam",
                           "--layer", "auto")
    x = np.asarray(Image.open(tmp_path / "cat.png"), np.float32).transpose(2, 0, 1)[None] / 255.0
    expected = core.grad_cam(OnnxBackend(str(model)), x, layer="act")
    np.testing.assert_allclose(got, expected[0], rtol=1e-5, atol=1e-7)
    assert np.ptp(got) > 0


# ---------------------------------------------------------------------------- one-line errors
def scalar_output_model(path: Path) -> Path:
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)]
    return save(path, nodes, [float_input("x", [1, 3, 8, 8])], [float_input("total", [])], {})


def test_zero_d_output(tmp_path: Path, capsys) -> None:
    write_image(tmp_path / "cat.png")
    status, _, err = run(capsys, "explain", scalar_output_model(tmp_path / "sum.onnx"), tmp_path / "cat.png",
                         "--out", tmp_path / "a")
    assert_one_line_error(status, err, "not one row per input")


def test_size_zero(tmp_path: Path, capsys) -> None:
    write_image(tmp_path / "cat.png")
    status, _, err = run(capsys, "explain", pooled_head(tmp_path / "m.onnx"), tmp_path / "cat.png", "--size", "0",
                         "0", "--out", tmp_path / "a")
    assert_one_line_error(status, err, "--size 0 0")
    status, _, err = run(capsys, "check", tmp_path / "m.onnx", "--size", "8", "8", "8")
    assert_one_line_error(status, err, "--size takes H W")


def test_huge_declared_dimension(tmp_path: Path, capsys) -> None:
    write_image(tmp_path / "cat.png")
    model = pooled_head(tmp_path / "huge.onnx", input_shape=[1, 3, 2**40, 2**40])
    status, _, err = run(capsys, "explain", model, tmp_path / "cat.png", "--out", tmp_path / "a")
    assert_one_line_error(status, err, "--size H W")


def test_check_without_image_on_dynamic_height_and_width(tmp_path: Path, capsys) -> None:
    model = pooled_head(tmp_path / "dyn.onnx", input_shape=["n", 3, "h", "w"])
    status, _, err = run(capsys, "check", model)
    assert_one_line_error(status, err, "give an INPUT image or .npy file, or --size H W")
    assert "Reshape" not in err
    status, out, err = run(capsys, "check", model, "--size", "8")  # 8 x 8: the random input has a shape
    assert status == 0, out + err


def test_decompression_bomb_through_the_command_line(tmp_path: Path) -> None:
    from test_cli_images import _png_header_only

    _png_header_only(tmp_path / "bomb.png", 60_000, 60_000)
    result = subprocess.run([sys.executable, "-m", "gradsal.cli.main", "explain",
                             str(pooled_head(tmp_path / "m.onnx")), str(tmp_path / "bomb.png"), "--out",
                             str(tmp_path / "a")], capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "--max-pixels" in lines[0]


def test_library_advice_is_rephrased_in_flags() -> None:
    from gradsal.cli.messages import in_cli_terms

    assert in_cli_terms("a\n  b. Pass output_name='p' or explain_logits=False to explain it.") == \
        "a b. Pass --output-name 'p' to explain it."
    assert "--output-name NAME" in in_cli_terms("Explain a tensor before it (output_name=...), or else")
    assert "--input-name NAME to say" in in_cli_terms("Pass input_name= to say which")
    assert in_cli_terms("fix the others with constant_inputs={name: array}.") == \
        "fix the others with --constant-input NAME=FILE.npy."
    assert "--output-name NAME" in in_cli_terms("explain the logits instead (drop the final softmax).")


def test_fixed_height_dynamic_width_explains_lines_of_different_widths(tmp_path: Path, capsys) -> None:
    model = pooled_head(tmp_path / "lines.onnx", input_shape=["n", 3, 8, "width"])
    write_image(tmp_path / "short.png", size=(16, 32))
    write_image(tmp_path / "long.png", size=(4, 24), seed=1)
    status, _, err = run(capsys, "explain", model, tmp_path / "short.png", tmp_path / "long.png", "--out",
                         tmp_path / "a", "--format", "npy", "json")
    assert status == 0, err
    assert np.load(tmp_path / "a" / "short_vanilla.npy").shape == (3, 8, 16)  # height 8, aspect kept
    assert np.load(tmp_path / "a" / "long_vanilla.npy").shape == (3, 8, 48)


def test_output_batch_axis_takes_a_number_or_none(tmp_path: Path, capsys) -> None:
    write_image(tmp_path / "cat.png")
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, "explain", scalar_output_model(tmp_path / "sum.onnx"), tmp_path / "cat.png",
            "--output-batch-axis", "first")
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, "an axis number or 'none'")
    # a scalar output of a model with a fixed batch of 1 is that one sample's output
    status, _, err = run(capsys, "explain", tmp_path / "sum.onnx", tmp_path / "cat.png", "--output-batch-axis", "none",
                         "--format", "npy", "--out", tmp_path / "b")
    assert status == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "b" / "cat_vanilla.npy"), 1.0)  # d(sum x)/dx = 1 everywhere


def test_a_quantised_model_is_refused_naming_the_flag_and_explained_with_it(tmp_path: Path, capsys) -> None:
    # y = DynamicQuantizeLinear(x) @ W, W = (Wq - 128) * 0.01: straight through, d y_k / d x = W[:, k]
    quantised = np.array([[3, 200], [17, 90], [128, 40]], np.uint8)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "w", "xz", "wz"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "ws"], ["scale"]), helper.make_node("Mul", ["accf", "scale"], ["y"])]
    inits = {"w": quantised, "wz": np.array(128, np.uint8), "ws": np.array(0.01, np.float32)}
    model = save(tmp_path / "q.onnx", nodes, [float_input("x", ["n", 3])], [float_input("y", ["n", 2])], inits)
    np.save(tmp_path / "row.npy", np.array([0.5, -1.0, 2.0], np.float32))
    status, _, err = run(capsys, "explain", model, tmp_path / "row.npy", "--out", tmp_path / "a")
    assert_one_line_error(status, err, "--straight-through")
    status, _, err = run(capsys, "explain", model, tmp_path / "row.npy", "--straight-through", "--format", "npy",
                         "--out", tmp_path / "b")
    assert status == 0, err
    assert "float network" in err and len([line for line in err.splitlines() if "warning" in line]) == 1
    weight = (quantised.astype(np.float64) - 128) * 0.01
    predicted = int(np.argmax(np.array([0.5, -1.0, 2.0]) @ weight))
    np.testing.assert_allclose(np.load(tmp_path / "b" / "row_vanilla.npy"), weight[:, predicted], rtol=1e-5)
